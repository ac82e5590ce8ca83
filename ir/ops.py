"""The IR's ops: frozen payloads, one per graph node.

Each node of the dataflow graph stores exactly one op (never a mutable attribute dict, which goes
stale under rewriting). Ops are immutable: a pass builds a new op with `dataclasses.replace` and
swaps it in. Shapes are tuples of dimension names (`batch`, `dim`, `len`, `state`, `groups`, or any
other: ir/dims.py) that stand for sympy symbols; dtypes are `real`, `complex` or `pair` (a complex value lowered to
two real numbers, since Triton and C kernels have no complex type).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

import sympy

DTYPES = ("real", "complex", "pair")


@dataclass(frozen=True)
class Op:
    """Base of every op. `inputs` are the names of the values this op reads, in order."""

    name: str
    inputs: tuple = ()
    shape: tuple | None = None
    dtype: str = "real"
    kind: ClassVar[str] = "op"

    def replace(self, **changes) -> "Op":
        return dataclasses.replace(self, **changes)

    def attributes(self) -> dict:
        """The op's own fields (besides name/inputs/shape/dtype), for printing and JSON."""
        skip = {"name", "inputs", "shape", "dtype"}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}


@dataclass(frozen=True)
class Input(Op):
    """A tensor given per call: it carries the batch and time axes (u, delta, z; selective B, C)."""

    role: str = ""
    kind: ClassVar[str] = "input"


@dataclass(frozen=True)
class Param(Op):
    """A per-layer tensor (A, D, dt_bias; dt, B, C of a time-invariant layer)."""

    role: str = ""
    kind: ClassVar[str] = "param"


@dataclass(frozen=True)
class Elementwise(Op):
    """A pointwise sympy expression whose free symbols are the names of the op's inputs.

    After complex splitting, `parts` holds the (real, imaginary) expressions over real symbols
    `<input>_re`, `<input>_im`, and `expr` is kept for printing.
    """

    expr: sympy.Expr = sympy.S.Zero
    parts: tuple | None = None
    kind: ClassVar[str] = "elementwise"


@dataclass(frozen=True)
class Discretize(Op):
    """(dt, A) -> (decay, input_scale) by a named method; lowered to two Elementwise ops."""

    method: str = "zoh"
    decay: sympy.Expr = sympy.S.Zero
    input_scale: sympy.Expr = sympy.S.Zero
    kind: ClassVar[str] = "discretize"


@dataclass(frozen=True)
class RecurrenceOp(Op):
    """The linear recurrence and its readout as one node, described by a structured `Recurrence`
    (ir/recurrence.py): h_t = decay_t ⊙ h_{t-1} + scale_t·B_t·u_t, y_t = Σ_state C_t ⊙ h_t (twice the
    real part for complex conjugate pairs).

    Its value is y (batch, dim, len); `%<name>:final` is the last state (batch, dim, state). The
    (batch, dim, len, state) sequence of states is never a value of the graph, not even before
    fusion: no pass can ask for it. Inputs are in `ROLES` order, and passes find them by role
    (`operand("C")`), never by a value's name.
    """

    recurrence: object = None
    direction: str = "forward"
    kind: ClassVar[str] = "recurrence"
    ROLES: ClassVar[tuple] = ("decay", "input_scale", "B", "u", "C")
    PORTS: ClassVar[dict] = {"final": ("batch", "dim", "state")}

    def operand(self, role: str) -> str:
        return self.inputs[self.ROLES.index(role)]

    @property
    def real_part_doubled(self) -> bool:
        return self.recurrence.readout.startswith("2·Re")


@dataclass(frozen=True)
class KernelGen(Op):
    """The convolution kernel K[dim, len] of a time-invariant SSM (Vandermonde: Σ_n c_n · a_n^l)."""

    method: str = "vandermonde"
    kind: ClassVar[str] = "kernelgen"


@dataclass(frozen=True)
class FFTConv(Op):
    """Causal convolution of x (batch, dim, len) with K (dim, len) by FFT, zero-padded to 2·len."""

    kind: ClassVar[str] = "fftconv"


@dataclass(frozen=True)
class Select(Op):
    """Two equivalent computations of one value; `use_first` (a sympy predicate over the
    dimension symbols) picks the first at run time. Emitted where the cost model's choice
    depends on shapes known only at call time."""

    use_first: sympy.Basic = sympy.true
    kind: ClassVar[str] = "select"


@dataclass(frozen=True)
class Fused(Op):
    """A group of ops fused into one kernel. `plan` is the backend contract (see ir.plans);
    `members` names the ops it replaced, `outputs` the (port, shape) of each value it writes to
    memory, read by other ops as `%name:port`."""

    plan: object = None
    members: tuple = ()
    outputs: tuple = ()
    kind: ClassVar[str] = "fused"


@dataclass(frozen=True)
class Output(Op):
    """A value the layer returns."""

    kind: ClassVar[str] = "output"


OP_TYPES = {cls.kind: cls for cls in (Input, Param, Elementwise, Discretize, RecurrenceOp, KernelGen,
                                      FFTConv, Select, Fused, Output)}
