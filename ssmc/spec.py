"""The declarative DSL: what an SSM layer *is*, never how it is computed.

Every part is a frozen dataclass validated in `__post_init__`, so that an invalid spec can never
exist: errors surface where the user wrote them, not in the compiler. Schedules (scan vs
convolution, block sizes) are deliberately absent; they belong to the compiler.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import keyword
from dataclasses import dataclass, field
from typing import Union

import sympy

from . import formula
from .errors import SpecError

# What a user may ask ssmc.compile / `ssmc compile --schedule` / nn.S4D(schedule=...) for: a compile
# option, never part of the spec; defined here, the leaf that both the IR (ir/schedule.py) and
# ssmc.nn may import, so that the two lists cannot differ. "auto" leaves the choice to the cost
# model (per call, where it depends on shape). "sequential" is the fused one-pass scan (for SISO layers
# the same as its older name "scan"); "chunked" is Mamba-2's state space duality algorithm.
SCHEDULES = ("auto", "scan", "conv", "sequential", "chunked")

SELECTIVE_QUANTITIES = ("dt", "B", "C")
MAX_NAME_LENGTH = 64        # the name goes into package and cache directory names

# Arguments that used to be fields and moved out of the spec: name -> where they went. A user (or an
# old spec file) passing one gets told where it is now, not just "unknown field".
MOVED_FIELDS = {
    "schedule": "schedule is a compile option, not part of the layer: use ssmc.compile(spec, schedule=...) "
                "/ ssmc compile --schedule",
}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise SpecError(message)


def _shorten(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(value) if isinstance(value, str) else '?'} characters)"


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def spec_class(cls):
    """A frozen dataclass whose constructor refuses a misspelt, missing or doubled field with a
    SpecError naming it (and the closest field), instead of dataclasses' bare TypeError."""
    cls = dataclass(frozen=True)(cls)
    init = cls.__init__
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = [f.name for f in fields]
    required = [f.name for f in fields if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        _check_arguments(cls.__name__, names, required, args, kwargs)
        init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


def _check_arguments(owner: str, names: list, required: list, args: tuple, kwargs: dict) -> None:
    if len(args) > len(names):
        raise SpecError(f"{owner} takes at most {len(names)} positional argument(s) ({', '.join(names) or 'none'}), "
                        f"got {len(args)}")
    for key in kwargs:
        if key not in names and key in MOVED_FIELDS:
            raise SpecError(f"{owner}: {MOVED_FIELDS[key]}")
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SpecError(f"{owner}: unknown field {key!r}{hint} (fields: {', '.join(names) or 'none'})")
    twice = [n for n in names[:len(args)] if n in kwargs]
    if twice:
        raise SpecError(f"{owner}: field {twice[0]!r} given both by position and by keyword")
    missing = [n for n in required[len(args):] if n not in kwargs]
    if missing:
        raise SpecError(f"{owner}: missing required field(s) {', '.join(missing)}")


# --------------------------------------------------------------------------------------------
# Structure of A
# --------------------------------------------------------------------------------------------
@spec_class
class Diagonal:
    """A diagonal A with one entry per (channel, state): real (Mamba) or complex (S4D, DSS)."""

    real: bool = True

    def __post_init__(self):
        _require(isinstance(self.real, bool), f"Diagonal.real must be a bool, got {self.real!r}")

    @property
    def is_complex(self) -> bool:
        return not self.real


@spec_class
class Scalar:
    """A = a·I, one scalar per head (Mamba-2): every state of a head decays alike, which is what
    lets the chunked schedule turn the recurrence into matrix products. Real only; needs MultiHead."""

    @property
    def is_complex(self) -> bool:
        return False


AStructure = Union[Diagonal, Scalar]


# --------------------------------------------------------------------------------------------
# Discretization: continuous (A, B) with step dt -> (A_bar, B_bar)
# --------------------------------------------------------------------------------------------
# Every discretization is given as two formulas in the symbols `dt` and `A`:
#     decay       = A_bar                  (h_t = decay * h_{t-1} + ...)
#     input_scale = B_bar / B              (... + input_scale * B * x_t)
# The formulas are the single source of truth: the compiler lowers, splits and (later)
# differentiates them symbolically, so a custom discretization gets kernels for free.
DT, A_SYM = sympy.symbols("dt A")


@spec_class
class ZOH:
    """Zero-order hold on A and B: A_bar = exp(dt A), B_bar = (exp(dt A) - 1) / A · B."""

    def formulas(self):
        return sympy.exp(DT * A_SYM), (sympy.exp(DT * A_SYM) - 1) / A_SYM


@spec_class
class Bilinear:
    """Tustin: A_bar = (1 + dt A/2) / (1 - dt A/2), B_bar = dt / (1 - dt A/2) · B."""

    def formulas(self):
        return (1 + DT * A_SYM / 2) / (1 - DT * A_SYM / 2), DT / (1 - DT * A_SYM / 2)


@spec_class
class Euler:
    """Forward Euler: A_bar = 1 + dt A, B_bar = dt B."""

    def formulas(self):
        return 1 + DT * A_SYM, DT


@spec_class
class MambaZOH:
    """Mamba's simplification: ZOH for A (exp(dt A)), Euler for B (dt B)."""

    def formulas(self):
        return sympy.exp(DT * A_SYM), DT


@spec_class
class Custom:
    """A user formula: sympy expressions (or strings) in the symbols `dt` and `A`.

    Example: ``Custom(decay="exp(dt*A)", input_scale="dt/(1 - dt*A/2)")``. Strings are parsed
    without evaluating code (ssmc.formula); both formulas and their derivatives must use only what
    every backend prints: exp, log, sin, cos, sqrt, + - * /, integer powers from -4 to 4 and
    half-integer ones from -9/2 to 9/2, pi, E, I; exp/log/sin/cos nested at most 3 deep.
    """

    decay: object
    input_scale: object

    def __post_init__(self):
        for name in ("decay", "input_scale"):
            value = getattr(self, name)
            expr = _parse_formula(value, f"Custom.{name}")
            formula.check_discretization(expr, f"Custom.{name}", None, value if isinstance(value, str) else None)
            object.__setattr__(self, name, expr)

    def formulas(self):
        return self.decay, self.input_scale


def _parse_formula(value, field_name: str) -> sympy.Expr:
    """A formula in the canonical symbols DT and A_SYM (a user's own `dt` symbol, whatever its
    assumptions, is renamed onto them, so equal formulas hash equally)."""
    allowed = {"dt": DT, "A": A_SYM}
    if isinstance(value, str):
        return formula.parse(value, field_name, allowed)
    _require(isinstance(value, sympy.Expr),
             f"{field_name} must be a sympy expression or string in dt and A, got {type(value).__name__}")
    extra = {s.name for s in value.free_symbols} - set(allowed)
    _require(not extra, f"{field_name}: unknown symbols {sorted(extra)}, expected only dt and A")
    return value.xreplace({s: allowed[s.name] for s in value.free_symbols})


Discretization = Union[ZOH, Bilinear, Euler, MambaZOH, Custom]
_DISCRETIZATIONS = (ZOH, Bilinear, Euler, MambaZOH, Custom)
DISCRETIZATION_NAMES = {"zoh": ZOH, "bilinear": Bilinear, "euler": Euler, "mamba": MambaZOH}


def discretization_from_name(name) -> Discretization:
    if isinstance(name, _DISCRETIZATIONS):
        return name
    _require(isinstance(name, str) and name.lower() in DISCRETIZATION_NAMES,
             f"discretization must be one of {sorted(DISCRETIZATION_NAMES)} or an ssmc discretization, "
             f"got {name!r}")
    return DISCRETIZATION_NAMES[name.lower()]()


# --------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------
@spec_class
class SISO:
    """One single-input single-output SSM per channel (S4D, DSS, Mamba)."""


@spec_class
class MultiHead:
    """Heads of `headdim` channels sharing one state of (headdim, d_state) per head (Mamba-2):
    the input of a head is a vector x_t (headdim,), B_t and C_t (d_state,) are shared by the heads of
    each of `groups` groups (like grouped-query attention)."""

    headdim: int
    groups: int = 1

    def __post_init__(self):
        _require(_is_positive_int(self.headdim), f"MultiHead.headdim must be a positive int, got {self.headdim!r}")
        _require(_is_positive_int(self.groups), f"MultiHead.groups must be a positive int, got {self.groups!r}")


Heads = Union[SISO, MultiHead]


# --------------------------------------------------------------------------------------------
# The layer
# --------------------------------------------------------------------------------------------
@spec_class
class SSM:
    """A whole SSM layer: h_t = A_bar h_{t-1} + B_bar x_t,  y_t = C h_t (+ D x_t) (· silu(z_t)).

    `selective` names the quantities computed from the input (empty: a linear time-invariant layer).
    For complex A, y = 2·Re(C h): A holds one member of each conjugate pair (S4D's convention).
    """

    name: str
    d_state: int
    A: AStructure = field(default_factory=Diagonal)
    discretization: Discretization = field(default_factory=ZOH)
    selective: tuple = ()
    heads: Heads = field(default_factory=SISO)
    skip_D: bool = True
    gate: bool = False
    dt_softplus: bool = False
    dt_bias: bool = False
    groups: int = 1

    def __post_init__(self):
        _require(isinstance(self.name, str) and self.name.isascii() and self.name.isidentifier()
                 and not keyword.iskeyword(self.name) and len(self.name) <= MAX_NAME_LENGTH,
                 f"name must be an ASCII Python identifier of at most {MAX_NAME_LENGTH} characters "
                 f"(it names the generated package and its cache directory), got {_shorten(self.name)}")
        _require(_is_positive_int(self.d_state), f"d_state must be a positive int, got {self.d_state!r}")
        _require(isinstance(self.A, (Diagonal, Scalar)),
                 f"A must be ssmc.Diagonal(real=...) or ssmc.Scalar(), got {self.A!r}")
        _require(not isinstance(self.A, Scalar) or isinstance(self.heads, MultiHead),
                 f"A=Scalar() (one decay per head, Mamba-2) needs heads=ssmc.MultiHead(headdim=...), "
                 f"got heads={self.heads!r}")
        if isinstance(self.discretization, str):
            object.__setattr__(self, "discretization", discretization_from_name(self.discretization))
        _require(isinstance(self.discretization, _DISCRETIZATIONS),
                 f"discretization must be one of ZOH(), Bilinear(), Euler(), MambaZOH(), Custom(...), "
                 f"got {self.discretization!r}")
        if isinstance(self.selective, str):
            object.__setattr__(self, "selective", (self.selective,))
        _require(isinstance(self.selective, (tuple, list)),
                 f"selective must be a tuple of quantity names, got {self.selective!r}")
        unknown = [q for q in self.selective if q not in SELECTIVE_QUANTITIES]
        if unknown:
            raise SpecError(f"selective={tuple(self.selective)!r}: unknown quantity {unknown[0]!r}, "
                            f"expected one of {', '.join(SELECTIVE_QUANTITIES)}")
        _require(len(set(self.selective)) == len(self.selective),
                 f"selective={tuple(self.selective)!r}: a quantity is listed twice")
        # canonical order, so that equal layers hash equally
        object.__setattr__(self, "selective", tuple(q for q in SELECTIVE_QUANTITIES if q in self.selective))
        _require(isinstance(self.heads, (SISO, MultiHead)),
                 f"heads must be ssmc.SISO() or ssmc.MultiHead(headdim=..., groups=...), got {self.heads!r}")
        if isinstance(self.heads, MultiHead):
            self._check_multihead()
        for flag in ("skip_D", "gate", "dt_softplus", "dt_bias"):
            _require(isinstance(getattr(self, flag), bool), f"{flag} must be a bool, got {getattr(self, flag)!r}")
        _require(_is_positive_int(self.groups), f"groups must be a positive int, got {self.groups!r}")
        _require(self.groups == 1 or ("B" in self.selective or "C" in self.selective),
                 f"groups={self.groups} only applies to input-dependent B or C; expected groups=1 for this spec")
        if isinstance(self.discretization, Custom):
            # only the whole spec knows A's kind: I on a real A, complex parts and their derivatives
            for name, expr in zip(("decay", "input_scale"), self.discretization.formulas()):
                formula.check_discretization(expr, f"Custom.{name}", self.is_complex)

    def _check_multihead(self):
        _require(self.groups == 1, f"groups={self.groups}: with MultiHead heads the groups are "
                                   f"MultiHead(groups=...); expected groups=1 on the SSM")
        _require(not self.is_complex, "MultiHead heads need a real A (Scalar() or Diagonal(real=True)), got complex A")
        _require(self.selective == SELECTIVE_QUANTITIES,
                 f"MultiHead heads need dt, B and C from the input (selective=('dt', 'B', 'C'), the Mamba-2 form), "
                 f"got selective={self.selective!r}")
        decay, _ = self.discretization.formulas()
        _require(isinstance(decay, sympy.exp),
                 f"discretization {type(self.discretization).__name__}: a MultiHead recurrence is computed from "
                 f"log-decays (the chunked schedule's masks are their differences), so its decay must be exp(...) "
                 f"(ZOH(), MambaZOH() or Custom(decay='exp(...)')), got decay {decay}")

    @property
    def log_decay(self) -> sympy.Expr:
        """log(A_bar) of an exp-form decay (MultiHead specs), in dt and A."""
        return self.discretization.formulas()[0].args[0]

    @property
    def is_multihead(self) -> bool:
        return isinstance(self.heads, MultiHead)

    # ----------------------------------------------------------------------------------------
    @property
    def is_complex(self) -> bool:
        return self.A.is_complex

    @property
    def is_lti(self) -> bool:
        return not self.selective

    def is_selective(self, quantity: str) -> bool:
        return quantity in self.selective

    def replace(self, **changes) -> "SSM":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict:
        """A canonical, JSON-serialisable description; its hash is the spec's cache key."""
        decay, scale = self.discretization.formulas()
        return {
            "name": self.name, "d_state": self.d_state,
            "A": {"structure": type(self.A).__name__, "complex": self.is_complex},
            "discretization": {"kind": type(self.discretization).__name__,
                               "decay": sympy.srepr(decay), "input_scale": sympy.srepr(scale)},
            "selective": list(self.selective),
            "heads": (type(self.heads).__name__ if not self.is_multihead else
                      {"kind": "MultiHead", "headdim": self.heads.headdim, "groups": self.heads.groups}),
            "skip_D": self.skip_D, "gate": self.gate, "dt_softplus": self.dt_softplus,
            "dt_bias": self.dt_bias, "groups": self.groups,
        }

    def content_hash(self) -> str:
        text = json.dumps(self.to_json(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
