"""Backward through the generated kernels: gradcheck in float64 on the PyTorch backend (the C and
Triton backends have their own backward tests), initial states, checkpoint recomputation, the
derived gradient blocks, and torch.compile without graph breaks."""

import pytest
import sympy
import torch

import ssmc
import ssmc.runtime.ops as runtime_ops
from ssmc.compiler import compile_package
from ssmc.ir.pass_manager import lower
from ssmc.ir.passes.backward import inline
from ssmc.reference import selective_scan_ref

from conftest import GRADIENT_SPECS, rel_error, scan_inputs

SPECS = GRADIENT_SPECS


def _float64_inputs(spec, selective, groups, length=11, seed=None):
    x = scan_inputs(batch=2, dim=4, length=length, n_state=spec.d_state, groups=groups,
                    complex_state=spec.is_complex, selective=selective, seed=seed)
    def to64(t):
        return t.to(torch.complex128 if t.is_complex() else torch.float64)
    x = {k: to64(v) for k, v in x.items()}
    h0 = torch.randn(2, 4, spec.d_state, dtype=torch.complex128 if spec.is_complex else torch.float64)
    optional = {k: x[k] for k, flag in (("D", spec.skip_D), ("z", spec.gate), ("delta_bias", spec.dt_bias)) if flag}
    return [x[k] for k in ("u", "delta", "A", "B", "C")], optional, h0


@pytest.mark.parametrize("name", sorted(SPECS))
def test_gradcheck_float64_with_initial_and_last_state(backend, monkeypatch, name):
    backend("torch")
    monkeypatch.setattr(runtime_ops, "CHECKPOINT_CHUNK", 4)      # 11 steps: three recomputed chunks
    spec, schedule, selective, groups = SPECS[name]
    package = compile_package(spec, schedule)
    main, optional, h0 = _float64_inputs(spec, selective, groups)
    keys = list(optional)

    def f(*tensors):
        rest = dict(zip(keys, tensors[5:-1]))
        return package.apply(*tensors[:5], **rest, return_last_state=True, initial_state=tensors[-1])

    inputs = tuple(t.requires_grad_() for t in main + list(optional.values()) + [h0])
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5)


def test_gradients_match_reference_autograd(backend, monkeypatch):
    backend("torch")
    monkeypatch.setattr(runtime_ops, "CHECKPOINT_CHUNK", 8)
    spec, schedule, selective, groups = SPECS["complex_selective"]
    main, optional, h0 = _float64_inputs(spec, selective, groups, length=30)
    leaves = [t.clone().requires_grad_() for t in main + list(optional.values()) + [h0]]
    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    keys = list(optional)
    y, last = compile_package(spec, schedule).apply(*leaves[:5], **dict(zip(keys, leaves[5:-1])),
                                                    return_last_state=True, initial_state=leaves[-1])
    y_ref, last_ref = selective_scan_ref(*ref_leaves[:5], **dict(zip(keys, ref_leaves[5:-1])),
                                         delta_softplus=True, discretization="zoh", return_last_state=True,
                                         initial_state=ref_leaves[-1])
    w_y, w_s = torch.randn_like(y), torch.randn_like(last)
    ((y * w_y).sum() + (last * w_s).real.sum()).backward()
    ((y_ref * w_y).sum() + (last_ref * w_s).real.sum()).backward()
    for mine, ref in zip(leaves, ref_leaves):
        assert rel_error(mine.grad, ref.grad) < 1e-10


def test_conv_schedule_gradcheck_through_the_vandermonde_kernel(backend):
    backend("torch")
    spec = ssmc.SSM("lc", 3, A=ssmc.Diagonal(real=False), discretization=ssmc.ZOH())
    main, optional, _ = _float64_inputs(spec, (), 1, length=9)
    package = compile_package(spec, "conv")
    inputs = tuple(t.requires_grad_() for t in main + [optional["D"]])
    assert torch.autograd.gradcheck(lambda *t: package.apply(*t[:5], D=t[5]), inputs, eps=1e-6, atol=1e-5)


def test_backward_keeps_checkpoints_not_states(backend, monkeypatch):
    """Saved for backward: the inputs plus (batch, dim, ceil(len/64), N) checkpoints."""
    backend("torch")
    spec = ssmc.presets.mamba(d_state=4, gate=False)
    x = scan_inputs(batch=2, dim=4, length=200, n_state=4)
    u = x["u"].requires_grad_()
    y = compile_package(spec).apply(u, x["delta"], x["A"], x["B"], x["C"], D=x["D"], delta_bias=x["delta_bias"])
    saved, stack, seen = [], [y.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        saved += [t for name in dir(fn) if name.startswith("_saved_") and isinstance(t := getattr(fn, name), torch.Tensor)]
        saved += list(getattr(fn, "saved_tensors", ()) or ())
        stack += [f for f, _ in fn.next_functions]
    largest = max(t.numel() for t in saved)
    assert largest < 2 * 4 * 200 * 4       # never (batch, dim, len, N)
    assert any(tuple(t.shape) == (2, 4, 4, 4) for t in saved)   # ceil(200 / 64) = 4 checkpoints


def test_gradient_blocks_come_from_sympy_differentiation():
    plan = lower(SPECS["custom_only_B"][0]).graph.of_kind(ssmc.ir.ops.Fused)[0].plan
    grads = inline(plan.grad_discretize_block)
    dt, A, g_decay, g_scale = sympy.symbols("dt A grad_decay grad_scale", real=True)
    expected_dt = g_decay * sympy.diff(1 / (1 - dt * A), dt) + g_scale * sympy.diff(dt / (1 - dt * A), dt)
    assert sympy.simplify(grads["grad_dt"] - expected_dt) == 0


def test_torch_compile_fullgraph(backend):
    """A generated Layer after an eager call, gradients included; fullgraph, so a graph break fails
    the test. (Inductor, and first calls with no eager warm-up: tests/test_torch_compile.py.)"""
    backend("torch")
    torch.manual_seed(0)
    layer = ssmc.compile(ssmc.presets.mamba(d_state=4, name="compiled_mamba"))(d_model=8)
    x, z = torch.randn(2, 12, 8), torch.randn(2, 12, 8)
    eager = layer(x, z)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")   # inductor: tests/test_torch_compile.py
    out = compiled(x, z)
    assert rel_error(out, eager) < 1e-6
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


def test_torch_compile_fullgraph_functional_ops_and_s4d(backend):
    backend("torch")
    from ssmc.nn import S4D
    layer = S4D(8, d_state=16, schedule="conv")
    u = torch.randn(2, 8, 32)
    eager, _ = layer(u)                      # first call compiles the kernels, eagerly
    compiled, _ = torch.compile(layer, fullgraph=True, backend="eager")(u)
    assert rel_error(compiled, eager) < 1e-6
    compiled.sum().backward()
    assert torch.isfinite(layer.kernel.log_dt.grad).all()
