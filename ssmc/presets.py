"""Specs of the published families, built from the DSL (nothing here is special-cased)."""
from __future__ import annotations

import functools
import inspect
import numbers

from .errors import SpecError
from .spec import MIMO, SSM, ZOH, Diagonal, InputDecay, MambaZOH, MultiHead, Scalar, _check_arguments, discretization_from_name


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


@preset
def s5(d_state: int = 64, conj_sym: bool = True, discretization="zoh", bidirectional: bool = False,
       input_dependent_dt: bool = False, name: str = "s5") -> SSM:
    """S5 (Smith et al. 2023): one complex diagonal state shared by all H channels, input projection
    B (P x H) and readout C (H x P) around it, D skip, ZOH or bilinear. `d_state` is the paper's P:
    with `conj_sym` it counts both members of each conjugate pair (the spec keeps P // 2 and reads out
    2·Re(C h)); `input_dependent_dt` makes the step Δ (one per state) an input of every step."""
    if not isinstance(conj_sym, bool):
        raise SpecError(f"conj_sym: expected a bool, got {conj_sym!r}")
    stored = conjugate_pairs(d_state) if conj_sym else d_state
    return SSM(name=name, d_state=stored, A=Diagonal(real=False), discretization=discretization_from_name(discretization),
               selective=("dt",) if input_dependent_dt else (), heads=MIMO(conj_sym=conj_sym, bidirectional=bidirectional),
               skip_D=True)


@preset
def gla(key_dim: int = 128, value_dim: int = 128, name: str = "gla") -> SSM:
    """Gated linear attention (Yang et al. 2024), flash-linear-attention's `chunk_gla`: per head a
    (key_dim x value_dim) state decayed per key entry by exp(g_t), g (batch, len, heads, key_dim)
    given in log space: S_t = diag(exp(g_t))·S_{t-1} + k_t ⊗ v_t, o_t = scale·q_t·S_t."""
    return SSM(name=name, d_state=key_dim, A=InputDecay(per="state", log_decay="g", inputs=("g",)),
               selective=("B", "C"), heads=MultiHead(headdim=value_dim), skip_D=False)


@preset
def simple_gla(key_dim: int = 128, value_dim: int = 128, name: str = "simple_gla") -> SSM:
    """GLA with one decay per head (simple GLA; RetNet when g is a constant per head): g (batch, len,
    heads) in log space; computed by Mamba-2's per-head stages (sequential or chunked)."""
    return SSM(name=name, d_state=key_dim, A=InputDecay(per="head", log_decay="g", inputs=("g",)),
               selective=("B", "C"), heads=MultiHead(headdim=value_dim), skip_D=False)


@preset
def rwkv6(key_dim: int = 64, value_dim: int = 64, name: str = "rwkv6") -> SSM:
    """RWKV-6's time mixing (Peng et al. 2024): decay exp(-exp(w_t)) per key entry from the input w
    (batch, len, heads, key_dim), and the bonus u (heads, key_dim) for the current token:
    o_t = scale·r_t·(S_{t-1} + diag(u)·k_t ⊗ v_t), S_t = diag(exp(-exp(w_t)))·S_{t-1} + k_t ⊗ v_t."""
    return SSM(name=name, d_state=key_dim, A=InputDecay(per="state", log_decay="-exp(w)", inputs=("w",)),
               selective=("B", "C"), heads=MultiHead(headdim=value_dim), skip_D=False, bonus=True)
