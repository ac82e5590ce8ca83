"""Lowering of a MIMO spec (S5): the structured recurrence, its complex prologue, and its schedule as
pipelines of the stages in ir/mimo_stages.py, ranked per call shape and backend by a cost model.

The prologue is the spec's discretization per state (and per step with an input-dependent Δ): the
decay A_bar and the input scale B_bar / B, complex when A is, printed as torch (torch computes in
complex numbers, and autograd differentiates them). The stages see real tensors with a (re, im)
axis.

Pipelines (frozen, JSON-serialisable records, replayable with `lower(spec, schedule=MIMORecord(...))`):
- "associative": the projection B̄u as one real matrix product (torch), the diagonal scan as a stage
  over (batch, len, state) writing every state, the readout Re(C x) as another matrix product;
- "fused": one stage that per time tile projects, scans and reads out, so the (batch, len, state)
  state sequence is never written.

Cost model (flop-equivalents per call; `ssmc tune` will replace the constants with measurements).
Per (batch, step) both pipelines do H·P·c multiply-adds to project (c = 2 for complex states) and
H·P·c to read out, per direction (bidirectional layers read out twice; the associative pipeline
projects once for both), and P·c·2 for the scan. The associative pipeline also stores and reloads
the projected inputs and the states: 4·P·c numbers per step and direction.
- c: the matrix products run in torch's BLAS (1 per multiply-add), the fused stage's in the
  generated C (5: plain vector loops, an estimate). With these constants the associative pipeline
  wins at every shape on the CPU (the fused one's 20·H·P against 4·H·P + 32·P); measured on the 2-core
  EPYC (benchmarks/bench_s5_cpu.py, RESULTS.md) the fused pipeline was slower at every shape timed
  (248 against 221 ms forward at (8, 4096, 256, 256)): it is kept for the GPU, where it saves the
  state sequence's memory traffic.
- torch: as c, and the fused stage is a Python loop over time tiles (a latency per tile).
- triton: not measured (no GPU lent): both use tensor cores for the products; the associative
  pipeline's state traffic through HBM is what the fused one saves.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy

from ..errors import ScheduleError
from ..spec import A_SYM, DT
from .dims import symbols
from .functions import use_expm1
from .mimo_stages import MIMO_FUSED, MIMO_SCAN
from .pipelines import MultiHeadSchedule
from .recurrence import Recurrence, mimo_recurrence
from .stages import stage_lines

MIMO_PIPELINES = ("associative", "fused")
DIMS = symbols("batch", "len", "H", "state")

FUSED_TILE = 64             # time steps per tile of the fused stage (torch and C; Triton's is its block)
# target -> (matrix-product multiply-add in torch, in the fused stage, scan step per state number,
#            state number stored and reloaded, latency per time tile of the fused stage)
COSTS = {"c": (1, 5, 4, 2, 0),
         "torch": (1, 1, 8, 2, 2 ** 14),
         "triton": (sympy.Rational(1, 16), sympy.Rational(1, 16), 1, 4, 0)}


@dataclass(frozen=True)
class MIMORecord:
    name: str

    def __post_init__(self):
        if self.name not in MIMO_PIPELINES:
            raise ScheduleError(f"a MIMO pipeline must be one of {MIMO_PIPELINES}, got {self.name!r}")

    @property
    def text(self) -> str:
        return self.name

    @property
    def stages(self) -> tuple:
        return (MIMO_SCAN,) if self.name == "associative" else (MIMO_FUSED,)

    def cost(self, target: str = "c", complex_state: bool = True, directions: int = 1) -> sympy.Expr:
        b, L, H, P = DIMS.values()
        c = 2 if complex_state else 1
        product, fused, scan, stored, tile = COSTS[target]
        steps = b * L
        if self.name == "associative":
            return steps * (H * P * c * (1 + directions) * product + directions * P * c * (2 * scan + 4 * stored))
        return steps * directions * (2 * H * P * c * fused + 2 * P * c * scan) + directions * tile * sympy.ceiling(L / FUSED_TILE)

    def to_json(self) -> dict:
        return {"pipeline": self.name}

    @classmethod
    def from_json(cls, data: dict) -> "MIMORecord":
        if not isinstance(data, dict) or set(data) != {"pipeline"}:
            raise ScheduleError(f"a MIMO pipeline record is {{'pipeline': name}}, got {data!r}")
        return cls(data["pipeline"])


def check_legal(recurrence: Recurrence, record: MIMORecord) -> None:
    """ScheduleError naming the precondition `recurrence` breaks for `record`, if any."""
    if recurrence.decay != "per_state" or recurrence.state != ("state",):
        raise ScheduleError(f"{record.text}: the MIMO stages scan a diagonal state (one decay per state entry), "
                            f"got a {recurrence.decay} decay over state {recurrence.state}")
    if "B[state, H]" not in recurrence.input:
        raise ScheduleError(f"{record.text}: the MIMO stages need a dense input projection B[state, H], "
                            f"got input {recurrence.input!r}")


@dataclass(frozen=True)
class MIMOSchedule(MultiHeadSchedule):
    """MultiHeadSchedule's ranking over MIMO records, whose costs also depend on the state's parts
    and the number of scan directions."""

    complex_state: bool = True
    directions: int = 1
    dims = DIMS

    @property
    def stages(self) -> tuple:
        seen = list(super().stages)
        if MIMO_SCAN not in seen:      # the fused stage's backward recomputes the states with the scan
            seen.append(MIMO_SCAN)
        return tuple(seen)

    def cost(self, record: MIMORecord, target: str) -> sympy.Expr:
        return record.cost(target, self.complex_state, self.directions)


def plan(recurrence: Recurrence, request, complex_state: bool, directions: int) -> MIMOSchedule:
    """The schedule for a request: "auto" (both pipelines, the cost model picks per call),
    "associative" (alias "scan"), "fused", or a MIMORecord / its JSON to replay."""
    if isinstance(request, dict):
        request = MIMORecord.from_json(request)
    if isinstance(request, MIMORecord):
        candidates, text = (request,), request.text
    elif request == "auto":
        candidates, text = tuple(MIMORecord(n) for n in MIMO_PIPELINES), request
    elif request in ("associative", "scan", "fused"):
        name = "fused" if request == "fused" else "associative"
        candidates, text = (MIMORecord(name),), name
    elif request == "conv":
        raise ScheduleError("conv: no convolution form for MIMO (S5) layers yet; use 'auto', 'associative' or 'fused'")
    else:
        raise ScheduleError(f"schedule for a MIMO (S5) spec must be 'auto', 'associative', 'fused' or a MIMORecord, "
                            f"got {request!r}")
    for record in candidates:
        check_legal(recurrence, record)
    return MIMOSchedule(text, candidates, complex_state, directions)


@dataclass(frozen=True)
class LoweredMIMO:
    spec: object
    recurrence: Recurrence
    prologue: tuple            # ((target, sympy expression in dt and A), ...)
    schedule: MIMOSchedule

    @property
    def stages(self) -> tuple:
        return self.schedule.stages

    def dump(self) -> str:
        spec = self.spec
        lines = [f"== spec ==\n{spec.name}: MIMO(conj_sym={spec.heads.conj_sym}, bidirectional={spec.heads.bidirectional}), "
                 f"A={'complex' if spec.is_complex else 'real'} diagonal, state {spec.d_state}, "
                 f"{type(spec.discretization).__name__}, step {'per input step' if spec.is_selective('dt') else 'learned'}",
                 "\n== recurrence ==", self.recurrence.dump(),
                 "\n== prologue (per state, and per step with an input-dependent step; torch, complex) =="]
        lines += [f"  {target} = {expr}" for target, expr in self.prologue]
        lines.append("\n== stages ==")
        lines += stage_lines(self.stages, width=8)
        lines.append("\n== schedule ==\n" + self.schedule.dump())
        return "\n".join(lines)


def prologue_of(spec) -> tuple:
    """decay and input_scale in dt (real) and A (complex for a complex layer), simplified, with
    exp(x) - 1 as expm1(x) (ZOH's (exp(dt A) - 1)/A keeps its precision at small dt)."""
    dt = sympy.Symbol("dt", positive=True)
    A = sympy.Symbol("A", real=True) if not spec.is_complex else sympy.Symbol("A")
    decay, scale = (sympy.simplify(f.xreplace({DT: dt, A_SYM: A})) for f in spec.discretization.formulas())
    return (("decay", decay), ("input_scale", use_expm1(scale)))


def lower_mimo(spec, request="auto") -> LoweredMIMO:
    recurrence = mimo_recurrence(spec)
    directions = 2 if spec.heads.bidirectional else 1
    schedule = plan(recurrence, request, spec.is_complex, directions)
    return LoweredMIMO(spec, recurrence, prologue_of(spec), schedule)
