"""The time-parallel SISO scan kernels (tl.associative_scan over time, one state's (channels, steps) tile at
a time) of the Triton backend, under the interpreter, against the float64 reference.

- Through the layer's custom op with the schedule forced to "time_parallel" (every spec of
  test_backward_triton: real and complex, selective and time-invariant dt / B / C, a custom
  discretization), programs run in shuffled order, outputs NaN-poisoned: every output and gradient.
- Kernel by kernel, every point of the tuning space (BLOCK_D x BLOCK_T; num_warps does not exist
  under the interpreter), odd lengths that end inside a tile, checkpoint chunks that do and do not
  divide the tile.
- The deterministic mode (partial sums per program, summed on the host): equal to the reference and
  bit-identical across runs and program orders.
- Native dtypes and strides: bf16 u and z read as they are; a strided u needs no copy.
- States past the forward's block of 16: y of the earlier blocks carried through `out`; the backward's
  carries in their rows of the outputs.
- Both ways of the backward to h_{t-1} (DECAY_IS_EXP: h_t - b_t; else the scan's second pair) run in the
  specs of test_backward_triton (exp: mamba, lti_scan_real; not: the complex, Euler and custom ones).
"""
import random

import pytest
import torch
import triton
import triton.runtime.interpreter as interpreter

import ssmc
import ssmc.runtime.ops as runtime_ops
from ssmc.compiler import compile_package
from ssmc.reference import selective_scan_ref

from conftest import rel_error, scan_inputs
from test_backward_triton import CASES, TOL, _gradients, _initial_state

LENGTH = 37          # 3 chunks of 8 and a part, two tiles of 16 and a part


def _shuffle_programs(patch, seed):
    """From now on (until `patch`, a monkeypatch, is undone) every launch in the interpreter runs its
    programs (a one-axis grid) in a random order drawn from `seed`."""
    builder = interpreter.interpreter_builder
    set_dim, set_idx = builder.set_grid_dim, builder.set_grid_idx
    order = {}
    rng = random.Random(seed)

    def shuffled_dim(nx, ny, nz):
        order["x"] = rng.sample(range(nx), nx)
        return set_dim(nx, ny, nz)

    def shuffled_idx(x, y, z):
        return set_idx(order["x"][x], y, z)

    patch.setattr(builder, "set_grid_dim", shuffled_dim)
    patch.setattr(builder, "set_grid_idx", shuffled_idx)


@pytest.fixture
def shuffled_programs(monkeypatch):
    _shuffle_programs(monkeypatch, 0)


def _record_launches(monkeypatch, kernels, name, record):
    """Replace the kernel `name` of `kernels` by one that calls `record(args)` before each launch."""
    kernel = getattr(kernels, name)

    class Recorded:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                record(args)
                return kernel[grid](*args, **kwargs)
            return launch
    monkeypatch.setattr(kernels, name, Recorded())


def _kernels(spec, schedule="scan"):
    return compile_package(spec, schedule).KERNELS.get("triton")


def _force(monkeypatch, spec, schedule="time_parallel"):
    kernels = _kernels(spec)
    monkeypatch.setattr(kernels, "choose_schedule", lambda *args, **kwargs: schedule)
    return kernels


@pytest.mark.parametrize("name", list(CASES))
def test_every_gradient_matches_the_reference(name, backend, monkeypatch, shuffled_programs):
    backend("triton")
    monkeypatch.setattr(runtime_ops, "CHECKPOINT_CHUNK", 8)
    spec, arguments, discretization = CASES[name]
    _force(monkeypatch, spec)
    inputs = scan_inputs(batch=2, dim=8, length=LENGTH, n_state=spec.d_state, **arguments)
    for grad_name, grad, ref in _gradients(spec, inputs, discretization, h0=_initial_state(spec, 2, 8)):
        assert rel_error(grad, ref) < TOL, grad_name


