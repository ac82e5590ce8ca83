"""Renders a whole compiled package: the module wrapper plus every backend's kernels and the
readable dumps (IR after each pass, schedule, spec)."""
from __future__ import annotations

import json

from ..ir.ops import Select
from ..ir.scan_stages import scan_tables_text
from . import c as c_backend
from . import torch as torch_backend
from . import triton as triton_backend
from .printers import TorchPrinter
from .render import fused_plans, header, indent, print_block, render


def _module_source(lowered) -> str:
    spec = lowered.spec
    plans = fused_plans(lowered)
    scan, conv = plans.get("scan"), plans.get("conv")
    any_plan = scan or conv
    printer = TorchPrinter()
    selects = lowered.graph.of_kind(Select)
    context = dict(
        header=header(lowered, "module"), name=spec.name, spec_hash=spec.content_hash(),
        d_state=spec.d_state, groups=spec.groups, complex=spec.is_complex,
        discretization=type(spec.discretization).__name__, selective=", ".join(spec.selective),
        selective_dt=spec.is_selective("dt"), selective_B=spec.is_selective("B"), selective_C=spec.is_selective("C"),
        has_dt_bias=spec.dt_bias, has_D=any_plan.has_D, has_z=any_plan.has_z,
        scan=scan, conv=conv, select=bool(selects),
        schedule_summary="; ".join(f"{d.subject} by {d.algorithm} ({d.reason})" for d in lowered.schedule.decisions),
        select_predicate=_python_predicate(selects[0].use_first) if selects else "",
        conv_dt_lines="", conv_kernel_lines="", epilogue_lines="",
    )
    if conv is not None:
        context["conv_dt_lines"] = indent(print_block(conv.dt_block, printer), 4)
        context["conv_kernel_lines"] = indent(print_block(conv.kernel_block, printer), 4)
        context["epilogue_lines"] = indent(print_block(conv.epilogue_block, printer), 4)
    return render("package/module.py.jinja", **context)


def _python_predicate(predicate) -> str:
    """The cost model's comparison as plain Python over the call's dimensions (no sympy at run time)."""
    from sympy.printing.pycode import PythonCodePrinter
    return PythonCodePrinter({"fully_qualified_modules": True}).doprint(predicate)


def render_package(lowered) -> dict:
    """{file name: text} of the package of one spec."""
    # the kernels' operand tables: the module's custom ops and the C loader are derived from them
    files = {"__init__.py": _module_source(lowered), "operands.json": scan_tables_text(fused_plans(lowered))}
    files.update(torch_backend.render_sources(lowered))
    files.update(c_backend.render_sources(lowered))
    files.update(triton_backend.render_sources(lowered))
    files["ir.txt"] = lowered.dump() + "\n"
    files["schedule.json"] = json.dumps(lowered.schedule.to_json(), indent=1, sort_keys=True) + "\n"
    files["graph.json"] = lowered.graph.dumps_json() + "\n"
    files["spec.json"] = json.dumps(lowered.spec.to_json(), indent=1, sort_keys=True) + "\n"
    return files
