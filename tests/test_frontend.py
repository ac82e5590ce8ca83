"""The user-facing layers and ops at their edges: clear errors in the caller's layout, empty inputs,
and the compatibility extensions (mamba_ssm's interleaved complex B/C, initial and final states,
S4D's kernel), each against the float64 reference on fresh random inputs."""
import math
import os

import pytest
import torch

import ssmc
from ssmc import ops
from ssmc.nn import S4D, Mamba
from ssmc.reference import lti_kernel_ref, selective_scan_ref

from conftest import rel_error, scan_inputs

MAMBA_SPEC = ssmc.presets.mamba(d_state=4, name="fe_mamba")
LTI_SPEC = ssmc.SSM("fe_lti", 3, A=ssmc.Diagonal(real=False), discretization=ssmc.ZOH(), skip_D=True)


@pytest.fixture(autouse=True)
def _torch_backend(backend):
    # the layers and ops are backend-independent; each backend has its own test files
    backend("torch")


def grads(outputs, inputs):
    """d(Σ w·out)/d(inputs) for fixed random weights w (the same for a float32 output and its float64
    reference), so that every output element counts; zeros where an input does not reach the loss."""
    gen = torch.Generator().manual_seed(123)
    loss = 0
    for o in outputs:
        o = torch.view_as_real(o) if o.is_complex() else o
        loss = loss + (o * torch.randn(o.shape, dtype=torch.float64, generator=gen).to(o.dtype)).sum()
    found = torch.autograd.grad(loss, inputs, allow_unused=True) if loss.requires_grad else [None] * len(inputs)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(found, inputs)]


# -- item 19: errors name the argument and speak the caller's layout ----------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(d_model=0), r"d_model: expected an int >= 1, got 0"),
    (dict(d_model=-3), r"d_model: expected an int >= 1, got -3"),
    (dict(d_model=8, init="bogus"), r"init: expected one of 'lin', 'inv', got 'bogus'"),
    (dict(d_model=8, dt_min=0.1, dt_max=0.01), r"dt_min, dt_max: expected dt_min <= dt_max"),
    (dict(d_model=8, dt_min=0.0), r"dt_min: expected a number > 0"),
    (dict(d_model=8, dt_rank=0), r"dt_rank: expected an int >= 1, got 0"),
])
def test_generated_layer_constructor_errors(kwargs, message):
    with pytest.raises(ssmc.SpecError, match=message):
        ssmc.compile(MAMBA_SPEC)(**kwargs)


def test_generated_layer_input_errors_use_batch_len_d_model():
    layer = ssmc.compile(MAMBA_SPEC)(d_model=8)
    x, z = torch.randn(2, 9, 8), torch.randn(2, 9, 8)
    with pytest.raises(ssmc.ShapeError, match=r"x: expected shape \(batch, len, d_model=8\), got \(2, 8\)"):
        layer(torch.randn(2, 8), z)
    with pytest.raises(ssmc.ShapeError, match=r"x: expected shape \(batch, len, d_model=8\), got \(2, 8, 9\)"):
        layer(x.transpose(1, 2), z)
    with pytest.raises(ssmc.ShapeError, match=r"z: this layer is gated, expected a tensor of shape "
                                              r"\(batch=2, len=9, d_model=8\), got None"):
        layer(x)
    with pytest.raises(ssmc.ShapeError, match=r"z: expected shape \(batch=2, len=9, d_model=8\), got \(2, 8, 9\)"):
        layer(x, z.transpose(1, 2))
    with pytest.raises(ssmc.ShapeError, match=r"x: expected a real floating tensor"):
        layer(x.long(), z)
    with pytest.raises(ssmc.ShapeError, match=r"initial_state: expected shape \(batch=2, d_model=8, N=4\), "
                                              r"got \(2, 4, 8\)"):
        layer(x, z, initial_state=torch.randn(2, 4, 8))
    ungated = ssmc.compile(LTI_SPEC)(d_model=8)
    with pytest.raises(ssmc.ShapeError, match=r"z: this layer has no gate, expected None"):
        ungated(x, z)


