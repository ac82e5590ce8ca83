"""Backward through the generated Triton kernels, against the float64 reference's autograd.

Every gradient of `apply(..., return_last_state=True, initial_state=h0)` under the loss
Σ y·w + Σ Re(last_state·w_s) (w, w_s random) is compared with torch autograd through
`selective_scan_ref` in float64. CHECKPOINT_CHUNK = 8 over 20 steps: the backward recomputes three
chunks (8, 8, 4) from their checkpoints. The kernels run on CPU tensors in Triton's interpreter
(conftest sets TRITON_INTERPRET=1), so shapes stay tiny.
"""
import pytest
import torch

import ssmc
import ssmc.runtime.ops as runtime_ops
from ssmc.compiler import compile_package
from ssmc.reference import selective_scan_ref

from conftest import rel_error, scan_inputs

TOL = 1e-4            # float32 accumulation against float64, per gradient
TOL_BF16 = 1e-2       # a gradient returned in bfloat16 (8-bit mantissa, rounding ~2e-3 per element)
TOL_FP16 = 2e-3       # a gradient returned in float16 (11-bit mantissa, rounding ~5e-4 per element)
LENGTH = 20

CASES = {
    # name: (spec, scan_inputs arguments, reference discretization); compiled with schedule "scan"
    "mamba_groups2": (ssmc.presets.mamba(d_state=4, groups=2), dict(groups=2), "mamba"),
    "complex_selective": (ssmc.SSM("cx", 4, A=ssmc.Diagonal(real=False), discretization=ssmc.ZOH(),
                                   selective=("dt", "B", "C"), dt_softplus=True, dt_bias=True, gate=True),
                          dict(complex_state=True), "zoh"),
    "lti_scan_real": (ssmc.SSM("lr", 4, discretization=ssmc.ZOH(), dt_bias=True, dt_softplus=True),
                      dict(selective=()), "zoh"),
    "lti_scan_complex": (ssmc.SSM("lc", 4, A=ssmc.Diagonal(real=False), discretization=ssmc.Bilinear()),
                         dict(selective=(), complex_state=True), "bilinear"),
    # dt hoisted (time-invariant), B from the input, C fixed: a segment follows B's groups only
    "only_B_selective": (ssmc.SSM("ob", 3, discretization=ssmc.Euler(), selective=("B",), skip_D=False,
                                  dt_softplus=True, dt_bias=True), dict(selective=("B",), groups=2), "euler"),
    # the user's formula, differentiated by sympy (powers and quotients in the gradient blocks)
    "custom_discretization": (ssmc.SSM("cu", 3, discretization=ssmc.Custom(decay="1/(1 - dt*A)",
                                                                         input_scale="dt/(1 - dt*A)"),
                                       selective=("dt", "B", "C"), dt_softplus=True, skip_D=False),
                              dict(), (lambda dt, A: 1 / (1 - dt * A), lambda dt, A: dt / (1 - dt * A))),
}


@pytest.fixture(autouse=True)
def _three_chunks(backend, monkeypatch):
    backend("triton")
    monkeypatch.setattr(runtime_ops, "CHECKPOINT_CHUNK", 8)


def _optional(spec, inputs):
    return {k: inputs[k] for k, flag in (("D", spec.skip_D), ("z", spec.gate), ("delta_bias", spec.dt_bias)) if flag}


def _float64(x):
    return x.detach().to(torch.complex128 if x.is_complex() else torch.float64)


def _gradients(spec, inputs, discretization, h0=None, last_state=True, schedule="scan"):
    """[(name, Triton gradient, float64 reference gradient)] of every input tensor, the spec compiled
    with `schedule` (a selective spec has only the scan)."""
    optional = _optional(spec, inputs)
    names = ["u", "delta", "A", "B", "C", *optional] + (["initial_state"] if h0 is not None else [])
    values = [inputs[k] for k in ("u", "delta", "A", "B", "C")] + list(optional.values()) + (
        [h0] if h0 is not None else [])
    leaves = [v.detach().clone().requires_grad_() for v in values]
    ref_leaves = [_float64(v).requires_grad_() for v in values]

    def run(fn, tensors, **extra):
        kwargs = dict(zip(names[5:], tensors[5:]))
        return fn(*tensors[:5], **kwargs, return_last_state=last_state, **extra)

    out = run(compile_package(spec, schedule).apply, leaves)
    ref = run(selective_scan_ref, ref_leaves, delta_softplus=spec.dt_softplus, discretization=discretization)
    y, y_ref = (out[0], ref[0]) if last_state else (out, ref)
    assert y.dtype == inputs["u"].dtype
    assert rel_error(y, y_ref) < (TOL if y.dtype == torch.float32 else TOL_BF16)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.dtype)  # rounded alike for both
    loss, loss_ref = (y * w).sum(), (y_ref * w.double()).sum()
    if last_state:
        w_s = torch.randn(out[1].shape, dtype=torch.complex128 if out[1].is_complex() else torch.float64)
        loss = loss + (out[1] * w_s.to(out[1].dtype)).real.sum()
        loss_ref = loss_ref + (ref[1] * w_s).real.sum()
    loss.backward()
    loss_ref.backward()
    return [(name, leaf.grad, ref_leaf.grad) for name, leaf, ref_leaf in zip(names, leaves, ref_leaves)]


