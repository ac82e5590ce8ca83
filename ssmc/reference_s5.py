"""The float64 reference of S5 (`ssmc.ops.s5_scan`): the plain sequential recurrence, written for
clarity, not speed; tests compare every backend and pipeline against it.

    Λ̄ = decay(Δ, Λ), B̄ = input_scale(Δ, Λ) ⊙ B      (ZOH: exp(ΔΛ), expm1(ΔΛ)/Λ;
                                                       bilinear: (1 + ΔΛ/2)/(1 - ΔΛ/2), Δ/(1 - ΔΛ/2))
    x_t = Λ̄_t ⊙ x_{t-1} + B̄_t u_t,   y_t = 2·Re(C x_t) (Re without conjugate symmetry) + D ⊙ u_t
"""
from __future__ import annotations

import torch

from .reference import DISCRETIZATIONS


def discretize_ref(step, Lambda, discretization: str):
    """(decay, input_scale) by the float64 reference's formulas (ssmc.reference.DISCRETIZATIONS)."""
    if discretization not in DISCRETIZATIONS:
        raise ValueError(f"discretization: expected one of {sorted(DISCRETIZATIONS)}, got {discretization!r}")
    decay, scale = DISCRETIZATIONS[discretization]
    return decay(step, Lambda), scale(step, Lambda)


def _scan(u, decay, scale, B, reverse):
    """States (len, P) of one sequence u (len, H); decay, scale (P,) or (len, P)."""
    length = u.shape[0]
    x = torch.zeros(B.shape[0], dtype=torch.complex128)
    states = torch.zeros(length, B.shape[0], dtype=torch.complex128)
    for t in (range(length - 1, -1, -1) if reverse else range(length)):
        a = decay[t] if decay.dim() == 2 else decay
        s = scale[t] if scale.dim() == 2 else scale
        x = a * x + s * (B @ u[t].to(torch.complex128))
        states[t] = x
    return states


def s5_ref(u, Lambda, B, C, D, step, discretization="zoh", conj_sym=True, bidirectional=False, cu_seqlens=None):
    """y (batch, len, H) float64. u (batch, len, H); Lambda (P,); B (P, H); C (H, P) or (2, H, P);
    D (H,) or None; step (P,) or (batch, len, P); cu_seqlens: offsets of a packed batch of 1."""
    u = u.detach().double()
    Lambda, B, C = (t.detach().to(torch.complex128) for t in (Lambda, B, C))
    step = step.detach().double()
    decay, scale = discretize_ref(step, Lambda, discretization)
    k = 2.0 if conj_sym else 1.0
    batch, length, _ = u.shape
    bounds = [(0, length)] if cu_seqlens is None else list(zip(cu_seqlens.tolist()[:-1], cu_seqlens.tolist()[1:]))
    y = torch.zeros(batch, length, C.shape[-2], dtype=torch.float64)
    for b in range(batch):
        for start, end in bounds:
            rows = slice(start, end)
            dec = decay[b, rows] if decay.dim() == 3 else decay
            sca = scale[b, rows] if scale.dim() == 3 else scale
            Cf = C[0] if bidirectional else C
            y[b, rows] = k * (_scan(u[b, rows], dec, sca, B, False) @ Cf.T).real
            if bidirectional:
                y[b, rows] += k * (_scan(u[b, rows], dec, sca, B, True) @ C[1].T).real
    if D is not None:
        y = y + u * D.detach().double()
    return y
