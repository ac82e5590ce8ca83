"""The PyTorch backend: the fused plans rendered as vectorised PyTorch (the no-compiler fallback)."""
from __future__ import annotations

from .printers import TorchPrinter
from .render import fused_plans, header, indent, print_block, render

CHUNK = 64


def _rename(block, names: dict):
    """The block over the chunk's local variables (u -> u_c, A_re -> A4_re, ...): the template
    binds those, so a block's symbols never shadow the function's whole-sequence operands."""
    import sympy
    out = []
    for target, expr in block:
        expr = expr.xreplace({s: sympy.Symbol(names[s.name], real=True) for s in expr.free_symbols if s.name in names})
        out.append((names.get(target, target), expr))
    return out


CHUNK_NAMES = {"u": "u_c", "z": "z_c", "grad_out": "grad_out_c", "grad_u": "grad_u_c", "grad_z": "grad_z_c",
               "dt": "dt4", "A": "A4_re", "A_re": "A4_re", "A_im": "A4_im"}


def render_sources(lowered) -> dict:
    plans = fused_plans(lowered)
    scan = plans.get("scan")
    printer = TorchPrinter()
    context = dict(header=header(lowered, "torch"), name=lowered.spec.name, chunk=CHUNK,
                   scan=scan, conv=plans.get("conv"))
    if scan is not None:
        context.update(
            dt_lines=indent(print_block(scan.dt_block, printer), 4),
            discretize_lines=indent(print_block(scan.discretize_block, printer), 4),
            epilogue_lines=indent(print_block(scan.epilogue_block, printer), 4),
            grad_epilogue_lines=indent(print_block(_rename(scan.grad_epilogue_block, CHUNK_NAMES), printer), 8),
            grad_discretize_lines=indent(print_block(_rename(scan.grad_discretize_block, CHUNK_NAMES), printer), 8),
            grad_dt_lines=indent(print_block(scan.grad_dt_block, printer), 4),
        )
    return {"kernels_torch.py": render("torch/kernels.py.jinja", **context)}
