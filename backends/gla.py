"""The package of a gated spec (A=ssmc.InputDecay): the module (templates/package/gated.py.jinja), the
stage kernels of every backend for its schedule's stages, and their operand tables (operands.json)."""
from __future__ import annotations

from ..ir.pipelines import TARGETS
from .multihead import _header, _python_cost, stage_package
from .printers import TorchPrinter
from .render import indent, print_block, render


def _module_source(lowered) -> str:
    spec = lowered.spec
    records = lowered.schedule.candidates
    return render(
        "package/gated.py.jinja", header=_header(lowered), name=spec.name, spec_hash=spec.content_hash(),
        key_dim=spec.d_state, value_dim=spec.heads.headdim, per_state=lowered.per_state, bonus=spec.bonus,
        has_D=spec.skip_D, has_z=spec.gate, inputs=list(spec.A.inputs),
        identity_input=spec.A.log_decay.is_Symbol, log_decay_text=str(spec.A.log_decay),
        log_decay_lines=indent(print_block(lowered.prologue, TorchPrinter()), 4),
        schedule_request=lowered.schedule.request,
        schedule_summary=[f"{r.text}: {' -> '.join(s.name for s in r.stages)}" for r in records],
        candidates=repr([(r.name, r.chunk) for r in records]),
        costs={target: [_python_cost(r.cost(target)) for r in records] for target in TARGETS})


def render_gated_package(lowered) -> dict:
    return stage_package(lowered, _module_source(lowered))
