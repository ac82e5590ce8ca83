"""The pass manager: the whole lowering pipeline as one readable list of named passes.

Each pass is a function (graph, ctx) -> graph. The manager can record the IR after every pass
(`ssmc explain`, `ssmc compile`'s dump), and validates shapes after each one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ScheduleError
from ..spec import SSM
from .build import build_graph
from .graph import Graph, join_sections
from .passes.complex_split import split_complex
from .passes.backward import derive_backward
from .passes.discretize import lower_discretization
from .passes.fuse import fuse
from .passes.schedule import choose_schedule
from .passes.shapes import infer_shapes
from .schedule import SCHEDULES, Schedule

PIPELINE = (
    ("infer_shapes", infer_shapes),
    ("lower_discretization", lower_discretization),
    ("choose_schedule", choose_schedule),
    ("split_complex", split_complex),
    ("fuse", fuse),
    ("derive_backward", derive_backward),
)


@dataclass
class PassContext:
    request: str = "auto"                 # the user's schedule request (a compile option): auto | scan | conv
    schedule: Schedule = field(default_factory=Schedule)
    trace: list = field(default_factory=list)   # (pass name, IR text) after each pass


@dataclass(frozen=True)
class Lowered:
    spec: SSM
    graph: Graph
    schedule: Schedule
    trace: tuple

    def dump(self) -> str:
        parts = [f"== IR after {name} ==\n{text}" for name, text in self.trace]
        return "\n\n".join(parts + ["== schedule ==\n" + self.schedule.dump()])


def check_schedule(schedule) -> str:
    """The schedule request's name (a package key part), or a ScheduleError naming the option and the
    choices. Checked before any pass runs, so that a misspelt request never falls through to the cost
    model's choice. A PipelineRecord (or its JSON dict) replays one recorded pipeline."""
    from .mimo import MIMO_PIPELINES, MIMORecord
    from .pipelines import PipelineRecord
    if isinstance(schedule, dict):
        is_mimo = schedule.get("pipeline") in MIMO_PIPELINES
        schedule = MIMORecord.from_json(schedule) if is_mimo else PipelineRecord.from_json(schedule)
    if isinstance(schedule, (PipelineRecord, MIMORecord)):
        return schedule.text
    if not (isinstance(schedule, str) and schedule in SCHEDULES):
        raise ScheduleError(f"schedule must be one of {', '.join(repr(s) for s in SCHEDULES)} (auto: the cost "
                            f"model chooses per call), got {schedule!r}")
    return schedule


def lower(spec: SSM, schedule: str = "auto", record: bool = True) -> Lowered:
    """The IR of `spec` after every pass, scheduled as `schedule` asks ("scan", "conv", or "auto":
    the cost model chooses). An algorithm whose precondition the spec breaks (conv on a selective
    layer) raises ScheduleError from the pass that would apply it.

    A MultiHead spec lowers to the structured recurrence and its stage pipelines (ir/multihead.py);
    the SISO families still go through the graph passes below (their move is issue 7's remaining part)."""
    check_schedule(schedule)
    if spec.is_gated:
        from .gla import lower_gated
        return lower_gated(spec, schedule)
    if spec.is_multihead:
        from .multihead import lower_multihead
        return lower_multihead(spec, schedule)
    if spec.is_mimo:
        from .mimo import lower_mimo
        return lower_mimo(spec, schedule)
    if schedule == "sequential":
        schedule = "scan"
    if not isinstance(schedule, str) or schedule in ("chunked", "associative", "fused"):
        raise ScheduleError(f"{schedule if isinstance(schedule, str) else 'a pipeline record'}: the chunked pipeline "
                            f"needs a multi-head recurrence (heads=ssmc.MultiHead(...), A=ssmc.Scalar()), the associative "
                            f"and fused ones a MIMO recurrence (heads=ssmc.MIMO()); this spec is "
                            f"SISO: use 'auto', 'scan' or 'conv'")
    ctx = PassContext(request=schedule)
    graph = build_graph(spec)
    if record:
        previous = graph.dump_sections()
        ctx.trace.append(("build", join_sections(previous)))
    for name, run in PIPELINE:
        graph = run(graph, ctx)
        graph = infer_shapes(graph, ctx)
        if record:
            sections = graph.dump_sections()
            ctx.trace.append((name, _changes(previous, sections)))
            previous = sections
    return Lowered(spec, graph, ctx.schedule, tuple(ctx.trace))


def _changes(before: list, after: list) -> str:
    """The IR text after a pass; when the ops did not change (a pass that only fills plan blocks,
    like derive_backward), only the plan sections it added or changed, so each pass shows its work."""
    if before[0] != after[0]:
        return join_sections(after)
    old = dict(before)
    changed = [text for key, text in after[1:] if old.get(key) != text]
    note = "  (ops unchanged; the plan blocks this pass added or changed:)" if changed else "  (unchanged)"
    return "\n".join([after[0][1].splitlines()[0], note] + changed)
