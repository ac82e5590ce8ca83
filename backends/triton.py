"""The Triton backend: the fused plans rendered as Triton GPU kernels plus their host launchers.

`render_sources` renders one template per stage from `templates/triton/siso/` — the prelude (imports,
scalar functions, (re, im) pair helpers, autotuning helpers), the scan plan, what the scan kernels
share, the sequential `scan_fwd` / `scan_bwd` kernels, the time-parallel ones (`scan_tiled_common`,
`scan_tiled_fwd`, `scan_tiled_bwd`: tiles of (channels, states, steps) scanned with
tl.associative_scan), `scan_schedule` (which of the two runs a call, and the launchers the runtime
calls), `scan_step`, `vandermonde`, `vandermonde_bwd` — and concatenates them into the one module
`kernels_triton.py` that the package loads. The templates are plain Triton in the
style of Inductor's: the plan's flags are `tl.constexpr` arguments (SCAN_FLAGS, passed by the
launchers; an absent operand is a None pointer), so the kernels and launchers read the same for every
plan. Jinja only prints: the flags, the tunables and the plan's sympy blocks, as the helpers
`_discretize`, `_epilogue`, `_grad_epilogue`, `_grad_discretize` and `_grad_dt` (printed by
`TritonPrinter`). A real plan's blocks are renamed into the kernels' pair naming (A -> A_re,
decay -> decay_re, ...; the imaginary parts are 0.0). Two rewrites happen on the way:

- exp -> exp2: `exp(A·dt)` in the discretization becomes `exp2(A_re_log2e·dt)` (and `expm1(A·dt)`
  `expm1_exp2(A_re_log2e·dt)`, which shares that exp2), with log2(e) folded into A once per program
  (the kernels compute `A_re_log2e = A_re · LOG2E` beside A), so the time loop pays one exp2 per
  (channel, state, step) and no extra multiply. An exponent is recognised through the block's common
  subexpressions (`gtmp0 = A*dt; exp(gtmp0)` folds too); one that is not a multiple of A stays
  `tl.exp` (which Triton lowers to a multiply and an exp2 itself).
- the schedule's tunable axes become each scan kernel's (and the decoding step's) `triton.autotune`
  configs, planned by `ir/tuning_space.py` from the spec's state size (idle threads and register spills
  pruned).

Training: the scan's backward kernel calls the plan's derived gradient helpers (`grad_epilogue_block`,
`grad_discretize_block` with the same exp -> exp2 folding, `grad_dt_block`) around the template's
reverse recurrence; the Vandermonde kernel's backward is a fixed formula.
"""
from __future__ import annotations

import sympy

from ..errors import CompileError
from ..ir.functions import expm1
from ..ir.passes.backward import _cse, inline as inline_block
from ..ir.tuning_space import config_comment, plan_configs
from .printers import TritonPrinter
from .render import fused_plans, header, indent, print_block, render

LOG2E = sympy.Symbol("LOG2E", positive=True)   # a tl.constexpr of the generated module

