"""The pass manager: the whole lowering pipeline as one readable list of named passes.

Each pass is a function (graph, ctx) -> graph. The manager can record the IR after every pass
(`ssmc explain`, `ssmc compile`'s dump), and validates shapes after each one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..spec import SSM
from .build import build_graph
from .graph import Graph
from .passes.complex_split import split_complex
from .passes.backward import derive_backward
from .passes.discretize import lower_discretization
from .passes.fuse import fuse
from .passes.schedule import choose_schedule
from .passes.shapes import infer_shapes
from .schedule import Schedule

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
    request: str = "auto"                 # the user's schedule override: auto | scan | conv
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


def lower(spec: SSM, schedule: str | None = None, record: bool = True) -> Lowered:
    ctx = PassContext(request=schedule or spec.schedule)
    graph = build_graph(spec)
    if record:
        ctx.trace.append(("build", graph.dump()))
    for name, run in PIPELINE:
        graph = run(graph, ctx)
        graph = infer_shapes(graph, ctx)
        if record:
            ctx.trace.append((name, graph.dump()))
    return Lowered(spec, graph, ctx.schedule, tuple(ctx.trace))