def test_the_forward_alone_matches_the_reference(backend, monkeypatch):
    """No gradient due: no checkpoints (chunk 0)."""
    backend("triton")
    spec = ssmc.presets.mamba(d_state=5)
    _force(monkeypatch, spec)
    inputs = scan_inputs(batch=3, dim=5, length=LENGTH, n_state=5)
    out, last = compile_package(spec, "scan").apply(*(inputs[k] for k in ("u", "delta", "A", "B", "C")),
                                                     D=inputs["D"], z=inputs["z"], delta_bias=inputs["delta_bias"],
                                                     return_last_state=True)
    ref, ref_last = selective_scan_ref(*(inputs[k].double() for k in ("u", "delta", "A", "B", "C")),
                                       D=inputs["D"].double(), z=inputs["z"].double(),
                                       delta_bias=inputs["delta_bias"].double(), delta_softplus=True,
                                       return_last_state=True)
    assert rel_error(out, ref) < TOL and rel_error(last, ref_last) < TOL


# -- kernel by kernel: every config ---------------------------------------------------------------------
KERNEL_SPECS = {
    "mamba": (ssmc.presets.mamba(d_state=4, groups=2), dict(groups=2), "mamba"),
    "complex_selective": CASES["complex_selective"],
}
# states past the forward's block of 16 (TILED_STATE_BLOCK): 20 pad to 32, two blocks, the second ragged
WIDE_SPECS = {
    "mamba_20": (ssmc.presets.mamba(d_state=20), dict(), "mamba"),
    "complex_20": (ssmc.SSM("cx20", 20, A=ssmc.Diagonal(real=False), discretization=ssmc.ZOH(),
                            selective=("dt", "B", "C"), dt_softplus=True, dt_bias=True, gate=True),
                   dict(complex_state=True), "zoh"),
}


def _kernel_args(kernels, inputs, h0):
    """scan_fwd's operands (as normalize_scan_args leaves them) of scan_inputs."""
    def parts(x):
        return (x.real.contiguous(), x.imag.contiguous()) if x.is_complex() else (x, None)
    A_re, A_im = parts(inputs["A"])
    B_re, B_im = parts(inputs["B"])
    C_re, C_im = parts(inputs["C"])
    h0_re, h0_im = parts(h0)
    return dict(u=inputs["u"], delta=inputs["delta"], dt_bias=inputs["delta_bias"], A_re=A_re, A_im=A_im,
                B_re=B_re, B_im=B_im, C_re=C_re, C_im=C_im, D=inputs["D"], z=inputs["z"], h0_re=h0_re, h0_im=h0_im)


def _reference(spec, inputs, h0, discretization, grad_out, grad_state):
    """(out, last state, {operand: gradient}) in float64 through the reference's autograd."""
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    leaves = {k: (inputs[k].to(torch.complex128) if inputs[k].is_complex() else inputs[k].double()).requires_grad_()
              for k in names}
    h0 = (h0.to(torch.complex128) if h0.is_complex() else h0.double()).requires_grad_()
    out, last = selective_scan_ref(*(leaves[k] for k in names[:5]), D=leaves["D"], z=leaves["z"],
                                   delta_bias=leaves["delta_bias"], delta_softplus=spec.dt_softplus,
                                   return_last_state=True, discretization=discretization, initial_state=h0)
    loss = (out * grad_out.double()).sum() + (last * grad_state).real.sum()
    loss.backward()
    return out, last, {**{k: v.grad for k, v in leaves.items()}, "h0": h0.grad}


def _kernel_grads(spec, result):
    """{operand: gradient} of scan_bwd's result tuple, complex pairs joined."""
    (g_u, g_delta, g_dt_bias, g_A_re, g_A_im, g_B_re, g_B_im, g_C_re, g_C_im, g_D, g_z, g_h0_re, g_h0_im) = result

    def join(re, im):   # d loss / d(re) + i d loss / d(im): the reference's complex gradient convention
        return re if im is None else torch.complex(re, im)
    return dict(u=g_u, delta=g_delta, delta_bias=g_dt_bias, A=join(g_A_re, g_A_im), B=join(g_B_re, g_B_im),
                C=join(g_C_re, g_C_im), D=g_D, z=g_z, h0=join(g_h0_re, g_h0_im))


