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


def _half_angles(parts: list) -> list:
    """sin(y), cos(y) rewritten through sin(y/2), cos(y/2) wherever a half angle of y occurs
    (expm1's split, see ir/functions.py): the decay's exp(x + iy) and the scale's expm1(x + iy) then
    share two sin/cos per step instead of needing three."""
    angles = {f.args[0] for pair in parts for part in pair for f in part.atoms(sympy.sin, sympy.cos)}
    halves = {angle * 2 for angle in angles}
    mapping = {}
    for angle in angles & halves:
        half_sin, half_cos = sympy.sin(angle / 2), sympy.cos(angle / 2)
        mapping[sympy.sin(angle)] = 2 * half_sin * half_cos
        mapping[sympy.cos(angle)] = 1 - 2 * half_sin**2
    return [tuple(part.xreplace(mapping) for part in pair) for pair in parts]


def split_complex(graph: Graph, ctx) -> Graph:
    complex_values = {op.name for op in graph.ops() if op.dtype in ("complex", "pair")}
    split = [op for op in graph.ops() if isinstance(op, Elementwise) and op.dtype == "complex"]
    parts = _half_angles([real_pair(op.expr, complex_values) for op in split])
    for op, pair in zip(split, parts):
        graph.replace(op.replace(dtype="pair", parts=pair))
    for op in graph.ops():
        if op.dtype == "complex":
            graph.replace(op.replace(dtype="pair"))
    return graph
