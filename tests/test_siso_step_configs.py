"""The Triton decoding step's tuning (templates/triton/siso/scan_step.py.jinja), under the interpreter:
every config the compiler planned for it (STEP_CONFIGS) runs the step equal to the float64 reference,
output NaN-poisoned; Triton's autotuner benchmarking the configs leaves the in-place state advanced once.
`ssmc tune`'s side of it is in test_tuning.py, the planner's pruning in test_tuning_space.py."""
import pytest
import torch

triton = pytest.importorskip("triton")

import ssmc  # noqa: E402
from ssmc.compiler import compile_package  # noqa: E402
from ssmc.reference import selective_scan_ref  # noqa: E402

from conftest import rel_error, scan_inputs  # noqa: E402

# name -> (spec, selective, groups, the reference's discretization); N 4 and 3 (padded to 4)
SPECS = {
    "mamba_groups": (ssmc.presets.mamba(d_state=4, groups=2, name="step_cfg_m"), ("dt", "B", "C"), 2, "mamba"),
    "complex_selective": (ssmc.SSM("step_cfg_cx", 3, A=ssmc.Diagonal(real=False), discretization=ssmc.ZOH(),
                                   selective=("dt", "B", "C"), dt_softplus=True, dt_bias=True, gate=True),
                          ("dt", "B", "C"), 1, "zoh"),
}
BATCH, DIM = 3, 12          # 12 channels: the last block of 8 is partly masked