def _check_kernels(name, fwd_config, bwd_config, chunk, length=LENGTH, dim=8, bwd_schedule="time_parallel"):
    spec, arguments, discretization = {**KERNEL_SPECS, **WIDE_SPECS}[name]
    kernels = _kernels(spec)
    inputs = scan_inputs(batch=2, dim=dim, length=length, n_state=spec.d_state, **arguments)
    h0 = _initial_state(spec, 2, dim)
    args = _kernel_args(kernels, inputs, h0)
    out, state_re, state_im, ckpt_re, ckpt_im = kernels.scan_fwd_time_parallel(**args, chunk=chunk,
                                                                               config=fwd_config)
    gen = torch.Generator().manual_seed(11)
    grad_out = torch.randn(out.shape, generator=gen)
    grad_state = torch.randn(h0.shape, generator=gen, dtype=h0.dtype)
    ref_out, ref_last, ref_grads = _reference(spec, inputs, h0, discretization, grad_out, grad_state)
    assert rel_error(out, ref_out) < TOL
    last = state_re if state_im is None else torch.complex(state_re, state_im)
    assert rel_error(last, ref_last) < TOL
    bwd_args = {k: v for k, v in args.items() if k not in ("h0_re", "h0_im")}
    # d loss / d state_re and d state_im of Re(state · grad_state)
    g_re, g_im = (grad_state.real, -grad_state.imag) if grad_state.is_complex() else (grad_state, None)
    run = getattr(kernels, f"scan_bwd_{bwd_schedule}")
    result = run(grad_out, g_re, g_im, **bwd_args, ckpt_re=ckpt_re, ckpt_im=ckpt_im, chunk=chunk,
                 **({"config": bwd_config} if bwd_schedule == "time_parallel" else {}))
    for operand, grad in _kernel_grads(spec, result).items():
        assert rel_error(grad, ref_grads[operand]) < TOL, operand


def _planned(spec, variable, names):
    """The distinct points of a planned config list over `names` (num_warps does not exist under the
    interpreter)."""
    return sorted({tuple(config[n] for n in names) for config in getattr(_kernels(spec), variable)})


@pytest.mark.parametrize("name", list(KERNEL_SPECS))
def test_every_forward_config(name, shuffled_programs):
    """Every planned (BLOCK_D, BLOCK_T); checkpoint chunk 8 falls inside tiles of 16 to 64."""
    points = _planned(KERNEL_SPECS[name][0], "TILED_FWD_CONFIGS", ("BLOCK_D", "BLOCK_T"))
    assert len(points) > 1
    for block_d, block_t in points:
        _check_kernels(name, triton.Config({"BLOCK_D": block_d, "BLOCK_T": block_t}, num_warps=1), None, chunk=8)


@pytest.mark.parametrize("name", list(KERNEL_SPECS))
@pytest.mark.parametrize("chunk", [8, 32])
def test_every_backward_config(name, chunk, shuffled_programs):
    points = _planned(KERNEL_SPECS[name][0], "TILED_BWD_CONFIGS", ("BLOCK_D",))
    assert len(points) > 1
    for (block_d,) in points:
        _check_kernels(name, None, triton.Config({"BLOCK_D": block_d}, num_warps=1), chunk=chunk)


