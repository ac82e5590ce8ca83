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
# the same as its older name "scan"); "chunked" is Mamba-2's state space duality algorithm;
# "associative" and "fused" are the MIMO (S5) pipelines (ir/mimo.py).
SCHEDULES = ("auto", "scan", "conv", "sequential", "chunked", "associative", "fused")

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


# names a gated layer's functional form already uses, which its declared inputs cannot take
RESERVED_INPUT_NAMES = ("q", "k", "v", "u", "scale", "initial_state", "output_final_state", "cu_seqlens",
                        "chunk_size", "reverse", "D", "z", "dt", "A", "pi", "E", "I")


@spec_class
class InputDecay:
    """Decays given by the layer's own inputs, per step (GLA, RWKV-6, simple GLA / RetNet): the log of
    the decay is `log_decay`, a formula in the declared `inputs` (each a tensor the layer is called
    with), e.g. ``InputDecay(per="state", log_decay="g", inputs=("g",))`` (GLA's gk) or
    ``InputDecay(log_decay="-exp(w)", inputs=("w",))`` (RWKV-6's w). `per="state"`: one decay per
    (head, state entry), the input (batch, len, heads, d_state); `per="head"`: one per head (simple
    GLA), the input (batch, len, heads). There is no dt and no continuous-time A: the spec's
    discretization is `Given()`. Needs MultiHead heads (state d_state x headdim per head)."""

    per: str = "state"
    log_decay: object = "g"
    inputs: tuple = ("g",)

    def __post_init__(self):
        _require(self.per in ("state", "head"), f"InputDecay.per must be 'state' or 'head', got {self.per!r}")
        inputs = (self.inputs,) if isinstance(self.inputs, str) else self.inputs
        _require(isinstance(inputs, (tuple, list)) and len(inputs) > 0,
                 f"InputDecay.inputs must be a non-empty tuple of input names, got {_shorten(self.inputs)}")
        for name in inputs:
            _require(isinstance(name, str) and name.isascii() and name.isidentifier() and not keyword.iskeyword(name)
                     and len(name) <= MAX_NAME_LENGTH,
                     f"InputDecay.inputs: each name must be an ASCII Python identifier, got {_shorten(name)}")
            _require(name not in RESERVED_INPUT_NAMES,
                     f"InputDecay.inputs: {name!r} is taken by the layer's own arguments "
                     f"({', '.join(RESERVED_INPUT_NAMES)}); choose another name")
        _require(len(set(inputs)) == len(inputs), f"InputDecay.inputs: a name is listed twice in {tuple(inputs)!r}")
        object.__setattr__(self, "inputs", tuple(inputs))
        symbols = {name: sympy.Symbol(name, real=True) for name in inputs}
        text = self.log_decay if isinstance(self.log_decay, str) else None
        if isinstance(self.log_decay, str):
            expr = formula.parse(self.log_decay, "InputDecay.log_decay", symbols)
        else:
            _require(isinstance(self.log_decay, sympy.Expr),
                     f"InputDecay.log_decay must be a formula string or sympy expression, got "
                     f"{type(self.log_decay).__name__}")
            extra = {s.name for s in self.log_decay.free_symbols} - set(symbols)
            _require(not extra, f"InputDecay.log_decay: unknown symbols {sorted(extra)}, expected only the "
                                f"declared inputs {list(inputs)}")
            expr = self.log_decay.xreplace({s: symbols[s.name] for s in self.log_decay.free_symbols})
        _require(bool(expr.free_symbols), f"InputDecay.log_decay: {expr} uses none of the inputs {list(inputs)}")
        formula.check_printable(expr, "InputDecay.log_decay", allow_complex=False, text=text)
        object.__setattr__(self, "log_decay", expr)

    @property
    def is_complex(self) -> bool:
        return False


AStructure = Union[Diagonal, Scalar, InputDecay]


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


