"""The C backend: the fused plans rendered as C (OpenMP over blocks of channels, one channel per
vector lane, an inlined exp in the recurrence and libmvec elsewhere), plus the ctypes loader that
compiles it on first use (`ssmc.runtime.cbuild`).

Files: `kernels_c.c` (the kernels, `templates/c/kernels.c.jinja`), `kernels_c.py` (the loader,
with the same functions and signatures as the torch backend's `kernels_torch.py`: scan_fwd with
checkpoints, scan_bwd, vandermonde, vandermonde_bwd) and the operand tables both are derived from
(`operands.json`, ir/scan_stages.py): the C signatures, the loader's parameters, argtypes and calls.

Every kernel is rendered for `float` and for `double` (float64 operands: gradcheck); the blocks are
printed once per precision (`expf` / `2.0f` against `exp` / `2.0`).
"""
from __future__ import annotations

import sympy

from ..errors import CompileError
from ..ir.scan_stages import scan_stages, scan_tables_text
from .printers import CPrinter, DoubleCPrinter
from .render import fused_plans, header, indent, print_block, render

STATEMENT = "const float {target} = {value};"
PRECISIONS = ("float", "double")


class RecurrenceCPrinter(CPrinter):
    """The C printer of the recurrence's inner loop: exp and expm1 are the template's inlined
    `ssmc_exp` / `ssmc_expm1` (one shared polynomial), and sin/cos the template's names that keep gcc
    from fusing them into a scalar sincosf."""

    functions = {**CPrinter.functions, "exp": "ssmc_exp", "expm1": "ssmc_expm1", "sin": "ssmc_sinf",
                 "cos": "ssmc_cosf"}


def _printers(precision: str):
    """(printer, printer of the recurrence's inner loops) of a precision."""
    if precision == "float":
        return CPrinter(), RecurrenceCPrinter()
    return DoubleCPrinter(), DoubleCPrinter()


def _lines(block, spaces: int, printer=None, precision: str = "float") -> str:
    statement = f"const {precision} {{target}} = {{value}};"
    return indent(print_block(block, printer or CPrinter(), statement), spaces)


def _time_index(direction: str) -> str:
    if direction == "forward":
        return "start + i"
    if direction == "reverse":
        return "length - 1 - (start + i)"
    raise CompileError(f"C backend: unknown scan direction {direction!r}, expected 'forward' or 'reverse'")


def _real_symbols(expr):
    return expr.xreplace({s: sympy.Symbol(s.name, real=True) for s in expr.free_symbols})


def _inline(block) -> dict:
    """The block's targets as whole expressions (temporaries substituted back), over real symbols."""
    values = {}
    for target, expr in block:
        expr = _real_symbols(expr)
        values[target] = expr.xreplace({s: values[s.name] for s in expr.free_symbols if s.name in values})
    return values


def discretize_with_gradient(plan) -> tuple:
    """One block computing the discretization (decay*, scale*) and its vector-Jacobian product
    (grad_dt, grad_A*) from dt, A*, grad_decay*, grad_scale*: the backward's inner loop needs both,
    and one common-subexpression elimination shares their exp/cos/sin (one exp per element, not two)."""
    forward = {k: v for k, v in _inline(plan.discretize_block).items() if k.startswith(("decay", "scale"))}
    gradient = {k: v for k, v in _inline(plan.grad_discretize_block).items() if k.startswith("grad_")}
    targets = list(forward.items()) + list(gradient.items())
    replacements, reduced = sympy.cse([e for _, e in targets], symbols=sympy.numbered_symbols("btmp"))
    return tuple((str(s), e) for s, e in replacements) + tuple((n, e) for (n, _), e in zip(targets, reduced))


# the C names of the tables' dimensions (the kernels' own variable names)
C_SIZE_NAMES = {"len": "length", "state": "n_state"}
# kernels whose pointers are `restrict`-qualified (the Vandermonde kernels; the scans pass theirs in a struct)
RESTRICT = ("vandermonde", "vandermonde_bwd")


def _wrap(parts, prefix: str, width: int = 110) -> str:
    """`parts` joined by ", " on lines of at most `width` characters, each starting with `prefix`."""
    lines, line = [], prefix
    for i, part in enumerate(parts):
        text = part + (", " if i + 1 < len(parts) else "")
        if line != prefix and len(line) + len(text.rstrip()) > width:
            lines.append(line.rstrip())
            line = prefix
        line += text
    return "\n".join(lines + [line.rstrip()])


def c_signature(stage, precision: str) -> str:
    """`int ssmc_<kernel>_<precision>(...)` from the kernel's operand table (ir/scan_stages.py): int64
    sizes in c_sizes order, input pointers (const), output pointers, then the thread count."""
    qualifier = "restrict " if stage.name in RESTRICT else ""
    sizes = [f"const int64_t {C_SIZE_NAMES.get(n, n)}" for n in stage.c_sizes]
    inputs = [f"const {precision} *{qualifier}{o.name}" for o in stage.stage.inputs]
    outputs = [f"{precision} *{qualifier}{o.name}" for o in stage.stage.outputs] + ["const int num_threads"]
    groups = ",\n".join(_wrap(group, "    ") for group in (sizes, inputs, outputs))
    return f"int ssmc_{stage.name}_{precision}(\n{groups})"


