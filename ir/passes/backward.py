"""Backward derivation: the gradient of a fused scan, derived rather than written by hand.

The gradient of the linear recurrence h_t = a_t h_{t-1} + s_t B_t x_t, y_t = Re(C_t h_t)·k is itself
a linear recurrence run in reverse (the templates own it):
    G_t = k·grad_y_t·conj(C_t) + conj(a_{t+1})·G_{t+1}
    grad_C_t = k·grad_y_t·conj(h_t),  grad_a_t = G_t·conj(h_{t-1}),  grad_s_t = G_t·conj(B_t x_t)
    grad_B_t = x_t·conj(s_t)·G_t,     grad_x_t += Re(G_t·conj(s_t B_t))
Everything pointwise around it — the epilogue, the discretization and the dt expression — is
differentiated here by sympy, so any custom formula gets its backward for free. The results are
plain assignment blocks over real symbols, printed by each backend like the forward blocks.
"""
from __future__ import annotations

import dataclasses

import sympy

from ..graph import Graph
from ..ops import Fused
from ..plans import ScanPlan


def _sym(name: str) -> sympy.Symbol:
    return sympy.Symbol(name, real=True)


def inline(block) -> dict:
    """The block's targets as whole expressions (common subexpressions substituted back)."""
    values = {}
    for target, expr in block:
        values[target] = expr.xreplace({s: values[s.name] for s in expr.free_symbols if s.name in values})
    return values


def _realify(expr: sympy.Expr) -> sympy.Expr:
    """One symbol per name, real: every block symbol is a real quantity (complex ones are split)."""
    return expr.xreplace({s: _sym(s.name) for s in expr.free_symbols})


def _cse(targets) -> tuple:
    targets = [(name, expr) for name, expr in targets if expr != 0 or name.startswith("grad_")]
    replacements, reduced = sympy.cse([e for _, e in targets], symbols=sympy.numbered_symbols("gtmp"))
    return tuple((str(s), e) for s, e in replacements) + tuple((n, e) for (n, _), e in zip(targets, reduced))


def chain(outputs: dict, inputs: list, grad_prefix: str = "grad_") -> list:
    """grad_<input> = Σ_o grad_<o> · ∂o/∂input: the vector-Jacobian product of a pointwise map."""
    result = []
    for name in inputs:
        total = sum((_sym(f"{grad_prefix}{o}") * sympy.diff(expr, _sym(name)) for o, expr in outputs.items()),
                    sympy.S.Zero)
        result.append((f"{grad_prefix}{name}", total))
    return result


def scan_gradients(plan: ScanPlan) -> ScanPlan:
    epilogue = {k: _realify(v) for k, v in inline(plan.epilogue_block).items()}
    out = epilogue["out"]
    present = [n for n in ("y", "u", "D", "z") if _sym(n) in out.free_symbols]
    grad_out = _sym("grad_out")
    grad_epilogue = _cse([(f"grad_{n}", grad_out * sympy.diff(out, _sym(n))) for n in present])

    discretized = {k: _realify(v) for k, v in inline(plan.discretize_block).items()
                   if k.startswith(("decay", "scale"))}
    a_inputs = ["dt"] + (["A_re", "A_im"] if plan.complex else ["A"])
    grad_discretize = _cse(chain(discretized, a_inputs))

    (_, dt_expr), = plan.dt_block
    dt_expr = _realify(dt_expr)
    dt_inputs = ["delta"] + (["dt_bias"] if plan.has_dt_bias else [])
    grad_dt = _cse(chain({"dt": dt_expr}, dt_inputs))
    return dataclasses.replace(plan, grad_epilogue_block=grad_epilogue, grad_discretize_block=grad_discretize,
                               grad_dt_block=grad_dt)


def derive_backward(graph: Graph, ctx) -> Graph:
    for op in graph.of_kind(Fused):
        if isinstance(op.plan, ScanPlan):
            graph.replace(op.replace(plan=scan_gradients(op.plan)))
        # ConvPlan: the Vandermonde kernel's vector-Jacobian product is a fixed formula (its own
        # kernel); the host prologue, FFT and epilogue are differentiated by torch's autograd.
    return graph
