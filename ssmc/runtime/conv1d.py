"""The causal depthwise conv1d as custom ops over its stage kernels (ir/conv_stages.py, rendered by
backends/conv1d.py into one package per compiler; ssmc.ops builds it once per process).

Three torch.library ops, each schema derived from its stage's table (`StageTable.schema()`), never
written here:
- `<key>_conv1d_fwd(x, weight, bias, silu) -> out`, differentiable: its backward is the
  `<key>_conv1d_bwd` op (grad_x, and grad_weight / grad_bias per batch row, which the backward sums
  over batch with a torch sum: a fixed order, so gradients are deterministic on every backend);
- `<key>_conv1d_update(x, conv_state, weight, bias, silu) -> out`: `Tensor(a!) conv_state`, so
  torch.compile sees the in-place update.
Their fake kernels run the same table checks on the fake tensors' shapes, so a wrong shape is the
same ShapeError (naming the operand and the dimension) traced or not.

Dtypes. The kernels compute in float32, or float64 for float64 x (gradcheck): the ops cast the
other operands (any float dtype) to that, and return out and grad_x in x's dtype, grad_weight and
grad_bias in weight's and bias's. The update computes in conv_state's dtype when it is float32 or
float64 (the state is updated in place, so it is never cast); a half/bfloat16 state is stepped on a
float32 copy written back. A non-contiguous state is refused (a copy would lose the update).
Empty tensors never reach a kernel (checked, then answered here).
"""
from __future__ import annotations

import torch

from ..errors import ShapeError
from .calls import compute_dtype
from .stages import StageLibrary, StageTable

NAMESPACE = "ssmc_gen"
_KERNEL_DTYPES = (torch.float32, torch.float64)


