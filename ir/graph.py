"""The IR graph: a networkx DiGraph whose nodes each hold one frozen op.

Values are named by their producing op; a multi-output op (a fused kernel, the recurrence's last
state) exposes `op:port`.
Iteration is in a deterministic topological order (ties broken by insertion order), so that the
text dump, the generated code and every cache key are stable from run to run.
"""
from __future__ import annotations

import dataclasses
import json

import networkx as nx
import sympy

from ..errors import CompileError
from ..formula import read_srepr
from . import ops as irops
from .functions import IR_FUNCTIONS
from .plans import plan_from_json
from .recurrence import Recurrence


def producer(value: str) -> str:
    """The op name of a value reference (`fused:y` -> `fused`)."""
    return value.split(":", 1)[0]


class Graph:
    def __init__(self, name: str, meta: dict | None = None):
        self.name = name
        self.meta = dict(meta or {})
        self._g = nx.DiGraph()
        self._order = 0

    # --- building and rewriting ------------------------------------------------------------
    def add(self, op: irops.Op) -> str:
        if op.name in self._g:
            raise ValueError(f"IR value %{op.name} defined twice")
        for value in op.inputs:
            if producer(value) not in self._g:
                raise ValueError(f"%{op.name} reads %{value}, which is not defined yet")
        self._g.add_node(op.name, op=op, order=self._order)
        self._order += 1
        for value in op.inputs:
            self._g.add_edge(producer(value), op.name)
        return op.name

    def replace(self, op: irops.Op) -> None:
        """Swap the op stored under `op.name` (same name, possibly new inputs)."""
        if op.name not in self._g:
            raise KeyError(op.name)
        self._g.nodes[op.name]["op"] = op
        for pred in list(self._g.predecessors(op.name)):
            self._g.remove_edge(pred, op.name)
        for value in op.inputs:
            self._g.add_edge(producer(value), op.name)

    def remove(self, name: str) -> None:
        self._g.remove_node(name)

    def remove_dead(self) -> None:
        """Drop every op from which no Output is reachable."""
        live = set()
        for op in self.ops():
            if isinstance(op, irops.Output):
                live |= nx.ancestors(self._g, op.name) | {op.name}
        for name in [n for n in self._g if n not in live]:
            self._g.remove_node(name)

    # --- queries ----------------------------------------------------------------------------
    def op(self, name: str) -> irops.Op:
        return self._g.nodes[producer(name)]["op"]

    def __contains__(self, name: str) -> bool:
        return producer(name) in self._g

    def ops(self) -> list:
        order = nx.lexicographical_topological_sort(self._g, key=lambda n: self._g.nodes[n]["order"])
        return [self._g.nodes[n]["op"] for n in order]

    def of_kind(self, cls) -> list:
        return [op for op in self.ops() if isinstance(op, cls)]

    def users(self, name: str) -> list:
        return [self._g.nodes[n]["op"] for n in self._g.successors(producer(name))]

    def copy(self) -> "Graph":
        """An independent graph with the same ops: they are frozen, so sharing them is safe, and a
        copy pays no srepr/parse round trip through JSON."""
        other = Graph(self.name, self.meta)
        other._g = self._g.copy()      # fresh node attribute dicts: replace() on one leaves the other
        other._order = self._order
        return other

    # --- printing and serialisation ---------------------------------------------------------
    def dump(self) -> str:
        return join_sections(self.dump_sections())

    def dump_sections(self) -> list:
        """The dump as (key, text) sections: the ops, then every block of every fused kernel's plan,
        so that a pass which only fills plan blocks (derive_backward) can show just those."""
        lines = [f"graph {self.name}" + "".join(f"  {k}={v}" for k, v in sorted(self.meta.items()))]
        ops = self.ops()
        for op in ops:
            ty = f"{op.dtype}[{', '.join(op.shape)}]" if op.shape is not None else f"{op.dtype}[?]"
            args = ", ".join(f"%{v}" for v in op.inputs)
            attrs = _format_attributes(op)
            lines.append(f"  %{op.name:<14} : {ty:<34} = {op.kind}({args}){attrs}")
        sections = [("ops", "\n".join(lines))]
        for op in ops:
            if isinstance(op, irops.Fused):
                sections += _plan_sections(op)
        return sections

    def to_json(self) -> dict:
        return {"name": self.name, "meta": self.meta, "ops": [_op_to_json(op) for op in self.ops()]}

    @classmethod
    def from_json(cls, data: dict) -> "Graph":
        graph = cls(data["name"], data.get("meta"))
        for item in data["ops"]:
            graph.add(_op_from_json(item))
        return graph

    def dumps_json(self) -> str:
        return json.dumps(self.to_json(), indent=1, sort_keys=True)