@pytest.mark.parametrize("name", list(WIDE_SPECS))
def test_states_in_several_blocks(name, shuffled_programs):
    """The forward takes 16 states at a time: with 20 (padded to 32) y of the first block waits in out while
    the second runs, and only the last applies the epilogue; checkpoints inside and at the start of tiles.
    The backward loops over the 20 states, their carries and sums in their rows of the outputs."""
    kernels = _kernels(WIDE_SPECS[name][0])
    assert kernels.TILED_STATE_BLOCK == 16
    _check_kernels(name, triton.Config({"BLOCK_D": 2, "BLOCK_T": 16}, num_warps=1),
                   triton.Config({"BLOCK_D": 2}, num_warps=1), chunk=8)
    _check_kernels(name, triton.Config({"BLOCK_D": 4, "BLOCK_T": 32}, num_warps=1),
                   triton.Config({"BLOCK_D": 8}, num_warps=1), chunk=32)
    _check_kernels(name, None, None, chunk=8, bwd_schedule="sequential")


def test_time_invariant_states_in_several_blocks_through_the_layer(backend, monkeypatch, shuffled_programs):
    """S4D-like (time-invariant dt, B, C; complex, bilinear) with 20 states: every output and gradient of the
    layer, the forward on the time-parallel schedule in two blocks of states, the backward over the 20 states."""
    backend("triton")
    monkeypatch.setattr(runtime_ops, "CHECKPOINT_CHUNK", 8)
    spec = ssmc.SSM("lc20", 20, A=ssmc.Diagonal(real=False), discretization=ssmc.Bilinear())
    _force(monkeypatch, spec)
    inputs = scan_inputs(batch=2, dim=8, length=LENGTH, n_state=20, selective=(), complex_state=True)
    for grad_name, grad, ref in _gradients(spec, inputs, "bilinear", h0=_initial_state(spec, 2, 8)):
        assert rel_error(grad, ref) < TOL, grad_name


def test_a_chunk_that_is_not_a_multiple_of_the_tile():
    """Checkpoints every 12 steps with tiles of 16: some fall on tile starts, some inside tiles (the
    sequential backward reads them: the time-parallel one takes power-of-two chunks only)."""
    _check_kernels("mamba", triton.Config({"BLOCK_D": 2, "BLOCK_T": 16}, num_warps=1), None, chunk=12, length=50,
                   bwd_schedule="sequential")
    with pytest.raises(ValueError, match="power of two, not 12"):
        _check_kernels("mamba", None, None, chunk=12, length=50)


def test_a_sequence_shorter_than_one_tile():
    _check_kernels("mamba", triton.Config({"BLOCK_D": 4, "BLOCK_T": 64}, num_warps=1),
                   triton.Config({"BLOCK_D": 4}, num_warps=1), chunk=16, length=5)


def test_full_tiles_whose_masks_are_constants():
    """32 steps in tiles and chunks of 16, 4 states, and channel blocks that fill their segments: EVEN_T,
    EVEN_N and EVEN_D hold, so the kernels run with constant masks (the other tests have ragged tiles)."""
    for name in KERNEL_SPECS:
        _check_kernels(name, triton.Config({"BLOCK_D": 4, "BLOCK_T": 16}, num_warps=1),
                       triton.Config({"BLOCK_D": 2}, num_warps=1), chunk=16, length=32)
        _check_kernels(name, None, None, chunk=16, length=32, bwd_schedule="sequential")


# -- deterministic sums, dtypes, strides, the schedule's choice ------------------------------------------
def test_deterministic_mode_sums_per_program_in_a_fixed_order(backend, monkeypatch):
    """12 channels in one group and the widest planned channel block (8): two programs add to every row
    of grad_B and grad_C. Under torch.use_deterministic_algorithms(True) the sums are per program, then on
    the host: equal to the reference, and equal bit for bit whatever order the programs ran in."""
    backend("triton")
    monkeypatch.setattr(runtime_ops, "CHECKPOINT_CHUNK", 8)
    spec = ssmc.presets.mamba(d_state=4)
    _force(monkeypatch, spec)
    inputs = scan_inputs(batch=2, dim=12, length=LENGTH, n_state=4, seed=3)
    runs = []
    torch.use_deterministic_algorithms(True)
    try:
        for seed in (0, 1):
            with monkeypatch.context() as patch:
                _shuffle_programs(patch, seed)
                torch.manual_seed(0)                  # the same loss weights in both runs
                runs.append(_gradients(spec, inputs, "mamba", h0=_initial_state(spec, 2, 12)))
    finally:
        torch.use_deterministic_algorithms(False)
    for (grad_name, grad, ref), (_, again, _) in zip(*runs):
        assert rel_error(grad, ref) < TOL, grad_name
        assert torch.equal(grad, again), grad_name


