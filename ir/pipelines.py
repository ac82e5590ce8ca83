"""Schedules of a structured recurrence as pipelines of stage kernels, ranked by a cost model.

A pipeline is a frozen record — its name and its parameters (the chunk size) — so a choice can be
stored and replayed exactly: `lower(spec, schedule=PipelineRecord("chunked", chunk=128))` builds the
package that always runs that pipeline; `"auto"` keeps every legal candidate and the generated
module picks the cheapest per call shape, from the cost formulas printed into it. A pipeline whose
precondition the recurrence breaks raises ScheduleError naming the precondition.

Cost model (flop-equivalents, per call; constants from measurements on a 2-core AVX-512 CPU, to be
replaced by tuning): the sequential scan does 2·P·N multiply-adds per (batch, head, step) but they
are dependent in time and run at SEQUENTIAL_EFFICIENCY of a matrix product's speed; the chunked
form does, per chunk of Q steps, Q²·N (scores) + Q²·P (scores·u) + 2·Q·P·N (chunk states and the
entering state's readout) as matrix products, plus the state passing's P·N per chunk.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import sympy

from ..errors import ScheduleError
from .stages import CHUNK_SCAN, CHUNK_STATE, SSD_SCAN, STATE_PASSING

PIPELINE_NAMES = ("sequential", "chunked")
CHUNK_SIZES = (64, 128, 256)          # the candidates of "auto"; any power of two from 8 may be recorded
DIMS = {name: sympy.Symbol(name, positive=True, integer=True)
        for name in ("batch", "len", "heads", "headdim", "state")}
SEQUENTIAL_EFFICIENCY = sympy.Rational(1, 2)  # a dependent step vs a matrix product, per multiply-add
STEP_OVERHEAD = 2 ** 10                        # per dependent step of a pipeline (a loop trip, a chunk)


@dataclass(frozen=True)
class PipelineRecord:
    name: str
    chunk: int = 0

    def __post_init__(self):
        if self.name not in PIPELINE_NAMES:
            raise ScheduleError(f"pipeline must be one of {PIPELINE_NAMES}, got {self.name!r}")
        if self.name == "chunked":
            if isinstance(self.chunk, bool) or not isinstance(self.chunk, int) or self.chunk < 8 \
                    or self.chunk & (self.chunk - 1) or self.chunk > 1024:
                raise ScheduleError(f"chunked: chunk must be a power of two from 8 to 1024, got {self.chunk!r}")
        elif self.chunk != 0:
            raise ScheduleError(f"{self.name}: takes no chunk size, got chunk={self.chunk!r}")

    @property
    def text(self) -> str:
        return f"chunked{self.chunk}" if self.name == "chunked" else self.name

    @property
    def stages(self) -> tuple:
        return (SSD_SCAN,) if self.name == "sequential" else (CHUNK_STATE, STATE_PASSING, CHUNK_SCAN)

    def cost(self) -> sympy.Expr:
        b, L, H, P, N = DIMS.values()
        if self.name == "sequential":
            return b * H * L * 2 * P * N / SEQUENTIAL_EFFICIENCY + STEP_OVERHEAD * L
        Q = self.chunk
        chunks = sympy.ceiling(L / Q)
        per_chunk = Q * Q * N + Q * Q * P / 2 + 2 * Q * P * N + P * N
        return b * H * chunks * per_chunk + STEP_OVERHEAD * chunks

    def to_json(self) -> dict:
        return {"pipeline": self.name, "chunk": self.chunk}

    @classmethod
    def from_json(cls, data: dict) -> "PipelineRecord":
        if not isinstance(data, dict) or set(data) - {"pipeline", "chunk"}:
            raise ScheduleError(f"a pipeline record is {{'pipeline': name, 'chunk': int}}, got {data!r}")
        return cls(data.get("pipeline"), data.get("chunk", 0))


def check_legal(recurrence, record: PipelineRecord) -> None:
    """ScheduleError naming the precondition `recurrence` breaks for `record`, if any."""
    if recurrence.decay != "per_head":
        raise ScheduleError(f"{record.text}: the stage kernels so far take one decay per head (A=ssmc.Scalar()); "
                            f"a {recurrence.decay.replace('_', ' ')} decay with MultiHead heads needs the "
                            f"GLA-style stages, which are not implemented yet")


@dataclass(frozen=True)
class MultiHeadSchedule:
    """The request and what it allows: one fixed record, or every legal candidate ranked per call."""

    request: str
    candidates: tuple        # PipelineRecords, in the order the cost model breaks ties

    @property
    def fixed(self) -> bool:
        return len(self.candidates) == 1

    @property
    def stages(self) -> tuple:
        seen = []
        for record in self.candidates:
            seen += [s for s in record.stages if s not in seen]
        return tuple(seen)

    def costs(self) -> dict:
        return {record.text: record.cost() for record in self.candidates}

    def choose(self, shape: dict) -> PipelineRecord:
        values = {record: float(record.cost().subs({DIMS[k]: v for k, v in shape.items() if k in DIMS}))
                  for record in self.candidates}
        return min(self.candidates, key=lambda r: values[r])

    def to_json(self) -> dict:
        return {"request": self.request, "candidates": [r.to_json() | {"cost": str(r.cost())} for r in self.candidates]}

    def content_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]

    def dump(self) -> str:
        lines = [f"schedule {self.content_hash()}  (request {self.request}: "
                 f"{'fixed' if self.fixed else 'the cheapest candidate per call shape'})"]
        for record in self.candidates:
            lines.append(f"  {record.text}: stages {' -> '.join(s.name for s in record.stages)}")
            lines.append(f"      cost = {record.cost()}")
        return "\n".join(lines)


def plan(recurrence, request) -> MultiHeadSchedule:
    """The schedule of `recurrence` for a request: "auto", "sequential" (alias "scan"), "chunked"
    (the cost model picks the chunk size per call), or a PipelineRecord / its JSON to replay."""
    if isinstance(request, dict):
        request = PipelineRecord.from_json(request)
    if isinstance(request, PipelineRecord):
        candidates, text = (request,), request.text
    elif request == "auto":
        candidates, text = (PipelineRecord("sequential"),) + tuple(PipelineRecord("chunked", q) for q in CHUNK_SIZES), request
    elif request in ("sequential", "scan"):
        candidates, text = (PipelineRecord("sequential"),), "sequential"
    elif request == "chunked":
        candidates, text = tuple(PipelineRecord("chunked", q) for q in CHUNK_SIZES), request
    elif request == "conv":
        raise ScheduleError("conv: the convolution schedule needs a time-invariant recurrence, and this one's "
                            "dt, B and C vary over time (selective); use 'auto', 'sequential' or 'chunked'")
    else:
        raise ScheduleError(f"schedule must be 'auto', 'sequential', 'chunked' or a PipelineRecord, got {request!r}")
    for record in candidates:
        check_legal(recurrence, record)
    return MultiHeadSchedule(text, candidates)
