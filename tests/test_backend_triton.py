"""The generated Triton kernels against the float64 reference, on fresh random inputs.

They run on CPU tensors in Triton's interpreter (conftest sets TRITON_INTERPRET=1 before anything
imports a kernel), so shapes stay tiny: a few programs and tens of time steps. Outputs come from
launchers that allocate them NaN-filled, so an element a kernel fails to write fails the check.
"""
import inspect

import pytest
import sympy
import torch

import ssmc
from ssmc.backends import triton as triton_backend
from ssmc.compiler import compile_package
from ssmc.reference import selective_scan_ref
from ssmc.runtime.calls import normalize_scan_args

from conftest import rel_error, scan_inputs

TOL = 1e-4            # float32 accumulation against float64
TOL_BF16 = 1e-2       # bfloat16 inputs and output: an 8-bit mantissa rounds at ~4e-3


def _run(spec, inputs, discretization, schedule="auto"):
    """(y, last state) of the Triton package (compiled under `schedule`) and of the reference."""
    package = compile_package(spec, schedule)
    kwargs = {k: inputs[k] for k in ("D", "z", "delta_bias")
              if {"D": spec.skip_D, "z": spec.gate, "delta_bias": spec.dt_bias}[k]}
    args = (inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"])
    out = package.apply(*args, return_last_state=True, **kwargs)
    ref = selective_scan_ref(*args, delta_softplus=spec.dt_softplus, return_last_state=True,
                             discretization=discretization, **kwargs)
    return out, ref


def _check(spec, inputs, discretization, schedule="auto"):
    (y, state), (y_ref, state_ref) = _run(spec, inputs, discretization, schedule)
    assert y.dtype == inputs["u"].dtype and y.shape == inputs["u"].shape
    assert rel_error(y, y_ref) < TOL
    assert rel_error(state, state_ref) < TOL


def _triton_kernels(spec, schedule="auto"):
    return compile_package(spec, schedule).KERNELS.get("triton")


@pytest.mark.parametrize("gate", [True, False], ids=["gate", "nogate"])
@pytest.mark.parametrize("groups,dim", [(1, 6), (2, 8), (2, 12)], ids=["G1-D6", "G2-D8", "G2-D12"])
def test_mamba(backend, gate, groups, dim):
    """D12 spans two channel blocks of 8, the second half masked, each mixing both groups."""
    backend("triton")
    spec = ssmc.presets.mamba(d_state=4, gate=gate, groups=groups)
    _check(spec, scan_inputs(batch=2, dim=dim, length=20, n_state=4, groups=groups), "mamba")


def test_mamba_state_size_not_a_power_of_two(backend):
    backend("triton")
    spec = ssmc.presets.mamba(d_state=5)
    _check(spec, scan_inputs(batch=2, dim=5, length=13, n_state=5), "mamba")


def test_complex_selective(backend):
    backend("triton")
    spec = ssmc.SSM("cx", 4, A=ssmc.Diagonal(real=False), discretization=ssmc.MambaZOH(),
                    selective=("dt", "B", "C"), dt_softplus=True)
    _check(spec, scan_inputs(batch=2, dim=5, length=16, n_state=4, complex_state=True), "mamba")


def test_partly_selective_hoists_the_step(backend):
    """dt time-invariant (bias and softplus computed once, before the loop), B from the input,
    C fixed, no skip."""
    backend("triton")
    spec = ssmc.SSM("partial", 4, discretization=ssmc.Euler(), selective=("B",), skip_D=False,
                    dt_softplus=True, dt_bias=True)
    _check(spec, scan_inputs(batch=2, dim=4, length=12, n_state=4, selective=("B",)), "euler")


def test_custom_discretization(backend):
    backend("triton")
    spec = ssmc.SSM("cu", 3, discretization=ssmc.Custom(decay="(1 + dt*A/2)/(1 - dt*A/2)", input_scale="dt"),
                    selective=("dt", "B", "C"), dt_softplus=True, skip_D=False)
    fns = (lambda dt, A: (1 + dt * A / 2) / (1 - dt * A / 2), lambda dt, A: dt + 0 * A)
    _check(spec, scan_inputs(batch=2, dim=4, length=12, n_state=3), fns)


@pytest.mark.parametrize("schedule", ["scan", "conv"])
@pytest.mark.parametrize("disc", ["zoh", "bilinear"])
@pytest.mark.parametrize("complex_state", [True, False], ids=["complex", "real"])
def test_lti(backend, schedule, disc, complex_state):
    backend("triton")
    cls = {"zoh": ssmc.ZOH, "bilinear": ssmc.Bilinear}[disc]
    spec = ssmc.SSM("s4d", 5, A=ssmc.Diagonal(real=not complex_state), discretization=cls())
    inputs = scan_inputs(batch=2, dim=4, length=24, n_state=5, complex_state=complex_state, selective=())
    args = (inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"])
    y = compile_package(spec, schedule).apply(*args, D=inputs["D"])
    ref = selective_scan_ref(*args, D=inputs["D"], discretization=disc)
    assert rel_error(y, ref) < TOL
    if schedule == "scan":
        _check(spec, inputs, disc, schedule)


def test_vandermonde_loops_over_state_and_length_blocks(backend):
    """N = 20 > BLOCK_N = 16 and len = 70 > BLOCK_L = 64 under the interpreter's default config:
    two state blocks (the second masked) and two position blocks (the second masked)."""
    backend("triton")
    kernels = _triton_kernels(ssmc.SSM("s4d", 5, A=ssmc.Diagonal(real=False)), "conv")
    dim, n_state, length = 3, 20, 70
    gen = torch.Generator().manual_seed(0)
    log_decay = torch.complex(-0.01 - 0.2 * torch.rand(dim, n_state, generator=gen),
                              torch.randn(dim, n_state, generator=gen))
    coeff = torch.randn(dim, n_state, dtype=torch.complex64, generator=gen)
    K = kernels.vandermonde(log_decay.real.contiguous(), log_decay.imag.contiguous(),
                            coeff.real.contiguous(), coeff.imag.contiguous(), length)
    positions = torch.arange(length, dtype=torch.float64)
    ref = (coeff.to(torch.complex128)[..., None]
           * torch.exp(log_decay.to(torch.complex128)[..., None] * positions)).sum(1).real
    assert K.shape == (dim, length) and K.dtype == torch.float32
    assert rel_error(K, ref) < TOL


def test_bfloat16_inputs_accumulate_in_float32(backend):
    backend("triton")
    spec = ssmc.presets.mamba(d_state=4)
    inputs = scan_inputs(batch=2, dim=4, length=16, n_state=4, dtype=torch.bfloat16)
    (y, state), (y_ref, state_ref) = _run(spec, inputs, "mamba")
    assert y.dtype == torch.bfloat16
    assert rel_error(y, y_ref) < TOL_BF16
    assert rel_error(state, state_ref) < TOL_BF16


def test_same_functions_as_the_torch_backend():
    for spec in (ssmc.presets.mamba(d_state=4), ssmc.SSM("s4d", 5, A=ssmc.Diagonal(real=False))):
        package = compile_package(spec)
        triton_kernels, torch_kernels = package.KERNELS.get("triton"), package.KERNELS.get("torch")
        for name in ("scan_fwd", "scan_bwd", "vandermonde", "vandermonde_bwd"):
            assert hasattr(triton_kernels, name) == hasattr(torch_kernels, name), name
            if hasattr(torch_kernels, name):
                assert (inspect.signature(getattr(triton_kernels, name))
                        == inspect.signature(getattr(torch_kernels, name))), name


def test_interpreter_keeps_one_config_and_gpu_prunes_by_shape(monkeypatch):
    kernels = _triton_kernels(ssmc.SSM("s4d", 5, A=ssmc.Diagonal(real=False)))
    for kernel in ("_scan_fwd_kernel", "_scan_bwd_kernel", "_vandermonde_kernel", "_vandermonde_bwd_kernel"):
        assert len(getattr(kernels, kernel).configs) == 1, kernel
    monkeypatch.setattr(kernels, "INTERPRETED", False)
    for planned in (kernels.SCAN_FWD_CONFIGS, kernels.SCAN_BWD_CONFIGS):
        configs = kernels._planned(planned)
        assert len(configs) == len(planned) > 1         # the compiler's plan (tests/test_tuning_space.py)
        # at the call, channel blocks stay within a segment (channels sharing their groups)
        prune = kernels._pruner(BLOCK_D=kernels._within_segment)
        assert {c.kwargs["BLOCK_D"] for c in prune(configs, {"seg": 6})} == {8}
        assert {c.kwargs["BLOCK_D"] for c in prune(configs, {"seg": 1536})} == {c["BLOCK_D"] for c in planned}
    assert kernels._segment(12, torch.empty(2, 3, 4, 5), torch.empty(2, 2, 4, 5)) == 2   # gcd(4, 6)


def test_outputs_are_empty_unless_poisoned_for_tests(monkeypatch):
    """Production outputs are torch.empty (no fill pass over memory); the tests' SSMC_POISON_OUTPUTS NaN-fills them."""
    kernels = compile_package(ssmc.presets.mamba(d_state=4)).KERNELS.get("triton")
    like = torch.zeros(1)
    assert torch.isnan(kernels._output(3, 4, like=like)).all()
    fills = []
    monkeypatch.setattr(torch, "full", lambda *args, **kwargs: fills.append(args))
    monkeypatch.setenv("SSMC_POISON_OUTPUTS", "0")
    assert kernels._output(3, 4, like=like, dtype=torch.bfloat16).dtype == torch.bfloat16 and not fills


def test_generated_source_is_readable_python():
    spec = ssmc.presets.mamba(d_state=4)
    from ssmc.ir.pass_manager import lower
    source = triton_backend.render_sources(lower(spec))["kernels_triton.py"]
    compile(source, "kernels_triton.py", "exec")
    assert source.startswith("# Generated by ssmc (triton backend) from spec 'mamba'")
    assert "{{" not in source and "{%" not in source
    assert "torch.full(" not in source.replace("torch.full(shape, float(\"nan\")", "")   # no fill but the poison
    assert "tl.exp2(A_re_log2e*dt)" in source           # log2(e) folded into A once, outside the loop
    assert "A_re_log2e = A_re * LOG2E" in source
    assert max(len(line) for line in source.splitlines()) <= 120


def _without_plan(source):
    """The module less its header and docstring and its printed plan section."""
    body = source[source.index('"""', source.index('"""') + 3):]
    start, stop = body.index("# -- the scan plan:"), body.index("# -- what the scan kernels share")
    return body[:start] + body[stop:]


def test_plan_flags_are_constexpr_arguments_not_template_branches():
    """Inductor-style templates: the kernels and launchers read the same for every plan (the flags are
    tl.constexpr arguments, an absent operand a None pointer); only the printed plan section (flags,
    tunables, the sympy blocks as helpers) differs between a real selective Mamba and a complex
    time-invariant S4D."""
    from ssmc.ir.pass_manager import lower
    mamba = triton_backend.render_sources(lower(ssmc.presets.mamba(d_state=4)))["kernels_triton.py"]
    s4d = triton_backend.render_sources(lower(ssmc.SSM("s4d", 5, A=ssmc.Diagonal(real=False)),
                                              "scan"))["kernels_triton.py"]
    assert _without_plan(mamba) == _without_plan(s4d)
    assert "IS_COMPLEX=False," in mamba and "IS_COMPLEX=True," in s4d
    for flag in ("IS_COMPLEX", "DT_VARIES", "B_VARIES", "C_VARIES", "HAS_DT_BIAS", "HAS_D", "HAS_Z"):
        assert f"{flag}: tl.constexpr" in mamba, flag
    # a real plan's blocks are printed in the kernels' pair naming, its imaginary parts 0.0 (the discretization
    # once, in _discretize_dt, which _discretize calls)
    assert "return decay_re, 0.0, scale_re, 0.0" in mamba


def test_templates_print_and_never_branch():
    """Jinja only prints in the Triton templates: no control statements (structure is constexpr
    branches in the kernels), and every file short enough to read."""
    import pathlib
    import ssmc.templates
    folder = pathlib.Path(ssmc.templates.__file__).parent / "triton" / "siso"
    files = sorted(folder.glob("*.py.jinja"))
    assert {f.name.split(".")[0] for f in files} >= {"prelude", "scan_fwd", "scan_bwd", "scan_step", "vandermonde",
                                                      "vandermonde_bwd"}
    for path in files:
        text = path.read_text()
        assert "{%" not in text and "{#" not in text, path.name
        assert len(text.splitlines()) <= 250, path.name


def test_fold_exp2():
    A, dt, gtmp0 = (sympy.Symbol(name, real=True) for name in ("A", "dt", "gtmp0"))
    block, used = triton_backend.fold_exp2((("decay", sympy.exp(A * dt)), ("g", sympy.exp(dt))), "A")
    assert used
    printer = triton_backend._Printer()
    assert [printer.doprint(expr) for _, expr in block] == ["tl.exp2(A_log2e*dt)", "tl.exp(dt)"]
    _, used = triton_backend.fold_exp2((("decay", sympy.exp(A + dt)),), "A")
    assert not used
    # through a common subexpression (as the derived gradient blocks have them)
    block, used = triton_backend.fold_exp2((("gtmp0", A * dt), ("g", 2 * sympy.exp(gtmp0))), "A")
    assert used and printer.doprint(block[1][1]) == "2.0*tl.exp2(A_log2e*dt)"



def test_the_decay_is_exp_only_for_exp_of_dt_times_A():
    """DECAY_IS_EXP lets the time-parallel backward take a·h_{t-1} as h_t - b_t: only for exp(dt·A)."""
    A, dt, gtmp0 = (sympy.Symbol(name, real=True) for name in ("A_re_log2e", "dt", "gtmp0"))
    exp2 = triton_backend.exp2
    real, complex_plan = type("Plan", (), {"complex": False}), type("Plan", (), {"complex": True})
    assert triton_backend.decay_is_exp((("decay_re", exp2(A * dt)), ("scale_re", dt)), real)
    assert triton_backend.decay_is_exp((("gtmp0", A * dt), ("decay_re", exp2(gtmp0))), real)   # through a temporary
    assert not triton_backend.decay_is_exp((("decay_re", exp2(A * dt)),), complex_plan)      # no rotation
    A_im = sympy.Symbol("A_im", real=True)
    half = sympy.sin(A_im * dt / 2)     # complex ZOH as the backend prints it: cos and sin by the half angle
    rotated = (("decay_re", exp2(A * dt) * (1 - 2 * half ** 2)),
               ("decay_im", 2 * exp2(A * dt) * half * sympy.cos(A_im * dt / 2)))
    assert triton_backend.decay_is_exp(rotated, complex_plan)
    assert not triton_backend.decay_is_exp((rotated[0], ("decay_im", -rotated[1][1])), complex_plan)
    assert not triton_backend.decay_is_exp((("decay_re", 1 + A * dt),), real)                  # Euler
    assert not triton_backend.decay_is_exp((("decay_re", exp2(2 * A * dt)),), real)
    assert not triton_backend.decay_is_exp((("decay_re", 2 * exp2(A * dt)),), real)
    flags = {name: compile_package(spec, "scan").KERNELS.get("triton").DECAY_IS_EXP
             for name, spec in (("mamba", ssmc.presets.mamba(d_state=4)),
                                ("bilinear", ssmc.SSM("bl", 4, discretization=ssmc.Bilinear())),
                                ("zoh_complex", ssmc.SSM("zc", 4, A=ssmc.Diagonal(real=False))))}
    assert flags == {"mamba": True, "bilinear": False, "zoh_complex": True}


def test_an_epilogue_nonlinear_in_y_keeps_the_backward_sequential(monkeypatch):
    """The time-parallel backward takes y's gradient before the states' readout: right only when out is linear in
    y (a skip and a gate are); another epilogue (no spec writes one yet) runs the sequential backward."""
    y, z, D, u = (sympy.Symbol(name, real=True) for name in ("y", "z", "D", "u"))
    plan = type("Plan", (), {})
    plan.epilogue_block = (("tmp0", y + D * u), ("out", sympy.Symbol("tmp0", real=True) * z))
    assert triton_backend.epilogue_linear_in_y(plan)
    plan.epilogue_block = (("out", sympy.tanh(y) * z),)
    assert not triton_backend.epilogue_linear_in_y(plan)
    plan.epilogue_block = (("out", D * u),)
    assert triton_backend.epilogue_linear_in_y(plan)
    kernels = compile_package(ssmc.presets.mamba(d_state=4), "scan").KERNELS.get("triton")
    assert kernels.EPILOGUE_LINEAR_IN_Y and kernels.time_parallel_fits(4, 64, backward=True)
    monkeypatch.setattr(kernels, "EPILOGUE_LINEAR_IN_Y", False)
    monkeypatch.setattr(kernels, "PREFERRED", "time_parallel")
    assert not kernels.time_parallel_fits(4, 64, backward=True)
    assert kernels.choose_schedule(2048, 4, 64, backward=True) == "sequential"
    assert kernels.choose_schedule(2048, 4, 64) == "time_parallel"


def test_the_epilogue_gradient_given_y_reuses_it():
    """The time-parallel backward's second half of the epilogue's VJP takes grad_y (from before the states'
    loop) as an argument: the same gradients, and the gate's silu(z)·grad_out is not computed again."""
    from ssmc.backends.render import fused_plans
    from ssmc.ir.pass_manager import lower
    block = fused_plans(lower(ssmc.presets.mamba(d_state=4)))["scan"].grad_epilogue_block
    full = triton_backend.inline_block(block)
    inlined = triton_backend.inline_block(triton_backend.grad_of_epilogue_given_y(block))
    given = {name: inlined[name] for name in ("grad_u", "grad_D", "grad_z")}
    grad_y = sympy.Symbol("grad_y")
    for name, expr in given.items():
        assert sympy.simplify(expr.subs(grad_y, full["grad_y"]) - full[name]) == 0, name
    silu_of_z = [e for e in sympy.preorder_traversal(full["grad_y"]) if isinstance(e, sympy.Function)]
    assert silu_of_z and not any(e in silu_of_z for expr in given.values() for e in sympy.preorder_traversal(expr))
    assert grad_y in given["grad_u"].free_symbols and grad_y in given["grad_D"].free_symbols


def test_checkpoints_and_initial_state(backend):
    """scan_fwd(..., h0, chunk=4) over 10 steps: checkpoints are the states entering steps 0, 4, 8
    (the first is h0), against the reference run on prefixes."""
    backend("triton")
    spec = ssmc.SSM("ck", 4, A=ssmc.Diagonal(real=False), discretization=ssmc.MambaZOH(),
                    selective=("dt", "B", "C"), dt_softplus=True, skip_D=False)
    kernels = _triton_kernels(spec)
    x = scan_inputs(batch=2, dim=5, length=10, n_state=4, complex_state=True, seed=0)
    h0 = torch.complex(torch.randn(2, 5, 4), torch.randn(2, 5, 4))
    args = normalize_scan_args(compile_package(spec).SIGNATURE, x["u"], x["delta"], x["A"], x["B"], x["C"])
    operands = [args[k] for k in ("u", "delta", "dt_bias", "A_re", "A_im", "B_re", "B_im", "C_re", "C_im", "D", "z")]
    out, state_re, state_im, ckpt_re, ckpt_im = kernels.scan_fwd(*operands, h0.real.contiguous(),
                                                                 h0.imag.contiguous(), chunk=4)
    assert ckpt_re.shape == ckpt_im.shape == (2, 5, 3, 4)
    for index, start in enumerate((0, 4, 8)):
        expected = h0 if start == 0 else selective_scan_ref(
            x["u"][..., :start], x["delta"][..., :start], x["A"], x["B"][..., :start], x["C"][..., :start],
            delta_softplus=True, return_last_state=True, initial_state=h0)[1]
        assert rel_error(torch.complex(ckpt_re[:, :, index], ckpt_im[:, :, index]), expected) < TOL, start
    y_ref, last_ref = selective_scan_ref(x["u"], x["delta"], x["A"], x["B"], x["C"], delta_softplus=True,
                                         return_last_state=True, initial_state=h0)
    assert rel_error(out, y_ref) < TOL and rel_error(torch.complex(state_re, state_im), last_ref) < TOL
    no_checkpoints = kernels.scan_fwd(*operands, h0.real.contiguous(), h0.imag.contiguous(), chunk=0)
    assert no_checkpoints[3] is None and no_checkpoints[4] is None
    assert torch.equal(no_checkpoints[0], out)
