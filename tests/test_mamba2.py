"""Mamba-2 (SSD) compiled from the spec, on every backend, against the float64 sequential reference.

Outputs of every stage kernel start as NaN (SSMC_POISON_OUTPUTS, conftest), inputs are fresh random
tensors per test, and every path is compared with `ssd_sequential_ref`, the plain recurrence.
Triton runs under its interpreter on CPU tensors, at small shapes.
"""
import pytest
import torch

import ssmc
from ssmc.compiler import compile_package
from ssmc.reference_ssd import ssd_sequential_ref

BACKENDS = ["torch", "c", "triton"]
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 3e-2}


def rel(out, ref):
    out, ref = out.detach().double(), ref.detach().double()
    assert torch.isfinite(out).all(), "output has NaN/inf"
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def inputs(batch=2, length=21, heads=4, headdim=3, state=5, groups=2, dtype=torch.float32, seed=None,
           D_shape="heads", z=True, h0=True):
    gen = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item()))
    randn = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    args = dict(x=randn(batch, length, heads, headdim), dt=randn(batch, length, heads) - 1,
                A=-0.5 - torch.rand(heads, generator=gen, dtype=torch.float64),
                B=randn(batch, length, groups, state), C=randn(batch, length, groups, state),
                D=randn(heads) if D_shape == "heads" else randn(heads, headdim) if D_shape else None,
                z=randn(batch, length, heads, headdim) if z else None, dt_bias=randn(heads) * 0.5,
                initial_states=randn(batch, heads, headdim, state) if h0 else None)
    return {k: (v.to(dtype) if v is not None and k not in ("A",) else v) for k, v in args.items()}


def spec_for(headdim=3, state=5, groups=2, name="m2"):
    return ssmc.presets.mamba2(d_state=state, headdim=headdim, groups=groups, name=name)


def reference(args, **options):
    return ssd_sequential_ref(**args, dt_softplus=True, **options)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("schedule,chunk_size", [("sequential", None), ("chunked", 8), ("chunked", 16),
                                                 ("auto", None)])
def test_forward_matches_the_sequential_reference(backend, backend_name, schedule, chunk_size):
    backend(backend_name)
    package = compile_package(spec_for(), schedule)
    args = inputs(dtype=torch.float32)
    y, final = package.apply(**args, chunk_size=chunk_size, dt_softplus=True, return_final_states=True)
    y_ref, final_ref = reference(args, return_final_states=True)
    assert y.dtype == torch.float32 and y.shape == args["x"].shape
    assert rel(y, y_ref) < TOLERANCE[torch.float32]
    assert rel(final, final_ref) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("options", [dict(D_shape="headdim"), dict(D_shape=None, z=False, h0=False),
                                     dict(groups=1), dict(groups=4), dict(length=1), dict(length=33)])
def test_variants_match_the_reference_in_float64(backend, backend_name, options):
    backend(backend_name)
    groups = options.pop("groups", 2)
    package = compile_package(spec_for(groups=groups), "auto")
    args = inputs(dtype=torch.float64, groups=groups, **options)
    for chunk_size in (None, 8):
        y, final = package.apply(**args, chunk_size=chunk_size, dt_softplus=True, return_final_states=True)
        y_ref, final_ref = reference(args, return_final_states=True)
        assert rel(y, y_ref) < TOLERANCE[torch.float64]
        assert rel(final, final_ref) < TOLERANCE[torch.float64]


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_packed_sequences_reset_the_state(backend, backend_name):
    backend(backend_name)
    package = compile_package(spec_for(), "auto")
    args = inputs(batch=1, length=30, dtype=torch.float64)
    cu_seqlens = torch.tensor([0, 5, 5, 17, 30])            # an empty sequence, boundaries inside chunks
    y_ref, finals_ref = reference(args, cu_seqlens=cu_seqlens, return_final_states=True)
    for chunk_size in (None, 8):
        y, finals = package.apply(**args, chunk_size=chunk_size, cu_seqlens=cu_seqlens, dt_softplus=True,
                                  return_final_states=True)
        assert finals.shape == (4, 4, 3, 5)
        assert rel(y, y_ref) < TOLERANCE[torch.float64]
        assert rel(finals, finals_ref) < TOLERANCE[torch.float64]
    seq_idx = torch.tensor([[0] * 7 + [1] * 9 + [2] * 14, [3] * 12 + [4] * 18])   # row 2: h0 never used
    args = inputs(batch=2, length=30, dtype=torch.float64)
    y, final = package.apply(**args, chunk_size=8, seq_idx=seq_idx, dt_softplus=True, return_final_states=True)
    y_ref, final_ref = reference(args, seq_idx=seq_idx, return_final_states=True)
    assert rel(y, y_ref) < TOLERANCE[torch.float64] and rel(final, final_ref) < TOLERANCE[torch.float64]


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_bfloat16_inputs_accumulate_in_float32(backend, backend_name):
    backend(backend_name)
    package = compile_package(spec_for(), "auto")
    args = inputs(dtype=torch.bfloat16, length=24)
    y = package.apply(**args, chunk_size=8, dt_softplus=True)
    assert y.dtype == torch.bfloat16
    assert rel(y, reference(args)) < TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize("backend_name", ["torch", "c"])