def test_deterministic_sums_go_through_in_slices_of_the_batch(monkeypatch):
    """With PARTIAL_SUM_BYTES below one batch element's rows, the deterministic backward launches once per
    batch element; its gradients equal the one-launch run's bit for bit, and the reference."""
    spec = ssmc.presets.mamba(d_state=4)
    kernels = _kernels(spec)
    inputs = scan_inputs(batch=3, dim=12, length=LENGTH, n_state=4, seed=5)
    h0 = _initial_state(spec, 3, 12)
    args = _kernel_args(kernels, inputs, h0)
    chunk = 8
    _, _, _, ckpt_re, ckpt_im = kernels.scan_fwd_sequential(**args, chunk=chunk)
    gen = torch.Generator().manual_seed(12)
    grad_out, grad_state = torch.randn(3, 12, LENGTH, generator=gen), torch.randn(3, 12, 4, generator=gen)
    bwd_args = {k: v for k, v in args.items() if k not in ("h0_re", "h0_im")}
    ref_grads = _reference(spec, inputs, h0, "mamba", grad_out, grad_state)[2]
    runs = []
    torch.use_deterministic_algorithms(True)
    try:
        for budget in (kernels.PARTIAL_SUM_BYTES, 1):
            launches = []
            with monkeypatch.context() as patch:
                patch.setattr(kernels, "PARTIAL_SUM_BYTES", budget)
                _record_launches(patch, kernels, "_scan_bwd_tiled_untuned", lambda args: launches.append(args[3].shape))
                runs.append(kernels.scan_bwd_time_parallel(grad_out, grad_state, None, **bwd_args, ckpt_re=ckpt_re,
                                                           ckpt_im=ckpt_im, chunk=chunk))
            assert launches == ([(3, 12, LENGTH)] if budget > 1 else [(1, 12, LENGTH)] * 3)
    finally:
        torch.use_deterministic_algorithms(False)
    for whole, sliced in zip(*runs):
        assert (whole is None) == (sliced is None)
        assert whole is None or torch.equal(whole, sliced)
    for operand, grad in _kernel_grads(spec, runs[1]).items():
        assert rel_error(grad, ref_grads[operand]) < TOL, operand


def test_half_precision_inputs_are_read_as_they_are(backend, monkeypatch):
    """bf16 u, delta and z go to the kernel uncast; the output is written in the compute dtype."""
    spec = ssmc.presets.mamba(d_state=4)
    kernels = _kernels(spec)
    inputs = scan_inputs(batch=2, dim=6, length=LENGTH, n_state=4, seed=4)
    for key in ("u", "delta", "z"):
        inputs[key] = inputs[key].to(torch.bfloat16)
    h0 = _initial_state(spec, 2, 6)
    args = _kernel_args(kernels, inputs, h0)
    out, state, _, _, _ = kernels.scan_fwd_time_parallel(**args, chunk=0)
    assert out.dtype == torch.float32
    ref, ref_last = selective_scan_ref(*(inputs[k].double() for k in ("u", "delta", "A", "B", "C")),
                                       D=inputs["D"].double(), z=inputs["z"].double(),
                                       delta_bias=inputs["delta_bias"].double(), delta_softplus=True,
                                       return_last_state=True, initial_state=h0.double())
    assert rel_error(out, ref) < TOL and rel_error(state, ref_last) < TOL


