"""Discretization lowering: a Discretize op becomes two Elementwise ops (decay, input scale) whose
expressions are the spec's formulas, simplified by sympy and renamed onto the op's inputs.

The formulas are then written in their numerically stable form: exp(x) - 1 becomes expm1(x) (ZOH's
input scale (exp(dt A) - 1) / A, whose float32 relative error grows like 1e-7 / |dt A| otherwise).
"""
from __future__ import annotations

import sympy

from ..graph import Graph
from ..functions import use_expm1
from ..ops import Discretize, Elementwise


def _rename(expr: sympy.Expr, dt_name: str, a_name: str, a_complex: bool) -> sympy.Expr:
    # dt is only known to be real: without a softplus a negative step reaches the kernel, and a
    # positivity assumption would let sympy fold Abs(dt) to dt or sqrt(dt**2) to dt.
    dt = sympy.Symbol(dt_name, real=True)
    a = sympy.Symbol(a_name) if a_complex else sympy.Symbol(a_name, real=True)
    mapping = {s: (dt if s.name == "dt" else a) for s in expr.free_symbols}
    return use_expm1(sympy.simplify(expr.xreplace(mapping)))


def lower_discretization(graph: Graph, ctx) -> Graph:
    for op in graph.of_kind(Discretize):
        dt_name, a_name = op.inputs
        a_complex = graph.op(a_name).dtype == "complex"
        dtype = "complex" if a_complex else "real"
        decay = Elementwise("decay", inputs=op.inputs, shape=op.shape, dtype=dtype,
                            expr=_rename(op.decay, dt_name, a_name, a_complex))
        scale = Elementwise("input_scale", inputs=op.inputs, shape=op.shape, dtype=dtype,
                            expr=_rename(op.input_scale, dt_name, a_name, a_complex))
        users = graph.users(op.name)
        graph.add(decay)
        graph.add(scale)
        for user in users:
            new_inputs = tuple({f"{op.name}:decay": "decay", f"{op.name}:input_scale": "input_scale"}.get(v, v)
                               for v in user.inputs)
            graph.replace(user.replace(inputs=new_inputs))
        graph.remove(op.name)
    return graph