@pytest.mark.parametrize("chunk_size,seq", [(None, False), (8, False), (8, True)])
def test_gradcheck_every_input_in_float64(backend, backend_name, chunk_size, seq):
    backend(backend_name)
    package = compile_package(spec_for(), "auto")
    args = inputs(batch=1, length=11, dtype=torch.float64, D_shape="headdim")
    names = list(args)
    seq_idx = torch.tensor([[0] * 4 + [1] * 3 + [2] * 4]) if seq else None

    def run(*tensors):
        return package.apply(**dict(zip(names, tensors)), chunk_size=chunk_size, seq_idx=seq_idx, dt_softplus=True,
                             return_final_states=True)
    tensors = [args[n].clone().requires_grad_() for n in names]
    assert torch.autograd.gradcheck(run, tensors)


@pytest.mark.parametrize("chunk_size", [None, 8])
def test_triton_gradients_match_the_reference(backend, chunk_size):
    backend("triton")
    package = compile_package(spec_for(), "auto")
    args = inputs(batch=1, length=12, dtype=torch.float32)
    names = list(args)
    leaves = {n: args[n].clone().requires_grad_() for n in names}
    y, final = package.apply(**leaves, chunk_size=chunk_size, dt_softplus=True, return_final_states=True)
    ref_leaves = {n: args[n].double().clone().requires_grad_() for n in names}
    y_ref, final_ref = reference(ref_leaves, return_final_states=True)
    gy, gf = torch.randn_like(y_ref), torch.randn_like(final_ref)
    ((y * gy.float()).sum() + (final * gf.float()).sum()).backward()
    ((y_ref * gy).sum() + (final_ref * gf).sum()).backward()
    for n in names:
        assert rel(leaves[n].grad, ref_leaves[n].grad) < 1e-4, n


def test_the_preset_module_under_both_schedules_agrees(backend):
    backend("c")
    torch.manual_seed(0)
    chunked = ssmc.compile(spec_for(name="m2_layer"), schedule="chunked")(d_model=12, chunk_size=8)
    sequential = ssmc.compile(spec_for(name="m2_layer"), schedule="sequential")(d_model=12)
    sequential.load_state_dict(chunked.state_dict())
    hidden, gate = torch.randn(2, 19, 12), torch.randn(2, 19, 12)
    out_chunked = chunked(hidden, z=gate)
    out_sequential = sequential(hidden, z=gate)
    assert out_chunked.shape == hidden.shape
    assert rel(out_chunked, out_sequential) < 1e-5
    out_chunked.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in chunked.parameters())


def test_ops_entry_point_matches_mamba_ssm_signature(backend):
    backend("c")
    args = inputs(dtype=torch.float32, h0=False)
    y = ssmc.ops.mamba_chunk_scan_combined(args["x"], args["dt"], args["A"], args["B"], args["C"], 16, D=args["D"],
                                           z=args["z"], dt_bias=args["dt_bias"], dt_softplus=True)
    assert rel(y, reference(args)) < TOLERANCE[torch.float32]


