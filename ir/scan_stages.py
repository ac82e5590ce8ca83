"""Operand tables of the SISO kernels (Mamba's selective scan, S4D/DSS scan and Vandermonde kernel).

The multi-head path describes its stages by operand tables (ir/stages.py); the older SISO kernels
— `scan_fwd`, `scan_bwd`, `vandermonde`, `vandermonde_bwd` — are described here the same way, from
the package's fused plans, so that their operand contract is written once: the runtime
(`ssmc.runtime.scan_tables`) derives the custom-op schemas, fake kernels, argument checks, output
allocation and the C ABI from these tables, and the C template renders its signatures from them.

A SISO table is an ir.stages `Stage` plus what the SISO kernels need beyond the multi-head contract:
- `absent`: operands the package never has (A_im of a real layer, D without a skip, ...). They stay
  in the table so that every package's kernels keep one argument list: an absent input must be None,
  an absent output is an empty (0,) placeholder (custom ops cannot return None).
- `when`: outputs formed only when an integer param is positive (the checkpoints: `chunk > 0`);
  otherwise they are (0,) placeholders too.
- `sizes`: dimensions no input gives: `("chunks", "ceil_div", "len", "chunk")` (0 when chunk <= 0),
  `("groups_B", "one")` (B per channel, not grouped), `("len", "param", "length")`.
- `c_sizes`: the C ABI's order. The SISO C functions keep their int-first ABI:
  `int ssmc_<stage>_<float|double>(int64 sizes in c_sizes order (dimensions and params), pointers
  of the inputs then the outputs in table order (NULL for an absent one), int threads)`.
- `c_layout`: operands the C kernel reads in another memory order (time-varying B and C
  time-major, (batch, groups, len, state)): the loader permutes them, and their gradients back.
- `like`: the input whose dtype (the compute dtype) and device the outputs take.
The SISO float operands have dtype `floating`: any floating dtype, cast by the kernels to the
compute dtype (float64 when A is float64, else float32) — u and z arrive in the caller's dtype.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from .plans import ConvPlan, ScanPlan
from .stages import Operand, Stage

FLOATING = "floating"       # any floating dtype; the kernel casts it to the compute dtype
SCAN_DIMS = ("batch", "dim", "len", "state", "groups_B", "groups_C", "chunks")
SCAN_C_SIZES = ("batch", "dim", "len", "state", "groups_B", "groups_C", "chunk")
CONV_DIMS = ("dim", "state", "len")


@dataclass(frozen=True)
class ScanStage:
    """One SISO kernel: its `Stage` (operands in today's argument order) and the SISO extras above."""

    stage: Stage
    c_sizes: tuple
    like: str
    absent: tuple = ()
    when: tuple = ()
    sizes: tuple = ()
    c_layout: tuple = ()

    @property
    def name(self) -> str:
        return self.stage.name

    def to_json(self) -> dict:
        data = self.stage.to_json()
        data.update(c_sizes=list(self.c_sizes), like=self.like, absent=list(self.absent),
                    when=[list(w) for w in self.when], sizes=[list(s) for s in self.sizes],
                    c_layout={name: list(dims) for name, dims in self.c_layout})
        return data


def _float(name, dims, optional=False, doc=""):
    return Operand(name, tuple(dims), FLOATING, optional, doc)


def _scan_operands(plan: ScanPlan) -> tuple:
    """scan_fwd's inputs in today's order, and the names this plan never has."""
    per_step = ("batch", "dim", "len")
    delta = per_step if plan.selective_dt else ("dim",)
    operands, absent = [_float("u", per_step), _float("delta", delta, doc="dt before bias and softplus")], []
    operands.append(_float("dt_bias", ("dim",), optional=True))
    absent += [] if plan.has_dt_bias else ["dt_bias"]
    operands += [_float("A_re", ("dim", "state")), _float("A_im", ("dim", "state"), optional=True)]
    for name, selective in (("B", plan.selective_B), ("C", plan.selective_C)):
        dims = ("batch", f"groups_{name}", "state", "len") if selective else ("dim", "state")
        operands += [_float(f"{name}_re", dims), _float(f"{name}_im", dims, optional=True)]
    absent += [] if plan.complex else ["A_im", "B_im", "C_im"]
    operands += [_float("D", ("dim",), optional=True), _float("z", per_step, optional=True, doc="gate")]
    absent += ([] if plan.has_D else ["D"]) + ([] if plan.has_z else ["z"])
    state = ("batch", "dim", "state")
    operands += [_float("h0_re", state, optional=True, doc="state before the first step (zeros if None)"),
                 _float("h0_im", state, optional=True)]
    absent += [] if plan.complex else ["h0_im"]
    return tuple(operands), absent


def _scan_extras(plan: ScanPlan) -> dict:
    sizes = [("chunks", "ceil_div", "len", "chunk")]
    layout = []
    for name, selective in (("B", plan.selective_B), ("C", plan.selective_C)):
        if selective:
            time_major = ("batch", f"groups_{name}", "len", "state")
            layout += [(f"{name}_re", time_major), (f"{name}_im", time_major),
                       (f"grad_{name}_re", time_major), (f"grad_{name}_im", time_major)]
        else:
            sizes.append((f"groups_{name}", "one"))
    return dict(c_sizes=SCAN_C_SIZES, like="A_re", sizes=tuple(sizes), c_layout=tuple(layout))


def scan_fwd_stage(plan: ScanPlan) -> ScanStage:
    inputs, absent = _scan_operands(plan)
    state, ckpt = ("batch", "dim", "state"), ("batch", "dim", "chunks", "state")
    outputs = (_float("out", ("batch", "dim", "len"), doc="y, epilogue included"),
               _float("state_re", state, doc="state after the last step"), _float("state_im", state),
               _float("ckpt_re", ckpt, doc="state entering every chunk of `chunk` steps"), _float("ckpt_im", ckpt))
    absent += [] if plan.complex else ["state_im", "ckpt_im"]
    stage = Stage("scan_fwd", "the fused scan: dt, discretization, recurrence, readout and epilogue in one pass",
                  inputs=inputs, outputs=outputs, params=("chunk",), dims=SCAN_DIMS)
    return ScanStage(stage, absent=tuple(absent), when=(("ckpt_re", "chunk"), ("ckpt_im", "chunk")),
                     **_scan_extras(plan))


def scan_bwd_stage(plan: ScanPlan) -> ScanStage:
    operands, absent = _scan_operands(plan)
    state, ckpt = ("batch", "dim", "state"), ("batch", "dim", "chunks", "state")
    inputs = ((_float("grad_out", ("batch", "dim", "len")), _float("grad_state_re", state, optional=True),
               _float("grad_state_im", state, optional=True))
              + tuple(o for o in operands if not o.name.startswith("h0"))
              + (_float("ckpt_re", ckpt, doc="scan_fwd's checkpoints"), _float("ckpt_im", ckpt, optional=True)))
    outputs = tuple(_float("grad_" + o.name, o.dims) for o in operands)
    # an operand the plan lacks has no gradient either (h0 is not an input here: its gradient is an output)
    absent = [name for name in absent if name != "h0_im"] + ["grad_" + name for name in absent]
    absent += [] if plan.complex else ["grad_state_im", "ckpt_im"]
    stage = Stage("scan_bwd", "gradients of every operand by the reverse scan, recomputing one checkpoint "
                  "chunk's states at a time", inputs=inputs, outputs=outputs, params=("chunk",), dims=SCAN_DIMS)
    return ScanStage(stage, absent=tuple(absent), **_scan_extras(plan))


STEP_DIMS = ("batch", "dim", "state", "groups_B", "groups_C")


def scan_step_stage(plan: ScanPlan) -> ScanStage:
    """One decoding step of the fused scan: the operands of one time step (no `len`), and the state
    (re, im) updated in place (`mutated`: the schema's `Tensor(a!)`)."""
    per_step = ("batch", "dim")
    operands, absent = [_float("u", per_step), _float("delta", per_step if plan.selective_dt else ("dim",),
                                                         doc="dt before bias and softplus")], []
    operands.append(_float("dt_bias", ("dim",), optional=True))
    absent += [] if plan.has_dt_bias else ["dt_bias"]
    operands += [_float("A_re", ("dim", "state")), _float("A_im", ("dim", "state"), optional=True)]
    sizes = []
    for name, selective in (("B", plan.selective_B), ("C", plan.selective_C)):
        dims = ("batch", f"groups_{name}", "state") if selective else ("dim", "state")
        operands += [_float(f"{name}_re", dims), _float(f"{name}_im", dims, optional=True)]
        if not selective:
            sizes.append((f"groups_{name}", "one"))
    absent += [] if plan.complex else ["A_im", "B_im", "C_im"]
    operands += [_float("D", ("dim",), optional=True), _float("z", per_step, optional=True, doc="gate")]
    absent += ([] if plan.has_D else ["D"]) + ([] if plan.has_z else ["z"])
    state = ("batch", "dim", "state")
    operands += [Operand("h_re", state, FLOATING, doc="the decoding state, updated in place", mutated=True),
                 Operand("h_im", state, FLOATING, optional=True, mutated=True)]
    absent += [] if plan.complex else ["h_im"]
    stage = Stage("scan_step", "one decoding step: h = decay·h + scale·B·u in place, y = (2·Re) C·h, then the "
                  "epilogue", inputs=tuple(operands), outputs=(_float("y", per_step, doc="epilogue included"),),
                  dims=STEP_DIMS)
    return ScanStage(stage, c_sizes=STEP_DIMS, like="A_re", absent=tuple(absent), sizes=tuple(sizes))


def _conv_inputs() -> tuple:
    per_state = ("dim", "state")
    return tuple(_float(name, per_state) for name in ("log_decay_re", "log_decay_im", "coeff_re", "coeff_im"))


def vandermonde_stage() -> ScanStage:
    stage = Stage("vandermonde", "the convolution kernel K[d, l] = Σ_n Re(coeff[d, n]·exp(l·log_decay[d, n]))",
                  inputs=_conv_inputs(), outputs=(_float("kernel", ("dim", "len")),), params=("length",),
                  dims=CONV_DIMS)
    return ScanStage(stage, c_sizes=CONV_DIMS, like="log_decay_re", sizes=(("len", "param", "length"),))


def vandermonde_bwd_stage() -> ScanStage:
    inputs = (_float("grad_kernel", ("dim", "len")),) + _conv_inputs()
    outputs = tuple(_float("grad_" + o.name, o.dims) for o in _conv_inputs())
    stage = Stage("vandermonde_bwd", "the Vandermonde kernel's vector-Jacobian product", inputs=inputs,
                  outputs=outputs, dims=CONV_DIMS)
    return ScanStage(stage, c_sizes=CONV_DIMS, like="log_decay_re")


def scan_stages(plans: dict) -> tuple:
    """The SISO kernels of a package's fused plans ({"scan": ScanPlan, "conv": ConvPlan}), in order."""
    stages = []
    if plans.get("scan") is not None:
        stages += [scan_fwd_stage(plans["scan"]), scan_bwd_stage(plans["scan"])]
        if plans["scan"].direction == "forward":
            stages.append(scan_step_stage(plans["scan"]))
    if isinstance(plans.get("conv"), ConvPlan):
        stages += [vandermonde_stage(), vandermonde_bwd_stage()]
    return tuple(stages)


def scan_tables(plans: dict) -> dict:
    """{kernel name: table}: what a SISO package's operands.json holds."""
    return {stage.name: stage.to_json() for stage in scan_stages(plans)}


def scan_tables_text(plans: dict) -> str:
    return json.dumps(scan_tables(plans), indent=1, sort_keys=True) + "\n"
