"""The arguments of `mamba_chunk_scan_combined` checked and normalised before anything reaches a
kernel, and the parts of the call that are plain torch: sequence ids from `cu_seqlens`, and the
final state of every sequence of a packed batch.

Every check names the argument and the expected shape in mamba_ssm's terms (x (batch, len, heads,
headdim), B/C (batch, len, groups, state), states (batch, heads, headdim, state)), so a caller
porting code from mamba_ssm reads the message in the layout they already use.
"""
from __future__ import annotations

import math
import numbers

import torch

from ..errors import ShapeError

FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _tensor(name, x, shape, what):
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{name}: expected a tensor {what}, got {type(x).__name__}")
    if tuple(x.shape) != tuple(shape):
        raise ShapeError(f"{name}: expected shape {what} = {tuple(shape)}, got {tuple(x.shape)}")
    if x.dtype not in FLOATS:
        raise ShapeError(f"{name}: expected a float tensor (float32, float64, bfloat16 or float16), got {x.dtype}")
    return x


def _check_head_parameters(x, D, z, dt_bias, heads: int, headdim: int, x_layout: str):
    """D (heads,) or (heads, headdim), z like x, dt_bias (heads,): the per-head terms of a call or a step."""
    if D is not None:
        if not isinstance(D, torch.Tensor) or tuple(D.shape) not in ((heads,), (heads, headdim)):
            got = tuple(D.shape) if isinstance(D, torch.Tensor) else type(D).__name__
            raise ShapeError(f"D: expected shape (heads,) = ({heads},) or (heads, headdim) = ({heads}, {headdim}), got {got}")
        _tensor("D", D, D.shape, "(heads,) or (heads, headdim)")
    if z is not None:
        _tensor("z", z, x.shape, f"like x {x_layout}")
    if dt_bias is not None:
        _tensor("dt_bias", dt_bias, (heads,), "(heads,)")


def _same_device(x, **operands):
    for name, t in operands.items():
        if t is not None and t.device != x.device:
            raise ShapeError(f"{name}: is on {t.device}, x on {x.device}")


