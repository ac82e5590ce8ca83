"""Property tests over random specs: every valid spec compiles and matches the float64 reference on
every backend (the generated PyTorch code, the generated C, and the Triton kernels under the
interpreter), and the two schedules of a time-invariant spec agree.

Each backend draws its own examples; the sizes differ because the costs do: a new spec costs the C
backend a compiler run (about a second) and the interpreter about 8 ms per program and step, so
those two see fewer, shorter cases than the PyTorch backend."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ssmc
from ssmc.compiler import compile_package
from ssmc.reference import selective_scan_ref

from conftest import rel_error, scan_inputs

DISCRETIZATIONS = {"zoh": ssmc.ZOH, "bilinear": ssmc.Bilinear, "euler": ssmc.Euler, "mamba": ssmc.MambaZOH}


@st.composite
def specs(draw, max_length=40):
    selective = tuple(q for q in ("dt", "B", "C") if draw(st.booleans()))
    schedule = draw(st.sampled_from(("auto", "scan", "conv") if not selective else ("auto", "scan")))
    return dict(
        complex_state=draw(st.booleans()), disc=draw(st.sampled_from(sorted(DISCRETIZATIONS))),
        selective=selective, skip_D=draw(st.booleans()), gate=draw(st.booleans()),
        dt_softplus=draw(st.booleans()), dt_bias=draw(st.booleans()), schedule=schedule,
        n_state=draw(st.integers(1, 5)), length=draw(st.integers(1, max_length)),
        groups=draw(st.sampled_from((1, 3))) if ("B" in selective or "C" in selective) else 1,
        seed=draw(st.integers(0, 2**30)))


def check_against_reference(case):
    spec = ssmc.SSM("prop", case["n_state"], A=ssmc.Diagonal(real=not case["complex_state"]),
                    discretization=DISCRETIZATIONS[case["disc"]](), selective=case["selective"],
                    skip_D=case["skip_D"], gate=case["gate"], dt_softplus=case["dt_softplus"],
                    dt_bias=case["dt_bias"], groups=case["groups"])
    x = scan_inputs(dim=3, length=case["length"], n_state=case["n_state"], groups=case["groups"],
                    complex_state=case["complex_state"], selective=case["selective"], seed=case["seed"])
    optional = dict(D=x["D"] if spec.skip_D else None, z=x["z"] if spec.gate else None,
                    delta_bias=x["delta_bias"] if spec.dt_bias else None)
    y = compile_package(spec, case["schedule"]).apply(x["u"], x["delta"], x["A"], x["B"], x["C"], **optional)
    ref = selective_scan_ref(x["u"], x["delta"], x["A"], x["B"], x["C"], delta_softplus=spec.dt_softplus,
                             discretization=case["disc"], **optional)
    assert y.shape == ref.shape
    assert rel_error(y, ref) < 1e-4


_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@settings(max_examples=25, **_SETTINGS)
@given(case=specs())
def test_random_specs_match_reference_torch(case, backend):
    backend("torch")
    check_against_reference(case)


@settings(max_examples=12, **_SETTINGS)
@given(case=specs(max_length=40))
def test_random_specs_match_reference_c(case, backend):
    backend("c")
    check_against_reference(case)


@settings(max_examples=10, **_SETTINGS)
@given(case=specs(max_length=9))
def test_random_specs_match_reference_triton(case, backend):
    backend("triton")
    check_against_reference(case)


@pytest.mark.parametrize("bad", [dict(d_state=0), dict(selective=("dt", "X")), dict(groups=-1),
                                 dict(discretization="none"), dict(schedule="scan")])
def test_invalid_specs_never_reach_the_compiler(bad):
    with pytest.raises(ssmc.SpecError):
        ssmc.SSM(**{"name": "bad", "d_state": 2, **bad})
