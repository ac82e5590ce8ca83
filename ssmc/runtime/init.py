"""The standard initialisations of each family's parameters (formulas from the papers)."""
from __future__ import annotations

import math

import torch


def s4d_real(dim: int, n_state: int) -> torch.Tensor:
    """Mamba's A: -(1, 2, ..., N) per channel, stored as A_log = log(n + 1)."""
    return torch.log(torch.arange(1, n_state + 1, dtype=torch.float32)).repeat(dim, 1)


def s4d_lin(dim: int, n_state: int) -> tuple:
    """S4D-Lin: A_n = -1/2 + iπn. Returns (log_A_real, A_imag)."""
    log_a_real = torch.log(0.5 * torch.ones(dim, n_state))
    a_imag = math.pi * torch.arange(n_state, dtype=torch.float32).repeat(dim, 1)
    return log_a_real, a_imag


def s4d_inv(dim: int, n_state: int) -> tuple:
    """S4D-Inv: A_n = -1/2 + i·(N/π)·(N/(2n+1) - 1), N counting both members of each conjugate pair."""
    full = 2 * n_state
    log_a_real = torch.log(0.5 * torch.ones(dim, n_state))
    n = torch.arange(n_state, dtype=torch.float32)
    a_imag = (full / math.pi) * (full / (2 * n + 1) - 1)
    return log_a_real, a_imag.repeat(dim, 1)


# the `init` argument of the complex-A layers (ssmc.nn.S4D, generated `Layer`s): (log_A_real, A_imag)
S4D_INITS = {"lin": s4d_lin, "inv": s4d_inv}


def log_uniform_dt(dim: int, dt_min: float = 1e-3, dt_max: float = 1e-1) -> torch.Tensor:
    """log(dt) uniform in [log dt_min, log dt_max] (S4, S4D)."""
    return torch.rand(dim) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)


def mamba_dt_bias(dim: int, dt_min: float = 1e-3, dt_max: float = 1e-1, floor: float = 1e-4) -> torch.Tensor:
    """Mamba's dt_proj bias: softplus(bias) is log-uniform in [dt_min, dt_max] (inverse softplus)."""
    dt = torch.exp(log_uniform_dt(dim, dt_min, dt_max)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))