def python_parameters(stage) -> str:
    """The loader function's parameters, in table order: the trailing optional inputs default to
    None, and then the params to 0."""
    inputs = [o.name for o in stage.stage.inputs]
    trailing = 0
    for operand in reversed(stage.stage.inputs):
        if not operand.optional:
            break
        trailing += 1
    names = inputs[:len(inputs) - trailing] + [f"{n}=None" for n in inputs[len(inputs) - trailing:]]
    names += [f"{p}=0" if trailing else p for p in stage.stage.params]
    return ", ".join(names)


def _loader_kernels(plans) -> dict:
    """{kernel: its loader function's parameters, and the operands and params it passes by name}."""
    kernels = {}
    for stage in scan_stages(plans):
        names = [o.name for o in stage.stage.inputs]
        kernels[stage.name] = dict(
            parameters=_wrap(python_parameters(stage).split(", "), " " * (len(stage.name) + 5), 110).lstrip(),
            operands=_wrap([f"{n}={n}" for n in names], " " * 8, 110),
            params=", ".join(f"{p}={p}" for p in stage.stage.params))
    return kernels


def _precision_context(scan, conv, precision: str) -> dict:
    printer, recurrence = _printers(precision)
    context = dict(T=precision)
    context["signatures"] = {stage.name: c_signature(stage, precision)
                             for stage in scan_stages({"scan": scan, "conv": conv})}
    if precision == "float":
        context.update(exp="expf", cos="ssmc_cosf", sin="ssmc_sinf")
    else:
        context.update(exp="exp", cos="cos", sin="sin")
    if scan is not None:
        if not scan.grad_discretize_block or not scan.grad_dt_block or not scan.grad_epilogue_block:
            raise CompileError("C backend: the scan plan has no backward blocks (run the backward-derivation pass)")
        lines = lambda block, spaces, p=printer: _lines(block, spaces, p, precision)  # noqa: E731
        context.update(
            dt_lines=lines(scan.dt_block, 16),
            dt_lines_hoisted=lines(scan.dt_block, 8),
            discretize_lines=lines(scan.discretize_block, 20, recurrence),
            discretize_lines_hoisted=lines(scan.discretize_block, 12),
            epilogue_lines=lines(scan.epilogue_block, 16),
            grad_epilogue_lines=lines(scan.grad_epilogue_block, 16),
            bwd_discretize_lines=lines(discretize_with_gradient(scan), 20, recurrence),
            grad_discretize_lines_hoisted=lines(scan.grad_discretize_block, 12),
            grad_dt_lines=lines(scan.grad_dt_block, 16),
            grad_dt_lines_hoisted=lines(scan.grad_dt_block, 16),
            # the decoding step (step.c.jinja): per (batch, channel), per state, then the epilogue
            step_dt_lines=lines(scan.dt_block, 8),
            step_discretize_lines=lines(scan.discretize_block, 12),
            step_epilogue_lines=lines(scan.epilogue_block, 12),
        )
    return context


def render_sources(lowered) -> dict:
    plans = fused_plans(lowered)
    scan, conv = plans.get("scan"), plans.get("conv")
    if scan is None and conv is None:
        return {}
    context = dict(header=header(lowered, "c", "//"), py_header=header(lowered, "c"), name=lowered.spec.name,
                   d_state=lowered.spec.d_state, scan=scan, conv=conv, time_index="start + i",
                   precisions=[_precision_context(scan, conv, p) for p in PRECISIONS],
                   kernels=_loader_kernels(plans))
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
        # the (N, lanes) tiles of a block's scratch, in order: state, then per-channel operands
        tiles = ["h_re", "h_im"][:len(parts)] + discretized + per_lane
        # the backward's tiles: the carried gradient, per-channel operands (B never folded) and the
        # per-channel gradient sums over time
        bwd_per_lane = (operands["B"] if not scan.selective_B else []) + (operands["C"] if not scan.selective_C else [])
        if scan.selective_dt:
            bwd_discretized = ["A" + part for part in parts] + ["gA" + part for part in parts]
        else:
            bwd_discretized = [f"{g}{name}{part}" for g in ("", "g") for name in ("decay", "scale") for part in parts]
        bwd_tiles = (["carry_re", "carry_im"][:len(parts)] + bwd_discretized + bwd_per_lane
                     + ["g" + name for name in bwd_per_lane])
        reduction = ", ".join(f"g{name}_n" for name in broadcast)
        context.update(
            time_index=_time_index(scan.direction), parts=parts, broadcast=broadcast, per_lane=per_lane,
            tiles=tiles, bwd_per_lane=bwd_per_lane, bwd_tiles=bwd_tiles,
            broadcast_reduction=f" reduction(+:{reduction})" if reduction else "",
            grad_epilogue_targets=[target for target, _ in scan.grad_epilogue_block],
        )
    # the loader reads the operand tables beside it (the package writes the same file)
    files = {"kernels_c.c": render("c/kernels.c.jinja", **context),
             "kernels_c.py": render("c/kernels.py.jinja", **context),
             "operands.json": scan_tables_text(plans)}
    if "scan_step" in context["kernels"]:
        files["step_c.c"] = render("c/step.c.jinja", step_inputs=_step_inputs(scan), **context)
    return files


def _step_inputs(scan) -> list:
    """The step kernel's input pointers that the plan's blocks would shadow (renamed `<name>_in`)."""
    names = ["delta"] + (["dt_bias"] if scan.has_dt_bias else []) + ["A_re", "B_re", "C_re"]
    names += ["A_im", "B_im", "C_im"] if scan.complex else []
    return names + (["D"] if scan.has_D else []) + (["z"] if scan.has_z else [])
