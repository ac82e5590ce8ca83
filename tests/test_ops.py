"""Functional ops: semantics of mamba_ssm's selective_scan_fn and S4D's LTI SSM, and clear errors."""
import pytest
import torch

import ssmc
from ssmc.ops import lti_ssm, selective_scan_fn
from ssmc.reference import lti_kernel_ref, selective_scan_ref

from conftest import rel_error, scan_inputs


@pytest.fixture(autouse=True)
def _torch_backend(backend):
    # the op layer is backend-independent; backends have their own test files
    backend("torch")


def test_selective_scan_fn_matches_reference_with_every_option():
    x = scan_inputs(dim=6, length=25, n_state=4, groups=3)
    out, last = selective_scan_fn(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], z=x["z"],
                                  delta_bias=x["delta_bias"], delta_softplus=True, return_last_state=True)
    ref, ref_last = selective_scan_ref(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], z=x["z"],
                                       delta_bias=x["delta_bias"], delta_softplus=True, return_last_state=True)
    assert rel_error(out, ref) < 1e-5 and rel_error(last, ref_last) < 1e-5


def test_selective_scan_fn_three_dim_B_and_constant_C():
    x = scan_inputs(dim=4, length=20, n_state=3)
    B = x["B"][:, 0]                      # (batch, N, len)
    C = torch.randn(4, 3)                 # (dim, N): not input-dependent
    out = selective_scan_fn(x["u"], x["delta"], x["A"], B, C)
    ref = selective_scan_ref(x["u"], x["delta"], x["A"], B, C)
    assert rel_error(out, ref) < 1e-5


def test_lti_ssm_kernel_and_output():
    x = scan_inputs(dim=3, length=50, n_state=4, complex_state=True, selective=())
    y = lti_ssm(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], schedule="conv")
    K = lti_kernel_ref(x["delta"], x["A"], x["B"], x["C"], 50)
    ref = torch.stack([torch.stack([torch.dot(K[h, :t + 1].flip(0), x["u"][b, h, :t + 1].double())
                                    for t in range(50)]) for b in range(2) for h in range(3)]).reshape(2, 3, 50)
    ref = ref + x["D"].double()[None, :, None] * x["u"].double()
    assert rel_error(y, ref) < 1e-5


@pytest.mark.parametrize("change, message", [
    (dict(u=torch.randn(2, 6)), r"u: expected shape \(batch, dim, len\), got \(2, 6\)"),
    (dict(delta=torch.randn(2, 6, 5)), r"delta: expected the shape of u"),
    (dict(A=torch.randn(5, 4)), r"A: expected \(6, N\): one row per channel of u"),
    (dict(B=torch.randn(2, 1, 3, 25)), r"B: expected \(2, groups, 4, 25\)"),
    (dict(B=torch.randn(2, 4, 4, 25)), r"groups dividing dim=6"),
    (dict(D=torch.randn(5)), r"D: expected \(6,\) = \(dim,\)"),
    (dict(z=torch.randn(2, 6, 3)), r"z: expected the shape of u"),
    (dict(u=torch.randint(0, 3, (2, 6, 25))), r"u: expected a real floating tensor"),
])
def test_bad_inputs_name_the_argument(change, message):
    x = scan_inputs(dim=6, length=25, n_state=4)
    x.update(change)
    with pytest.raises(ssmc.ShapeError, match=message):
        selective_scan_fn(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], z=x["z"], delta_softplus=True)


def test_complex_A_requires_complex_or_interleaved_B():
    x = scan_inputs(dim=2, length=5, n_state=2, complex_state=True)
    with pytest.raises(ssmc.ShapeError, match=r"B: with complex A, a real time-varying B must be mamba_ssm's "
                                              r"interleaved \(batch, \[groups,\] N, 2·len\) = \(\.\.\., 10\)"):
        selective_scan_fn(x["u"], x["delta"], x["A"], x["B"].real, x["C"])
    with pytest.raises(ssmc.ShapeError, match="C: expected a complex tensor"):
        selective_scan_fn(x["u"], x["delta"], x["A"], x["B"], torch.randn(2, 2))


def test_lti_ssm_rejects_time_varying_B_and_bad_discretization():
    x = scan_inputs(dim=2, length=5, n_state=2, complex_state=True, selective=())
    with pytest.raises(ssmc.ShapeError, match=r"B: expected \(H, N\)"):
        lti_ssm(x["u"], x["delta"], x["A"], torch.randn(2, 2, 5), x["C"])
    with pytest.raises(ssmc.SpecError, match="discretization must be one of"):
        lti_ssm(x["u"], x["delta"], x["A"], x["B"], x["C"], discretization="rk4")