@pytest.mark.parametrize("kwargs, message", [
    (dict(d_model=0), r"d_model: expected an int >= 1, got 0"),
    (dict(d_model=8, d_state=0), r"d_state: expected an int >= 1, got 0"),
    (dict(d_model=8, d_state=-4), r"d_state: expected an int >= 1, got -4"),
    (dict(d_model=8, d_conv=0), r"d_conv: expected an int >= 1, got 0"),
    (dict(d_model=8, expand=0), r"expand: expected a number > 0, got 0"),
    (dict(d_model=8, expand=0.01), r"expand: expected expand \* d_model >= 1"),
    (dict(d_model=8, dt_rank=0), r"dt_rank: expected an int >= 1, got 0"),
    (dict(d_model=8, dt_min=0.5, dt_max=0.1), r"dt_min, dt_max: expected dt_min <= dt_max"),
    (dict(d_model=8, dt_init="bogus"), r"dt_init: expected one of 'constant', 'random', got 'bogus'"),
    (dict(d_model=8, dt_scale=-1.0), r"dt_scale: expected a number > 0"),
])
def test_mamba_constructor_errors(kwargs, message):
    with pytest.raises(ssmc.SpecError, match=message):
        Mamba(**kwargs)


def test_mamba_input_errors_use_batch_len_d_model():
    m = Mamba(8, d_state=4)
    with pytest.raises(ssmc.ShapeError, match=r"hidden: expected shape \(batch, len, d_model=8\), got \(3, 8\)"):
        m(torch.randn(3, 8))
    with pytest.raises(ssmc.ShapeError, match=r"hidden: expected shape \(batch, len, d_model=8\), got \(3, 8, 5\)"):
        m(torch.randn(3, 8, 5))
    with pytest.raises(ssmc.ShapeError, match=r"initial_state: expected shape \(batch=3, d_inner=16, d_state=4\)"):
        m(torch.randn(3, 5, 8), initial_state=torch.randn(3, 8, 4))


@pytest.mark.parametrize("kwargs, message", [
    (dict(d_model=0), r"d_model: expected an int >= 1, got 0"),
    (dict(d_model=4, d_state=1), r"d_state: expected an even int >= 2 .* got 1"),
    (dict(d_model=4, d_state=7), r"d_state: expected an even int >= 2 .* got 7"),
    (dict(d_model=4, init="bogus"), r"init: expected one of 'lin', 'inv', got 'bogus'"),
    (dict(d_model=4, dt_min=0.2, dt_max=0.1), r"dt_min, dt_max: expected dt_min <= dt_max"),
    (dict(d_model=4, dropout=1.5), r"dropout: expected a probability in \[0, 1\), got 1.5"),
    (dict(d_model=4, schedule="fast"), r"schedule: expected one of 'auto', 'scan', 'conv', 'sequential', 'chunked', 'associative', 'fused', got 'fast'"),
])
def test_s4d_constructor_errors(kwargs, message):
    error = ssmc.ScheduleError if "schedule" in kwargs else ssmc.SpecError      # as ssmc.compile raises
    with pytest.raises(error, match=message):
        S4D(**kwargs)


def test_s4d_presets_refuse_odd_state_sizes():
    for preset in (ssmc.presets.s4d, ssmc.presets.dss):
        with pytest.raises(ssmc.SpecError, match=r"d_state: expected an even int >= 2"):
            preset(1)
        with pytest.raises(ssmc.SpecError, match=r"d_state: expected an even int >= 2"):
            preset(5)


@pytest.mark.parametrize("transposed, layout", [(True, r"\(batch, d_model=4, len\)"),
                                                (False, r"\(batch, len, d_model=4\)")])
def test_s4d_input_errors_use_its_layout(transposed, layout):
    layer = S4D(4, d_state=4, transposed=transposed)
    with pytest.raises(ssmc.ShapeError, match=rf"u: expected shape {layout}, got \(2, 4\)"):
        layer(torch.randn(2, 4))
    wrong = torch.randn(2, 16, 4) if transposed else torch.randn(2, 4, 16)
    with pytest.raises(ssmc.ShapeError, match=rf"u: expected shape {layout}, got {re_shape(wrong)}"):
        layer(wrong)


