"""Schedule choice: scan or convolution, for each recurrence.

A selective recurrence has no convolution form (its decay varies over time) and is always a scan.
A time-invariant one has both; the cost model ranks them. Because the ranking depends on batch and
length, which are known only at call time, `schedule="auto"` keeps both forms behind a Select whose
predicate (conv cost < scan cost, a sympy formula) the generated module evaluates per call.
"""
from __future__ import annotations

import sympy

from ...errors import ScheduleError
from .. import cost
from ..graph import Graph
from ..ops import Elementwise, FFTConv, KernelGen, RecurrenceOp, Select
from ..schedule import Decision

# what each time-varying operand of the recurrence makes vary, by the spec field a user names in
# `selective` (the Recurrence's operand names are the spec's: dt, B, C)
_VARYING = {"dt": "decay, input scale", "B": "input (B)", "C": "readout (C)"}


def time_varying_operands(recurrence) -> list:
    """The spec fields among dt, B, C whose operands vary over time (their layout has `len`). A single
    convolution kernel exists only if none does: decay, input and readout constant in time."""
    return [name for name in _VARYING if recurrence.varies_over_time(name)]


def _conv_refusal(varying: list) -> str:
    """Why schedule='conv' cannot apply, in the spec's words (its `selective` fields and what they make
    vary)."""
    what = ", ".join(_VARYING[name] for name in varying)
    return (f"schedule='conv': the spec's selective={tuple(varying)!r} makes the {what} vary over "
            f"time, and an FFT convolution needs a time-invariant layer (selective=()); "
            f"use schedule='scan' or 'auto'")


def _log(decay: sympy.Expr) -> sympy.Expr:
    """log(decay) for a^l = exp(l·log a). ZOH's log(exp(dt·A)) is dt·A: no log is ever computed. Any
    other decay keeps one principal log: splitting it into a sum of logs (Bilinear's ratio
    log(-dt A - 2) - log(dt A - 2)) is right only up to 2πi, which exp(l·log a) ignores at integer l
    but which puts a 2π offset into the phase, l·Im(log a), and costs float32 its digits at large l."""
    if isinstance(decay, sympy.exp):
        return decay.args[0]
    return sympy.log(decay)


def _add_convolution_form(graph: Graph, rec: RecurrenceOp, complex_state: bool) -> str:
    """Add K = Vandermonde(log_decay, coeff) and y_conv = FFTConv(u, K) beside the recurrence."""
    decay, scale = graph.op(rec.operand("decay")), graph.op(rec.operand("input_scale"))
    b_name, u_name, c_name = rec.operand("B"), rec.operand("u"), rec.operand("C")
    log_decay = _log(decay.expr)
    graph.add(Elementwise("log_decay", inputs=decay.inputs, dtype="complex", expr=log_decay))
    doubling = 2 if rec.real_part_doubled else 1
    coeff = doubling * sympy.Symbol(c_name) * sympy.Symbol(b_name) * scale.expr
    if not complex_state:
        coeff = coeff.xreplace({s: sympy.Symbol(s.name, real=True) for s in coeff.free_symbols})
    graph.add(Elementwise("coeff", inputs=(c_name, b_name) + scale.inputs,
                          dtype="complex" if complex_state else "real", expr=coeff))
    graph.add(KernelGen("K", inputs=("log_decay", "coeff"), method="vandermonde"))
    graph.add(FFTConv("y_conv", inputs=(u_name, "K")))
    return "y_conv"


def _rewire(graph: Graph, old: str, new: str, keep=()) -> None:
    for user in graph.users(old):
        if user.name in keep:
            continue
        changes = {"inputs": tuple(new if v == old else v for v in user.inputs)}
        if isinstance(user, Elementwise):
            changes["expr"] = user.expr.xreplace({s: sympy.Symbol(new, **s.assumptions0)
                                                  for s in user.expr.free_symbols if s.name == old})
        graph.replace(user.replace(**changes))


def choose_schedule(graph: Graph, ctx) -> Graph:
    for rec in graph.of_kind(RecurrenceOp):
        subject = "recurrence"      # what each decision is about, as `ssmc explain` and the module say it
        complex_state = rec.dtype in ("complex", "pair")
        scan_cost = cost.scan_cost(complex_state)
        varying = time_varying_operands(rec.recurrence)
        if varying:
            if ctx.request == "conv":
                raise ScheduleError(_conv_refusal(varying))
            ctx.schedule = ctx.schedule.with_decision(Decision(
                subject, "scan", "selective: an operand varies over time, no convolution form",
                {"scan": str(scan_cost)}))
            continue
        conv_cost = cost.conv_cost(complex_state)
        costs = {"scan": str(scan_cost), "conv": str(conv_cost)}
        if ctx.request == "scan":
            ctx.schedule = ctx.schedule.with_decision(Decision(subject, "scan", "requested: schedule='scan'", costs))
            continue
        y_conv = _add_convolution_form(graph, rec, complex_state)
        if ctx.request == "conv":
            _rewire(graph, rec.name, y_conv)
            ctx.schedule = ctx.schedule.with_decision(Decision(subject, "conv", "requested: schedule='conv'", costs))
        else:
            predicate = sympy.StrictLessThan(conv_cost, scan_cost)
            graph.add(Select("y_select", inputs=(y_conv, rec.name), use_first=predicate))
            _rewire(graph, rec.name, "y_select", keep=("y_select",))
            ctx.schedule = ctx.schedule.with_decision(Decision(
                subject, "by-shape", "time-invariant: conv when cost[conv] < cost[scan] at the call's shape",
                costs))
        graph.remove_dead()
    return graph
