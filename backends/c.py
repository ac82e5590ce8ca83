"""The C backend: the fused plans rendered as C (OpenMP over blocks of channels, one channel per
vector lane, an inlined exp in the recurrence and libmvec elsewhere), plus the ctypes loader that
compiles it on first use (`ssmc.runtime.cbuild`).

Files: `kernels_c.c` (the kernels, `templates/c/kernels.c.jinja`) and `kernels_c.py` (the loader,
with the same functions and signatures as the torch backend's `kernels_torch.py`).
"""
from __future__ import annotations

from ..errors import CompileError
from .printers import CPrinter
from .render import fused_plans, header, indent, print_block, render

STATEMENT = "const float {target} = {value};"


class RecurrenceCPrinter(CPrinter):
    """The C printer of the recurrence's inner loop: exp is the template's inlined `ssmc_exp`, and
    sin/cos the template's names that keep gcc from fusing them into a scalar sincosf."""

    functions = {**CPrinter.functions, "exp": "ssmc_exp", "sin": "ssmc_sinf", "cos": "ssmc_cosf"}


def _lines(block, spaces: int, printer=None) -> str:
    return indent(print_block(block, printer or CPrinter(), STATEMENT), spaces)


def _time_index(direction: str) -> str:
    if direction == "forward":
        return "start + i"
    if direction == "reverse":
        return "length - 1 - (start + i)"
    raise CompileError(f"C backend: unknown scan direction {direction!r}, expected 'forward' or 'reverse'")


def render_sources(lowered) -> dict:
    plans = fused_plans(lowered)
    scan, conv = plans.get("scan"), plans.get("conv")
    if scan is None and conv is None:
        return {}
    context = dict(header=header(lowered, "c", "//"), py_header=header(lowered, "c"), name=lowered.spec.name,
                   d_state=lowered.spec.d_state, scan=scan, conv=conv, time_index="start + i",
                   dt_lines="", dt_lines_hoisted="", discretize_lines="", discretize_lines_hoisted="",
                   epilogue_lines="")
    if scan is not None:
        parts = ("_re", "_im") if scan.complex else ("",)
        operands = {name: [name + "_re", name + "_im"] if scan.complex else [name + "_re"] for name in "BC"}
        # time-varying B/C: one scalar per (step, state) shared by a block's lanes; otherwise a tile
        broadcast = (operands["B"] if scan.selective_B else []) + (operands["C"] if scan.selective_C else [])
        # a time-invariant B is folded into the hoisted scale when dt is time-invariant too
        per_lane = ((operands["B"] if not scan.selective_B and scan.selective_dt else [])
                    + (operands["C"] if not scan.selective_C else []))
        if scan.selective_dt:
            discretized = ["A" + part for part in parts]
        else:
            discretized = ["decay" + part for part in parts] + ["scale" + part for part in parts]
        # the (N, lanes) float tiles of a block's scratch, in order: state, then per-channel operands
        tiles = ["h_re", "h_im"][:len(parts)] + discretized + per_lane
        context.update(
            time_index=_time_index(scan.direction), parts=parts, broadcast=broadcast, per_lane=per_lane,
            tiles=tiles, epilogue_lines=_lines(scan.epilogue_block, 16),
        )
        if scan.selective_dt:
            context.update(dt_lines=_lines(scan.dt_block, 16),
                           discretize_lines=_lines(scan.discretize_block, 20, RecurrenceCPrinter()))
        else:
            context.update(dt_lines_hoisted=_lines(scan.dt_block, 8),
                           discretize_lines_hoisted=_lines(scan.discretize_block, 12))
    return {"kernels_c.c": render("c/kernels.c.jinja", **context),
            "kernels_c.py": render("c/kernels.py.jinja", **context)}
