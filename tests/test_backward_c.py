"""Backward through the generated C kernels: gradcheck in float64 (the `_double` kernels) with
initial and last states and several recomputed checkpoint chunks, float32 gradients against the
PyTorch backend's, the Vandermonde kernel's backward, a reverse-direction plan, and the memory of
the backward (checkpoints, never every state)."""
import dataclasses
import importlib.util
import os

import pytest
import torch

import ssmc
import ssmc.runtime.ops as runtime_ops
from ssmc.compiler import compile_package
from ssmc.reference import selective_scan_ref
from ssmc.runtime.backend import c_compiler

from conftest import GRADIENT_SPECS, rel_error, scan_inputs

# Without a C compiler the runtime falls back to the PyTorch backend, so the C tests have nothing to
# run; CI has gcc, and there a missing compiler is a failure, never a skip.
pytestmark = pytest.mark.skipif(c_compiler() is None and not os.environ.get("CI"), reason="no C compiler")

SPECS = GRADIENT_SPECS


@pytest.fixture
def one_thread():
    """gradcheck's thousands of calls on tiny tensors: one thread (torch's FFT and a parallel region
    cost far more than the work there, the more so on shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def threaded(monkeypatch):
    """The C kernels on every thread even for small tensors (the partial sums of the backward
    reduce across threads): `threaded(package)`."""
    def force(package):
        monkeypatch.setattr(package.KERNELS.get("c"), "SERIAL_WORK", 0)
    return force


def _inputs(spec, selective, groups, dtype, batch=2, dim=4, length=11, n_state=None, seed=None):
    n_state = n_state or spec.d_state
    x = scan_inputs(batch=batch, dim=dim, length=length, n_state=n_state, groups=groups,
                    complex_state=spec.is_complex, selective=selective, seed=seed)
    complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    x = {k: v.to(complex_dtype if v.is_complex() else dtype) for k, v in x.items()}
    h0 = torch.randn(batch, dim, n_state, dtype=complex_dtype if spec.is_complex else dtype)
    optional = {k: x[k] for k, flag in (("D", spec.skip_D), ("z", spec.gate), ("delta_bias", spec.dt_bias)) if flag}
    return [x[k] for k in ("u", "delta", "A", "B", "C")], optional, h0


def _apply(package, keys):
    def f(*tensors):
        rest = dict(zip(keys, tensors[5:-1]))
        return package.apply(*tensors[:5], **rest, return_last_state=True, initial_state=tensors[-1])
    return f


@pytest.mark.parametrize("name", sorted(SPECS))
def test_gradcheck_float64_with_initial_and_last_state(backend, monkeypatch, one_thread, name):
    backend("c")
    monkeypatch.setattr(runtime_ops, "CHECKPOINT_CHUNK", 4)      # 11 steps: three recomputed chunks
    spec, schedule, selective, groups = SPECS[name]
    main, optional, h0 = _inputs(spec, selective, groups, torch.float64)
    inputs = tuple(t.requires_grad_() for t in main + list(optional.values()) + [h0])
    assert torch.autograd.gradcheck(_apply(compile_package(spec, schedule), list(optional)), inputs, eps=1e-6,
                                    atol=1e-5)


def test_conv_schedule_gradcheck_through_the_vandermonde_kernel(backend, one_thread):
    backend("c")
    spec = ssmc.SSM("lc", 3, A=ssmc.Diagonal(real=False), discretization=ssmc.ZOH())
    main, optional, _ = _inputs(spec, (), 1, torch.float64, length=9)
    package = compile_package(spec, "conv")
    inputs = tuple(t.requires_grad_() for t in main + [optional["D"]])
    assert torch.autograd.gradcheck(lambda *t: package.apply(*t[:5], D=t[5]), inputs, eps=1e-6, atol=1e-5)


def test_float64_forward_is_computed_in_double(backend):
    backend("c")
    spec = ssmc.presets.mamba(d_state=4)
    main, optional, h0 = _inputs(spec, ("dt", "B", "C"), 1, torch.float64, dim=19, length=70)
    y, last = compile_package(spec).apply(*main, **optional, return_last_state=True, initial_state=h0)
    ref, ref_last = selective_scan_ref(*main, **optional, delta_softplus=True, return_last_state=True,
                                       initial_state=h0)
    assert y.dtype == torch.float64
    assert rel_error(y, ref) < 1e-12 and rel_error(last, ref_last) < 1e-12


FLOAT32_CASES = {
    # name: (spec, schedule, selective, groups, state size of the inputs (None: the spec's))
    # channels off the 16-lane grid (19 per group), a partial last chunk, several chunks
    "mamba_groups": (ssmc.presets.mamba(d_state=8, groups=2), "auto", ("dt", "B", "C"), 2, None),
    # the generic path: a state size other than the spec's
    "mamba_other_N": (ssmc.presets.mamba(d_state=8, gate=False), "auto", ("dt", "B", "C"), 1, 5),
    "complex_selective": SPECS["complex_selective"] + (None,),
    "lti_complex_bilinear": SPECS["lti_complex_bilinear"] + (None,),
    "lti_real_zoh_bias": SPECS["lti_real_zoh_bias"] + (None,),
    "only_dt_complex": (ssmc.SSM("od", 3, A=ssmc.Diagonal(real=False), discretization=ssmc.ZOH(), selective=("dt",),
                                 dt_bias=True, dt_softplus=True), "auto", ("dt",), 1, None),
    "only_C_real": (ssmc.SSM("oc", 3, discretization=ssmc.ZOH(), selective=("C",)), "auto", ("C",), 1, None),
}


@pytest.mark.parametrize("name", sorted(FLOAT32_CASES))
def test_float32_gradients_match_torch_backend(backend, monkeypatch, threaded, name):
    monkeypatch.setattr(runtime_ops, "CHECKPOINT_CHUNK", 16)     # 70 steps: 5 chunks, the last partial
    spec, schedule, selective, groups, n_state = FLOAT32_CASES[name]
    main, optional, h0 = _inputs(spec, selective, groups, torch.float32, dim=19 * groups, length=70,
                                 n_state=n_state)
    package = compile_package(spec, schedule)
    threaded(package)
    weights = None
    grads = {}
    for which in ("c", "torch"):
        backend(which)
        leaves = [t.detach().clone().requires_grad_() for t in main + list(optional.values()) + [h0]]
        y, last = _apply(package, list(optional))(*leaves)
        if weights is None:
            weights = torch.randn_like(y), torch.randn_like(last)
        ((y * weights[0]).sum() + (last * weights[1]).real.sum()).backward()
        grads[which] = [leaf.grad for leaf in leaves]
    for index, (mine, ref) in enumerate(zip(grads["c"], grads["torch"])):
        assert mine.dtype == ref.dtype and mine.shape == ref.shape
        assert rel_error(mine, ref) < 2e-4, index


def test_checkpoints_are_the_states_entering_each_chunk(backend):
    """scan_fwd(chunk=k) against the torch backend's: same output, last state and checkpoints."""
    spec = ssmc.presets.mamba(d_state=4, gate=True)
    package = compile_package(spec)
    x = scan_inputs(batch=2, dim=18, length=37, n_state=4)
    from ssmc.runtime.calls import normalize_initial_state, normalize_scan_args
    args = normalize_scan_args(package.SIGNATURE, x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"],
                               x["delta_bias"])
    h0 = normalize_initial_state(package.SIGNATURE, torch.randn(2, 18, 4), x["u"], x["A"])
    mine = package.KERNELS.get("c").scan_fwd(**args, h0_re=h0[0], h0_im=h0[1], chunk=8)
    ref = package.KERNELS.get("torch").scan_fwd(**args, h0_re=h0[0], h0_im=h0[1], chunk=8)
    assert mine[3].shape == (2, 18, 5, 4) and mine[2] is None and mine[4] is None
    for a, b in zip(mine, ref):
        if a is not None:
            assert rel_error(a, b) < 1e-5
    assert torch.equal(mine[3][:, :, 0], h0[0])


