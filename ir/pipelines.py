"""Schedules of a structured recurrence as pipelines of stage kernels, ranked by a cost model.

A pipeline is a frozen record — its name and its parameters (the chunk size) — so a choice can be
stored and replayed exactly: `lower(spec, schedule=PipelineRecord("chunked", chunk=128))` builds the
package that always runs that pipeline; `"auto"` keeps every legal candidate and the generated
module picks the cheapest per call shape, from the cost formulas printed into it. A pipeline whose
precondition the recurrence breaks raises ScheduleError naming the precondition.

Cost model (flop-equivalents, per call, per target; `ssmc tune` will replace the constants with
measurements). Per (batch, head, step) the sequential scan does 2·P·N dependent multiply-adds; the
chunked form does, per chunk of Q steps, Q²·N (scores C·Bᵀ) + Q²·P/2 (the causal half of scores·u)
+ 2·Q·P·N (the chunk's state and the entering state's readout) as small matrix products, and
writes and reads back two (P, N) states per chunk (state passing).
- c: calibrated on a 2-core AVX-512 EPYC (benchmarks/RESULTS.md, 2026-12-07): relative to the
  generated C scan's multiply-add, a chunk-product multiply-add costs ~1/4 and each state number
  written and read back ~32 (fitted to the chunk 64 and 256 forward times at len 2048); with these,
  and as measured at len 512 to 8192 (headdim 64, N 128), the sequential pipeline wins on the CPU.
- torch: as c, but each sequential step is a Python loop trip over several torch calls.
- triton: not measured yet (no GPU was lent): the sequential scan parallelises only over batch,
  heads and headdim blocks, so each of its L steps costs a full step latency; the chunked products
  run on tensor cores (~16× a scalar multiply-add), its chunks in parallel.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import sympy

from ..errors import ScheduleError
from .dims import symbols
from .stages import CHUNK_SCAN, CHUNK_STATE, SSD_SCAN, STATE_PASSING

PIPELINE_NAMES = ("sequential", "chunked")
CHUNK_SIZES = (64, 128, 256)          # the candidates of "auto"; any power of two from 8 may be recorded
DIMS = symbols("batch", "len", "heads", "headdim", "state")     # the dimensions a pipeline's cost uses
TARGETS = ("c", "torch", "triton")      # the backend that runs the call
# target -> (sequential multiply-add, chunk-product multiply-add, state number stored and reloaded,
#            latency of one dependent step of the sequential scan, latency of one chunk's passing)
COSTS = {"c": (1, sympy.Rational(1, 4), 32, 0, 2 ** 10),
         "torch": (1, sympy.Rational(1, 4), 32, 2 ** 20, 2 ** 12),
         "triton": (1, sympy.Rational(1, 16), 4, 2 ** 16, 2 ** 10)}


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

    def cost(self, target: str = "c") -> sympy.Expr:
        b, L, H, P, N = DIMS.values()
        scan, product, stored, step, passing = COSTS[target]
        if self.name == "sequential":
            return b * H * L * 2 * P * N * scan + step * L
        Q = self.chunk
        chunks = sympy.ceiling(L / Q)
        per_chunk = (Q * Q * N + Q * Q * P / 2 + 2 * Q * P * N) * product + 4 * P * N * stored
        return b * H * chunks * per_chunk + passing * chunks

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

    dims = DIMS             # the symbols of the cost formulas, by name

    def cost(self, record, target: str) -> sympy.Expr:
        """A candidate's cost formula on a target (a subclass adds what the schedule knows)."""
        return record.cost(target)

    def choose(self, shape: dict, target: str = "c"):
        dims = self.dims
        values = {record: float(self.cost(record, target).subs({dims[k]: v for k, v in shape.items() if k in dims}))
                  for record in self.candidates}
        return min(self.candidates, key=lambda r: values[r])

    def to_json(self) -> dict:
        return {"request": self.request,
                "candidates": [r.to_json() | {f"cost_{t}": str(self.cost(r, t)) for t in TARGETS}
                               for r in self.candidates]}

    def content_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]

    def dump(self) -> str:
        return schedule_text(self, self.cost)


def schedule_text(schedule, cost) -> str:
    """A schedule's candidates, their stages and cost formulas per target (`cost(record, target)`),
    as ir.txt and `ssmc explain` print them."""
    lines = [f"schedule {schedule.content_hash()}  (request {schedule.request}: "
             f"{'fixed' if schedule.fixed else 'the cheapest candidate per call shape'})"]
    for record in schedule.candidates:
        lines.append(f"  {record.text}: stages {' -> '.join(s.name for s in record.stages)}")
        for target in TARGETS:
            lines.append(f"      cost[{target}] = {cost(record, target)}")
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