def re_shape(x):
    return r"\(" + r", ".join(str(n) for n in x.shape) + r"\)"


def test_zero_groups_of_B_is_a_shape_error():
    x = scan_inputs(dim=4, length=6, n_state=3)
    with pytest.raises(ssmc.ShapeError, match=r"B: expected \(2, groups, 3, 6\) with groups dividing dim=4 "
                                              r"\(groups >= 1\), got \(2, 0, 3, 6\)"):
        ops.selective_scan_fn(x["u"], x["delta"], x["A"], torch.randn(2, 0, 3, 6), x["C"])


# -- item 16: empty inputs give empty outputs and (zero) gradients --------------------------------
EMPTY_SHAPES = [(2, 3, 0), (0, 3, 5), (2, 0, 5)]


@pytest.mark.parametrize("shape", EMPTY_SHAPES)
@pytest.mark.parametrize("schedule", ["conv", "scan", "auto"])
def test_lti_ssm_empty_inputs(shape, schedule):
    batch, H, length = shape
    x = scan_inputs(batch=batch, dim=H, length=length, n_state=4, complex_state=True, selective=())
    leaves = [x[k].clone().requires_grad_() for k in ("u", "delta", "A", "B", "C", "D")]
    y = ops.lti_ssm(*leaves[:5], D=leaves[5], schedule=schedule)
    ref = selective_scan_ref(*leaves[:5], D=leaves[5], discretization="zoh")
    assert y.shape == ref.shape == shape and y.dtype == x["u"].dtype
    for name, g, g_ref in zip(("u", "dt", "A", "B", "C", "D"), grads([y], leaves), grads([ref], leaves)):
        assert g.shape == g_ref.shape and torch.equal(g, g_ref.to(g.dtype)), name


@pytest.mark.parametrize("shape", EMPTY_SHAPES)
def test_selective_scan_empty_inputs_pass_the_state_through(shape):
    batch, dim, length = shape
    x = scan_inputs(batch=batch, dim=dim, length=length, n_state=3, complex_state=True)
    h0 = torch.randn(batch, dim, 3, dtype=torch.cfloat, requires_grad=True)
    leaves = [x[k].clone().requires_grad_() for k in ("u", "delta", "A", "B", "C")] + [h0]
    y, last = ops.selective_scan_fn(*leaves[:5], initial_state=h0, return_last_state=True)
    ref, ref_last = selective_scan_ref(*leaves[:5], initial_state=h0, return_last_state=True)
    assert y.shape == shape and last.shape == (batch, dim, 3)
    assert torch.equal(last, ref_last.to(last.dtype))            # no steps: the initial state
    for g, g_ref in zip(grads([y, last], leaves), grads([ref, ref_last], leaves)):
        assert g.shape == g_ref.shape and torch.allclose(g, g_ref.to(g.dtype), atol=1e-6)


def test_layers_with_empty_inputs():
    mamba = Mamba(8, d_state=4)
    for shape in [(2, 0, 8), (0, 5, 8)]:
        x = torch.randn(shape, requires_grad=True)
        y = mamba(x)
        assert y.shape == shape
        y.sum().backward()
        assert x.grad.shape == shape
        assert all(p.grad is None or torch.isfinite(p.grad).all() for p in mamba.parameters())
    for transposed, shape in [(True, (2, 4, 0)), (True, (0, 4, 7)), (False, (2, 0, 4))]:
        layer = S4D(4, d_state=4, transposed=transposed)
        y, _ = layer(torch.randn(shape))
        assert y.shape == shape
    layer = ssmc.compile(MAMBA_SPEC)(d_model=8)
    y, last = layer(torch.randn(2, 0, 8), torch.randn(2, 0, 8), return_last_state=True)
    assert y.shape == (2, 0, 8) and torch.equal(last, torch.zeros(2, 8, 4))


