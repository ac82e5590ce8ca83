"""Specs of the published families, built from the DSL (nothing here is special-cased)."""
from __future__ import annotations

from .spec import SSM, ZOH, Diagonal, MambaZOH


def mamba(d_state: int = 16, name: str = "mamba", groups: int = 1, gate: bool = True) -> SSM:
    """Mamba's selective SSM (S6): real diagonal A, dt/B/C from the input, dt bias + softplus,
    D skip, silu gate (Gu & Dao 2023)."""
    return SSM(name=name, d_state=d_state, A=Diagonal(real=True), discretization=MambaZOH(),
               selective=("dt", "B", "C"), skip_D=True, gate=gate, dt_softplus=True, dt_bias=True,
               groups=groups)


def s4d(d_state: int = 64, name: str = "s4d", schedule: str = "auto") -> SSM:
    """S4D (Gu et al. 2022): complex diagonal A, ZOH, time-invariant; `d_state` counts both members
    of each conjugate pair, so the spec's state holds d_state // 2 complex numbers."""
    return SSM(name=name, d_state=max(1, d_state // 2), A=Diagonal(real=False), discretization=ZOH(),
               skip_D=True, schedule=schedule)


def dss(d_state: int = 64, name: str = "dss", schedule: str = "auto") -> SSM:
    """DSS (Gupta et al. 2022): complex diagonal A, ZOH discretization, time-invariant. DSS's
    softmax normalisation of the kernel is a parameterisation of C, done in the module."""
    return SSM(name=name, d_state=max(1, d_state // 2), A=Diagonal(real=False), discretization=ZOH(),
               skip_D=True, schedule=schedule)
