"""The Triton backend: the fused plans rendered as Triton GPU kernels plus their host launchers.

`render_sources` fills `templates/triton/kernels.py.jinja` (plain Triton; jinja picks structure
only) with the plan's blocks printed by `TritonPrinter`. Two rewrites happen on the way:

- exp -> exp2: `exp(A·dt)` in the discretization becomes `exp2(A_log2e·dt)` (and `expm1(A·dt)`
  `expm1_exp2(A_log2e·dt)`, which shares that exp2), with log2(e) folded
  into A once per program (the kernel loads `A_log2e = A · LOG2E` beside A), so the time loop pays
  one exp2 per (channel, state, step) and no extra multiply. An exponent is recognised through the
  block's common subexpressions (`gtmp0 = A*dt; exp(gtmp0)` folds too); one that is not a
  multiple of A stays `tl.exp` (which Triton lowers to a multiply and an exp2 itself).
- the schedule's tunable spaces become the `triton.autotune` configs of each kernel.

Training: the scan's backward kernel prints the plan's derived gradient blocks
(`grad_epilogue_block`, `grad_discretize_block` with the same exp -> exp2 folding, `grad_dt_block`)
around the template's reverse recurrence; the Vandermonde kernel's backward is a fixed formula.
"""
from __future__ import annotations

import sympy

from ..errors import CompileError
from ..ir.functions import expm1
from .printers import TritonPrinter
from .render import fused_plans, header, indent, print_block, render

LOG2E = sympy.Symbol("LOG2E", positive=True)   # a tl.constexpr of the generated module

# Under the interpreter (no driver to benchmark) the generated module keeps one config per kernel:
# the first value of each tunable, the schedule lists them smallest first.
KERNEL_NAMES = {"scan": "scan_kernel", "conv": "conv_kernel"}
DEFAULT_SPACES = {
    "scan_kernel": {"BLOCK_D": [8, 16, 32, 64], "num_warps": [2, 4, 8]},
    "conv_kernel": {"BLOCK_L": [64, 128, 256], "BLOCK_N": [16, 32, 64]},
}


class exp2(sympy.Function):
    """2**x, printed as tl.exp2."""


class expm1_exp2(sympy.Function):
    """2**x - 1, printed as the template's expm1_exp2 (which shares its exp2 with the decay's)."""


class _Printer(TritonPrinter):
    functions = {**TritonPrinter.functions, "exp2": "tl.exp2({args})", "expm1_exp2": "expm1_exp2({args})"}
    _print_exp2 = _print_expm1_exp2 = TritonPrinter._print_Function


def fold_exp2(block, rate: str):
    """`block` with every exp(x) whose exponent x is a multiple of the symbol `rate` (A or A_re),
    once the block's earlier targets are substituted into it, rewritten as exp2(x·log2 e) with
    log2(e) folded into `<rate>_log2e`; other exps are kept. Returns (block, whether
    `<rate>_log2e` is used)."""
    used = False
    values = {}                 # target -> its expression over the block's inputs

    def inline(expr):
        return expr.xreplace({s: values[s.name] for s in expr.free_symbols if s.name in values})

    def rewrite(arg, unfolded, folded_function):
        nonlocal used
        full = inline(arg)
        symbols = {s.name: s for s in full.free_symbols}
        if rate in symbols:
            folded = sympy.expand(full.subs(symbols[rate], sympy.Symbol(f"{rate}_log2e", real=True) / LOG2E) * LOG2E)
            if LOG2E not in folded.free_symbols:
                used = True
                return folded_function(folded)
        return unfolded(arg)

    out = []
    for target, expr in block:
        expr = expr.replace(lambda e: isinstance(e, sympy.exp), lambda e: rewrite(e.args[0], sympy.exp, exp2))
        expr = expr.replace(lambda e: isinstance(e, expm1),
                            lambda e: rewrite(e.args[0], expm1, expm1_exp2))
        out.append((target, expr))
        values[target] = inline(expr)
    return tuple(out), used


def _tunables(lowered, kernel: str) -> dict:
    for name, space in lowered.schedule.tunables:
        if name == kernel:
            return {k: sorted(v) for k, v in space.items()}
    return DEFAULT_SPACES[kernel]


def render_sources(lowered) -> dict:
    plans = fused_plans(lowered)
    scan, conv = plans.get("scan"), plans.get("conv")
    printer = _Printer()
    context = dict(header=header(lowered, "triton"), name=lowered.spec.name, scan=scan, conv=conv,
                   scan_tunables={}, conv_tunables={}, fold_A=False, time_varying=[],
                   dt_lines="", discretize_lines="", epilogue_lines="", grad_epilogue_lines="",
                   grad_discretize_lines="", grad_dt_lines="", grad_epilogue_targets=[],
                   step_dt_lines="", step_discretize_lines="", step_epilogue_lines="")
    if scan is not None:
        if scan.direction != "forward":
            raise CompileError(f"triton backend: scan direction {scan.direction!r} is not supported "
                               "(expected 'forward')")
        if not (scan.grad_epilogue_block and scan.grad_discretize_block and scan.grad_dt_block):
            raise CompileError("triton backend: the scan plan has no gradient blocks "
                               "(the derive_backward pass did not run)")
        rate = "A_re" if scan.complex else "A"
        discretize, fold_forward = fold_exp2(scan.discretize_block, rate)
        grad_discretize, fold_backward = fold_exp2(scan.grad_discretize_block, rate)
        context["fold_A"] = fold_forward or fold_backward
        # per step inside the time loops (depth 12), or hoisted before them / after them (depth 4)
        depth = 12 if scan.selective_dt else 4
        context["dt_lines"] = indent(print_block(scan.dt_block, printer), depth)
        context["discretize_lines"] = indent(print_block(discretize, printer), depth)
        context["epilogue_lines"] = indent(print_block(scan.epilogue_block, printer), 12)
        context["grad_epilogue_lines"] = indent(print_block(scan.grad_epilogue_block, printer), 12)
        context["grad_discretize_lines"] = indent(print_block(grad_discretize, printer), depth)
        context["grad_dt_lines"] = indent(print_block(scan.grad_dt_block, printer), depth)
        context["grad_epilogue_targets"] = [target for target, _ in scan.grad_epilogue_block]
        # the decoding step's kernel: everything once, at depth 4
        context["step_dt_lines"] = indent(print_block(scan.dt_block, printer), 4)
        context["step_discretize_lines"] = indent(print_block(discretize, printer), 4)
        context["step_epilogue_lines"] = indent(print_block(scan.epilogue_block, printer), 4)
        context["time_varying"] = [name for name, selective in (("B", scan.selective_B), ("C", scan.selective_C))
                                   if selective]
        context["scan_tunables"] = _tunables(lowered, KERNEL_NAMES["scan"])
    if conv is not None:
        context["conv_tunables"] = _tunables(lowered, KERNEL_NAMES["conv"])
    return {"kernels_triton.py": render("triton/kernels.py.jinja", **context)}