def test_backward_keeps_checkpoints_not_states(backend):
    """Saved for backward: the inputs plus (batch, dim, ceil(len/64), N) checkpoints."""
    backend("c")
    spec = ssmc.presets.mamba(d_state=4, gate=False)
    x = scan_inputs(batch=2, dim=4, length=200, n_state=4)
    u = x["u"].requires_grad_()
    packed = []

    def pack(t):
        packed.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = compile_package(spec).apply(u, x["delta"], x["A"], x["B"], x["C"], D=x["D"], delta_bias=x["delta_bias"])
    assert packed and max(t.numel() for t in packed) < 2 * 4 * 200 * 4       # never (batch, dim, len, N)
    assert any(tuple(t.shape) == (2, 4, 4, 4) for t in packed)              # ceil(200 / 64) = 4 checkpoints
    y.sum().backward()
    assert torch.isfinite(u.grad).all()


def test_vandermonde_backward_matches_torch_backend():
    spec = ssmc.SSM("s4d", 6, A=ssmc.Diagonal(real=False), discretization=ssmc.ZOH())
    package = compile_package(spec, "conv")
    gen = torch.Generator().manual_seed(2)
    dim, n_state, length = 5, 6, 700
    args = (-0.05 * torch.rand(dim, n_state, generator=gen), 0.5 * torch.randn(dim, n_state, generator=gen),
            torch.randn(dim, n_state, generator=gen), torch.randn(dim, n_state, generator=gen))
    grad_kernel = torch.randn(dim, length, generator=gen)
    for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-12)):
        cast = [a.to(dtype) for a in args]
        mine = package.KERNELS.get("c").vandermonde_bwd(grad_kernel.to(dtype), *cast)
        ref = package.KERNELS.get("torch").vandermonde_bwd(grad_kernel.double(), *[a.double() for a in args])
        for a, b in zip(mine, ref):
            assert a.dtype == dtype and rel_error(a, b) < tol