def _floating(stage: str, **operands) -> None:
    for name, x in operands.items():
        if x is None:
            continue
        if not isinstance(x, torch.Tensor):
            raise ShapeError(f"{stage}: operand {name} must be a tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ShapeError(f"{stage}: operand {name} must be a floating-point tensor, got {x.dtype}")


def _cast(dtype, **operands) -> dict:
    return {name: (x.to(dtype) if x is not None else None) for name, x in operands.items()}


class Conv1dOps:
    """The conv1d custom ops of one package (`library`, whose tables are ir/conv_stages.py's)."""

    def __init__(self, key: str, library: StageLibrary):
        self.library = library
        self.tables: dict = library.tables
        self.fwd = self._define(key, "conv1d_fwd", self._forward, self._forward_fake)
        self.bwd = self._define(key, "conv1d_bwd", self._backward_kernels, self._backward_fake)
        self.update = self._define(key, "conv1d_update", self._update, self._update_fake)
        torch.library.register_autograd(f"{NAMESPACE}::{key}_conv1d_fwd", self._backward,
                                        setup_context=self._setup_context)

    def _define(self, key: str, stage: str, impl, fake):
        """The op `ssmc_gen::<key>_<stage>`, its schema from the stage's table."""
        name = f"{key}_{stage}"
        qualname = f"{NAMESPACE}::{name}"
        torch.library.define(qualname, self.tables[stage].schema())
        torch.library.impl(qualname, "default")(impl)
        torch.library.register_fake(qualname)(fake)
        return getattr(getattr(torch.ops, NAMESPACE), name)

    def _bind_shapes(self, stage: str, operands: dict) -> dict:
        """Sizes from the shapes alone (the table's checks on rank and sizes; dtypes are cast before a
        kernel runs, so only float-ness is checked here); a ShapeError naming the operand."""
        _floating(stage, **operands)
        table: StageTable = self.tables[stage]
        meta = {name: (torch.empty(x.shape, dtype=torch.float32, device="meta") if x is not None else None)
                for name, x in operands.items()}
        devices = {x.device for x in operands.values() if x is not None}
        if len(devices) > 1:
            raise ShapeError(f"{stage}: operands are on several devices: {sorted(map(str, devices))}")
        return table.bind(meta)

    # ---- forward ----------------------------------------------------------------------------------
    def _forward(self, x, weight, bias, silu):
        sizes = self._bind_shapes("conv1d_fwd", dict(x=x, weight=weight, bias=bias))
        if sizes["width"] < 1:
            raise ShapeError(f"conv1d_fwd: operand weight must have width >= 1, got shape {tuple(weight.shape)}")
        if x.numel() == 0:
            return x.new_zeros(x.shape)
        ops = _cast(compute_dtype(x), x=x, weight=weight, bias=bias)
        out, = self.library.run("conv1d_fwd", params={"silu": int(bool(silu))}, **ops)
        return out.to(x.dtype)

    def _forward_fake(self, x, weight, bias, silu):
        self._bind_shapes("conv1d_fwd", dict(x=x, weight=weight, bias=bias))
        return x.new_empty(x.shape)

    # ---- backward ---------------------------------------------------------------------------------
    def _backward_kernels(self, x, weight, bias, dout, silu):
        if x.numel() == 0:
            return tuple(g.zero_() for g in self._backward_fake(x, weight, bias, dout, silu))
        ops = _cast(compute_dtype(x), x=x, weight=weight, bias=bias, dout=dout)
        grad_x, grad_weight, grad_bias = self.library.run("conv1d_bwd", params={"silu": int(bool(silu))}, **ops)
        return grad_x.to(x.dtype), grad_weight, grad_bias

    def _backward_fake(self, x, weight, bias, dout, silu):
        sizes = self._bind_shapes("conv1d_bwd", dict(x=x, weight=weight, bias=bias, dout=dout))
        grad_x, grad_weight, grad_bias = self.tables["conv1d_bwd"].output_shapes(sizes)
        compute = compute_dtype(x)       # grad_x in x's dtype; the per-row sums stay in the compute dtype
        return (x.new_empty(grad_x), x.new_empty(grad_weight, dtype=compute), x.new_empty(grad_bias, dtype=compute))

    @staticmethod
    def _setup_context(ctx, inputs, output):
        x, weight, bias, silu = inputs
        ctx.save_for_backward(x, weight, bias)
        ctx.silu = silu

    def _backward(self, ctx, dout):
        x, weight, bias = ctx.saved_tensors
        grad_x, grad_weight, grad_bias = self.bwd(x, weight, bias, dout, ctx.silu)
        # the per-row parts summed over batch: one torch reduction in a fixed order (deterministic)
        grad_weight = grad_weight.sum(0).to(weight.dtype)
        grad_bias = grad_bias.sum(0).to(bias.dtype) if bias is not None else None
        return grad_x, grad_weight, grad_bias, None

    # ---- decoding ---------------------------------------------------------------------------------
    def _update(self, x, conv_state, weight, bias, silu):
        sizes = self._bind_shapes("conv1d_update", dict(x=x, conv_state=conv_state, weight=weight, bias=bias))
        if not conv_state.is_contiguous():
            raise ShapeError(f"conv1d_update: operand conv_state is updated in place and must be contiguous "
                             f"(shape {tuple(conv_state.shape)}, strides {conv_state.stride()})")
        if sizes["width"] < 1:
            raise ShapeError(f"conv1d_update: operand weight must have width >= 1, got shape {tuple(weight.shape)}")
        if x.numel() == 0:
            return x.new_zeros(x.shape)
        state = conv_state if conv_state.dtype in _KERNEL_DTYPES else conv_state.to(torch.float32)
        ops = _cast(state.dtype, x=x, weight=weight, bias=bias)
        out, = self.library.run("conv1d_update", params={"silu": int(bool(silu))}, conv_state=state, **ops)
        if state is not conv_state:
            conv_state.copy_(state)
        return out.to(x.dtype)

    def _update_fake(self, x, conv_state, weight, bias, silu):
        self._bind_shapes("conv1d_update", dict(x=x, conv_state=conv_state, weight=weight, bias=bias))
        return x.new_empty(x.shape)