def _case(name, seed=0):
    """(kernels, the step's kernel operands, the reference's arguments (length-1 sequences))."""
    spec, sel, groups, disc = SPECS[name]
    kernels = compile_package(spec, "scan").KERNELS.get("triton")
    flags = kernels.SCAN_FLAGS
    args = scan_inputs(batch=BATCH, dim=DIM, length=1, n_state=spec.d_state, groups=groups,
                       complex_state=spec.is_complex, selective=sel, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    h0 = torch.randn(BATCH, DIM, spec.d_state, dtype=torch.cfloat if spec.is_complex else torch.float32,
                     generator=gen)

    def parts(x):
        return (x.real.contiguous(), x.imag.contiguous()) if x.is_complex() else (x, None)

    A_re, A_im = parts(args["A"])
    B_re, B_im = parts(args["B"][..., 0] if "B" in sel else args["B"])
    C_re, C_im = parts(args["C"][..., 0] if "C" in sel else args["C"])
    operands = dict(u=args["u"][..., 0], delta=args["delta"][..., 0] if "dt" in sel else args["delta"],
                    dt_bias=args["delta_bias"] if flags["HAS_DT_BIAS"] else None, A_re=A_re, A_im=A_im,
                    B_re=B_re, B_im=B_im, C_re=C_re, C_im=C_im, D=args["D"] if flags["HAS_D"] else None,
                    z=args["z"][..., 0] if flags["HAS_Z"] else None)
    reference = dict(u=args["u"], delta=args["delta"], A=args["A"], B=args["B"], C=args["C"],
                     D=operands["D"], z=args["z"] if flags["HAS_Z"] else None, delta_bias=operands["dt_bias"],
                     delta_softplus=spec.dt_softplus, discretization=disc)
    return kernels, operands, reference, h0


def _state(h):
    """(h_re, h_im) kernel operands: fresh copies of a state."""
    if h.is_complex():
        return h.real.clone(), h.imag.clone()
    return h.clone(), None


def _joined(h_re, h_im):
    return h_re if h_im is None else torch.complex(h_re, h_im)


def _reference_steps(reference, h0, steps):
    """(y of the last step, the state) after `steps` steps of the same token from h0, in float64."""
    h = h0
    for _ in range(steps):
        y, h = selective_scan_ref(**reference, initial_state=h, return_last_state=True)
    return y[..., 0], h


@pytest.mark.parametrize("name", list(SPECS))
def test_every_planned_step_config_equals_the_reference(name):
    """Through the plain kernel, one launch per planned config (the autotuner's candidates): num_warps does
    not exist under the interpreter, the channel block does (1 to 256 channels, masked past dim)."""
    kernels, operands, reference, h0 = _case(name)
    spec = SPECS[name][0]
    assert kernels.STEP_CONFIGS and {c["BLOCK_D"] for c in kernels.STEP_CONFIGS} >= {8, 16, 256}
    y_ref, h_ref = _reference_steps(reference, h0.to(torch.complex128 if spec.is_complex else torch.float64), 1)
    for config in kernels.STEP_CONFIGS:
        h_re, h_im = _state(h0)
        y = kernels.scan_step_launch(**operands, h_re=h_re, h_im=h_im, config=kernels.step_config(config))
        assert rel_error(y, y_ref) < 1e-5, config
        assert rel_error(_joined(h_re, h_im), h_ref) < 1e-5, config


def test_a_config_that_was_not_planned_is_not_run():
    kernels, *_ = _case("mamba_groups")
    assert kernels.step_config(None) is None
    assert kernels.step_config({"BLOCK_D": 3, "num_warps": 1}) is None           # not a planned config
    first = kernels.STEP_CONFIGS[0]
    config = kernels.step_config(first)
    assert config.kwargs == {"BLOCK_D": first["BLOCK_D"]} and config.num_warps == first["num_warps"]


@pytest.mark.parametrize("name", list(SPECS))
def test_autotuning_leaves_the_state_advanced_once(monkeypatch, name):
    """The module's autotuner given every planned config (the interpreter keeps the first only) and a
    benchmark that runs each candidate twice: each benchmarked launch advances the state, and restore_value
    (h_re, and h_im where there is one; a real layer's None is skipped) puts it back, so two calls of
    scan_step advance it by exactly two steps. Without restore_value it would not be so."""
    kernels, operands, reference, h0 = _case(name)
    spec = SPECS[name][0]
    autotuner = kernels._scan_step_kernel
    assert autotuner.restore_value == ["h_re_ptr", "h_im_ptr"]
    everything = [kernels.step_config(c) for c in kernels.STEP_CONFIGS]
    monkeypatch.setattr(autotuner, "configs", everything)
    benchmarked = []

    def bench(kernel_call, quantiles):
        kernel_call()
        kernel_call()
        benchmarked.append(1)
        return [1.0 / len(benchmarked)] * len(quantiles)        # the last candidate wins

    monkeypatch.setattr(autotuner, "_do_bench", bench)
    monkeypatch.delitem(autotuner.__dict__, "do_bench", raising=False)
    wide = torch.complex128 if spec.is_complex else torch.float64
    _, h_one = _reference_steps(reference, h0.to(wide), 1)
    y_two, h_two = _reference_steps(reference, h0.to(wide), 2)

    def two_calls():
        monkeypatch.setattr(autotuner, "cache", {})
        h_re, h_im = _state(h0)
        kernels.scan_step(**operands, h_re=h_re, h_im=h_im)
        first = _joined(h_re, h_im).clone()
        monkeypatch.setattr(autotuner, "cache", {})             # tune again on the second call too
        y = kernels.scan_step(**operands, h_re=h_re, h_im=h_im)
        return first, _joined(h_re, h_im), y

    first, second, y = two_calls()
    candidates = len([c for c in kernels.STEP_CONFIGS if c["BLOCK_D"] <= triton.next_power_of_2(DIM)])
    assert candidates > 1 and len(benchmarked) == 2 * candidates    # pruned to the dim, benchmarked twice
    assert autotuner.best_config.kwargs["BLOCK_D"] <= triton.next_power_of_2(DIM)
    assert rel_error(first, h_one) < 1e-5
    assert rel_error(second, h_two) < 1e-5 and rel_error(y, y_two) < 1e-5
    # the control: without restore_value the benchmarked launches advance the state too
    monkeypatch.setattr(autotuner, "restore_value", [])
    first, _, _ = two_calls()
    assert rel_error(first, h_one) > 1e-3