def _initial_state(spec, batch, dim, seed=2):
    gen = torch.Generator().manual_seed(seed)
    h0 = torch.randn(batch, dim, spec.d_state, generator=gen)
    return torch.complex(h0, torch.randn(batch, dim, spec.d_state, generator=gen)) if spec.is_complex else h0


@pytest.mark.parametrize("name", list(CASES))
def test_every_gradient_matches_the_reference(name):
    spec, arguments, discretization = CASES[name]
    inputs = scan_inputs(batch=2, dim=8, length=LENGTH, n_state=spec.d_state, seed=0, **arguments)
    for grad_name, grad, ref in _gradients(spec, inputs, discretization, h0=_initial_state(spec, 2, 8)):
        assert rel_error(grad, ref) < TOL, grad_name


def test_a_group_spanning_two_channel_blocks():
    """dim 12 in one group, channel blocks of 8 (the interpreter's config): two programs add into
    the same rows of grad_B and grad_C; no last state (the backward gets no state gradient)."""
    spec = ssmc.presets.mamba(d_state=4)
    inputs = scan_inputs(batch=2, dim=12, length=12, n_state=4, seed=3)
    for grad_name, grad, ref in _gradients(spec, inputs, "mamba", last_state=False):
        assert rel_error(grad, ref) < TOL, grad_name


def test_B_and_C_with_different_groups():
    """B in 3 groups, C in 2, over 12 channels: programs cover segments of gcd(4, 6) = 2 channels."""
    spec = ssmc.presets.mamba(d_state=3)
    inputs = scan_inputs(batch=2, dim=12, length=11, n_state=3, seed=8)
    gen = torch.Generator().manual_seed(9)
    inputs["B"], inputs["C"] = torch.randn(2, 3, 3, 11, generator=gen), torch.randn(2, 2, 3, 11, generator=gen)
    for grad_name, grad, ref in _gradients(spec, inputs, "mamba", h0=_initial_state(spec, 2, 12)):
        assert rel_error(grad, ref) < TOL, grad_name


def test_lti_conv_through_the_vandermonde_backward():
    spec = ssmc.SSM("lcv", 4, A=ssmc.Diagonal(real=False), discretization=ssmc.ZOH())
    inputs = scan_inputs(batch=2, dim=8, length=LENGTH, n_state=4, complex_state=True, selective=(), seed=4)
    for grad_name, grad, ref in _gradients(spec, inputs, "zoh", last_state=False, schedule="conv"):
        assert rel_error(grad, ref) < TOL, grad_name


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, TOL_BF16), (torch.float16, TOL_FP16)],
                         ids=["bf16", "fp16"])
def test_half_precision_inputs_accumulate_in_float32(dtype, tol):
    """u, delta and z in half precision, the rest float32. The reference runs on the same rounded
    values and both see the same (rounded) output gradient, so a float32 gradient keeps TOL; a
    gradient returned in u's dtype is rounded once, at the end."""
    spec = ssmc.presets.mamba(d_state=4, groups=2)
    inputs = scan_inputs(batch=2, dim=8, length=LENGTH, n_state=4, groups=2, seed=5)
    for key in ("u", "delta", "z"):
        inputs[key] = inputs[key].to(dtype)
    for grad_name, grad, ref in _gradients(spec, inputs, "mamba", h0=_initial_state(spec, 2, 8)):
        assert rel_error(grad, ref) < (tol if grad_name in ("u", "delta", "z") else TOL), grad_name


def test_float64_inputs_compute_in_float32():
    spec = CASES["complex_selective"][0]
    inputs = scan_inputs(batch=2, dim=4, length=12, n_state=4, complex_state=True, seed=6)
    inputs = {k: _float64(v) for k, v in inputs.items()}
    for grad_name, grad, ref in _gradients(spec, inputs, "zoh", h0=_float64(_initial_state(spec, 2, 4))):
        assert rel_error(grad, ref) < TOL, grad_name


def test_vandermonde_backward_loops_over_state_and_length_blocks():
    """N = 20 > BLOCK_N = 16 and len = 70 > BLOCK_L = 64: two state blocks (the second masked),
    two position blocks (the second masked), against autograd of the complex formula."""
    kernels = compile_package(ssmc.SSM("vb", 4, A=ssmc.Diagonal(real=False)), "conv").KERNELS.get("triton")
    dim, n_state, length = 3, 20, 70
    gen = torch.Generator().manual_seed(7)
    parts = [-0.01 - 0.1 * torch.rand(dim, n_state, generator=gen), torch.randn(dim, n_state, generator=gen),
             torch.randn(dim, n_state, generator=gen), torch.randn(dim, n_state, generator=gen)]
    grad_kernel = torch.randn(dim, length, generator=gen)
    grads = kernels.vandermonde_bwd(grad_kernel, *parts)
    leaves = [p.double().requires_grad_() for p in parts]
    log_decay, coeff = torch.complex(leaves[0], leaves[1]), torch.complex(leaves[2], leaves[3])
    positions = torch.arange(length, dtype=torch.float64)
    K = (coeff[..., None] * torch.exp(log_decay[..., None] * positions)).sum(1).real
    (K * grad_kernel.double()).sum().backward()
    for index, (grad, leaf) in enumerate(zip(grads, leaves)):
        assert grad.shape == (dim, n_state) and grad.dtype == torch.float32
        assert rel_error(grad, leaf.grad) < TOL, index
