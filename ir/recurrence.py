"""The structured recurrence: one op that says what a linear recurrence is, not how it runs.

    h_t = decay_t ⊙ h_{t-1} + input_t,      y_t = readout(h_t)

Its parts are data a pass can match on (never a value's name): the state's dimensions per (batch,
head), the decay's kind (one per head — Mamba-2's scalar A —, one per state entry — Mamba's and
GLA's diagonal A —, later one given by an input), and the input and readout as contractions written
like einsum over named dimensions. SISO (Mamba, S4D, DSS: a state of `state` entries per (batch,
channel)), multi-head (Mamba-2, GLA: (headdim, state) per (batch, head)) and MIMO (S5's dense B and
C) recurrences are this one op with different contractions. Every operand carries its
layout (dimension names in memory order), so (batch, len, heads, headdim) inputs need no transposes.
"""
from __future__ import annotations

from dataclasses import dataclass

DECAY_KINDS = ("per_head", "per_state", "input")


@dataclass(frozen=True)
class Recurrence:
    state: tuple            # dimensions of h per (batch, head), e.g. ("headdim", "state")
    decay: str              # one of DECAY_KINDS
    input: str              # contraction forming input_t, e.g. "u[headdim], B[state] -> h[headdim, state]"
    readout: str            # contraction reading y_t, e.g. "h[headdim, state], C[state] -> y[headdim]"
    layouts: tuple          # ((operand, (dims in memory order)), ...)
    resets: bool = True     # the state may reset at sequence boundaries (packed variable-length batches)
    over: tuple = ("batch", "heads")    # the dimensions that index independent states

    def __post_init__(self):
        assert self.decay in DECAY_KINDS, self.decay

    def layout(self, operand: str) -> tuple:
        return dict(self.layouts)[operand]

    def varies_over_time(self, operand: str) -> bool:
        return "len" in self.layout(operand)

    def dump(self) -> str:
        lines = [f"recurrence  state ({', '.join(self.state)}) per ({', '.join(self.over)}); decay {self.decay}"
                 f"{'; resets at sequence boundaries' if self.resets else ''}",
                 f"  input    {self.input}", f"  readout  {self.readout}"]
        lines += [f"  {name:<10} ({', '.join(dims)})" for name, dims in self.layouts]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"state": list(self.state), "decay": self.decay, "input": self.input, "readout": self.readout,
                "layouts": {name: list(dims) for name, dims in self.layouts}, "resets": self.resets,
                "over": list(self.over)}

    @classmethod
    def from_json(cls, data: dict) -> "Recurrence":
        """Read back from graph.json: plain strings and lists only, nothing evaluated."""
        return cls(state=tuple(data["state"]), decay=str(data["decay"]), input=str(data["input"]),
                   readout=str(data["readout"]),
                   layouts=tuple((str(name), tuple(dims)) for name, dims in data["layouts"].items()),
                   resets=bool(data["resets"]), over=tuple(data.get("over", ("batch", "heads"))))


def siso_recurrence(spec) -> Recurrence:
    """The recurrence of a SISO spec (Mamba, S4D, DSS): one state of `state` entries per (batch,
    channel), a decay per entry (diagonal A), input scale·B·u, readout Σ C ⊙ h (2·Re of it for
    complex conjugate pairs). Time-invariant operands have no batch or len; selective B and C are
    read by group, time last (mamba_ssm's layout)."""
    def operand(name, fixed):
        return ("batch", "groups", "state", "len") if spec.is_selective(name) else fixed
    readout = "2·Re(h[state], C[state]) -> y[]" if spec.is_complex else "h[state], C[state] -> y[]"
    return Recurrence(
        state=("state",), decay="per_state", over=("batch", "dim"), resets=False,
        input="scale[state], B[state], u[] -> h[state]", readout=readout,
        layouts=(("u", ("batch", "dim", "len")),
                 ("dt", ("batch", "dim", "len") if spec.is_selective("dt") else ("dim",)),
                 ("A", ("dim", "state")), ("B", operand("B", ("dim", "state"))),
                 ("C", operand("C", ("dim", "state"))), ("h", ("batch", "dim", "state"))))


def multihead_recurrence(spec) -> Recurrence:
    """The recurrence of a MultiHead spec: state (headdim, state) per head, B/C read by group."""
    decay = "per_head" if type(spec.A).__name__ == "Scalar" else "per_state"
    return Recurrence(
        state=("headdim", "state"), decay=decay,
        input="u[headdim], B[state] -> h[headdim, state]",
        readout="h[headdim, state], C[state] -> y[headdim]",
        layouts=(("x", ("batch", "len", "heads", "headdim")), ("dt", ("batch", "len", "heads")),
                 ("A", ("heads",) if decay == "per_head" else ("heads", "state")),
                 ("B", ("batch", "len", "groups", "state")), ("C", ("batch", "len", "groups", "state")),
                 ("h", ("batch", "heads", "headdim", "state"))))


def mimo_recurrence(spec) -> Recurrence:
    """The recurrence of a MIMO spec (S5): one diagonal state of `state` entries per batch element,
    shared by the H channels: input B[state, H]·u[H] (times the discretization's input scale), readout
    C[H, state]·h (2·Re of it with conjugate symmetry). The decay is per state, and varies over time
    only with an input-dependent step."""
    varying = spec.is_selective("dt")
    readout = "2·Re(C[H, state], h[state]) -> y[H]" if spec.heads.conj_sym else \
        ("Re(C[H, state], h[state]) -> y[H]" if spec.is_complex else "C[H, state], h[state] -> y[H]")
    return Recurrence(
        state=("state",), decay="per_state", over=("batch",),
        input="B[state, H], u[H] -> h[state]", readout=readout,
        layouts=(("u", ("batch", "len", "H")), ("dt", ("batch", "len", "state") if varying else ("state",)),
                 ("A", ("state",)), ("B", ("state", "H")), ("C", ("H", "state")), ("h", ("batch", "state"))))
