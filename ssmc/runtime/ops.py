"""A compiled layer's kernels as torch.library custom ops with fake (meta) kernels and autograd.

Registered once per generated package, under the namespace `ssmc_gen` and the package's key, so
that `torch.compile(model, fullgraph=True)` traces a model of ssmc layers without graph breaks: the
op is opaque to the tracer, its fake kernel gives output shapes, and its backward is another op.

The forward saves, besides its inputs, only the state entering every chunk of CHECKPOINT_CHUNK
steps (batch, dim, ceil(len / CHECKPOINT_CHUNK), N); the backward recomputes the states of one chunk
at a time from them, never holding (batch, dim, len, N).
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

CHECKPOINT_CHUNK = 64
NAMESPACE = "ssmc_gen"
_EMPTY = (0,)

SCAN_INPUTS = ("u", "delta", "dt_bias", "A_re", "A_im", "B_re", "B_im", "C_re", "C_im", "D", "z", "h0_re", "h0_im")
SCAN_GRADS = ("u", "delta", "dt_bias", "A_re", "A_im", "B_re", "B_im", "C_re", "C_im", "D", "z", "h0_re", "h0_im")


def _or_empty(x: Optional[Tensor], like: Tensor) -> Tensor:
    return x if x is not None else like.new_empty(_EMPTY)


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


def _or_none(x: Tensor) -> Optional[Tensor]:
    return None if x.numel() == 0 and x.shape == _EMPTY else x


def _scan_fwd_outputs(u, A_re, chunk, complex_state):
    """scan_fwd's outputs, uninitialised (its fake kernel's): [out, state_re, state_im, ckpt_re, ckpt_im],
    an empty (0,) tensor for one the call does not form."""
    batch, dim, length = u.shape
    n_state = A_re.shape[1]
    n_chunks = -(-length // chunk) if chunk > 0 else 0
    state = A_re.new_empty(batch, dim, n_state)
    ckpt = A_re.new_empty(batch, dim, n_chunks, n_state) if chunk > 0 else A_re.new_empty(_EMPTY)
    return [A_re.new_empty(batch, dim, length), state,
            state.new_empty(state.shape) if complex_state else A_re.new_empty(_EMPTY),
            ckpt, ckpt.new_empty(ckpt.shape) if complex_state and chunk > 0 else A_re.new_empty(_EMPTY)]


def _scan_bwd_outputs(u, A_re, operands, complex_state):
    """scan_bwd's outputs, uninitialised (its fake kernel's): the gradients of `operands` (u .. z),
    an empty (0,) tensor for an absent one, then of h0_re and h0_im."""
    batch, dim, _ = u.shape
    grads = [A_re.new_empty(x.shape) if x is not None else A_re.new_empty(_EMPTY) for x in operands]
    state = A_re.new_empty(batch, dim, A_re.shape[1])
    return grads + [state, state.new_empty(state.shape) if complex_state else A_re.new_empty(_EMPTY)]


def _copy_or_zero(out, x):
    return out.copy_(x) if x is not None else out.zero_()


class ScanOps:
    """The custom ops of one package's fused scan (and Vandermonde kernel, for conv schedules)."""

    def __init__(self, key: str, kernels, complex_state: bool, has_conv: bool):
        self.kernels = kernels
        self.complex_state = complex_state
        prefix = f"{NAMESPACE}::{key}"
        self.scan = self._define_scan(prefix)
        self.vandermonde = self._define_vandermonde(prefix) if has_conv else None

    # -- the scan ---------------------------------------------------------------------------
    def _define_scan(self, prefix):
        kernels, complex_state = self.kernels, self.complex_state

        @torch.library.custom_op(f"{prefix}_scan_fwd", mutates_args=())
        def scan_fwd(u: Tensor, delta: Tensor, dt_bias: Optional[Tensor], A_re: Tensor, A_im: Optional[Tensor],
                     B_re: Tensor, B_im: Optional[Tensor], C_re: Tensor, C_im: Optional[Tensor],
                     D: Optional[Tensor], z: Optional[Tensor], h0_re: Optional[Tensor], h0_im: Optional[Tensor],
                     chunk: int) -> List[Tensor]:
            if u.numel() == 0:
                # an empty input (no batch, channel or step): nothing to compute, and no kernel is asked to
                # launch a zero-sized grid. With no steps the last state is the initial one.
                outputs = _scan_fwd_outputs(u, A_re, chunk, complex_state)
                _copy_or_zero(outputs[1], h0_re)
                if complex_state:
                    _copy_or_zero(outputs[2], h0_im)
                return outputs
            backend = kernels.for_device(u.device)
            out, state_re, state_im, ckpt_re, ckpt_im = backend.scan_fwd(
                u, delta, dt_bias, A_re, A_im, B_re, B_im, C_re, C_im, D, z, h0_re, h0_im, chunk)
            outputs = [out, state_re, _or_empty(state_im, out), _or_empty(ckpt_re, out), _or_empty(ckpt_im, out)]
            return _fresh(outputs, (u, delta, dt_bias, A_re, A_im, B_re, B_im, C_re, C_im, D, z, h0_re, h0_im))

        @scan_fwd.register_fake
        def _(u, delta, dt_bias, A_re, A_im, B_re, B_im, C_re, C_im, D, z, h0_re, h0_im, chunk):
            return _scan_fwd_outputs(u, A_re, chunk, complex_state)

        @torch.library.custom_op(f"{prefix}_scan_bwd", mutates_args=())
        def scan_bwd(grad_out: Tensor, grad_state_re: Optional[Tensor], grad_state_im: Optional[Tensor],
                     u: Tensor, delta: Tensor, dt_bias: Optional[Tensor], A_re: Tensor, A_im: Optional[Tensor],
                     B_re: Tensor, B_im: Optional[Tensor], C_re: Tensor, C_im: Optional[Tensor],
                     D: Optional[Tensor], z: Optional[Tensor], ckpt_re: Tensor, ckpt_im: Optional[Tensor],
                     chunk: int) -> List[Tensor]:
            if u.numel() == 0:
                # every operand's gradient is zero (sums over nothing), except the initial state's, which is
                # the last state's (they are the same state when there are no steps)
                grads = _scan_bwd_outputs(u, A_re, (u, delta, dt_bias, A_re, A_im, B_re, B_im, C_re, C_im, D, z),
                                          complex_state)
                for g in grads[:-2]:
                    g.zero_()
                _copy_or_zero(grads[-2], grad_state_re)
                if complex_state:
                    _copy_or_zero(grads[-1], grad_state_im)
                return grads
            backend = kernels.for_device(u.device)
            grads = backend.scan_bwd(grad_out, grad_state_re, grad_state_im, u, delta, dt_bias, A_re, A_im,
                                     B_re, B_im, C_re, C_im, D, z, ckpt_re, ckpt_im, chunk)
            inputs = (grad_out, grad_state_re, grad_state_im, u, delta, dt_bias, A_re, A_im, B_re, B_im, C_re,
                      C_im, D, z, ckpt_re, ckpt_im)
            return _fresh([_or_empty(g, grad_out) for g in grads], inputs)

        @scan_bwd.register_fake
        def _(grad_out, grad_state_re, grad_state_im, u, delta, dt_bias, A_re, A_im, B_re, B_im, C_re, C_im,
              D, z, ckpt_re, ckpt_im, chunk):
            return _scan_bwd_outputs(u, A_re, (u, delta, dt_bias, A_re, A_im, B_re, B_im, C_re, C_im, D, z),
                                     complex_state)

        def setup_context(ctx, inputs, output):
            *operands, chunk = inputs
            ctx.chunk = chunk
            ctx.present = [x is not None for x in operands]
            ctx.save_for_backward(*[x for x in operands if x is not None], output[3], output[4])

        def backward(ctx, grads_of_outputs):
            grad_out, grad_state_re, grad_state_im = grads_of_outputs[:3]
            saved = list(ctx.saved_tensors)
            ckpt_re, ckpt_im = saved[-2], saved[-1]
            it = iter(saved[:-2])
            operands = dict(zip(SCAN_INPUTS, [next(it) if present else None for present in ctx.present]))
            if ctx.chunk <= 0:
                raise RuntimeError("ssmc scan: backward without checkpoints (the forward ran with chunk=0)")
            if grad_out is None:
                grad_out = torch.zeros_like(operands["A_re"].new_empty(operands["u"].shape))
            grads = scan_bwd(grad_out, grad_state_re, _or_none(grad_state_im) if grad_state_im is not None else None,
                             operands["u"], operands["delta"], operands["dt_bias"], operands["A_re"],
                             operands["A_im"], operands["B_re"], operands["B_im"], operands["C_re"],
                             operands["C_im"], operands["D"], operands["z"], ckpt_re, _or_none(ckpt_im), ctx.chunk)
            result = []
            for name, grad in zip(SCAN_GRADS, grads):
                operand = operands[name]
                result.append(None if operand is None else grad.to(operand.dtype))
            return tuple(result) + (None,)

        scan_fwd.register_autograd(backward, setup_context=setup_context)
        return scan_fwd

    def run_scan(self, args: dict, h0=None):
        """(out, last state (re, im)) of normalised operands; checkpoints only when a gradient is due."""
        h0_re, h0_im = (None, None) if h0 is None else h0
        operands = [args[name] for name in SCAN_INPUTS[:11]] + [h0_re, h0_im]
        needs_grad = torch.is_grad_enabled() and any(isinstance(x, Tensor) and x.requires_grad for x in operands)
        out, state_re, state_im, _, _ = self.scan(*operands, CHECKPOINT_CHUNK if needs_grad else 0)
        return out, state_re, _or_none(state_im)

    # -- the Vandermonde kernel -------------------------------------------------------------
    def _define_vandermonde(self, prefix):
        kernels = self.kernels

        @torch.library.custom_op(f"{prefix}_vandermonde", mutates_args=())
        def vandermonde(log_decay_re: Tensor, log_decay_im: Tensor, coeff_re: Tensor, coeff_im: Tensor,
                        length: int) -> Tensor:
            if log_decay_re.shape[0] == 0 or length == 0:
                return log_decay_re.new_zeros(log_decay_re.shape[0], length)
            return kernels.for_device(log_decay_re.device).vandermonde(log_decay_re, log_decay_im, coeff_re,
                                                                       coeff_im, length)

        @vandermonde.register_fake
        def _(log_decay_re, log_decay_im, coeff_re, coeff_im, length):
            return log_decay_re.new_empty(log_decay_re.shape[0], length)

        @torch.library.custom_op(f"{prefix}_vandermonde_bwd", mutates_args=())
        def vandermonde_bwd(grad_kernel: Tensor, log_decay_re: Tensor, log_decay_im: Tensor, coeff_re: Tensor,
                            coeff_im: Tensor) -> List[Tensor]:
            if grad_kernel.numel() == 0:
                return [x.new_zeros(x.shape) for x in (log_decay_re, log_decay_im, coeff_re, coeff_im)]
            backend = kernels.for_device(grad_kernel.device)
            grads = backend.vandermonde_bwd(grad_kernel.contiguous(), log_decay_re, log_decay_im, coeff_re, coeff_im)
            return _fresh(list(grads), (grad_kernel, log_decay_re, log_decay_im, coeff_re, coeff_im))

        @vandermonde_bwd.register_fake
        def _(grad_kernel, log_decay_re, log_decay_im, coeff_re, coeff_im):
            return [x.new_empty(x.shape) for x in (log_decay_re, log_decay_im, coeff_re, coeff_im)]

        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(*inputs[:4])

        def backward(ctx, grad_kernel):
            grads = vandermonde_bwd(grad_kernel.contiguous(), *ctx.saved_tensors)
            return tuple(grads) + (None,)

        vandermonde.register_autograd(backward, setup_context=setup_context)
        return vandermonde
