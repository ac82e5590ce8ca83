"""The Triton backend: the fused plans rendered as Triton GPU kernels plus their host launchers.

`render_sources` fills `templates/triton/kernels.py.jinja` (plain Triton; jinja picks structure
only) with the plan's blocks printed by `TritonPrinter`. Two rewrites happen on the way:

- exp -> exp2: `exp(A·dt)` in the discretization becomes `exp2(A_log2e·dt)`, with log2(e) folded
  into A once per program (the kernel loads `A_log2e = A · LOG2E` beside A), so the time loop pays
  one exp2 per (channel, state, step) and no extra multiply. An exponent that is not a multiple of
  A keeps an explicit `· LOG2E`.
- the schedule's tunable spaces become the `triton.autotune` configs of each kernel.
"""
from __future__ import annotations

import sympy

from ..errors import CompileError
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


class _Printer(TritonPrinter):
    functions = {**TritonPrinter.functions, "exp2": "tl.exp2({args})"}
    _print_exp2 = TritonPrinter._print_Function


def fold_exp2(block, rate: str):
    """`block` with every exp(x) rewritten as exp2(x·log2 e), folding log2(e) into the symbol `rate`
    (A or A_re) where x is a multiple of it. Returns (block, whether `<rate>_log2e` is used)."""
    used = False

    def rewrite(arg):
        nonlocal used
        symbols = {s.name: s for s in arg.free_symbols}
        if rate in symbols:
            folded = arg.subs(symbols[rate], sympy.Symbol(f"{rate}_log2e", real=True) / LOG2E) * LOG2E
            if LOG2E not in folded.free_symbols:
                used = True
                return exp2(folded)
        return exp2(LOG2E * arg)

    out = tuple((target, expr.replace(lambda e: isinstance(e, sympy.exp), lambda e: rewrite(e.args[0])))
                for target, expr in block)
    return out, used


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
                   dt_lines="", discretize_lines="", epilogue_lines="")
    if scan is not None:
        if scan.direction != "forward":
            raise CompileError(f"triton backend: scan direction {scan.direction!r} is not supported "
                               "(expected 'forward')")
        rate = "A_re" if scan.complex else "A"
        discretize, context["fold_A"] = fold_exp2(scan.discretize_block, rate)
        depth = 8 if scan.selective_dt else 4        # inside the time loop, or hoisted before it
        context["dt_lines"] = indent(print_block(scan.dt_block, printer), depth)
        context["discretize_lines"] = indent(print_block(discretize, printer), depth)
        context["epilogue_lines"] = indent(print_block(scan.epilogue_block, printer), 8)
        context["time_varying"] = [name for name, selective in (("B", scan.selective_B), ("C", scan.selective_C))
                                   if selective]
        context["scan_tunables"] = _tunables(lowered, KERNEL_NAMES["scan"])
    if conv is not None:
        context["conv_tunables"] = _tunables(lowered, KERNEL_NAMES["conv"])
    return {"kernels_triton.py": render("triton/kernels.py.jinja", **context)}
