"""The C backend: the fused plans rendered as C (OpenMP over blocks of channels, one channel per
vector lane, an inlined exp in the recurrence and libmvec elsewhere), plus the ctypes loader that
compiles it on first use (`ssmc.runtime.cbuild`).

Files: `kernels_c.c` (the kernels), `step_c.c` (the decoding step), `kernels_c.py` (the loader, with
the same functions and signatures as the torch backend's `kernels_torch.py`: scan_fwd with
checkpoints, scan_bwd, vandermonde, vandermonde_bwd, scan_step) and the operand tables both are
derived from (`operands.json`, ir/scan_stages.py): the C signatures, the loader's parameters,
argtypes and calls.

The templates (`templates/c/siso/`, one per stage, plus `templates/c/step.c.jinja`) are plain C:
the plan's flags are C constants (`SSMC_COMPLEX`, `SSMC_SELECTIVE_B`, ...) that the kernels test
with `if`s the compiler folds, complex numbers are (re, im) pairs with helpers (a real layer's
imaginary parts are 0 and fold away), and the plan's blocks are printed here as the bodies of small
inline functions (`dt_of`, `discretize`, `epilogue` and their vector-Jacobian products), in the
pairs' names. Jinja prints only those blocks, the signatures and the precision: every kernel is
rendered for `float` and for `double` (float64 operands: gradcheck), the blocks printed once per
precision (`expf` / `2.0f` against `exp` / `2.0`). `kernels_c.c` is the templates rendered in order:
the helpers, then per precision the pairs, the plan's formulas, what the scan's forward and backward
share (one step of the recurrence: `scan_step`) and each kernel under its build switch.
"""
from __future__ import annotations

import sympy

from ..errors import CompileError
from ..ir.scan_stages import scan_stages, scan_tables_text
from .printers import CPrinter, DoubleCPrinter
from .render import fused_plans, header, indent, print_block, render

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


def _time_direction(direction: str) -> int:
    """SSMC_REVERSE of a plan's scan direction."""
    if direction not in ("forward", "reverse"):
        raise CompileError(f"C backend: unknown scan direction {direction!r}, expected 'forward' or 'reverse'")
    return int(direction == "reverse")


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




# --- the kernels' source: templates/c/siso/, one file per stage -------------------------------------

# the plan's flags as C constants (templates/c/siso/common.h.jinja): (constant, plan field, meaning)
FLAGS = (
    ("SSMC_COMPLEX", "complex", "complex A: states are (re, im) pairs"),
    ("SSMC_SELECTIVE_DT", "selective_dt", "delta (batch, dim, len), else (dim,)"),
    ("SSMC_SELECTIVE_B", "selective_B", "B (batch, groups, len, N), time-major; else (dim, N)"),
    ("SSMC_SELECTIVE_C", "selective_C", "C (batch, groups, len, N), time-major; else (dim, N)"),
    ("SSMC_HAS_DT_BIAS", "has_dt_bias", "dt_bias (dim,); else NULL"),
    ("SSMC_HAS_D", "has_D", "the skip D (dim,); else NULL"),
    ("SSMC_HAS_Z", "has_z", "the gate z (batch, dim, len); else NULL"),
)

# a real layer's names in the plan's blocks, renamed to the real parts of the (re, im) pairs that
# the kernels use for both kinds of layer (a real layer's imaginary parts are 0)
PAIRED = ("A", "decay", "scale", "grad_decay", "grad_scale", "grad_A")

# each plan block's C function (templates/c/siso/plan.h.jinja): the names it takes, the values it
# returns, and those of them that may be missing from the block (then 0: an imaginary part of a real
# layer, the gradient of an operand the epilogue or dt does not read)
FUNCTIONS = {
    "dt": (("delta", "dt_bias"), ("dt",), ()),
    "discretize": (("dt", "A_re", "A_im"), ("decay_re", "scale_re"), ("decay_im", "scale_im")),
    "discretize_vjp": (("dt", "A_re", "A_im", "grad_decay_re", "grad_decay_im", "grad_scale_re", "grad_scale_im"),
                       ("decay_re", "scale_re", "grad_A_re", "grad_dt"), ("decay_im", "scale_im", "grad_A_im")),
    "epilogue": (("y", "u", "D", "z"), ("out",), ()),
    "epilogue_vjp": (("grad_out", "y", "u", "D", "z"), ("grad_y",), ("grad_u", "grad_z", "grad_D")),
    "dt_vjp": (("grad_dt", "delta", "dt_bias"), ("grad_delta",), ("grad_dt_bias",)),
}


def _flags(plan) -> list:
    """The plan's flags as `NAME = value,` lines of an enum (a conv plan has no selective operand)."""
    values = [(name, int(bool(getattr(plan, field, False))), doc) for name, field, doc in FLAGS]
    values.append(("SSMC_REVERSE", _time_direction(getattr(plan, "direction", "forward")),
                   "the scan runs from the last step back"))
    width = max(len(name) for name, _, _ in values) + 6
    return [dict(assignment=f"{name} = {value},".ljust(width), doc=doc) for name, value, doc in values]


