"""Spec -> IR: the algorithm of a layer as an unscheduled dataflow graph.

The graph states the math of DESIGN §2 literally: a dt expression, a Discretize, the structured
recurrence with its readout (one RecurrenceOp, described by ir/recurrence.py), then skip and gate.
Making it fast (fusion, convolution instead of scan, complex splitting) is the passes' job, never
this builder's.
"""
from __future__ import annotations

import sympy

from ..spec import SSM
from .functions import silu, softplus
from .graph import Graph
from .ops import Discretize, Elementwise, Input, Output, Param, RecurrenceOp
from .recurrence import siso_recurrence

BTL = ("batch", "dim", "len")


def _sym(name: str) -> sympy.Symbol:
    return sympy.Symbol(name, real=True)


def build_graph(spec: SSM) -> Graph:
    graph = Graph(spec.name, {"spec": spec.content_hash()})
    state_dtype = "complex" if spec.is_complex else "real"

    graph.add(Input("u", shape=BTL, role="u"))
    if spec.is_selective("dt"):
        graph.add(Input("delta", shape=BTL, role="delta"))
    else:
        graph.add(Param("delta", shape=("dim",), role="dt"))
    dt_inputs = ["delta"]
    dt_expr = _sym("delta")
    if spec.dt_bias:
        graph.add(Param("dt_bias", shape=("dim",), role="dt_bias"))
        dt_inputs.append("dt_bias")
        dt_expr = dt_expr + _sym("dt_bias")
    if spec.dt_softplus:
        dt_expr = softplus(dt_expr)
    graph.add(Elementwise("dt", inputs=tuple(dt_inputs), expr=dt_expr))

    graph.add(Param("A", shape=("dim", "state"), dtype=state_dtype, role="A"))
    for name in ("B", "C"):
        if spec.is_selective(name):
            graph.add(Input(name, shape=("batch", "groups", "state", "len"), dtype=state_dtype, role=name))
        else:
            graph.add(Param(name, shape=("dim", "state"), dtype=state_dtype, role=name))

    decay, scale = spec.discretization.formulas()
    graph.add(Discretize("disc", inputs=("dt", "A"), method=type(spec.discretization).__name__,
                         decay=decay, input_scale=scale))
    # the recurrence's value is y; its last state is %y:final (never the sequence of states)
    graph.add(RecurrenceOp("y", inputs=("disc:decay", "disc:input_scale", "B", "u", "C"), dtype=state_dtype,
                           recurrence=siso_recurrence(spec)))

    y = "y"
    if spec.skip_D:
        graph.add(Param("D", shape=("dim",), role="D"))
        graph.add(Elementwise("y_skip", inputs=(y, "D", "u"), expr=_sym(y) + _sym("D") * _sym("u")))
        y = "y_skip"
    if spec.gate:
        graph.add(Input("z", shape=BTL, role="z"))
        graph.add(Elementwise("y_gated", inputs=(y, "z"), expr=_sym(y) * silu(_sym("z"))))
        y = "y_gated"
    graph.add(Output("out", inputs=(y,)))
    if not spec.is_lti:
        # A time-invariant layer's forward returns y only; its state comes from step() (decoding).
        graph.add(Output("last_state", inputs=("y:final",)))
    return graph
