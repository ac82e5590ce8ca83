"""The PyTorch backend: the fused plans rendered as vectorised PyTorch (the no-compiler fallback).

One template per stage (templates/torch/siso/), rendered into one module, `kernels_torch.py`: a
prelude (imports, complex-pair helpers), then with a ScanPlan its flags as constants and its printed
blocks as functions (`plan`), the recurrence over a chunk, `scan_fwd`, `scan_bwd` and `scan_step`, and
with a ConvPlan `vandermonde` and `vandermonde_bwd`. The templates branch on the flags in Python, not
in jinja: jinja prints only names and the plan's sympy blocks."""
from __future__ import annotations

import sympy

from .printers import TorchPrinter
from .render import fused_plans, header, indent, print_block, render

CHUNK = 64
TEMPLATES = "torch/siso"
SCAN_PARTS = ("plan", "recurrence", "scan_fwd", "scan_bwd", "scan_step")
CONV_PARTS = ("vandermonde", "vandermonde_bwd")

# A real plan's blocks name A, decay, scale and their gradients without a part; the templates carry
# every complex quantity as an (re, im) pair, im None for a real plan, so these become the re parts.
PAIR_NAMES = {"A": "A_re", "decay": "decay_re", "scale": "scale_re", "grad_A": "grad_A_re",
              "grad_decay": "grad_decay_re", "grad_scale": "grad_scale_re"}


def _rename(block, names: dict):
    """The block with its symbols and targets renamed by `names`."""
    out = []
    for target, expr in block:
        expr = expr.xreplace({s: sympy.Symbol(names[s.name], real=True) for s in expr.free_symbols if s.name in names})
        out.append((names.get(target, target), expr))
    return out


def _plan_lines(scan, printer) -> dict:
    """Each block of the plan printed as the body of its function in plan.py.jinja."""
    blocks = dict(dt_lines=scan.dt_block, grad_dt_lines=scan.grad_dt_block,
                  discretize_lines=_rename(scan.discretize_block, PAIR_NAMES),
                  grad_discretize_lines=_rename(scan.grad_discretize_block, PAIR_NAMES),
                  epilogue_lines=scan.epilogue_block, grad_epilogue_lines=scan.grad_epilogue_block)
    return {key: indent(print_block(block, printer), 4) for key, block in blocks.items()}


def render_sources(lowered) -> dict:
    plans = fused_plans(lowered)
    scan, conv = plans.get("scan"), plans.get("conv")
    parts = [render(f"{TEMPLATES}/prelude.py.jinja", header=header(lowered, "torch"), name=lowered.spec.name,
                    chunk=CHUNK)]
    if scan is not None:
        lines = _plan_lines(scan, TorchPrinter())
        parts += [render(f"{TEMPLATES}/{part}.py.jinja", scan=scan, **lines) for part in SCAN_PARTS]
    if conv is not None:
        parts += [render(f"{TEMPLATES}/{part}.py.jinja") for part in CONV_PARTS]
    return {"kernels_torch.py": "".join(parts)}
