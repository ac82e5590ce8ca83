"""The PyTorch backend: the fused plans rendered as vectorised PyTorch (the no-compiler fallback)."""
from __future__ import annotations

from .printers import TorchPrinter
from .render import fused_plans, header, indent, print_block, render

CHUNK = 64


def render_sources(lowered) -> dict:
    plans = fused_plans(lowered)
    scan = plans.get("scan")
    printer = TorchPrinter()
    context = dict(header=header(lowered, "torch"), name=lowered.spec.name, chunk=CHUNK,
                   scan=scan, conv=plans.get("conv"), dt_lines="", discretize_lines="", epilogue_lines="")
    if scan is not None:
        context["dt_lines"] = indent(print_block(scan.dt_block, printer), 4)
        context["discretize_lines"] = indent(print_block(scan.discretize_block, printer), 8)
        context["epilogue_lines"] = indent(print_block(scan.epilogue_block, printer), 4)
    return {"kernels_torch.py": render("torch/kernels.py.jinja", **context)}