def check_call(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, dt_limit,
               headdim: int, d_state: int, groups: int) -> dict:
    """Shapes and dtypes of one call, checked; returns the sizes and the sequence ids (int64 or None)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ShapeError(f"x: expected a tensor of shape (batch, len, heads, headdim={headdim}), got {got}")
    batch, length, heads, P = x.shape
    _tensor("x", x, (batch, length, heads, headdim), "(batch, len, heads, headdim)")
    if heads % groups:
        raise ShapeError(f"x: heads={heads} must be a multiple of the spec's groups={groups}")
    device = x.device
    _tensor("dt", dt, (batch, length, heads), "(batch, len, heads)")
    _tensor("A", A, (heads,), "(heads,)")
    _tensor("B", B, (batch, length, groups, d_state), "(batch, len, groups, state)")
    _tensor("C", C, (batch, length, groups, d_state), "(batch, len, groups, state)")
    _check_head_parameters(x, D, z, dt_bias, heads, headdim, "(batch, len, heads, headdim)")
    if initial_states is not None:
        _tensor("initial_states", initial_states, (batch, heads, headdim, d_state), "(batch, heads, headdim, state)")
    _same_device(x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral)
                                   or chunk_size < 8 or chunk_size & (chunk_size - 1) or chunk_size > 1024):
        raise ShapeError(f"chunk_size: expected a power of two from 8 to 1024 (or None: the cost model chooses), "
                         f"got {chunk_size!r}")
    check_dt_limit(dt_limit)
    return dict(batch=batch, len=length, heads=heads, headdim=P, state=d_state,
                seq_idx=sequence_ids(seq_idx, cu_seqlens, batch, length, device))


def check_dt_limit(dt_limit):
    ok = isinstance(dt_limit, (tuple, list)) and len(dt_limit) == 2 and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) and not math.isnan(v) for v in dt_limit)
    if not ok or dt_limit[0] > dt_limit[1]:
        raise ShapeError(f"dt_limit: expected (low, high) numbers with low <= high, got {dt_limit!r}")


def sequence_ids(seq_idx, cu_seqlens, batch, length, device):
    """(batch, len) int64 ids, non-decreasing along each row, or None. `cu_seqlens` (offsets of a
    packed batch of 1) gives sequence i the id i; both given must agree."""
    derived = None
    if cu_seqlens is not None:
        cu = cu_seqlens
        if not isinstance(cu, torch.Tensor) or cu.dim() != 1 or cu.numel() < 2 or cu.is_floating_point() \
                or cu.is_complex() or cu.dtype == torch.bool:
            raise ShapeError(f"cu_seqlens: expected a 1-d integer tensor of offsets (num_sequences + 1,), got "
                             f"{tuple(cu.shape) if isinstance(cu, torch.Tensor) else type(cu).__name__}")
        if batch != 1:
            raise ShapeError(f"cu_seqlens: describes a packed batch of 1, got batch={batch}")
        cu = cu.to(device=device, dtype=torch.int64)
        if int(cu[0]) != 0 or int(cu[-1]) != length or bool((cu[1:] < cu[:-1]).any()):
            raise ShapeError(f"cu_seqlens: expected non-decreasing offsets from 0 to len={length}, got "
                             f"{cu.tolist() if cu.numel() <= 16 else '(' + str(cu.numel()) + ' offsets)'}")
        derived = torch.searchsorted(cu[1:], torch.arange(length, device=device), right=True)[None]
    if seq_idx is None:
        return derived
    if not isinstance(seq_idx, torch.Tensor) or tuple(seq_idx.shape) != (batch, length) \
            or seq_idx.is_floating_point() or seq_idx.is_complex() or seq_idx.dtype == torch.bool:
        raise ShapeError(f"seq_idx: expected an integer tensor of shape (batch, len) = {(batch, length)}, got "
                         f"{tuple(seq_idx.shape) if isinstance(seq_idx, torch.Tensor) else type(seq_idx).__name__}")
    seq_idx = seq_idx.to(device=device, dtype=torch.int64).contiguous()
    if length > 1 and bool((seq_idx[:, 1:] < seq_idx[:, :-1]).any()):
        raise ShapeError("seq_idx: ids must not decrease along the sequence (each id is one sequence of the packed row)")
    if derived is not None and not torch.equal(seq_idx, derived):
        raise ShapeError("seq_idx: disagrees with cu_seqlens (sequence i of cu_seqlens must have id i)")
    return seq_idx


def sequence_final_states(cu_seqlens, log_decay, u, B, h0, heads):
    """The state after each sequence of a packed batch of 1 -> (num_sequences, heads, P, N), in torch
    and differentiable: h_i = Σ_{s in i} exp(cum_end − cum_s)·u_s ⊗ B_s (+ exp(cum_end)·h0 for the
    first sequence), cum the running log-decay in float64 (only differences within a sequence are
    exponentiated, so no overflow however long the row)."""
    cu = cu_seqlens.to(torch.int64).tolist()
    cum = log_decay[0].double().cumsum(0)                                          # (len, heads)
    u_heads = u[0].repeat_interleave(heads // u.shape[2], dim=1) if u.shape[2] != heads else u[0]
    B_heads = B[0].repeat_interleave(heads // B.shape[2], dim=1) if B.shape[2] != heads else B[0]
    P, N = u.shape[-1], B.shape[-1]
    finals = []
    for i, (start, end) in enumerate(zip(cu[:-1], cu[1:])):
        state = u.new_zeros(heads, P, N)
        if end > start:
            base = cum[start - 1] if start > 0 else torch.zeros_like(cum[0])
            weight = torch.exp(cum[end - 1] - cum[start:end]).to(u.dtype)           # (steps, heads)
            state = torch.einsum("lh,lhp,lhn->hpn", weight, u_heads[start:end], B_heads[start:end])
            if i == 0 and h0 is not None:
                state = state + torch.exp(cum[end - 1] - base).to(u.dtype)[:, None, None] * h0[0]
        elif i == 0 and h0 is not None:
            state = h0[0]
        finals.append(state)
    return torch.stack(finals)


def check_step(x, dt, A, B, C, ssm_state, D, z, dt_bias, dt_limit, headdim: int, d_state: int, groups: int) -> int:
    """Shapes of one decoding step (mamba_ssm's selective_state_update layouts without the length
    axis); the state must be float32 or float64, contiguous, on x's device. Returns heads."""
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ShapeError(f"x: expected a tensor of shape (batch, heads, headdim={headdim}), got {got}")
    batch, heads, _ = x.shape
    _tensor("x", x, (batch, heads, headdim), "(batch, heads, headdim)")
    if heads % groups:
        raise ShapeError(f"x: heads={heads} must be a multiple of the spec's groups={groups}")
    _tensor("dt", dt, (batch, heads), "(batch, heads)")
    _tensor("A", A, (heads,), "(heads,)")
    _tensor("B", B, (batch, groups, d_state), "(batch, groups, state)")
    _tensor("C", C, (batch, groups, d_state), "(batch, groups, state)")
    if not isinstance(ssm_state, torch.Tensor) or tuple(ssm_state.shape) != (batch, heads, headdim, d_state) \
            or ssm_state.dtype not in (torch.float32, torch.float64) or not ssm_state.is_contiguous():
        got = (f"{tuple(ssm_state.shape)} {ssm_state.dtype}{'' if ssm_state.is_contiguous() else ' non-contiguous'}"
               if isinstance(ssm_state, torch.Tensor) else type(ssm_state).__name__)
        raise ShapeError(f"ssm_state: expected a contiguous float32 or float64 tensor of shape (batch, heads, headdim, "
                         f"state) = {(batch, heads, headdim, d_state)} (allocate_inference_cache makes one), got {got}")
    _check_head_parameters(x, D, z, dt_bias, heads, headdim, "(batch, heads, headdim)")
    _same_device(x, dt=dt, A=A, B=B, C=C, ssm_state=ssm_state, D=D, z=z, dt_bias=dt_bias)
    check_dt_limit(dt_limit)
    return heads


@torch.compiler.assume_constant_result
def cost_target(device_type: str) -> str:
    """The backend whose cost model ranks the pipelines of a call on `device_type`: a constant to
    torch.compile (finding the C compiler is not something Dynamo traces)."""
    from .backend import select_backend
    return select_backend(torch.device(device_type))
