"""Causal convolution by FFT, shared by every backend's convolution schedule."""
from __future__ import annotations

import torch


def fft_conv(u: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """y[b, d, t] = Σ_{s<=t} K[d, s] u[b, d, t-s].

    Zero-padded to 2L so the circular convolution has no wrap-around; computed in float32 whatever
    the input dtype (half-precision FFTs lose the long tail of the kernel)."""
    length = u.shape[-1]
    n = 2 * length
    u_f = torch.fft.rfft(u.float(), n=n)
    k_f = torch.fft.rfft(kernel.float(), n=n)
    return torch.fft.irfft(u_f * k_f, n=n)[..., :length]
