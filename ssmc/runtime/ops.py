"""A compiled layer's kernels as torch.library custom ops with fake (meta) kernels and autograd.

Registered once per generated package, under the namespace `ssmc_gen` and the package's key, so
that `torch.compile(model, fullgraph=True)` traces a model of ssmc layers without graph breaks: the
op is opaque to the tracer, its fake kernel gives output shapes, and its backward is another op.

Everything about the kernels' operands comes from the package's operand tables (operands.json,
`ssmc.runtime.scan_tables`): each op's schema (`torch.library.define`), its fake kernel, the
argument checks, the keyword names the backend's kernel is called with, and which backward input
or output is which forward operand or gradient (by name: `grad_<x>` is the gradient of `x`).

The forward saves, besides its inputs, only the state entering every chunk of CHECKPOINT_CHUNK
steps (batch, dim, ceil(len / CHECKPOINT_CHUNK), N); the backward recomputes the states of one chunk
at a time from them, never holding (batch, dim, len, N).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .scan_tables import ScanTable, load_scan_tables

CHECKPOINT_CHUNK = 64
NAMESPACE = "ssmc_gen"
_EMPTY = (0,)
# a call with none of these (a zero size) never reaches a kernel: its outputs are zeros ...
_EMPTY_DIMS = ("batch", "dim", "len")
# ... except a state, which with no steps is the state it started from
_PASS_THROUGH = {"state_re": "h0_re", "state_im": "h0_im", "grad_h0_re": "grad_state_re",
                 "grad_h0_im": "grad_state_im"}
# each forward kernel and its backward kernel
_BACKWARD = {"scan_fwd": "scan_bwd", "vandermonde": "vandermonde_bwd"}


def _fresh(outputs: list, inputs) -> list:
    """Custom ops may not return an input or the same tensor twice: copy any such output."""
    seen = {x.data_ptr() for x in inputs if isinstance(x, Tensor) and x.numel()}
    fresh = []
    for x in outputs:
        if x.numel() and x.data_ptr() in seen:
            x = x.clone()
        if x.numel():
            seen.add(x.data_ptr())
        fresh.append(x)
    return fresh


def _or_none(x: Optional[Tensor]) -> Optional[Tensor]:
    return None if x is None or (x.numel() == 0 and x.shape == _EMPTY) else x


def _result(outputs: list):
    return outputs[0] if len(outputs) == 1 else tuple(outputs)


class ScanOps:
    """The custom ops of one package's SISO kernels (the fused scan, and the Vandermonde kernel of
    conv schedules), one per table, each with its backward table's op as its autograd."""

    def __init__(self, key: str, kernels, tables):
        """`tables`: operands.json's text, the package directory, or {name: table}."""
        self.kernels = kernels
        self.tables = load_scan_tables(tables)
        self.prefix = f"{NAMESPACE}::{key}"
        self.ops = {name: self._define(table) for name, table in self.tables.items()}
        for forward, backward in _BACKWARD.items():
            if forward in self.ops:
                self._register_autograd(self.tables[forward], self.tables[backward], self.ops[backward])
        self.scan = self.ops.get("scan_fwd")
        self.vandermonde = self.ops.get("vandermonde")
        # the decoding step: updates its state operands in place (`Tensor(a!)` in its schema)
        self.step = self.ops.get("scan_step")

    def _define(self, table: ScanTable):
        qualname = f"{self.prefix}_{table.name}"
        torch.library.define(qualname, table.schema())
        torch.library.impl(qualname, "default")(lambda *args: self._run(table, args))
        torch.library.register_fake(qualname)(table.fake)
        namespace, name = qualname.split("::")
        return getattr(getattr(torch.ops, namespace), name)

    def _run(self, table: ScanTable, args):
        operands, params = table.split(args)
        sizes = table.bind(operands, params)
        like = operands[table.like]
        if any(sizes.get(d, 1) == 0 for d in _EMPTY_DIMS):
            # nothing to compute, and no kernel is asked to launch a zero-sized grid
            outputs = table.new_outputs(sizes, like, params)
            for name, x in zip(table.output_names, outputs):
                source = operands.get(_PASS_THROUGH.get(name))
                x.copy_(source) if source is not None and x.numel() else x.zero_()
            return _result(outputs)
        results = getattr(self.kernels.for_device(like.device), table.name)(**operands, **params)
        results = results if isinstance(results, (tuple, list)) else (results,)
        # one placeholder per absent output: two returns may not be one tensor, even an empty one
        outputs = [like.new_empty(_EMPTY, dtype=results[0].dtype) if x is None else x for x in results]
        return _result(_fresh(outputs, [x for x in operands.values() if x is not None]))

    # -- autograd: the backward kernel's inputs and outputs, matched by name -----------------------------
    def _register_autograd(self, forward: ScanTable, backward: ScanTable, backward_op):
        saved_outputs = [n for n in backward.input_names if n in forward.output_names]

        def setup_context(ctx, inputs, output):
            operands, ctx.params = forward.split(inputs)
            output = output if isinstance(output, tuple) else (output,)
            outputs = dict(zip(forward.output_names, output))
            ctx.present = [operands[n] is not None for n in forward.input_names]
            ctx.save_for_backward(*[x for x in operands.values() if x is not None],
                                  *[outputs[n] for n in saved_outputs])

        def backward_fn(ctx, *grads):
            saved = list(ctx.saved_tensors)
            it = iter(saved[:len(saved) - len(saved_outputs)])
            operands = {n: next(it) if present else None for n, present in zip(forward.input_names, ctx.present)}
            outputs = dict(zip(saved_outputs, saved[len(saved) - len(saved_outputs):]))
            output_grads = {f"grad_{n}": _or_none(g) for n, g in zip(forward.output_names, grads)}
            arguments = {}
            for spec in backward.inputs:
                if spec.name in operands:
                    value = operands[spec.name]
                elif spec.name in outputs:
                    value = _or_none(outputs[spec.name])
                    if value is None and not spec.optional:
                        raise RuntimeError(f"ssmc {forward.name}: backward without {spec.name} (the forward "
                                           f"ran with {forward.when.get(spec.name, '?')}=0)")
                else:
                    value = output_grads[spec.name]
                    if value is None and not spec.optional:
                        sizes = forward.bind(operands, ctx.params)
                        shape = forward.output_shapes(sizes)[forward.output_names.index(spec.name[5:])]
                        value = operands[forward.like].new_zeros(shape)
                arguments[spec.name] = value.contiguous() if value is not None else None
            result = backward_op(*[arguments[n] for n in backward.input_names],
                                 *[ctx.params[p] for p in backward.params])
            result = dict(zip(backward.output_names, result if isinstance(result, tuple) else (result,)))
            grads_in = []
            for name in forward.input_names:
                x, grad = operands[name], result.get(f"grad_{name}")
                grads_in.append(None if x is None or grad is None else grad.to(x.dtype))
            return tuple(grads_in) + (None,) * len(forward.params)

        torch.library.register_autograd(f"{self.prefix}_{forward.name}", backward_fn, setup_context=setup_context)

    # -- calls ------------------------------------------------------------------------------------------
    def run_scan(self, args: dict, h0=None):
        """(out, last state (re, im)) of normalised operands; checkpoints only when a gradient is due."""
        table = self.tables["scan_fwd"]
        h0_re, h0_im = (None, None) if h0 is None else h0
        operands = {**{n: args.get(n) for n in table.input_names}, "h0_re": h0_re, "h0_im": h0_im}
        needs_grad = torch.is_grad_enabled() and any(isinstance(x, Tensor) and x.requires_grad
                                                     for x in operands.values())
        outputs = dict(zip(table.output_names,
                           self.scan(*operands.values(), CHECKPOINT_CHUNK if needs_grad else 0)))
        return outputs["out"], outputs["state_re"], _or_none(outputs["state_im"])