def test_empty_inputs_never_reach_a_kernel(backend):
    backend("c")
    package = compile_package(spec_for(), "auto")
    args = inputs(length=0, dtype=torch.float32)
    y, final = package.apply(**args, dt_softplus=True, return_final_states=True)
    assert y.shape == args["x"].shape and torch.equal(final, args["initial_states"])
    args = inputs(batch=0, dtype=torch.float32)
    assert package.apply(**args, dt_softplus=True).shape == args["x"].shape


@pytest.mark.parametrize("backend_name", ["torch", "c"])
@pytest.mark.parametrize("chunk_size", [None, 8])
def test_torch_compile_traces_the_op_with_fullgraph(backend, backend_name, chunk_size):
    """The core is one custom op with a fake kernel; the cost model's choice is plain Python."""
    backend(backend_name)
    args = inputs(dtype=torch.float32, h0=False)
    x = args["x"].clone().requires_grad_()

    def run(x):
        return ssmc.ops.mamba_chunk_scan_combined(x, args["dt"], args["A"], args["B"], args["C"], chunk_size,
                                                  D=args["D"], z=args["z"], dt_bias=args["dt_bias"], dt_softplus=True)
    y = torch.compile(run, backend="eager", fullgraph=True)(x)
    y.sum().backward()
    assert rel(y, reference(args)) < TOLERANCE[torch.float32]
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_hostile_layouts_and_dtypes(backend):
    """Non-contiguous views, int32 ids and float16 inputs are accepted and computed right."""
    backend("c")
    package = compile_package(spec_for(), "auto")
    args = inputs(dtype=torch.float64, length=20)
    views = dict(args)
    views["x"] = args["x"].transpose(1, 2).contiguous().transpose(1, 2)          # strides of (b, h, l, p)
    views["B"] = torch.cat([args["B"], args["B"]], dim=-1)[..., : args["B"].shape[-1]]   # a strided slice
    seq_idx = torch.tensor([[0] * 9 + [1] * 11, [0] * 20], dtype=torch.int32)
    y = package.apply(**views, chunk_size=8, seq_idx=seq_idx, dt_softplus=True)
    assert rel(y, reference(args, seq_idx=seq_idx.long())) < TOLERANCE[torch.float64]
    half = {k: (v.half() if v is not None and k != "A" else v) for k, v in args.items()}
    y = package.apply(**half, dt_softplus=True)
    assert y.dtype == torch.float16 and rel(y, reference(half)) < 3e-3


@pytest.mark.parametrize("bad, message", [
    (dict(seq_idx=torch.zeros(2, 21)), "seq_idx: expected an integer tensor"),
    (dict(seq_idx=torch.zeros(2, 20, dtype=torch.long)), r"seq_idx: expected an integer tensor of shape \(batch, len\)"),
    (dict(cu_seqlens=torch.tensor([0, 21])), "cu_seqlens: describes a packed batch of 1"),
    (dict(chunk_size=0), "chunk_size: expected a power of two"),
    (dict(initial_states=torch.zeros(2, 4, 3, 4)), r"initial_states: expected shape"),
    (dict(z=torch.zeros(2, 21, 4, 2)), "z: expected shape like x"),
    (dict(dt_limit=(0.0, float("nan"))), "dt_limit: expected"),
])
def test_bad_arguments_are_refused_before_any_kernel(backend, bad, message):
    backend("c")
    package = compile_package(spec_for(), "auto")
    args = {**inputs(dtype=torch.float32), **{k: v for k, v in bad.items() if k in ("initial_states", "z")}}
    options = {k: v for k, v in bad.items() if k not in ("initial_states", "z")}
    with pytest.raises(ssmc.ShapeError, match=message):
        package.apply(**args, dt_softplus=True, **options)


