"""ssmc.nn.Mamba, the whole block (projections, causal depthwise conv + SiLU, selective scan, gate,
out_proj), restated in float64 from the paper's equations on the block's state dict: forward and the
gradient of every parameter and of the input, on the generated C and PyTorch kernels; and a
sequence resumed from the (ssm_state, conv_state) pair equals the whole sequence."""
import pytest
import torch
import torch.nn.functional as F

from ssmc.nn import Mamba
from ssmc.reference import selective_scan_ref


def rel(out, ref):
    out, ref = out.detach().double(), ref.detach().double()
    assert torch.isfinite(out).all()
    # a gradient that is exactly zero (A's, at one step: the state starts at zero) compares absolutely
    return ((out - ref).norm() / ref.norm().clamp_min(1e-12)).item()


def block_from_equations(m, hidden, params=None):
    """Mamba (Gu & Dao 2023, Section 3.4) in float64 on `params` (default: the state dict)."""
    s = params if params is not None else {k: v.double() for k, v in m.state_dict().items()}
    hidden = hidden.double()
    x, z = (hidden @ s["in_proj.weight"].t()).transpose(1, 2).chunk(2, dim=1)
    x = F.conv1d(F.pad(x, (m.d_conv - 1, 0)), s["conv1d.weight"], s["conv1d.bias"], groups=m.d_inner)
    x = F.silu(x)
    dt_low, B, C = torch.split(x.transpose(1, 2) @ s["x_proj.weight"].t(), [m.dt_rank, m.d_state, m.d_state], dim=-1)
    delta = (dt_low @ s["dt_proj.weight"].t()).transpose(1, 2)
    y = selective_scan_ref(x, delta, -torch.exp(s["A_log"]), B.transpose(1, 2), C.transpose(1, 2), s["D"], z=z,
                           delta_bias=s["dt_proj.bias"], delta_softplus=True)
    return y.transpose(1, 2) @ s["out_proj.weight"].t()


def _block(seed=0):
    torch.manual_seed(seed)
    m = Mamba(24, d_state=8, d_conv=4, expand=2)
    with torch.no_grad():
        m.D.uniform_(-1, 1)
        m.conv1d.bias.uniform_(-0.5, 0.5)
    return m


@pytest.mark.parametrize("backend_name", ["torch", "c"])
@pytest.mark.parametrize("length", [1, 3, 29])
def test_forward_and_gradients_equal_the_equations(backend, backend_name, length):
    backend(backend_name)
    m = _block()
    hidden = torch.randn(2, length, 24, requires_grad=True)
    out = m(hidden)
    params = {k: v.detach().double().requires_grad_() for k, v in m.named_parameters()}
    hidden64 = hidden.detach().double().requires_grad_()
    ref = block_from_equations(m, hidden64, params)
    assert rel(out, ref) < 1e-5
    weight = torch.randn_like(ref)
    grads = torch.autograd.grad((out * weight.float()).sum(), [hidden] + [p for _, p in m.named_parameters()])
    refs = torch.autograd.grad((ref * weight).sum(), [hidden64] + [params[k] for k, _ in m.named_parameters()])
    names = ["hidden"] + [k for k, _ in m.named_parameters()]
    for name, g, g_ref in zip(names, grads, refs):
        assert rel(g, g_ref) < 1e-4, name


def test_resuming_from_the_returned_state_equals_the_whole_sequence(backend):
    backend("c")
    m = _block(1)
    hidden = torch.randn(2, 12, 24)
    whole = m(hidden)
    first, state = m(hidden[:, :5], return_last_state=True)
    second, _ = m(hidden[:, 5:], initial_state=state, return_last_state=True)
    assert rel(torch.cat([first, second], dim=1), whole) < 1e-5
    # a prompt shorter than the convolution's window still leaves the right window
    first, state = m(hidden[:, :2], return_last_state=True)
    second = m(hidden[:, 2:], initial_state=state)
    assert rel(torch.cat([first, second], dim=1), whole) < 1e-5


@pytest.mark.parametrize("prompt", [1, 2, 7])
def test_inference_params_prompt_then_tokens_equal_the_whole_sequence(backend, prompt):
    """The prompt leaves the convolution's last d_conv inputs in the cache (zeros before a prompt
    shorter than that), and each later token steps from them."""
    from ssmc.nn import InferenceCache
    backend("c")
    m = _block(2)
    m.layer_idx = 0
    hidden = torch.randn(2, 10, 24)
    cache = InferenceCache(max_seqlen=10, max_batch_size=2)
    with torch.no_grad():
        whole = m(hidden)
        outs = [m(hidden[:, :prompt], inference_params=cache)]
        for t in range(prompt, 10):
            cache.seqlen_offset = t
            outs.append(m(hidden[:, t:t + 1], inference_params=cache))
    assert rel(torch.cat(outs, dim=1), whole) < 1e-5
