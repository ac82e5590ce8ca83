"""Complex -> real-pair splitting.

Triton and C have no complex type, so every complex value becomes a pair (`x_re`, `x_im`). Complex
Elementwise ops get `parts`: their real and imaginary expressions over real symbols, derived by
sympy (`as_real_imag`) rather than written by hand, so any custom formula splits correctly.
"""
from __future__ import annotations

import sympy

from ..graph import Graph
from ..ops import Elementwise


def real_pair(expr: sympy.Expr, complex_names: set) -> tuple:
    """(Re, Im) of `expr`, where the symbols named in `complex_names` are complex."""
    mapping = {}
    for s in expr.free_symbols:
        if s.name in complex_names:
            mapping[s] = sympy.Symbol(f"{s.name}_re", real=True) + sympy.I * sympy.Symbol(f"{s.name}_im", real=True)
        else:
            mapping[s] = sympy.Symbol(s.name, real=True, positive=s.is_positive)
    expanded = sympy.expand_complex(expr.xreplace(mapping))
    re, im = expanded.as_real_imag()
    return sympy.simplify(re), sympy.simplify(im)


def split_complex(graph: Graph, ctx) -> Graph:
    complex_values = {op.name for op in graph.ops() if op.dtype in ("complex", "pair")}
    for op in graph.ops():
        if isinstance(op, Elementwise) and op.dtype == "complex":
            graph.replace(op.replace(dtype="pair", parts=real_pair(op.expr, complex_values)))
        elif op.dtype == "complex":
            graph.replace(op.replace(dtype="pair"))
    return graph
