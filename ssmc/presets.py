"""Specs of the published families, built from the DSL (nothing here is special-cased)."""
from __future__ import annotations

import functools
import inspect
import numbers

from .errors import SpecError
from .spec import SSM, ZOH, Diagonal, MambaZOH, MultiHead, Scalar, _check_arguments


def preset(function):
    """A preset whose misspelt or extra argument is a SpecError naming it (and the closest
    parameter), like the spec classes' own fields, instead of Python's bare TypeError."""
    names = list(inspect.signature(function).parameters)

    @functools.wraps(function)
    def checked(*args, **kwargs):
        _check_arguments(f"ssmc.presets.{function.__name__}", names, [], args, kwargs)
        return function(*args, **kwargs)
    return checked


def conjugate_pairs(d_state) -> int:
    """The number of complex states of S4D and DSS, whose d_state counts both members of each
    conjugate pair (the spec keeps one of each)."""
    if isinstance(d_state, bool) or not isinstance(d_state, numbers.Integral) or d_state < 2 or d_state % 2:
        raise SpecError(f"d_state: expected an even int >= 2 (N // 2 complex states, one per conjugate pair), "
                        f"got {d_state!r}")
    return int(d_state) // 2


@preset
def mamba(d_state: int = 16, name: str = "mamba", groups: int = 1, gate: bool = True) -> SSM:
    """Mamba's selective SSM (S6): real diagonal A, dt/B/C from the input, dt bias + softplus,
    D skip, silu gate (Gu & Dao 2023)."""
    return SSM(name=name, d_state=d_state, A=Diagonal(real=True), discretization=MambaZOH(),
               selective=("dt", "B", "C"), skip_D=True, gate=gate, dt_softplus=True, dt_bias=True,
               groups=groups)


@preset
def s4d(d_state: int = 64, name: str = "s4d") -> SSM:
    """S4D (Gu et al. 2022): complex diagonal A, ZOH, time-invariant; `d_state` counts both members
    of each conjugate pair, so the spec's state holds d_state // 2 complex numbers."""
    return SSM(name=name, d_state=conjugate_pairs(d_state), A=Diagonal(real=False), discretization=ZOH(),
               skip_D=True)


@preset
def dss(d_state: int = 64, name: str = "dss") -> SSM:
    """DSS (Gupta et al. 2022): complex diagonal A, ZOH discretization, time-invariant. DSS's
    softmax normalisation of the kernel is a parameterisation of C, done in the module."""
    return SSM(name=name, d_state=conjugate_pairs(d_state), A=Diagonal(real=False), discretization=ZOH(),
               skip_D=True)


@preset
def mamba2(d_state: int = 128, headdim: int = 64, groups: int = 1, name: str = "mamba2", gate: bool = True) -> SSM:
    """Mamba-2's SSD layer (Dao & Gu 2024): one scalar decay per head, heads of `headdim` channels,
    dt/B/C from the input with B/C shared by `groups` groups of heads, dt bias + softplus, D skip,
    silu gate. Computed by the chunked (state space duality) or the sequential schedule."""
    return SSM(name=name, d_state=d_state, A=Scalar(), discretization=MambaZOH(), selective=("dt", "B", "C"),
               heads=MultiHead(headdim=headdim, groups=groups), skip_D=True, gate=gate, dt_softplus=True,
               dt_bias=True)
