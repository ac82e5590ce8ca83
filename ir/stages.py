"""Stage kernels and their operand tables: the one contract between the compiler and the runtime.

A pipeline (ir/pipelines.py) is a list of stages; each stage is one kernel per backend with a table
of operands — name, dimensions (names, in memory order: the layout), dtype, optional, direction —
and integer parameters. The compiler writes the tables into the generated package
(`operands.json`); the runtime (`ssmc.runtime.stages`) derives from them everything that is about
operands: the torch.library schema of each stage op, its fake kernel (output shapes from the input
shapes bound to dimension names), the argument checks, and the C ABI (pointers in table order, then
the dimension sizes in `dims` order, then the parameters: `ctypes` argtypes). No operand list is
written by hand anywhere else.

The stages below are those of the multi-head recurrence with one decay per (batch, step, head)
(Mamba-2's SSD), in the "core" form that every pipeline shares:

    h_t = exp(log_decay_t) · keep_t · h_{t-1} + u_t ⊗ B_t      (headdim, state) per (batch, head)
    y_t = h_t · C_t                                            (headdim,)

`keep_t` = [seq_idx_t == seq_idx_{t-1}] (seq_idx_{-1} = 0) resets the state at sequence boundaries.
Heads read u, B and C by group: head h reads u[:, :, h // (heads // u_heads)] and likewise for B and
C, so grouped B/C (Mamba-2) and per-head operands are one stage. The derived backward reuses the
same stages with the operands permuted (ssmc.runtime.ssd), which is why u is grouped too.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

FLOAT = "float"      # float32, or float64 when the call computes in float64 (gradcheck)
INDEX = "int64"


@dataclass(frozen=True)
class Operand:
    """One tensor of a stage: `dims` name its axes in memory order (C-contiguous)."""

    name: str
    dims: tuple
    dtype: str = FLOAT
    optional: bool = False
    doc: str = ""
    mutated: bool = False     # an input the kernel updates in place (a decoding state)


@dataclass(frozen=True)
class Stage:
    """One kernel of a pipeline. `dims` is the order in which the C ABI passes dimension sizes
    (every dimension of every operand, plus `params`, which are integers chosen by the schedule)."""

    name: str
    doc: str
    inputs: tuple
    outputs: tuple
    params: tuple = ()
    dims: tuple = field(default=())
    # relations between sizes the kernels rely on, checked by the runtime before any launch:
    # ("divides", d, e): size d divides size e; ("covers", c, k, e): c·k >= e
    checks: tuple = ()

    def __post_init__(self):
        if not self.dims:
            seen = []
            for operand in self.inputs + self.outputs:
                seen += [d for d in operand.dims if d not in seen]
            object.__setattr__(self, "dims", tuple(seen))
        names = [o.name for o in self.inputs + self.outputs]
        assert len(set(names)) == len(names), f"stage {self.name}: an operand name is used twice"
        for operand in self.outputs:
            assert not operand.optional, f"stage {self.name}: output {operand.name} cannot be optional"
            assert set(operand.dims) <= set(self.dims), f"stage {self.name}: output {operand.name} has a free dim"

    def to_json(self) -> dict:
        return {"name": self.name, "doc": self.doc, "dims": list(self.dims), "params": list(self.params),
                "checks": [list(check) for check in self.checks],
                "inputs": [_operand_json(o) for o in self.inputs],
                "outputs": [_operand_json(o) for o in self.outputs]}

    def content_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]


def _operand_json(operand: Operand) -> dict:
    data = asdict(operand)
    data["dims"] = list(operand.dims)
    return data


# ---- the operands of the multi-head recurrence ------------------------------------------------------
U = Operand("u", ("batch", "len", "u_heads", "headdim"), doc="input, already scaled by the discretization")
LOG_DECAY = Operand("log_decay", ("batch", "len", "heads"), doc="log of each step's decay (<= 0 for a stable layer)")
B = Operand("B", ("batch", "len", "b_heads", "state"))
C = Operand("C", ("batch", "len", "c_heads", "state"))
H0 = Operand("h0", ("batch", "heads", "headdim", "state"), optional=True, doc="state before the first step")
SEQ_IDX = Operand("seq_idx", ("batch", "len"), dtype=INDEX, optional=True,
                  doc="sequence id of each step, non-decreasing; the state resets where it changes")
Y = Operand("y", ("batch", "len", "heads", "headdim"))
FINAL = Operand("final", ("batch", "heads", "headdim", "state"), doc="state after the last step")
CUM = Operand("cum", ("batch", "heads", "chunks", "chunk"),
              doc="cumulative log-decay from each chunk's start, 0 past the end")
STATES = Operand("states", ("batch", "chunks", "heads", "headdim", "state"))
ENTERING = Operand("entering", ("batch", "chunks", "heads", "headdim", "state"), doc="state entering each chunk")
CARRY = Operand("carry", ("batch", "heads", "chunks"),
                doc="factor carrying the state across each chunk: exp(chunk log-decay), 0 at a sequence start")
ENTERING_IDS = Operand("entering_ids", ("batch", "chunks"), dtype=INDEX, optional=True,
                       doc="sequence id of the state entering each chunk (the previous chunk's last id; 0 first)")

GROUPED = tuple(("divides", groups, "heads") for groups in ("u_heads", "b_heads", "c_heads"))
COVERS_LEN = (("covers", "chunks", "chunk", "len"),)

SSD_SCAN = Stage(
    "ssd_scan",
    "the sequential schedule: one pass over time per (batch, head), the state in registers/cache",
    inputs=(U, LOG_DECAY, B, C, H0, SEQ_IDX), outputs=(Y, FINAL), checks=GROUPED)

CHUNK_STATE = Stage(
    "chunk_state",
    "each chunk's own state at its last step, from a zero state: a (headdim x chunk)(chunk x state) "
    "product weighted by exp(cum_last - cum_l), over the steps of the chunk's last sequence",
    inputs=(U, CUM, B, SEQ_IDX), outputs=(STATES,), checks=GROUPED[:2] + COVERS_LEN)

STATE_PASSING = Stage(
    "state_passing",
    "the states entering each chunk: entering_0 = h0, entering_{c+1} = carry_c · entering_c + states_c",
    inputs=(STATES, CARRY, H0), outputs=(ENTERING, FINAL))

CHUNK_SCAN = Stage(
    "chunk_scan",
    "each chunk's outputs: the masked product (C B^T ∘ exp(cum_i - cum_j))·u inside the chunk, plus the "
    "entering state read out through exp(cum_i)",
    inputs=(U, CUM, B, C, ENTERING, SEQ_IDX, ENTERING_IDS), outputs=(Y,), checks=GROUPED + COVERS_LEN)

SSD_STEP = Stage(
    "ssd_step",
    "one decoding step: the state is updated in place, h = exp(log_decay)·h + u ⊗ B, and read out, y = h·C",
    inputs=(Operand("u", ("batch", "u_heads", "headdim")), Operand("log_decay", ("batch", "heads")),
            Operand("B", ("batch", "b_heads", "state")), Operand("C", ("batch", "c_heads", "state")),
            Operand("ssm_state", ("batch", "heads", "headdim", "state"), mutated=True,
                    doc="the decoding state (mamba_ssm's name)")),
    outputs=(Operand("y", ("batch", "heads", "headdim")),), checks=GROUPED)

MULTIHEAD_STAGES = {stage.name: stage for stage in (SSD_SCAN, CHUNK_STATE, STATE_PASSING, CHUNK_SCAN, SSD_STEP)}


def stage_lines(stages, width: int = 13) -> list:
    """The stages and their operand tables as `ssmc explain` and ir.txt print them."""
    lines = []
    for stage in stages:
        lines.append(f"  {stage.name}: {stage.doc}")
        for direction, operands in (("in ", stage.inputs), ("out", stage.outputs)):
            for o in operands:
                lines.append(f"      {direction} {o.name:<{width}}({', '.join(o.dims)}) {o.dtype}"
                             f"{' optional' if o.optional else ''}")
    return lines


def operand_tables(stages) -> dict:
    """{stage name: table}: what the package's operands.json holds."""
    return {stage.name: stage.to_json() for stage in stages}
