"""ssmc.nn.Mamba2: the reference implementation's parameter names and shapes, its equations restated
in float64 on the state dict, causality, gradients, and decoding that equals the forward."""
import pytest
import torch
import torch.nn.functional as F

import ssmc
from ssmc.nn import Mamba2
from ssmc.reference_ssd import ssd_sequential_ref


def rel(out, ref):
    out, ref = out.detach().double(), ref.detach().double()
    assert torch.isfinite(out).all()
    return ((out - ref).norm() / ref.norm()).item()


def block_from_equations(m, hidden):
    """The block on its state dict in float64: in_proj -> z, xBC, dt; causal depthwise conv + SiLU;
    SSD (the plain recurrence); RMSNorm per group of y·silu(z) (of y, then ·silu(z), with
    norm_before_gate; no norm, y·silu(z), without rmsnorm); out_proj."""
    s = {k: v.double() for k, v in m.state_dict().items()}
    hidden = hidden.double()
    batch, length, _ = hidden.shape
    z, xBC, dt = torch.split(hidden @ s["in_proj.weight"].t(), [m.d_inner, m.conv_dim, m.nheads], dim=-1)
    xBC = F.conv1d(F.pad(xBC.transpose(1, 2), (m.d_conv - 1, 0)), s["conv1d.weight"], s["conv1d.bias"],
                   groups=m.conv_dim)
    xBC = F.silu(xBC.transpose(1, 2))
    x, B, C = torch.split(xBC, [m.d_inner, m.ngroups * m.d_state, m.ngroups * m.d_state], dim=-1)
    y = ssd_sequential_ref(x.reshape(batch, length, m.nheads, m.headdim), dt, -torch.exp(s["A_log"]),
                           B.reshape(batch, length, m.ngroups, m.d_state), C.reshape(batch, length, m.ngroups, m.d_state),
                           D=s["D"], dt_bias=s["dt_bias"], dt_softplus=True).reshape(batch, length, m.d_inner)
    if not m.rmsnorm:
        return (y * F.silu(z)) @ s["out_proj.weight"].t()
    gated = (y if m.norm_before_gate else y * F.silu(z)).reshape(batch, length, m.ngroups, -1)
    normed = (gated * torch.rsqrt(gated.pow(2).mean(-1, keepdim=True) + 1e-5)).reshape(batch, length, m.d_inner)
    normed = normed * s["norm.weight"]
    return (normed * F.silu(z) if m.norm_before_gate else normed) @ s["out_proj.weight"].t()


