"""The float64 reference: the plain sequential recurrence, written for clarity, not speed.

Every kernel is tested against these functions. They take the same arguments as the compiled
ops and compute in float64 (complex128), one time step at a time, with discretization formulas
given as Python callables of (dt, A).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DISCRETIZATIONS = {
    # name: (decay(dt, A), input_scale(dt, A))
    # expm1: exp(x) - 1 cancels for small x even in float64 (1e-10 relative at dt·A = 1e-6)
    "zoh": (lambda dt, A: torch.exp(dt * A), lambda dt, A: torch.expm1(dt * A) / A),
    "bilinear": (lambda dt, A: (1 + dt * A / 2) / (1 - dt * A / 2), lambda dt, A: dt / (1 - dt * A / 2)),
    # B_bar = dt·B: no `+ 0·A` term, which would turn a NaN in A into a NaN input
    "euler": (lambda dt, A: 1 + dt * A, lambda dt, A: dt),
    "mamba": (lambda dt, A: torch.exp(dt * A), lambda dt, A: dt),
}


def _expand_bc(x, batch, dim, length):
    """(dim, N) or (batch, [groups,] N, len) -> (batch, dim, N, len)."""
    if x.dim() == 2:
        return x[None, :, :, None].expand(batch, dim, x.shape[1], length)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    return x.repeat_interleave(dim // x.shape[1], dim=1)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False, discretization="mamba", initial_state=None):
    """h_t = decay(dt_t, A) h_{t-1} + scale(dt_t, A) B_t u_t;  y_t = C_t h_t (2·Re for complex A)
    + D u_t, times silu(z_t). u, delta, z: (batch, dim, len); A (dim, N); B, C (dim, N) or
    (batch, [groups,] N, len); delta may also be (dim,) (time-invariant step); initial_state
    (batch, dim, N) is h_{-1}. Differentiable (torch autograd) in every argument."""
    dtype_out = u.dtype
    is_complex = A.is_complex()
    cdtype = torch.complex128 if is_complex else torch.float64
    u = u.double()
    batch, dim, length = u.shape
    delta = delta.double()
    if delta.dim() == 1:
        delta = delta[None, :, None].expand(batch, dim, length)
    if delta_bias is not None:
        delta = delta + delta_bias.double()[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    A = A.to(cdtype)
    B = _expand_bc(B.to(cdtype), batch, dim, length)
    C = _expand_bc(C.to(cdtype), batch, dim, length)
    decay_fn, scale_fn = DISCRETIZATIONS[discretization] if isinstance(discretization, str) else discretization
    h = torch.zeros(batch, dim, A.shape[1], dtype=cdtype) if initial_state is None else initial_state.to(cdtype)
    ys = []
    for t in range(length):
        dt = delta[:, :, t, None]
        h = decay_fn(dt, A) * h + scale_fn(dt, A) * B[..., t] * u[:, :, t, None]
        y = (C[..., t] * h).sum(-1)
        ys.append(2 * y.real if is_complex else y)
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(batch, dim, 0)
    if D is not None:
        y = y + D.double()[None, :, None] * u
    if z is not None:
        y = y * F.silu(z.double())
    y = y.to(dtype_out) if dtype_out != torch.float64 else y
    return (y, h) if return_last_state else y


def lti_ssm_ref(u, dt, A, B, C, D=None, discretization="zoh"):
    """A time-invariant SSM by its recurrence: u (batch, H, len); dt (H,); A, B, C (H, N)."""
    return selective_scan_ref(u, dt, A, B, C, D=D, discretization=discretization)


def lti_kernel_ref(dt, A, B, C, length, discretization="zoh"):
    """The convolution kernel K[h, l] = Σ_n (2·)Re(C B_bar A_bar^l) of a time-invariant SSM."""
    is_complex = A.is_complex()
    cdtype = torch.complex128
    decay_fn, scale_fn = DISCRETIZATIONS[discretization]
    dt = dt.double()[:, None]
    A = A.to(cdtype)
    decay, scale = decay_fn(dt, A), scale_fn(dt, A)
    powers = decay[..., None] ** torch.arange(length, dtype=torch.float64)
    k = ((C.to(cdtype) * B.to(cdtype) * scale)[..., None] * powers).sum(1).real
    return 2 * k if is_complex else k