def test_reverse_direction_backward(tmp_path, monkeypatch):
    """A plan scanning from the last step back: its gradients are those of the forward plan on
    time-flipped inputs, flipped back."""
    from ssmc.backends import c
    from ssmc.ir.pass_manager import lower
    from ssmc.runtime.calls import ScanSignature, normalize_scan_args

    spec = ssmc.presets.mamba(d_state=4, gate=True)
    lowered = lower(spec)
    plans = c.fused_plans(lowered)
    modules = {}
    for direction in ("forward", "reverse"):
        chosen = {"scan": dataclasses.replace(plans["scan"], direction=direction)}
        monkeypatch.setattr(c, "fused_plans", lambda lowered, chosen=chosen: chosen)
        folder = tmp_path / direction
        folder.mkdir()
        for name, text in c.render_sources(lowered).items():
            (folder / name).write_text(text)
        module_spec = importlib.util.spec_from_file_location(f"{direction}_kernels_c", folder / "kernels_c.py")
        modules[direction] = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(modules[direction])

    x = scan_inputs(batch=2, dim=18, length=30, n_state=4)
    signature = ScanSignature(complex=False, selective_dt=True, selective_B=True, selective_C=True,
                              has_dt_bias=True, has_D=True, has_z=True)
    flip = dict(x, **{k: x[k].flip(-1) for k in ("u", "delta", "B", "C", "z")})
    grad_out, grad_state = torch.randn(2, 18, 30), torch.randn(2, 18, 4)
    results = {}
    for direction, inputs, g in (("reverse", x, grad_out), ("forward", flip, grad_out.flip(-1))):
        args = normalize_scan_args(signature, *(inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z",
                                                                     "delta_bias")))
        module = modules[direction]
        out, state, _, ckpt, _ = module.scan_fwd(**args, chunk=8)
        operands = module._TABLES["scan_fwd"].input_names[:11]       # u .. z, in the kernel's order
        grads = module.scan_bwd(g, grad_state, None, *(args[k] for k in operands), ckpt, None, 8)
        results[direction] = (out, state, grads)
    out, state, grads = results["reverse"]
    out_f, state_f, grads_f = results["forward"]
    assert rel_error(out, out_f.flip(-1)) < 1e-5 and rel_error(state, state_f) < 1e-5
    time_varying = {0, 1, 5, 7, 10}                    # u, delta, B, C, z
    for index, (a, b) in enumerate(zip(grads, grads_f)):
        if a is None:
            assert b is None
            continue
        assert rel_error(a, b.flip(-1) if index in time_varying else b) < 1e-4, modules["forward"]._TABLES["scan_bwd"].output_names[index]