def test_first_use_from_two_threads(backend):
    """Two threads compiling and running one new spec at once get one package and the same results."""
    import threading
    backend("c")
    args = inputs(dtype=torch.float64, length=16)
    results, errors = [None, None], []

    def work(i):
        try:
            results[i] = compile_package(spec_for(name="m2_threads"), "auto").apply(**args, dt_softplus=True)
        except BaseException as exc:        # noqa: BLE001 -- reported below
            errors.append(exc)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert torch.equal(results[0], results[1]) and rel(results[0], reference(args)) < TOLERANCE[torch.float64]


# ---- decoding --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stepping_equals_the_whole_sequence(backend, backend_name, dtype):
    """`step` token by token from the initial state gives `apply`'s outputs and final state; the
    state is updated in place (one stage kernel, ssd_step, per backend)."""
    backend(backend_name)
    package = compile_package(spec_for(groups=2), "auto")
    args = inputs(dtype=dtype, length=9, D_shape="headdim")
    y_ref, final_ref = reference(args, return_final_states=True)
    state = args["initial_states"].to(torch.float64 if dtype == torch.float64 else torch.float32).clone()
    pointer = state.data_ptr()
    ys = [package.step(args["x"][:, t], args["dt"][:, t], args["A"], args["B"][:, t], args["C"][:, t], state,
                       D=args["D"], z=args["z"][:, t], dt_bias=args["dt_bias"], dt_softplus=True)
          for t in range(args["x"].shape[1])]
    assert state.data_ptr() == pointer
    tolerance = TOLERANCE[dtype]
    assert rel(torch.stack(ys, dim=1), y_ref) < tolerance
    assert rel(state, final_ref) < tolerance


def test_layer_step_continues_its_forward(backend):
    backend("c")
    torch.manual_seed(0)
    layer = ssmc.compile(spec_for(name="m2_step_layer"))(d_model=12)
    hidden, gate = torch.randn(2, 10, 12), torch.randn(2, 10, 12)
    with torch.no_grad():
        out, state = layer(hidden[:, :6], z=gate[:, :6], return_final_states=True)
        state = state.contiguous()
        stepped = [layer.step(hidden[:, t], state, z=gate[:, t]) for t in range(6, 10)]
        whole = layer(hidden, z=gate)
    assert rel(torch.cat([out, torch.stack(stepped, dim=1)], dim=1), whole) < 1e-5
    cache = layer.allocate_inference_cache(3)
    assert cache.shape == (3, 4, 3, 5) and cache.dtype == torch.float32 and not cache.any()


def test_step_refuses_a_state_it_could_not_update(backend):
    backend("c")
    package = compile_package(spec_for(), "auto")
    args = inputs(dtype=torch.float32, length=1)
    one = dict(x=args["x"][:, 0], dt=args["dt"][:, 0], A=args["A"], B=args["B"][:, 0], C=args["C"][:, 0])
    for state, message in ((torch.zeros(2, 4, 5, 3).transpose(-1, -2), "contiguous"),
                           (torch.zeros(2, 4, 3, 5, dtype=torch.bfloat16), "float32 or float64"),
                           (torch.zeros(2, 4, 3, 4), r"\(batch, heads, headdim, state\) = \(2, 4, 3, 5\)")):
        with pytest.raises(ssmc.ShapeError, match=message):
            package.step(**one, ssm_state=state)


def test_step_compiles_with_fullgraph(backend):
    backend("c")
    package = compile_package(spec_for(), "auto")
    args = inputs(dtype=torch.float32, length=3)
    state = package.allocate_inference_cache(2, 4)
    expected = package.allocate_inference_cache(2, 4)

    def decode(state):
        return [package.step(args["x"][:, t], args["dt"][:, t], args["A"], args["B"][:, t], args["C"][:, t], state,
                             dt_bias=args["dt_bias"], dt_softplus=True) for t in range(3)]
    compiled = torch.compile(decode, backend="eager", fullgraph=True)(state)
    eager = decode(expected)
    assert all(torch.equal(a, b) for a, b in zip(compiled, eager)) and torch.equal(state, expected)