@spec_class
class Given:
    """No discretization: the decay is given by the layer's inputs (A=InputDecay) and the input enters
    unscaled (h_t = decay_t ⊙ h_{t-1} + k_t ⊗ v_t). The default, and the only choice, with InputDecay."""

    def formulas(self):
        return sympy.exp(sympy.Symbol("log_decay", real=True)), sympy.Integer(1)


Discretization = Union[ZOH, Bilinear, Euler, MambaZOH, Custom, Given]
_DISCRETIZATIONS = (ZOH, Bilinear, Euler, MambaZOH, Custom, Given)
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


@spec_class
class MIMO:
    """One shared diagonal state per layer with dense projections around it (S5): the input u_t (H,)
    enters through B (state x H), the output is read out through C (H x state). `conj_sym`: the state
    holds one member of each conjugate pair and y = 2·Re(C h) (complex A only); `bidirectional`: a
    second scan runs backward in time, read out by its own C (S5's bidirectional layers)."""

    conj_sym: bool = True
    bidirectional: bool = False

    def __post_init__(self):
        for name in ("conj_sym", "bidirectional"):
            _require(isinstance(getattr(self, name), bool), f"MIMO.{name} must be a bool, got {getattr(self, name)!r}")


Heads = Union[SISO, MultiHead, MIMO]


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
    discretization: Discretization = None       # ZOH(), or Given() for A=InputDecay
    selective: tuple = ()
    heads: Heads = field(default_factory=SISO)
    skip_D: bool = True
    gate: bool = False
    dt_softplus: bool = False
    dt_bias: bool = False
    groups: int = 1
    bonus: bool = False        # RWKV-6's current-token term (needs A=InputDecay(per="state"))

    def __post_init__(self):
        _require(isinstance(self.name, str) and self.name.isascii() and self.name.isidentifier()
                 and not keyword.iskeyword(self.name) and len(self.name) <= MAX_NAME_LENGTH,
                 f"name must be an ASCII Python identifier of at most {MAX_NAME_LENGTH} characters "
                 f"(it names the generated package and its cache directory), got {_shorten(self.name)}")
        _require(_is_positive_int(self.d_state), f"d_state must be a positive int, got {self.d_state!r}")
        _require(isinstance(self.A, (Diagonal, Scalar, InputDecay)),
                 f"A must be ssmc.Diagonal(real=...), ssmc.Scalar() or ssmc.InputDecay(...), got {self.A!r}")
        if self.discretization is None:
            object.__setattr__(self, "discretization", Given() if isinstance(self.A, InputDecay) else ZOH())
        _require(not isinstance(self.A, Scalar) or isinstance(self.heads, MultiHead),
                 f"A=Scalar() (one decay per head, Mamba-2) needs heads=ssmc.MultiHead(headdim=...), "
                 f"got heads={self.heads!r}")
        if isinstance(self.discretization, str):
            object.__setattr__(self, "discretization", discretization_from_name(self.discretization))
        _require(isinstance(self.discretization, Given) == isinstance(self.A, InputDecay),
                 f"discretization={self.discretization!r}: A=InputDecay(...) gives the decay directly and takes "
                 f"discretization=ssmc.Given() (the default), and Given() needs A=InputDecay(...); got A={self.A!r}")
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
        _require(isinstance(self.heads, (SISO, MultiHead, MIMO)),
                 f"heads must be ssmc.SISO(), ssmc.MultiHead(headdim=..., groups=...) or ssmc.MIMO(conj_sym=..., "
                 f"bidirectional=...), got {self.heads!r}")
        if isinstance(self.A, InputDecay):
            self._check_gated()
        elif isinstance(self.heads, MultiHead):
            self._check_multihead()
        if isinstance(self.heads, MIMO):
            self._check_mimo()
        for flag in ("skip_D", "gate", "dt_softplus", "dt_bias", "bonus"):
            _require(isinstance(getattr(self, flag), bool), f"{flag} must be a bool, got {getattr(self, flag)!r}")
        _require(not self.bonus or self.is_gated, "bonus=True (RWKV-6's current-token term) needs A=ssmc.InputDecay(...)")
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

    def _check_mimo(self):
        _require(isinstance(self.A, Diagonal), f"MIMO heads (S5) need a diagonal A (ssmc.Diagonal(real=...)), "
                                               f"got A={self.A!r}")
        _require(not self.heads.conj_sym or self.is_complex,
                 "MIMO(conj_sym=True) keeps one member of each conjugate pair, so A must be complex "
                 "(ssmc.Diagonal(real=False)); use MIMO(conj_sym=False) with a real A")
        for quantity in ("B", "C"):
            _require(quantity not in self.selective,
                     f"selective={self.selective!r}: MIMO heads (S5) take fixed projections B (state x H) and C "
                     f"(H x state); an input-dependent {quantity} is not supported (expected selective=() or ('dt',))")
        for flag in ("gate",):
            _require(not getattr(self, flag), f"{flag}=True: MIMO heads (S5) have no output gate; expected {flag}=False")
        _require(self.groups == 1, f"groups={self.groups}: MIMO heads have no groups; expected groups=1")

    def _check_gated(self):
        _require(isinstance(self.heads, MultiHead),
                 f"A=InputDecay(...) (GLA-style decays) needs heads=ssmc.MultiHead(headdim=...), got heads={self.heads!r}")
        _require(self.heads.groups == 1, f"A=InputDecay(...): queries and keys are per head, expected "
                                         f"MultiHead(groups=1), got groups={self.heads.groups}")
        _require(self.selective == ("B", "C"),
                 f"A=InputDecay(...): keys (B) and queries (C) come from the input and there is no dt, so "
                 f"selective=('B', 'C'), got selective={self.selective!r}")
        _require(not (self.dt_softplus or self.dt_bias),
                 "A=InputDecay(...) has no dt: expected dt_softplus=False and dt_bias=False")
        _require(not self.bonus or self.A.per == "state",
                 "bonus=True (RWKV-6's current-token term u ⊙ k_t) needs A=InputDecay(per='state')")

    @property
    def family(self) -> str:
        """Which lowering the spec takes: "gated" (ir/gla.py), "multihead" (ir/multihead.py), "mimo"
        (ir/mimo.py) or "siso" (the graph passes)."""
        if self.is_gated:
            return "gated"
        if self.is_multihead:
            return "multihead"
        return "mimo" if self.is_mimo else "siso"

    @property
    def is_gated(self) -> bool:
        """Decays given by the layer's inputs (GLA / RWKV-6 / simple GLA): ir/gla.py lowers it."""
        return isinstance(self.A, InputDecay)

    @property
    def log_decay(self) -> sympy.Expr:
        """log(A_bar) of an exp-form decay (MultiHead specs), in dt and A."""
        return self.discretization.formulas()[0].args[0]

    @property
    def is_multihead(self) -> bool:
        return isinstance(self.heads, MultiHead)

    @property
    def is_mimo(self) -> bool:
        return isinstance(self.heads, MIMO)

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
            "heads": (type(self.heads).__name__ if isinstance(self.heads, SISO) else
                      {"kind": "MultiHead", "headdim": self.heads.headdim, "groups": self.heads.groups}
                      if self.is_multihead else
                      {"kind": "MIMO", "conj_sym": self.heads.conj_sym, "bidirectional": self.heads.bidirectional}),
            "skip_D": self.skip_D, "gate": self.gate, "dt_softplus": self.dt_softplus,
            "dt_bias": self.dt_bias, "groups": self.groups,
        } | (self._gated_json() if self.is_gated else {})

    def _gated_json(self) -> dict:
        """What only gated specs have (so that every other spec keeps its content hash)."""
        return {"A": {"structure": "InputDecay", "complex": False, "per": self.A.per,
                      "log_decay": sympy.srepr(self.A.log_decay), "inputs": list(self.A.inputs)},
                "bonus": self.bonus}

    def content_hash(self) -> str:
        text = json.dumps(self.to_json(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