def test_strided_u_z_and_delta_are_read_through_their_strides():
    """Views with a stride of 2 along time and channels swapped with batch: the same result as
    contiguous copies, and the kernel gets the views themselves."""
    spec = ssmc.presets.mamba(d_state=4)
    kernels = _kernels(spec)
    inputs = scan_inputs(batch=2, dim=6, length=LENGTH, n_state=4, seed=5)
    args = _kernel_args(kernels, inputs, _initial_state(spec, 2, 6))
    strided = dict(args)
    for key in ("u", "delta", "z"):
        wide = torch.full((6, 2, 2 * LENGTH), float("nan"))
        wide[:, :, ::2] = args[key].transpose(0, 1)
        strided[key] = wide.transpose(0, 1)[:, :, ::2]
        assert not strided[key].is_contiguous()
    expected = kernels.scan_fwd_time_parallel(**args, chunk=0)
    got = kernels.scan_fwd_time_parallel(**strided, chunk=0)
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])


def test_the_schedule_is_the_preferred_one_where_it_fits(monkeypatch):
    kernels = _kernels(ssmc.presets.mamba(d_state=16))
    assert set(kernels.SCHEDULES) == {"sequential", "time_parallel"}
    assert kernels.choose_schedule(2048, 16, 64) == kernels.PREFERRED == "sequential"   # the shipped default
    monkeypatch.setattr(kernels, "PREFERRED", "time_parallel")
    assert kernels.choose_schedule(2048, 16, 64) == "time_parallel"
    assert kernels.choose_schedule(2048, 16, 64, backward=True) == "time_parallel"
    assert kernels.choose_schedule(8, 16, 64) == "sequential"                  # shorter than a tile
    assert kernels.choose_schedule(2048, 16, 48, backward=True) == "sequential"   # the tile is the chunk
    assert kernels.choose_schedule(2048, 512, 64, backward=True) == "time_parallel"   # both tiles are one state's
    assert kernels.choose_schedule(2048, 512, 64) == "time_parallel"


@pytest.mark.parametrize("schedule", ["sequential", "time_parallel"])
def test_a_bf16_layer_s_delta_reaches_the_kernel_uncast(schedule, backend, monkeypatch):
    """u, delta and z in bfloat16: the forward kernel reads the caller's delta itself (no float32 copy on
    the host), and forward and backward still match the float64 reference on the same rounded values."""
    backend("triton")
    monkeypatch.setattr(runtime_ops, "CHECKPOINT_CHUNK", 8)
    spec = ssmc.presets.mamba(d_state=4)
    kernels = _force(monkeypatch, spec, schedule)
    inputs = scan_inputs(batch=2, dim=6, length=LENGTH, n_state=4, seed=10)
    for key in ("u", "delta", "z"):
        inputs[key] = inputs[key].to(torch.bfloat16)
    name = "_scan_fwd_tiled_kernel" if schedule == "time_parallel" else "_scan_fwd_kernel"
    seen = []
    with monkeypatch.context() as patch:
        _record_launches(patch, kernels, name, lambda args: seen.append(args[1].data_ptr()))      # delta
        with torch.no_grad():
            compile_package(spec, "scan").apply(*(inputs[k] for k in ("u", "delta", "A", "B", "C")),
                                                D=inputs["D"], z=inputs["z"], delta_bias=inputs["delta_bias"])
    assert seen == [inputs["delta"].data_ptr()]
    for grad_name, grad, ref in _gradients(spec, inputs, "mamba", h0=_initial_state(spec, 2, 6)):
        assert rel_error(grad, ref) < (1e-2 if grad_name in ("u", "delta", "z") else TOL), grad_name


