"""The generated PyTorch fallback against the float64 reference, on fresh random inputs."""
import pathlib

import pytest
import torch

import ssmc
from ssmc import templates
from ssmc.backends.torch import render_sources
from ssmc.compiler import compile_package, lower
from ssmc.reference import selective_scan_ref

from conftest import rel_error, scan_inputs

TOL = 1e-5


def _check(spec, inputs, discretization, complex_state, return_last_state=True):
    package = compile_package(spec)
    kwargs = {k: inputs[k] for k in ("D", "z", "delta_bias")
              if {"D": spec.skip_D, "z": spec.gate, "delta_bias": spec.dt_bias}[k]}
    y, state = package.apply(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
                             return_last_state=True, **kwargs)
    y_ref, state_ref = selective_scan_ref(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
                                          delta_softplus=spec.dt_softplus, return_last_state=True,
                                          discretization=discretization, **kwargs)
    assert rel_error(y, y_ref) < TOL
    assert rel_error(state, state_ref) < TOL


@pytest.mark.parametrize("gate", [True, False], ids=["gate", "nogate"])
@pytest.mark.parametrize("groups", [1, 2], ids=["G1", "G2"])
def test_mamba(backend, gate, groups):
    backend("torch")
    spec = ssmc.presets.mamba(d_state=8, gate=gate, groups=groups)
    _check(spec, scan_inputs(dim=6, length=70, n_state=8, groups=groups), "mamba", False)


@pytest.mark.parametrize("disc", ["zoh", "bilinear", "euler"])
@pytest.mark.parametrize("complex_state", [True, False], ids=["complex", "real"])
def test_lti_scan_and_conv_against_reference_and_each_other(backend, disc, complex_state):
    backend("torch")
    cls = {"zoh": ssmc.ZOH, "bilinear": ssmc.Bilinear, "euler": ssmc.Euler}[disc]
    inputs = scan_inputs(dim=4, length=90, n_state=5, complex_state=complex_state, selective=())
    outs = {}
    for schedule in ("scan", "conv"):
        spec = ssmc.SSM("lti", 5, A=ssmc.Diagonal(real=not complex_state), discretization=cls())
        outs[schedule] = compile_package(spec, schedule).apply(inputs["u"], inputs["delta"], inputs["A"], inputs["B"],
                                                     inputs["C"], D=inputs["D"])
        ref = selective_scan_ref(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
                                 D=inputs["D"], discretization=disc)
        assert rel_error(outs[schedule], ref) < 2e-5, schedule
    assert rel_error(outs["conv"], outs["scan"]) < 2e-5


def test_complex_selective(backend):
    backend("torch")
    spec = ssmc.SSM("cx", 4, A=ssmc.Diagonal(real=False), discretization=ssmc.MambaZOH(),
                    selective=("dt", "B", "C"), dt_softplus=True)
    _check(spec, scan_inputs(dim=5, length=40, n_state=4, complex_state=True), "mamba", True)


def test_custom_discretization_runs_the_users_formula(backend):
    backend("torch")
    spec = ssmc.SSM("cu", 3, discretization=ssmc.Custom(decay="(1 + dt*A/2)/(1 - dt*A/2)", input_scale="dt"),
                    selective=("dt", "B", "C"), dt_softplus=True, skip_D=False)
    inputs = scan_inputs(dim=4, length=30, n_state=3)
    fns = (lambda dt, A: (1 + dt * A / 2) / (1 - dt * A / 2), lambda dt, A: dt + 0 * A)
    _check(spec, inputs, fns, False)


def test_bfloat16_inputs_accumulate_in_float32(backend):
    backend("torch")
    spec = ssmc.presets.mamba(d_state=4)
    inputs = scan_inputs(dim=4, length=64, n_state=4, dtype=torch.bfloat16)
    package = compile_package(spec)
    y = package.apply(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], D=inputs["D"],
                      z=inputs["z"], delta_bias=inputs["delta_bias"])
    assert y.dtype == torch.bfloat16
    ref = selective_scan_ref(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], D=inputs["D"],
                             z=inputs["z"], delta_bias=inputs["delta_bias"], delta_softplus=True)
    assert rel_error(y, ref.double()) < 1e-2   # bfloat16 output rounding (8-bit mantissa)


def test_one_module_from_stage_templates_with_the_plan_as_constants():
    """kernels_torch.py is the stage templates' concatenation: the plan's flags are Python constants
    that the kernels test, and the templates hold no jinja control lines."""
    mamba = render_sources(lower(ssmc.presets.mamba()))["kernels_torch.py"]
    assert "IS_COMPLEX = False" in mamba and "HAS_Z = True" in mamba and "SELECTIVE_B = True" in mamba
    assert "def scan_step(" in mamba and "def vandermonde(" not in mamba
    s4d_conv = render_sources(lower(ssmc.presets.s4d(), "conv"))["kernels_torch.py"]
    assert "def vandermonde_bwd(" in s4d_conv and "def scan_fwd(" not in s4d_conv
    for source in (mamba, s4d_conv):
        compile(source, "kernels_torch.py", "exec")
    folder = pathlib.Path(templates.__file__).parent / "torch" / "siso"
    for path in sorted(folder.glob("*.jinja")):
        assert "{%" not in path.read_text(), path.name
