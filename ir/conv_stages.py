"""The causal depthwise conv1d (the `causal-conv1d` package's op, Mamba's short convolution) as
stages with operand tables (ir/stages.py's Operand/Stage; the same contract as the recurrence's
stages, so the runtime derives checks, schema, fake kernels and the C ABI from these tables).

    pre[b, d, t] = bias[d] + Σ_k weight[d, k] · x[b, d, t - (width - 1) + k]      (x = 0 before t = 0)
    out = silu(pre) if silu else pre

Three stages, each one kernel per backend (templates/{c,triton,torch}/conv1d/):
- conv1d_fwd: out from x, weight, bias.
- conv1d_bwd: the three gradients in one pass, since all three need the same
  dpre = dout · silu'(pre) (pre recomputed from x, never stored by the forward):
  grad_x[t] = Σ_k weight[k] · dpre[t + (width - 1) - k], and per batch row the partial sums
  grad_weight[b, d, k] = Σ_t dpre[b, d, t] · x[b, d, t - (width - 1) + k], grad_bias[b, d] = Σ_t dpre.
  The reduction over batch is left to the caller (a torch sum in a fixed order): the kernels stay
  parallel over (batch, dim) and every reduction is deterministic — no atomics anywhere.
- conv1d_update: one decoding step; conv_state (batch, dim, width) is shifted left by one, x appended
  (updated in place: `mutated`), and the output read from the new state.

The `silu` parameter is 0 or 1 (the activation); the kernels compute in the operands' dtype (float32,
or float64 for float64 inputs); the runtime casts other float dtypes (ssmc.runtime.conv1d).
"""
from __future__ import annotations

from .stages import Operand, Stage, operand_tables

X = Operand("x", ("batch", "dim", "len"), doc="input sequence")
WEIGHT = Operand("weight", ("dim", "width"), doc="one filter per channel, weight[:, -1] multiplies the current step")
BIAS = Operand("bias", ("dim",), optional=True)
OUT = Operand("out", ("batch", "dim", "len"))

CONV1D_FWD = Stage(
    "conv1d_fwd",
    "the causal depthwise convolution: out[b, d, t] = act(bias[d] + sum_k weight[d, k] x[b, d, t - width + 1 + k])",
    inputs=(X, WEIGHT, BIAS), outputs=(OUT,), params=("silu",))

CONV1D_BWD = Stage(
    "conv1d_bwd",
    "the gradients of the causal depthwise convolution: grad_x, and grad_weight and grad_bias per batch row "
    "(summed over batch by the caller, deterministically)",
    inputs=(X, WEIGHT, BIAS, Operand("dout", ("batch", "dim", "len"), doc="gradient of out")),
    outputs=(Operand("grad_x", ("batch", "dim", "len")),
             Operand("grad_weight", ("batch", "dim", "width"), doc="per batch row: the caller sums over batch"),
             Operand("grad_bias", ("batch", "dim"), doc="per batch row: the caller sums over batch")),
    params=("silu",))

CONV1D_UPDATE = Stage(
    "conv1d_update",
    "one decoding step of the causal depthwise convolution: conv_state is shifted left and x appended in "
    "place, out = act(bias + sum_k weight[:, k] conv_state[:, :, k])",
    inputs=(Operand("x", ("batch", "dim"), doc="the new step"),
            Operand("conv_state", ("batch", "dim", "width"), mutated=True,
                    doc="the last `width` inputs, oldest first (causal-conv1d's name)"),
            WEIGHT, BIAS),
    outputs=(Operand("out", ("batch", "dim")),), params=("silu",))

CONV1D_STAGES = {stage.name: stage for stage in (CONV1D_FWD, CONV1D_BWD, CONV1D_UPDATE)}


def conv1d_tables() -> dict:
    """{stage name: table}: the conv package's operands.json."""
    return operand_tables(CONV1D_STAGES.values())
