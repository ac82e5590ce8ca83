"""Shape inference and validation.

Shapes are tuples of dimension names standing for sympy symbols. Broadcasting is by name, in the
canonical order (batch, dim, len, state); `groups` broadcasts onto `dim` (B and C shared by the
channels of a group).
"""
from __future__ import annotations

from ..graph import Graph
from ..ops import (Discretize, Elementwise, FFTConv, Fused, Input, KernelGen, Op, Output, Param, RecurrenceOp,
                   Select)

CANONICAL = ("batch", "dim", "len", "state")


def broadcast(*shapes) -> tuple:
    names = set()
    for shape in shapes:
        names |= {"dim" if d == "groups" else d for d in shape}
    unknown = names - set(CANONICAL)
    if unknown:
        raise ValueError(f"unknown dimensions {sorted(unknown)}")
    return tuple(d for d in CANONICAL if d in names)


def value_shape(graph: Graph, value: str) -> tuple | None:
    op = graph.op(value)
    if isinstance(op, Fused):
        port = value.split(":", 1)[1]
        return dict(op.outputs)[port]
    if isinstance(op, RecurrenceOp) and ":" in value:
        return op.PORTS[value.split(":", 1)[1]]
    return op.shape


def _infer(graph: Graph, op: Op) -> tuple | None:
    shapes = [value_shape(graph, v) for v in op.inputs]
    if isinstance(op, (Input, Param)):
        if op.shape is None:
            raise ValueError(f"%{op.name}: inputs and params must declare their shape")
        return op.shape
    if isinstance(op, (Elementwise, Discretize, Select)):
        return broadcast(*shapes)
    if isinstance(op, RecurrenceOp):
        # y: the readout reduces the state away; every output step is there
        return tuple(d for d in broadcast(*shapes, ("batch", "len")) if d != "state")
    if isinstance(op, KernelGen):
        return ("dim", "len")
    if isinstance(op, FFTConv):
        return broadcast(*shapes)
    if isinstance(op, Output):
        (shape,) = shapes
        return shape
    if isinstance(op, Fused):
        return ()
    raise TypeError(f"no shape rule for {op.kind}")


def infer_shapes(graph: Graph, ctx) -> Graph:
    for op in graph.ops():
        if isinstance(op, Elementwise):
            names = {s.name for s in op.expr.free_symbols}
            missing = names - set(op.inputs)
            if missing and op.parts is None:
                raise ValueError(f"%{op.name}: expression uses {sorted(missing)}, which are not its inputs")
        shape = _infer(graph, op)
        if shape != op.shape:
            graph.replace(op.replace(shape=shape))
    return graph
