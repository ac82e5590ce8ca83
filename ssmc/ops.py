"""Functional ops with the de-facto conventions of mamba_ssm and the S4 repository.

Each call derives the spec its arguments describe (complex or real A, which of B/C vary over time,
which optional terms are present), compiles it once per process (cached by the spec's hash) and
runs the generated kernels: CUDA tensors on Triton, CPU tensors on C (`SSMC_BACKEND` forces one).
"""
from __future__ import annotations

import torch

from .errors import ShapeError
from .spec import SSM, Diagonal, MambaZOH, discretization_from_name


_PACKAGES = {}


def _package(key: tuple, make_spec):
    """The compiled package for a call signature. The lookup is a plain dict access on a tuple of
    Python constants, which torch.compile traces without a graph break (building the spec and
    compiling happen once, on the first eager call)."""
    package = _PACKAGES.get(key)
    if package is None:
        from .compiler import compile_package
        package = _PACKAGES[key] = compile_package(make_spec())
    return package


def _state_size(A) -> int:
    if not isinstance(A, torch.Tensor) or A.dim() != 2:
        shape = tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__
        raise ShapeError(f"A: expected a tensor of shape (dim, N), got {shape}")
    return A.shape[1]


def _varies_over_time(name, x) -> bool:
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{name}: expected a tensor, got {type(x).__name__}")
    return x.dim() >= 3


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False):
    """Mamba's selective scan.

    u, delta, z: (batch, dim, len); A: (dim, N), real or complex; B, C: (dim, N), (batch, N, len) or
    (batch, groups, N, len), complex tensors when A is complex; D, delta_bias: (dim,).
        dt = softplus(delta + delta_bias) (softplus if delta_softplus)
        h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,   y_t = C_t h_t (2·Re for complex A) + D u_t
        out = y · silu(z)
    Returns out (batch, dim, len) in u's dtype, and with return_last_state also h_L (batch, dim, N).
    """
    selective = ("dt",) + tuple(name for name, x in (("B", B), ("C", C)) if _varies_over_time(name, x))
    key = ("selective_scan", _state_size(A), A.is_complex(), selective, D is not None, z is not None,
           bool(delta_softplus), delta_bias is not None)

    def make_spec():
        return SSM(name="selective_scan", d_state=key[1], A=Diagonal(real=not key[2]), discretization=MambaZOH(),
                   selective=selective, skip_D=key[4], gate=key[5], dt_softplus=key[6], dt_bias=key[7],
                   schedule="scan")
    return _package(key, make_spec).apply(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                          return_last_state=return_last_state)


def lti_ssm(u, dt, A, B, C, D=None, discretization="zoh", schedule="auto"):
    """A linear time-invariant diagonal SSM (S4D, DSS).

    u: (batch, H, len); dt: (H,); A, B, C: (H, N) — complex A holds one member of each conjugate
    pair, so y = 2·Re(C h) + D u (S4D's convention); real A gives y = C h + D u.
    `schedule`: "conv" (Vandermonde kernel + FFT), "scan" (the recurrence), or "auto" (the cost
    model decides per call). Returns (batch, H, len) in u's dtype.
    """
    for name, x in (("B", B), ("C", C)):
        if isinstance(x, torch.Tensor) and x.dim() != 2:
            raise ShapeError(f"{name}: expected (H, N) for a time-invariant SSM, got {tuple(x.shape)}")
    key = ("lti_ssm", _state_size(A), A.is_complex(), discretization, D is not None, schedule)

    def make_spec():
        return SSM(name="lti_ssm", d_state=key[1], A=Diagonal(real=not key[2]),
                   discretization=discretization_from_name(discretization), skip_D=key[4], schedule=schedule)
    return _package(key, make_spec).apply(u, dt, A, B, C, D=D)
