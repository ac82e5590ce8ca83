"""ssmc.nn.S4D loads a checkpoint of the S4 repository's standalone S4D layer and gives its output.

`original_s4d_forward` restates that layer's forward from its equations (kernel by Vandermonde
product in complex128, causal FFT convolution, D skip, GELU, 1x1 conv + GLU) on a bare state dict,
independently of ssmc's code paths.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from ssmc.nn import S4D

from conftest import rel_error

ORIGINAL_KEYS = {"D", "kernel.C", "kernel.log_dt", "kernel.log_A_real", "kernel.A_imag",
                 "output_linear.0.weight", "output_linear.0.bias"}


def original_s4d_forward(state, u):
    H, L = u.shape[1], u.shape[2]
    dt = torch.exp(state["kernel.log_dt"].double())
    C = torch.view_as_complex(state["kernel.C"].double().contiguous())
    A = -torch.exp(state["kernel.log_A_real"].double()) + 1j * state["kernel.A_imag"].double()
    dtA = A * dt[:, None]
    K = 2 * torch.einsum("hn,hnl->hl", C * (torch.exp(dtA) - 1) / A,
                         torch.exp(dtA[..., None] * torch.arange(L, dtype=torch.float64))).real
    y = torch.fft.irfft(torch.fft.rfft(u.double(), n=2 * L) * torch.fft.rfft(K, n=2 * L), n=2 * L)[..., :L]
    y = F.gelu(y + u.double() * state["D"].double()[:, None])
    y = F.conv1d(y, state["output_linear.0.weight"].double(), state["output_linear.0.bias"].double())
    return F.glu(y, dim=-2)


def random_checkpoint(H, N):
    return {
        "D": torch.randn(H), "kernel.C": torch.randn(H, N // 2, 2),
        "kernel.log_dt": torch.rand(H) * (math.log(0.1) - math.log(0.001)) + math.log(0.001),
        "kernel.log_A_real": torch.log(0.5 * torch.ones(H, N // 2)) + 0.1 * torch.randn(H, N // 2),
        "kernel.A_imag": math.pi * torch.arange(N // 2).repeat(H, 1) + 0.1 * torch.randn(H, N // 2),
        "output_linear.0.weight": torch.randn(2 * H, H, 1) / math.sqrt(H),
        "output_linear.0.bias": torch.randn(2 * H),
    }


@pytest.mark.parametrize("schedule", ["conv", "scan", "auto"])
def test_checkpoint_loads_without_renaming_and_matches(backend, schedule):
    backend("torch")
    layer = S4D(8, d_state=16, schedule=schedule)
    assert set(layer.state_dict()) == ORIGINAL_KEYS
    checkpoint = random_checkpoint(8, 16)
    layer.load_state_dict(checkpoint)
    u = torch.randn(2, 8, 64)
    y, state = layer(u)
    assert state is None and y.shape == (2, 8, 64)
    assert rel_error(y, original_s4d_forward(checkpoint, u)) < 1e-5


def test_not_transposed_and_inv_init(backend):
    backend("torch")
    layer = S4D(4, d_state=8, transposed=False, init="inv")
    u = torch.randn(2, 32, 4)
    y, _ = layer(u)
    ref = original_s4d_forward(layer.state_dict(), u.transpose(1, 2)).transpose(1, 2)
    assert rel_error(y, ref) < 1e-5
    # S4D-Inv: imaginary parts (N/π)(N/(2n+1) - 1) with N = 8
    assert torch.allclose(layer.kernel.A_imag[0], (8 / math.pi) * (8 / (2 * torch.arange(4) + 1) - 1))


@pytest.mark.parametrize("schedule", ["conv", "auto", "scan"])
def test_step_by_step_equals_the_forward(backend, schedule):
    """S4D's recurrent form: stepping from default_state gives the forward's outputs, whatever the
    layer's schedule (a convolution package has no step; the step compiles the scan's)."""
    backend("c")
    torch.manual_seed(0)
    layer = S4D(6, d_state=8, schedule=schedule).eval()
    u = torch.randn(2, 6, 15)
    with torch.no_grad():
        y, _ = layer(u)
        state = layer.default_state(2)
        assert state.shape == (2, 6, 4) and state.dtype == torch.complex64
        steps = [layer.step(u[..., t], state)[0] for t in range(15)]
    out = torch.stack(steps, dim=-1)
    assert ((out - y).norm() / y.norm()).item() < 1e-5