@pytest.mark.parametrize("schedule", ["sequential", "time_parallel"])
def test_the_layer_passes_strided_u_z_and_delta_to_the_kernel_uncopied(schedule, backend, monkeypatch):
    """u and z as the halves of one (batch, 2·dim, len) projection (as a Mamba block splits them) and a
    delta with a gap between channels: the Triton forward kernel gets these very tensors (no contiguous
    copy on the way) and the result equals the float64 reference."""
    backend("triton")
    spec = ssmc.presets.mamba(d_state=4)
    kernels = _force(monkeypatch, spec, schedule)
    inputs = scan_inputs(batch=2, dim=6, length=LENGTH, n_state=4, seed=9)
    xz = torch.cat([inputs["u"], inputs["z"]], dim=1)
    u, z = xz[:, :6], xz[:, 6:]
    delta = torch.cat([inputs["delta"], torch.full_like(inputs["delta"], float("nan"))], dim=1)[:, :6]
    assert not (u.is_contiguous() or z.is_contiguous() or delta.is_contiguous())
    name = "_scan_fwd_tiled_kernel" if schedule == "time_parallel" else "_scan_fwd_kernel"
    seen = []
    _record_launches(monkeypatch, kernels, name, lambda args: seen.append([a.data_ptr() for a in args[:3]]))
    y = compile_package(spec, "scan").apply(u, delta, inputs["A"], inputs["B"], inputs["C"], D=inputs["D"], z=z,
                                             delta_bias=inputs["delta_bias"])
    assert seen == [[u.data_ptr(), delta.data_ptr(), z.data_ptr()]]
    ref = selective_scan_ref(*(inputs[k].double() for k in ("u", "delta", "A", "B", "C")), D=inputs["D"].double(),
                             z=inputs["z"].double(), delta_bias=inputs["delta_bias"].double(), delta_softplus=True)
    assert rel_error(y, ref) < TOL


def test_empty_and_one_step_sequences_and_a_nan_input():
    """len 0: the last state is h0 and its gradient the last state's; len 1 against the reference; a NaN in
    u reaches the same outputs as in the reference (its own step and later), no earlier one."""
    spec = ssmc.presets.mamba(d_state=4)
    kernels = _kernels(spec)
    inputs = scan_inputs(batch=2, dim=3, length=0, n_state=4, seed=1)
    h0 = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(2))
    args = _kernel_args(kernels, inputs, h0)
    out, state, _, ckpt, _ = kernels.scan_fwd_time_parallel(**args, chunk=8)
    assert out.shape == (2, 3, 0) and ckpt.shape == (2, 3, 0, 4) and torch.equal(state, h0)
    grad_state = torch.randn(2, 3, 4)
    operands = {k: v for k, v in args.items() if k not in ("h0_re", "h0_im")}
    grads = kernels.scan_bwd_time_parallel(torch.zeros(out.shape), grad_state, None, **operands, ckpt_re=ckpt,
                                           ckpt_im=None, chunk=8)
    assert torch.equal(grads[11], grad_state) and not grads[3].any()           # grad_h0, grad_A
    _check_kernels("mamba", triton.Config({"BLOCK_D": 2, "BLOCK_T": 16}, num_warps=1),
                   triton.Config({"BLOCK_D": 2}, num_warps=1), chunk=8, length=1)
    inputs = scan_inputs(batch=1, dim=3, length=40, n_state=4, seed=2)
    inputs["u"][0, 1, 17] = float("nan")
    args = _kernel_args(kernels, inputs, torch.zeros(1, 3, 4))
    out = kernels.scan_fwd_time_parallel(**args, chunk=0)[0]
    ref = selective_scan_ref(*(inputs[k].double() for k in ("u", "delta", "A", "B", "C")), D=inputs["D"].double(),
                             z=inputs["z"].double(), delta_bias=inputs["delta_bias"].double(), delta_softplus=True)
    assert torch.equal(out.isnan(), ref.isnan()) and out.isnan().sum() == 23