def _paired(block, complex_: bool) -> tuple:
    """The block in the pairs' names: a real layer's A, decay, ... become A_re, decay_re, ..."""
    if complex_:
        return tuple(block)
    rename = lambda name: name + "_re" if name in PAIRED else name  # noqa: E731
    paired = []
    for target, expr in block:
        symbols = {s: sympy.Symbol(rename(s.name), **s.assumptions0) for s in expr.free_symbols if s.name in PAIRED}
        paired.append((rename(target), expr.xreplace(symbols)))
    return tuple(paired)


def _function_body(name: str, block, printer, precision: str) -> str:
    """A plan block as the body of its C function: its statements, then 0 for each value the function
    returns that the block may lack. A block reading a name the function does not take, or lacking
    one it must compute, is a CompileError (never C that fails to build)."""
    parameters, required, optional = FUNCTIONS[name]
    known = set(parameters)
    for target, expr in block:
        unknown = sorted(s.name for s in expr.free_symbols if s.name not in known)
        if unknown:
            raise CompileError(f"C backend: the plan's {name} formulas read {', '.join(unknown)}, which the "
                               f"kernels do not pass ({', '.join(parameters)})")
        known.add(target)
    missing = [target for target in required if target not in known]
    if missing:
        raise CompileError(f"C backend: the plan's {name} formulas compute no {', '.join(missing)}")
    block = tuple(block) + tuple((target, sympy.Integer(0)) for target in optional if target not in known)
    statement = f"const {precision} {{target}} = {{value}};"
    return indent(print_block(block, printer, statement), 4)


def _precision_context(scan, conv, precision: str) -> dict:
    """What the templates print for one precision: the signatures, the math functions' names, and
    the plan's blocks as the bodies of their functions."""
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
        blocks = dict(dt=(scan.dt_block, printer), discretize=(scan.discretize_block, recurrence),
                      discretize_vjp=(discretize_with_gradient(scan), recurrence),
                      epilogue=(scan.epilogue_block, printer), epilogue_vjp=(scan.grad_epilogue_block, printer),
                      dt_vjp=(scan.grad_dt_block, printer))
        context.update({name: _function_body(name, _paired(block, scan.complex), p, precision)
                        for name, (block, p) in blocks.items()})
    return context


def _join(parts) -> str:
    return "\n\n".join(part.strip("\n") for part in parts if part.strip()) + "\n"


def _kernels_source(context, scan, conv) -> str:
    """kernels_c.c: the helpers, then per precision the complex pairs, the plan's formulas, what the
    scan's forward and backward share, and each kernel (templates/c/siso/) under its build switch."""
    stages = [("scan_fwd", "FORWARD"), ("scan_bwd_block", "BACKWARD"), ("scan_bwd", "BACKWARD")] if scan else []
    stages += [("vandermonde", "FORWARD"), ("vandermonde_bwd", "BACKWARD")] if conv else []
    shared = ["pairs.h", "plan.h", "scan.h"] if scan else ["pairs.h"]
    parts = [context["header"], render("c/siso/common.h.jinja", **context), render("c/siso/layout.h.jinja", **context)]
    for precision in context["precisions"]:
        here = dict(context, P=precision, T=precision["T"])
        switch = f"SSMC_{precision['T'].upper()}"
        parts.append(f"#ifdef {switch}")
        parts += [render(f"c/siso/{name}.jinja", **here) for name in shared]
        for direction in ("FORWARD", "BACKWARD"):
            parts.append(f"#ifdef SSMC_{direction}")
            parts += [render(f"c/siso/{stage}.c.jinja", **here) for stage, where in stages if where == direction]
            parts.append(f"#endif /* SSMC_{direction} */")
        parts.append(f"#endif /* {switch} */")
    return _join(parts)


def _step_source(context) -> str:
    """step_c.c: the decoding step, with the same helpers and plan formulas as the scan."""
    parts = [context["header"], render("c/siso/common.h.jinja", **context)]
    for precision in context["precisions"]:
        here = dict(context, P=precision, T=precision["T"])
        switch = f"SSMC_{precision['T'].upper()}"
        parts += [f"#ifdef {switch}", render("c/siso/pairs.h.jinja", **here), render("c/siso/plan.h.jinja", **here),
                  render("c/step.c.jinja", **here), f"#endif /* {switch} */"]
    return _join(parts)


def render_sources(lowered) -> dict:
    plans = fused_plans(lowered)
    scan, conv = plans.get("scan"), plans.get("conv")
    if scan is None and conv is None:
        return {}
    context = dict(header=header(lowered, "c", "//"), py_header=header(lowered, "c"), name=lowered.spec.name,
                   d_state=lowered.spec.d_state, scan=scan, conv=conv, flags=_flags(scan or conv),
                   precisions=[_precision_context(scan, conv, p) for p in PRECISIONS],
                   kernels=_loader_kernels(plans))
    # the loader reads the operand tables beside it (the package writes the same file)
    files = {"kernels_c.c": _kernels_source(context, scan, conv),
             "kernels_c.py": render("c/kernels.py.jinja", **context),
             "operands.json": scan_tables_text(plans)}
    if "scan_step" in context["kernels"]:
        files["step_c.c"] = _step_source(context)
    return files
