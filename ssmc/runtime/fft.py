"""Causal convolution by FFT, shared by every backend's convolution schedule."""
from __future__ import annotations

import torch


def fft_conv(u: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """y[b, d, t] = Σ_{s<=t} K[d, s] u[b, d, t-s].

    Zero-padded to 2L so the circular convolution has no wrap-around; computed in float32 for every
    input dtype but float64 (half-precision FFTs lose the long tail of the kernel)."""
    length = u.shape[-1]
    n = 2 * length
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    if u.numel() == 0:
        # FFT libraries refuse empty transforms; the product has the output's shape and the right
        # (zero) gradients with respect to both operands.
        return u.to(compute) * kernel.to(compute)
    u_f = torch.fft.rfft(u.to(compute), n=n)
    k_f = torch.fft.rfft(kernel.to(compute), n=n)
    return torch.fft.irfft(u_f * k_f, n=n)[..., :length]