def _format_attributes(op: irops.Op) -> str:
    parts = []
    for key, value in op.attributes().items():
        if isinstance(op, irops.Elementwise) and key == "parts":
            if value is not None:
                parts.append(f"re={value[0]}; im={value[1]}")
            continue
        if isinstance(op, irops.RecurrenceOp) and key == "recurrence":
            parts.append(f"decay={value.decay}, input: {value.input}, readout: {value.readout}")
            continue
        if isinstance(op, irops.Fused) and key == "plan":
            parts.append(f"plan={type(value).__name__}")
            continue
        if isinstance(op, irops.Fused) and key == "outputs":
            parts.append("writes " + ", ".join(f"{port}[{', '.join(shape)}]" for port, shape in value))
            continue
        if value in ("", (), None):
            continue
        parts.append(f"{key}={value}")
    return f"  {{{', '.join(parts)}}}" if parts else ""


def join_sections(sections: list) -> str:
    """The text of `Graph.dump_sections`' (key, text) sections: `Graph.dump`."""
    return "\n".join(text for _, text in sections)


def _plan_sections(op) -> list:
    """A fused kernel's plan: its flags on one line, then each non-empty block as assignments."""
    plan = op.plan
    if plan is None or not dataclasses.is_dataclass(plan):
        return []
    fields = dataclasses.fields(plan)
    flags = ", ".join(f"{f.name}={getattr(plan, f.name)}" for f in fields if not f.name.endswith("block"))
    sections = [((op.name, "plan"), f"  plan of %{op.name}: {type(plan).__name__}({flags})")]
    for f in fields:
        block = getattr(plan, f.name)
        if f.name.endswith("block") and block:
            body = "\n".join(f"      {target} = {expr}" for target, expr in block)
            sections.append(((op.name, f.name), f"    {f.name} of %{op.name}:\n{body}"))
    return sections


# JSON encoding of op fields: sympy objects as srepr strings, plans as their own JSON.
def _op_to_json(op: irops.Op) -> dict:
    out = {"kind": op.kind, "name": op.name, "inputs": list(op.inputs),
           "shape": list(op.shape) if op.shape is not None else None, "dtype": op.dtype}
    for key, value in op.attributes().items():
        out[key] = _encode(value)
    return out


def _encode(value):
    if isinstance(value, sympy.Basic):
        return {"sympy": sympy.srepr(value)}
    if isinstance(value, Recurrence):
        return {"recurrence": value.to_json()}
    if hasattr(value, "to_json") and hasattr(value, "content_hash"):
        return {"plan": value.to_json()}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v) for v in value]}
    return value


def _decode(value):
    if isinstance(value, dict) and "sympy" in value:
        # never sympify (it evaluates Python): Graph.from_json is a public entry point, and
        # whatever dict a caller hands it must at worst be refused, never run
        return read_srepr(value["sympy"], "graph.json", IR_FUNCTIONS, error=CompileError)
    if isinstance(value, dict) and "plan" in value:
        return plan_from_json(value["plan"])
    if isinstance(value, dict) and "recurrence" in value:
        return Recurrence.from_json(value["recurrence"])
    if isinstance(value, dict) and "tuple" in value:
        return tuple(_decode(v) for v in value["tuple"])
    return value


def _op_from_json(item: dict) -> irops.Op:
    cls = irops.OP_TYPES[item["kind"]]
    kwargs = {k: _decode(v) for k, v in item.items() if k not in ("kind", "inputs", "shape")}
    kwargs["inputs"] = tuple(item["inputs"])
    kwargs["shape"] = tuple(item["shape"]) if item["shape"] is not None else None
    return cls(**kwargs)