# -- item 20: mamba_ssm / S4 compatibility --------------------------------------------------------
@pytest.mark.parametrize("groups", [None, 2])
def test_complex_A_accepts_mamba_ssm_interleaved_B_C(groups):
    x = scan_inputs(dim=4, length=7, n_state=3, complex_state=True, groups=groups or 1)
    B_real = torch.view_as_real(x["B"]).flatten(-2)           # (batch, G, N, 2L): re, im of step l at 2l, 2l+1
    C_real = torch.view_as_real(x["C"][:, 0]).flatten(-2)     # (batch, N, 2L)
    if groups is None:
        B_real = B_real[:, 0]
    leaves = [t.clone().requires_grad_() for t in (x["u"], x["delta"], x["A"], B_real, C_real, x["D"], x["z"])]
    kwargs = dict(delta_softplus=True, return_last_state=True)
    out, last = ops.selective_scan_fn(*leaves[:5], D=leaves[5], z=leaves[6], **kwargs)

    def as_complex(t):
        return torch.view_as_complex(t.double().unflatten(-1, (t.shape[-1] // 2, 2)))
    ref, ref_last = selective_scan_ref(*leaves[:3], as_complex(leaves[3]), as_complex(leaves[4]), D=leaves[5],
                                       z=leaves[6], **kwargs)
    assert rel_error(out, ref) < 1e-5 and rel_error(last, ref_last) < 1e-5
    for g, g_ref in zip(grads([out, last], leaves), grads([ref, ref_last], leaves)):
        assert rel_error(g, g_ref) < 1e-4
    # the same values as complex tensors give the same output
    same = ops.selective_scan_fn(x["u"], x["delta"], x["A"], as_complex(B_real).to(torch.cfloat),
                                 as_complex(C_real).to(torch.cfloat), D=x["D"], z=x["z"], delta_softplus=True)
    assert rel_error(same, ref) < 1e-5
    with pytest.raises(ssmc.ShapeError, match=r"C: with complex A, a real time-varying C must be mamba_ssm's"):
        ops.selective_scan_fn(x["u"], x["delta"], x["A"], B_real, C_real[..., :-2])


@pytest.mark.parametrize("complex_state", [False, True])
def test_selective_scan_fn_initial_state_in_final_state_out(complex_state):
    x = scan_inputs(dim=4, length=9, n_state=3, complex_state=complex_state)
    h0 = torch.randn(2, 4, 3, dtype=x["A"].dtype)
    leaves = [t.clone().requires_grad_() for t in (x["u"], x["delta"], x["A"], x["B"], x["C"], x["delta_bias"], h0)]
    kwargs = dict(delta_softplus=True, return_last_state=True)
    out, last = ops.selective_scan_fn(*leaves[:5], delta_bias=leaves[5], initial_state=leaves[6], **kwargs)
    ref, ref_last = selective_scan_ref(*leaves[:5], delta_bias=leaves[5], initial_state=leaves[6], **kwargs)
    assert rel_error(out, ref) < 1e-5 and rel_error(last, ref_last) < 1e-5
    for g, g_ref in zip(grads([out, last], leaves), grads([ref, ref_last], leaves)):
        assert rel_error(g, g_ref) < 1e-4


def test_generated_layer_carries_state_across_calls():
    """Two calls chained by the state give the one-call result, and the state is the reference's."""
    torch.manual_seed(4)
    layer = ssmc.compile(LTI_SPEC)(d_model=5)
    x = torch.randn(2, 12, 5)
    h0 = torch.randn(2, 5, 3, dtype=torch.cfloat)
    y, last = layer(x, initial_state=h0, return_last_state=True)
    y1, mid = layer(x[:, :7], initial_state=h0, return_last_state=True)
    y2, last2 = layer(x[:, 7:], initial_state=mid, return_last_state=True)
    assert rel_error(torch.cat([y1, y2], 1), y) < 1e-5 and rel_error(last2, last) < 1e-5
    with torch.no_grad():
        ref, ref_last = selective_scan_ref(x.transpose(1, 2), torch.exp(layer.log_dt), layer.A(),
                                           torch.view_as_complex(layer.B), torch.view_as_complex(layer.C), D=layer.D,
                                           discretization="zoh", initial_state=h0, return_last_state=True)
    assert rel_error(y, ref.transpose(1, 2)) < 1e-5 and rel_error(last, ref_last) < 1e-5


def test_mamba_initial_state_and_last_state_match_the_reference():
    torch.manual_seed(5)
    m = Mamba(8, d_state=4)
    x = torch.randn(2, 11, 8)
    h0 = torch.randn(2, 16, 4, requires_grad=True)
    y, (last, window) = m(x, initial_state=h0, return_last_state=True)
    assert window.shape == (2, 16, 3)
    s = {k: v.detach().double() if isinstance(v, torch.Tensor) else v for k, v in m.ssm_inputs(x).items()}
    ref_y, ref_last = selective_scan_ref(s["u"], s["delta"], s["A"], s["B"], s["C"], s["D"], s["z"],
                                         s["delta_bias"], delta_softplus=True, initial_state=h0,
                                         return_last_state=True)
    ref = ref_y.transpose(1, 2) @ m.out_proj.weight.detach().double().t()
    assert y.shape == (2, 11, 8) and last.shape == (2, 16, 4)
    assert rel_error(y, ref) < 1e-5 and rel_error(last, ref_last) < 1e-5
    g, = grads([y, last], [h0])
    g_ref, = grads([ref, ref_last], [h0])
    assert rel_error(g, g_ref) < 1e-4


def original_s4d_kernel(state, L):
    """The S4 repository's S4DKernel(L), restated in complex128 on a state dict:
    K = 2·Re Σ_n C_n (exp(dt A_n) − 1) / A_n · exp(dt A_n · l)."""
    dt = torch.exp(state["kernel.log_dt"].double())[:, None]
    A = -torch.exp(state["kernel.log_A_real"].double()) + 1j * state["kernel.A_imag"].double()
    C = torch.view_as_complex(state["kernel.C"].double().contiguous())
    dtA = dt * A
    return 2 * torch.einsum("hn,hnl->hl", C * (torch.exp(dtA) - 1) / A,
                            torch.exp(dtA[..., None] * torch.arange(L, dtype=torch.float64))).real


@pytest.mark.parametrize("init", ["lin", "inv"])
def test_s4d_kernel_is_the_s4_repository_kernel(init):
    layer = S4D(5, d_state=8, init=init)
    with torch.no_grad():       # a checkpoint-like perturbation, so the test does not rely on the init
        layer.kernel.log_A_real.add_(0.1 * torch.randn_like(layer.kernel.log_A_real))
        layer.kernel.A_imag.add_(0.1 * torch.randn_like(layer.kernel.A_imag))
    assert {"kernel.C", "kernel.log_dt", "kernel.log_A_real", "kernel.A_imag"} <= set(layer.state_dict())
    K = layer.kernel(L=33)
    ref = original_s4d_kernel(layer.state_dict(), 33)
    assert K.shape == (5, 33) and rel_error(K, ref) < 1e-5
    params = [layer.kernel.log_dt, layer.kernel.C, layer.kernel.log_A_real, layer.kernel.A_imag]
    copies = [p.detach().double().requires_grad_() for p in params]
    names = ["kernel.log_dt", "kernel.C", "kernel.log_A_real", "kernel.A_imag"]
    ref = original_s4d_kernel(dict(zip(names, copies)), 33)
    for g, g_ref in zip(grads([K], params), grads([ref], copies)):
        assert rel_error(g, g_ref) < 1e-4
    assert layer.kernel(L=0).shape == (5, 0)


def test_lti_kernel_op_matches_reference():
    x = scan_inputs(dim=3, length=1, n_state=4, complex_state=True, selective=())
    K = ops.lti_kernel(x["delta"], x["A"], x["B"], x["C"], 20)
    assert rel_error(K, lti_kernel_ref(x["delta"], x["A"], x["B"], x["C"], 20)) < 1e-5
    with pytest.raises(ssmc.ShapeError, match=r"B: expected \(3, 4\) = \(H, N\), got \(3, 5\)"):
        ops.lti_kernel(x["delta"], x["A"], torch.randn(3, 5, dtype=torch.cfloat), x["C"], 20)
    assert not math.isnan(K.sum().item())


def test_schedule_errors_are_schedule_errors_everywhere(backend):
    """nn.S4D checks `schedule` against the same list, with the same error type, as ssmc.compile; a
    conv-only compiled layer asked for states raises ScheduleError, not a plain ValueError."""
    import re

    from ssmc.compiler import compile_package
    backend("torch")
    for schedule in ("bogus", "Conv", None):
        with pytest.raises(ssmc.ScheduleError, match=re.escape("schedule: expected one of 'auto', 'scan', 'conv'")):
            S4D(8, d_state=4, schedule=schedule)
        with pytest.raises(ssmc.ScheduleError):
            ssmc.compile(ssmc.presets.s4d(4, name="s4d_bogus"), schedule=schedule)
    package = compile_package(ssmc.SSM("lti_conv_only", 4, A=ssmc.Diagonal(real=False), skip_D=False), "conv")
    inputs = scan_inputs(batch=1, dim=3, length=5, n_state=4, complex_state=True, selective=())
    args = [inputs[n] for n in ("u", "delta", "A", "B", "C")]
    for kwargs in (dict(return_last_state=True), dict(initial_state=torch.zeros(1, 3, 4, dtype=torch.complex64))):
        with pytest.raises(ssmc.ScheduleError, match="compiled with schedule='conv'"):
            package.apply(*args, **kwargs)


@pytest.mark.parametrize("backend_name", ["torch", "c"])
def test_mamba_resumes_a_sequence_through_the_block(backend, backend_name):
    """The state return_last_state gives (SSM state and the convolution's last d_conv - 1 inputs)
    resumes the sequence: 6 + 6 steps, or 5 + 0 + 7, equal 12 in one call (before: the conv window
    restarted from zero padding, off by ~0.05), and gradients flow through the carried state."""
    from ssmc.runtime.backend import c_compiler
    if backend_name == "c" and c_compiler() is None and not os.environ.get("CI"):
        pytest.skip("no C compiler")
    backend(backend_name)
    torch.manual_seed(7)
    m = Mamba(8, d_state=4)
    x = torch.randn(2, 12, 8, requires_grad=True)
    y, (h, window) = m(x, return_last_state=True)
    assert h.shape == (2, 16, 4) and window.shape == (2, 16, 3)
    y1, state = m(x[:, :6], return_last_state=True)
    y2, (h2, window2) = m(x[:, 6:], initial_state=state, return_last_state=True)
    assert rel_error(torch.cat([y1, y2], 1), y) < 1e-5 and rel_error(h2, h) < 1e-5 and rel_error(window2, window) < 1e-6
    parts, state = [], None
    for chunk in (x[:, :5], x[:, 5:5], x[:, 5:]):
        out, state = m(chunk, initial_state=state, return_last_state=True)
        parts.append(out)
    assert rel_error(torch.cat(parts, 1), y) < 1e-5 and rel_error(state[0], h) < 1e-5
    g, = grads([torch.cat([y1, y2], 1)], [x])
    g_ref, = grads([y], [x])
    assert rel_error(g, g_ref) < 1e-5
    # a tensor is the SSM state alone (zero conv window), as before; a malformed pair is refused
    assert torch.allclose(m(x[:, 6:], initial_state=h2), m(x[:, 6:], initial_state=(h2, torch.zeros(2, 16, 3))))
    with pytest.raises(ssmc.ShapeError, match=r"conv_state.*expected shape \(batch=2, d_inner=16, d_conv - 1=3\)"):
        m(x[:, 6:], initial_state=(h2, torch.zeros(2, 16, 4)))