def test_names_shapes_and_init(backend):
    backend("torch")
    torch.manual_seed(0)
    m = Mamba2(32, d_state=16, headdim=16, ngroups=2)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {"in_proj.weight": (2 * 64 + 2 * 2 * 16 + 4, 32), "conv1d.weight": (128, 1, 4),
                      "conv1d.bias": (128,), "dt_bias": (4,), "A_log": (4,), "D": (4,), "norm.weight": (64,),
                      "out_proj.weight": (32, 64)}
    dt = F.softplus(m.dt_bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 1e-1 * (1 + 1e-4)
    assert (torch.exp(m.A_log) >= 1).all() and (torch.exp(m.A_log) <= 16).all()


@pytest.mark.parametrize("backend_name", ["torch", "c"])
@pytest.mark.parametrize("chunk_size", [16, None])
def test_forward_equals_its_equations(backend, backend_name, chunk_size):
    backend(backend_name)
    torch.manual_seed(1)
    m = Mamba2(32, d_state=16, headdim=16, ngroups=2, chunk_size=chunk_size)
    with torch.no_grad():
        m.norm.weight.uniform_(0.5, 1.5)
        m.D.uniform_(-1, 1)
    hidden = torch.randn(2, 37, 32)
    assert rel(m(hidden), block_from_equations(m, hidden)) < 1e-5


def test_causal_and_gradients_reach_every_parameter(backend):
    backend("c")
    torch.manual_seed(2)
    m = Mamba2(16, d_state=8, headdim=8, chunk_size=8)
    hidden = torch.randn(2, 20, 16)
    changed = hidden.clone()
    changed[:, 12:] = torch.randn(2, 8, 16)
    assert torch.allclose(m(hidden)[:, :12], m(changed)[:, :12], atol=1e-6)
    m(hidden).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("backend_name", ["c", "triton"])
def test_decoding_step_by_step_equals_the_forward(backend, backend_name):
    backend(backend_name)
    torch.manual_seed(3)
    m = Mamba2(16, d_state=8, headdim=8, ngroups=1, chunk_size=8)
    hidden = torch.randn(2, 11, 16)
    conv_state, ssm_state = m.allocate_inference_cache(2)
    assert conv_state.shape == (2, m.conv_dim, 4) and ssm_state.shape == (2, 4, 8, 8)
    with torch.no_grad():
        whole = m(hidden)
        steps = []
        for t in range(11):
            out, conv_state, ssm_state = m.step(hidden[:, t:t + 1], conv_state, ssm_state)
            steps.append(out)
    assert rel(torch.cat(steps, dim=1), whole) < 1e-5


@pytest.mark.parametrize("kwargs, message", [
    (dict(d_model=10, headdim=64), "must be a positive multiple of headdim"),
    (dict(d_model=64, headdim=16, ngroups=3), "ngroups=3 must divide"),
    (dict(d_model=64, headdim=16, norm_before_gate=1), "norm_before_gate: expected True or False"),
    (dict(d_model=64, headdim=16, rmsnorm="yes"), "rmsnorm: expected True or False"),
    (dict(d_model=64, headdim=16, A_init_range=(0, 4)), "A_init_range"),
])
def test_constructor_errors(kwargs, message):
    with pytest.raises(ssmc.SpecError, match=message):
        Mamba2(**kwargs)


def test_step_refuses_wrong_states(backend):
    backend("c")
    m = Mamba2(16, d_state=8, headdim=8)
    conv_state, ssm_state = m.allocate_inference_cache(2)
    with pytest.raises(ssmc.ShapeError, match="conv_state: expected shape"):
        m.step(torch.randn(2, 1, 16), conv_state[:1], ssm_state)
    with pytest.raises(ssmc.ShapeError, match="hidden_states"):
        m.step(torch.randn(2, 3, 16), conv_state, ssm_state)


def test_inference_params_prompt_then_tokens(backend):
    """mamba_ssm's protocol: the prompt with seqlen_offset 0 fills the cache, then one token per call."""
    from ssmc.nn import InferenceCache
    backend("c")
    torch.manual_seed(4)
    m = Mamba2(16, d_state=8, headdim=8, chunk_size=8, layer_idx=0)
    hidden = torch.randn(2, 9, 16)
    with torch.no_grad():
        whole = m(hidden)
        for prompt in (2, 6):                      # shorter and longer than the convolution's window
            cache = InferenceCache(max_seqlen=9, max_batch_size=2)
            outs = [m(hidden[:, :prompt], inference_params=cache)]
            cache.seqlen_offset = prompt
            for t in range(prompt, 9):
                outs.append(m(hidden[:, t:t + 1], inference_params=cache))
                cache.seqlen_offset += 1
            assert rel(torch.cat(outs, dim=1), whole) < 1e-5
    with pytest.raises(ssmc.SpecError, match="layer_idx"):
        Mamba2(16, d_state=8, headdim=8)(hidden, inference_params=InferenceCache(9, 2))


def test_block_compiles_with_fullgraph(monkeypatch):
    """The whole block traces without graph breaks, with the backend chosen as in production (no
    SSMC_BACKEND): the cost model's choice of backend is a constant to Dynamo."""
    monkeypatch.delenv("SSMC_BACKEND", raising=False)
    torch.manual_seed(5)
    m = Mamba2(16, d_state=8, headdim=8, chunk_size=None)
    hidden = torch.randn(2, 13, 16, requires_grad=True)
    out = torch.compile(m, fullgraph=True, backend="eager")(hidden)
    out.sum().backward()
    assert rel(out, m(hidden)) < 1e-6 and torch.isfinite(hidden.grad).all()


@pytest.mark.parametrize("rmsnorm, norm_before_gate", [(True, True), (False, False)])
def test_other_norm_forms_equal_their_equations_and_decode(backend, rmsnorm, norm_before_gate):
    """norm_before_gate=True: RMSNorm(y)·weight·silu(z); rmsnorm=False: no norm (no norm.weight), the
    gate applied by the SSD's epilogue; the step path gives the forward's outputs in both."""
    backend("c")
    torch.manual_seed(4)
    m = Mamba2(32, d_state=16, headdim=16, ngroups=2, chunk_size=16, rmsnorm=rmsnorm,
               norm_before_gate=norm_before_gate)
    assert ("norm.weight" in m.state_dict()) == rmsnorm
    with torch.no_grad():
        if rmsnorm:
            m.norm.weight.uniform_(0.5, 1.5)
        m.D.uniform_(-1, 1)
    hidden = torch.randn(2, 21, 32)
    with torch.no_grad():
        whole = m(hidden)
        assert rel(whole, block_from_equations(m, hidden)) < 1e-5
        conv_state, ssm_state = m.allocate_inference_cache(2)
        steps = [m.step(hidden[:, t:t + 1], conv_state, ssm_state)[0] for t in range(21)]
    assert rel(torch.cat(steps, dim=1), whole) < 1e-5