# Under the interpreter (no driver to benchmark) the generated module keeps one config per kernel:
# the first value of each tunable, the schedule lists them smallest first.
KERNEL_NAMES = {"scan": "scan_kernel", "conv": "conv_kernel"}
DEFAULT_SPACES = {
    "scan_kernel": {"BLOCK_D": [8, 16, 32, 64, 128], "num_warps": [1, 2, 4, 8]},
    "scan_tiled_bwd_kernel": {"BLOCK_D": [1, 2, 4, 8, 16], "num_warps": [1, 2, 4, 8]},
    "scan_tiled_fwd_kernel": {"BLOCK_D": [1, 2, 4, 8, 16], "BLOCK_T": [16, 32, 64, 128, 256], "num_warps": [1, 2, 4, 8]},
    "scan_step_kernel": {"BLOCK_D": [1, 2, 4, 8, 16, 32, 64, 128, 256], "num_warps": [1, 2, 4, 8]},
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


# A real plan's blocks name the real parts of the kernels' (re, im) pairs (the kernels read one naming);
# its imaginary parts are 0.0.
REAL_AS_PAIRS = {name: name + "_re" for name in ("A", "decay", "scale", "grad_A", "grad_decay", "grad_scale")}
IMAGINARY = ("decay_im", "scale_im", "grad_A_im")

# The plan's flags as the scan kernels' constexpr arguments: (argument, ScanPlan field, what it says).
FLAGS = (("IS_COMPLEX", "complex", "complex A, B, C and state, as (re, im) pairs"),
         ("DT_VARIES", "selective_dt", "delta (batch, dim, len), not (dim,)"),
         ("B_VARIES", "selective_B", "B (batch, groups, N, len), not (dim, N)"),
         ("C_VARIES", "selective_C", "C likewise"),
         ("HAS_DT_BIAS", "has_dt_bias", "dt from delta + dt_bias"),
         ("HAS_D", "has_D", "the skip D·u"),
         ("HAS_Z", "has_z", "the gate z"))


def as_pairs(block):
    """A real plan's block in the pair naming (A -> A_re, decay -> decay_re, ...)."""
    def rename(expr):
        return expr.xreplace({s: sympy.Symbol(REAL_AS_PAIRS[s.name], **s.assumptions0)
                              for s in expr.free_symbols if s.name in REAL_AS_PAIRS})
    return tuple((REAL_AS_PAIRS.get(target, target), rename(expr)) for target, expr in block)


def scan_flags(plan) -> dict:
    """{constexpr argument: value} of a ScanPlan."""
    return {name: bool(getattr(plan, field)) for name, field, _ in FLAGS}


def _flags_text(plan) -> str:
    values = scan_flags(plan)
    lines = [f"    {name}={values[name]},".ljust(24) + f"# {doc}" for name, _, doc in FLAGS]
    return "\n".join(["# The plan's flags: constexpr arguments of every scan kernel.", "SCAN_FLAGS = dict(",
                      *lines, ")"])


def _returns(block, names, optional=()) -> str:
    """A printed helper's return tuple: the targets `names` of `block`, 0.0 for one the block lacks if it
    is `optional` (a real plan's imaginary parts, an absent operand's gradient)."""
    targets = {target for target, _ in block}
    missing = [name for name in names if name not in targets and name not in optional]
    if missing:
        raise CompileError(f"triton backend: a plan block assigns {sorted(targets)}, not {missing}")
    return ", ".join(name if name in targets else "0.0" for name in names)


# each scan kernel's configs (the module's name for them, the planner's kernel, the schedule's axes)
PLANNED_CONFIGS = (("SCAN_FWD_CONFIGS", "scan_fwd", "scan_kernel"), ("SCAN_BWD_CONFIGS", "scan_bwd", "scan_kernel"),
                   ("TILED_FWD_CONFIGS", "scan_tiled_fwd", "scan_tiled_fwd_kernel"),
                   ("TILED_BWD_CONFIGS", "scan_tiled_bwd", "scan_tiled_bwd_kernel"),
                   ("STEP_CONFIGS", "scan_step", "scan_step_kernel"))


def _configs_text(lowered, scan) -> str:
    """The scan kernels' (and the decoding step's) autotune configs as planned by ir/tuning_space.py from
    the schedule's axes and the spec's state size, one commented list per kernel."""
    lines = []
    for variable, kernel, axes in PLANNED_CONFIGS:
        kept, pruned = plan_configs(kernel, _tunables(lowered, axes), lowered.spec.d_state, scan.complex)
        lines += [config_comment(kernel, kept, pruned), f"{variable} = ["]
        lines += [f"    dict({', '.join(f'{k}={v}' for k, v in config.items())})," for config in kept]
        lines.append("]")
    return "\n".join(lines)


def scale_is_dt(discretize, scan) -> bool:
    """Whether the plan's input scale is dt itself (Mamba's Euler step for B: b = dt·B·x): then it is one
    number per channel, and the kernels use it so: B·(dt·x) in one product per element, and the
    gradients of x and of the scale both from one sum over the states of G·B."""
    if scan.complex:
        return False
    values = dict(discretize)
    scale = values.get("scale_re")
    return scale is not None and isinstance(scale, sympy.Symbol) and scale.name == "dt" and "scale_im" not in values


def decay_is_exp(discretize, scan) -> bool:
    """Whether the plan's decay is exp(dt·A) (zero-order hold: Mamba, S4D): then a_t·h_{t-1} = h_t - b_t,
    and the time-parallel backward takes the decay's gradient from h_t without scanning for h_{t-1}
    (G·conj(h_{t-1}) times conj(∂a) is G·conj(h_t - b_t) times conj(A) for dt, dt for A)."""
    values = inline_block(discretize)
    decay_re, decay_im = values.get("decay_re"), values.get("decay_im", sympy.S.Zero)
    if decay_re is None:
        return False
    symbols = {s.name: s for s in decay_re.free_symbols | decay_im.free_symbols}
    if not set(symbols) <= {"A_re_log2e", "A_im", "dt"} or "A_re_log2e" not in symbols or "dt" not in symbols:
        return False
    growth = exp2(symbols["A_re_log2e"] * symbols["dt"])
    if not scan.complex:
        return sympy.simplify(decay_re - growth) == 0
    if "A_im" not in symbols:
        return False
    angle = symbols["A_im"] * symbols["dt"]
    return (sympy.simplify(decay_re - growth * sympy.cos(angle)) == 0
            and sympy.simplify(decay_im - growth * sympy.sin(angle)) == 0)


def grad_of_scale(grad_discretize) -> tuple:
    """The discretization's vector-Jacobian product with the decay's cotangent 0: the input scale's share
    alone (with DECAY_IS_EXP the time-parallel backward has the decay's share another way; passing 0.0 to
    _grad_discretize would still compute it, times zero)."""
    values = inline_block(grad_discretize)
    zero = {s: sympy.S.Zero for expr in values.values() for s in expr.free_symbols
            if s.name in ("grad_decay_re", "grad_decay_im")}
    return _cse([(name, values[name].xreplace(zero)) for name in ("grad_dt", "grad_A_re", "grad_A_im")
                 if name in values])


def grad_of_epilogue_given_y(grad_epilogue) -> tuple:
    """The epilogue's vector-Jacobian product less y's gradient, which becomes an argument: the time-parallel
    backward has it from before its loop over the states (the epilogue is linear in y, so it needs no y), and
    the other gradients' factors it shares (a gate's grad_out·silu(z) in the skip's) are not computed again."""
    values = inline_block(grad_epilogue)
    grad_y = values.get("grad_y", sympy.S.Zero)
    given = sympy.Symbol("grad_y")

    def reuse(expr):
        return expr if grad_y.is_number else expr.subs(grad_y, given)
    return _cse([(name, reuse(values[name])) for name in ("grad_u", "grad_D", "grad_z") if name in values])


def epilogue_linear_in_y(scan) -> bool:
    """Whether out is linear in the readout y (a skip and a gate are): then y's gradient needs no y, and the
    time-parallel backward can run its states one at a time."""
    out = inline_block(scan.epilogue_block).get("out")
    y = next((s for s in out.free_symbols if s.name == "y"), None) if out is not None else None
    return y is None or sympy.diff(out, y, 2) == 0


def _scan_context(lowered, scan) -> dict:
    """What templates/triton/siso/scan_plan.py.jinja prints: the flags, the tunables and the blocks."""
    if scan.direction != "forward":
        raise CompileError(f"triton backend: scan direction {scan.direction!r} is not supported "
                           "(expected 'forward')")
    if not (scan.grad_epilogue_block and scan.grad_discretize_block and scan.grad_dt_block):
        raise CompileError("triton backend: the scan plan has no gradient blocks "
                           "(the derive_backward pass did not run)")
    pairs = (lambda block: block) if scan.complex else as_pairs
    discretize, _ = fold_exp2(pairs(scan.discretize_block), "A_re")
    grad_discretize, _ = fold_exp2(pairs(scan.grad_discretize_block), "A_re")
    grad_scale = grad_of_scale(grad_discretize)
    grad_epilogue_given_y = grad_of_epilogue_given_y(scan.grad_epilogue_block)
    printer = _Printer()

    def lines(block):
        return indent(print_block(block, printer), 4)

    _returns(scan.dt_block, ("dt",))            # raises unless the block assigns dt (and out, below)
    _returns(scan.epilogue_block, ("out",))
    return dict(
        flags=_flags_text(scan), configs=_configs_text(lowered, scan), scale_is_dt=scale_is_dt(discretize, scan),
        decay_is_exp=decay_is_exp(discretize, scan), epilogue_linear_in_y=epilogue_linear_in_y(scan),
        dt_lines=lines(scan.dt_block), discretize_lines=lines(discretize),
        discretize_returns=_returns(discretize, ("decay_re", "decay_im", "scale_re", "scale_im"), IMAGINARY),
        epilogue_lines=lines(scan.epilogue_block), grad_epilogue_lines=lines(scan.grad_epilogue_block),
        grad_epilogue_returns=_returns(scan.grad_epilogue_block, ("grad_y", "grad_u", "grad_D", "grad_z"),
                                       ("grad_u", "grad_D", "grad_z")),
        grad_epilogue_given_y_lines=lines(grad_epilogue_given_y),
        grad_epilogue_given_y_returns=_returns(grad_epilogue_given_y, ("grad_u", "grad_D", "grad_z"),
                                               ("grad_u", "grad_D", "grad_z")),
        grad_discretize_lines=lines(grad_discretize),
        grad_scale_lines=lines(grad_scale),
        grad_scale_returns=_returns(grad_scale, ("grad_dt", "grad_A_re", "grad_A_im"), IMAGINARY),
        grad_discretize_returns=_returns(grad_discretize, ("grad_dt", "grad_A_re", "grad_A_im"), IMAGINARY),
        grad_dt_lines=lines(scan.grad_dt_block),
        grad_dt_returns=_returns(scan.grad_dt_block, ("grad_delta", "grad_dt_bias"), ("grad_dt_bias",)))


SCAN_TEMPLATES = ("scan_plan", "scan_common", "scan_fwd", "scan_bwd", "scan_tiled_common", "scan_schedule",
                  "scan_tiled_fwd", "scan_tiled_bwd", "scan_tiled_bwd_state", "scan_tiled_bwd_launch",
                  "scan_step")
CONV_TEMPLATES = ("vandermonde", "vandermonde_bwd")


def render_sources(lowered) -> dict:
    """{"kernels_triton.py": source}: the prelude, then one template per stage of the fused plans
    (templates/triton/siso/), concatenated into the one module the package loads."""
    plans = fused_plans(lowered)
    scan, conv = plans.get("scan"), plans.get("conv")
    kernels = (["scan_fwd", "scan_bwd", "scan_step"] if scan is not None else []) + (
        ["vandermonde", "vandermonde_bwd"] if conv is not None else [])
    parts = [render("triton/siso/prelude.py.jinja", header=header(lowered, "triton"), name=lowered.spec.name,
                    kernels=kernels)]
    if scan is not None:
        context = _scan_context(lowered, scan)
        parts += [render(f"triton/siso/{name}.py.jinja", **context) for name in SCAN_TEMPLATES]
    if conv is not None:
        tunables = _tunables(lowered, KERNEL_NAMES["conv"])
        parts += [render(f"triton/siso/{name}.py.jinja", tunables=tunables) for name in CONV_TEMPLATES]
    return {"kernels_triton.py": "\n\n\n".join(part.strip("\n") for part in parts) + "\n"}
