"""Lowering of a MultiHead spec: the structured recurrence, its pointwise prologue, and its
schedule as pipelines of stages (ir/pipelines.py) with their operand tables (ir/stages.py).

The prologue is what the spec's formulas say per (batch, step, head): the log-decay (the argument of
the discretization's exp: a MultiHead spec's decay is exp(...)) and the input scale (B_bar / B),
with exp(x) - 1 rewritten to expm1(x). It runs in torch, outside the stage kernels, so autograd
differentiates it and any formula the spec accepts works on every backend; the stages see only
u = scale·x and the log-decays.
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy

from ..spec import A_SYM, DT
from .functions import use_expm1
from .pipelines import MultiHeadSchedule, plan
from .recurrence import Recurrence, multihead_recurrence
from .stages import SSD_SCAN, SSD_STEP, stage_lines


@dataclass(frozen=True)
class LoweredMultiHead:
    spec: object
    recurrence: Recurrence
    prologue: tuple            # ((target, sympy expression in dt and A), ...)
    schedule: MultiHeadSchedule

    @property
    def core(self):
        """The stage whose operands are the whole pipeline's (the core op's contract)."""
        return SSD_SCAN

    @property
    def stages(self) -> tuple:
        """The schedule's stages, and the decoding step that every package has."""
        return self.schedule.stages + (SSD_STEP,)

    def dump(self) -> str:
        spec = self.spec
        lines = [f"== spec ==\n{spec.name}: MultiHead(headdim={spec.heads.headdim}, groups={spec.heads.groups}), "
                 f"A={type(spec.A).__name__}, d_state={spec.d_state}, {type(spec.discretization).__name__}",
                 "\n== recurrence ==", self.recurrence.dump(),
                 "\n== prologue (per batch, step, head; torch, differentiated by autograd) =="]
        lines += [f"  {target} = {expr}" for target, expr in self.prologue]
        lines.append("\n== stages ==")
        lines += stage_lines(self.stages)
        lines.append("\n== schedule ==\n" + self.schedule.dump())
        return "\n".join(lines)


def prologue_of(spec) -> tuple:
    dt, A = sympy.Symbol("dt", real=True), sympy.Symbol("A", real=True)
    real = {DT: dt, A_SYM: A}
    _, scale = spec.discretization.formulas()
    log_decay = sympy.simplify(spec.log_decay.xreplace(real))
    input_scale = use_expm1(sympy.simplify(scale.xreplace(real)))
    return (("log_decay", log_decay), ("input_scale", input_scale))


def lower_multihead(spec, request="auto") -> LoweredMultiHead:
    recurrence = multihead_recurrence(spec)
    return LoweredMultiHead(spec, recurrence, prologue_of(spec), plan(recurrence, request))
