"""The multi-head recurrence (Mamba-2's SSD core) as one differentiable custom op per package, run by
a pipeline of stage kernels (ssmc.runtime.stages), with a backward *derived* from the forward.

Forward, per (batch, head), state (P, N):   h_t = f_t·h_{t-1} + u_t ⊗ B_t,   y_t = h_t·C_t,
f_t = exp(log_decay_t)·keep_t (keep resets at sequence boundaries). Pipelines:
- "sequential": one stage, ssd_scan;
- "chunked": host cumsum of the log-decays per chunk -> chunk_state -> state_passing -> chunk_scan.

Backward. The adjoint of a linear recurrence is the same recurrence run backward in time, so every
gradient is the forward pipeline again with its operands permuted (reverse(t) flips time, and the
log-decays shift by one step: G_t = f_{t+1}·G_{t+1} + dy_t ⊗ C_t):
    du  = reverse-core(u=dy,  B=C,  C=B,  h0=dfinal)            (and dh0 = f_0 · its final state)
    dC  = core(u=B,  B=u,  C=dy,  h0=h0ᵀ)        the state transposed: Σ_p h_t[p, n]·dy_t[p]
    dB  = reverse-core(u=C,  B=dy,  C=u,  h0=dfinalᵀ)        Σ_p G_t[p, n]·u_t[p]
    dlog_decay_t = Σ_{s ≥ t, same sequence} (C_s·dC_s − B_s·dB_s)   per head
                   (+ <dfinal, final> at the last step, where the final state is read out)
The last line is the identity d/dcum_t = C_t·dC_t − B_t·dB_t (every pair (t, s) of the quadratic
form appears once with each sign), so no stage needs h and G at the same time. dC and dB are per
head and summed over the heads of a group. So any pipeline, on any backend, has a backward with
no backward kernel of its own.
"""
from __future__ import annotations

import torch

from ..errors import ScheduleError
from .stages import StageLibrary, StageTable

NAMESPACE = "ssmc_gen"
PIPELINES = ("sequential", "chunked")


def _chunk_inputs(log_decay, seq_idx, chunk):
    """cum (batch, heads, chunks, chunk), carry (batch, heads, chunks), entering ids (batch, chunks):
    the small host-side part of the chunked pipeline (float64 cumsum would be no better: a chunk sums
    at most `chunk` terms)."""
    batch, length, heads = log_decay.shape
    chunks = -(-length // chunk)
    pad = chunks * chunk - length
    padded = torch.nn.functional.pad(log_decay, (0, 0, 0, pad)) if pad else log_decay
    cum = padded.reshape(batch, chunks, chunk, heads).permute(0, 3, 1, 2).cumsum(-1).contiguous()
    carry = torch.exp(cum[..., -1])
    entering_ids = None
    if seq_idx is not None:
        last = seq_idx[:, torch.clamp(torch.arange(1, chunks + 1, device=seq_idx.device) * chunk, max=length) - 1]
        entering_ids = torch.nn.functional.pad(last[:, :-1], (1, 0), value=0).contiguous()
        carry = carry * (last == entering_ids).to(carry.dtype)[:, None]
    return cum, carry.contiguous(), entering_ids


def _reverse_decay(log_decay):
    """The log-decays of the time-reversed recurrence: step j of the reversal (t = L-1-j) carries
    f_{t+1}, and the first step carries 1 (the final state's gradient enters unchanged)."""
    flipped = log_decay.flip(1)
    return torch.cat([torch.zeros_like(flipped[:, :1]), flipped[:, :-1]], dim=1)


def _reverse_ids(seq_idx):
    """Ids of the reversal, non-decreasing and 0 at its start (the final state's sequence)."""
    if seq_idx is None:
        return None
    return (seq_idx[:, -1:] - seq_idx).flip(1).contiguous()


def _group_sum(per_head, groups):
    """(batch, len, heads, X) -> (batch, len, groups, X): heads h of group h // (heads // groups)."""
    batch, length, heads, width = per_head.shape
    return per_head.reshape(batch, length, groups, heads // groups, width).sum(3)


def _dot_by_group(grouped, per_head):
    """Σ_n grouped[b, l, h // (heads // groups), n]·per_head[b, l, h, n] -> (batch, len, heads),
    as a batched product: the group is never expanded to every head."""
    batch, length, heads, width = per_head.shape
    groups = grouped.shape[2]
    products = torch.matmul(per_head.reshape(batch, length, groups, heads // groups, width), grouped[..., None])
    return products.reshape(batch, length, heads)


def _segment_reverse_cumsum(values, seq_idx):
    """Σ_{s ≥ t, same sequence} values_s along dim 1 (float64: the terms nearly cancel in pairs)."""
    total = values.double().flip(1).cumsum(1).flip(1)
    if seq_idx is None:
        return total
    batch, length = seq_idx.shape
    # the first step of the next sequence after t (or len): subtract the tail sum from there
    starts = torch.ones_like(seq_idx, dtype=torch.bool)
    starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    index = torch.arange(length, device=seq_idx.device).expand(batch, length)
    candidate = torch.where(starts, index, torch.full_like(index, length))
    next_start = torch.cat([candidate[:, 1:], torch.full_like(candidate[:, :1], length)], dim=1)
    next_start = next_start.flip(1).cummin(1).values.flip(1)
    padded = torch.cat([total, torch.zeros_like(total[:, :1])], dim=1)
    tail = torch.gather(padded, 1, next_start[..., None].expand(-1, -1, total.shape[2]))
    return total - tail


class MultiHeadOps:
    """The core op of one package: `core(u, log_decay, B, C, h0, seq_idx, pipeline, chunk)`."""

    def __init__(self, key: str, library: StageLibrary, core_table: dict):
        """`core_table`: the operand table whose operands are the whole pipeline's (ssd_scan's): the
        core op's schema is derived from it."""
        self.library = library
        self.table = table = StageTable(core_table)
        name = f"{key}_ssd_core"
        self.qualname = f"{NAMESPACE}::{name}"
        schema = table.schema().replace(") ->", ", str pipeline, int chunk) ->", 1)
        torch.library.define(self.qualname, schema)
        torch.library.impl(self.qualname, "default")(self._forward)
        torch.library.register_fake(self.qualname)(self._fake)
        torch.library.register_autograd(self.qualname, self._backward, setup_context=self._setup_context)
        self.op = getattr(getattr(torch.ops, NAMESPACE), name)
        self.step_op = self._define_step(key) if "ssd_step" in library.tables else None

    def _define_step(self, key: str):
        """The decoding step as a custom op that updates the state in place (schema from its table:
        `Tensor(a!) ssm_state`), so torch.compile sees the mutation."""
        table = self.library.tables["ssd_step"]
        qualname = f"{NAMESPACE}::{key}_ssd_step"
        torch.library.define(qualname, table.schema())

        def fake(u, log_decay, B, C, ssm_state):
            sizes = table.bind(dict(u=u, log_decay=log_decay, B=B, C=C, ssm_state=ssm_state))
            y_shape, = table.output_shapes(sizes)
            return u.new_empty(y_shape)

        def step(u, log_decay, B, C, ssm_state):
            if ssm_state.numel() == 0:          # no state (or no batch, head, row): y is all zeros
                return fake(u, log_decay, B, C, ssm_state).zero_()
            y, = self.library.run("ssd_step", u=u, log_decay=log_decay, B=B, C=C, ssm_state=ssm_state)
            return y
        torch.library.impl(qualname, "default")(step)
        torch.library.register_fake(qualname)(fake)
        return getattr(getattr(torch.ops, NAMESPACE), f"{key}_ssd_step")

    def core(self, u, log_decay, B, C, h0=None, seq_idx=None, pipeline="sequential", chunk=64):
        if pipeline not in PIPELINES:
            raise ScheduleError(f"pipeline must be one of {PIPELINES}, got {pipeline!r}")
        return self.op(u, log_decay, B, C, h0, seq_idx, pipeline, chunk)

    # ---- forward ----------------------------------------------------------------------------------
    def _fake(self, u, log_decay, B, C, h0, seq_idx, pipeline, chunk):
        """(y, final), shaped by the core table from the operands (checked as the kernels' are)."""
        sizes = self.table.bind(dict(u=u, log_decay=log_decay, B=B, C=C, h0=h0, seq_idx=seq_idx))
        return tuple(u.new_empty(shape) for shape in self.table.output_shapes(sizes))

    def _forward(self, u, log_decay, B, C, h0, seq_idx, pipeline, chunk):
        if u.numel() * B.numel() == 0 or log_decay.numel() == 0:
            # nothing reaches a kernel; with no steps the state stays the initial one
            y, final = (t.zero_() for t in self._fake(u, log_decay, B, C, h0, seq_idx, pipeline, chunk))
            return y, (h0.clone() if h0 is not None and log_decay.shape[1] == 0 else final)
        run = self.library.run
        if pipeline == "sequential":
            y, final = run("ssd_scan", u=u, log_decay=log_decay, B=B, C=C, h0=h0, seq_idx=seq_idx)
            return y, final
        cum, carry, entering_ids = _chunk_inputs(log_decay, seq_idx, chunk)
        states, = run("chunk_state", u=u, cum=cum, B=B, seq_idx=seq_idx)
        entering, final = run("state_passing", states=states, carry=carry, h0=h0)
        y, = run("chunk_scan", u=u, cum=cum, B=B, C=C, entering=entering, seq_idx=seq_idx,
                 entering_ids=entering_ids)
        return y, final

    # ---- the derived backward -----------------------------------------------------------------------
    def _setup_context(self, ctx, inputs, output):
        u, log_decay, B, C, h0, seq_idx, pipeline, chunk = inputs
        ctx.save_for_backward(u, log_decay, B, C, h0, seq_idx, output[1])
        ctx.pipeline, ctx.chunk = pipeline, chunk

    def _backward(self, ctx, dy, dfinal):
        u, log_decay, B, C, h0, seq_idx, final = ctx.saved_tensors
        run = lambda *a: self.op(*a, ctx.pipeline, ctx.chunk)  # noqa: E731
        batch, length, heads = log_decay.shape
        P, N = u.shape[-1], B.shape[-1]
        dy = dy.contiguous() if dy is not None else u.new_zeros(batch, length, heads, P)
        dfinal = dfinal.contiguous() if dfinal is not None else None
        flip = lambda x: x.flip(1).contiguous()  # noqa: E731
        log_decay_r, ids_r = _reverse_decay(log_decay).contiguous(), _reverse_ids(seq_idx)

        # each (batch, len, heads, ...) tensor is flipped once, and per-head results are reduced to
        # their groups (or to per-step dot products) before being flipped back
        dy_r, C_r, B_r = flip(dy), flip(C), flip(B)
        du_r, dh0_r = run(dy_r, log_decay_r, C_r, B_r, dfinal, ids_r)
        du = _group_sum(du_r, u.shape[2]).flip(1)
        dC_head, _ = run(B, log_decay, u, dy, h0.transpose(-1, -2).contiguous() if h0 is not None else None, seq_idx)
        dfinal_t = dfinal.transpose(-1, -2).contiguous() if dfinal is not None else None
        dB_head_r, _ = run(C_r, log_decay_r, dy_r, flip(u), dfinal_t, ids_r)

        per_step = _dot_by_group(C, dC_head) - _dot_by_group(B_r, dB_head_r).flip(1)
        if dfinal is not None:       # the final state is read out at the last step too, by dfinal
            per_step[:, -1] += (dfinal * final).sum((-1, -2))
        dlog_decay = _segment_reverse_cumsum(per_step, seq_idx).to(log_decay.dtype)
        dh0 = None
        if h0 is not None:
            first = torch.exp(log_decay[:, 0])
            if seq_idx is not None:
                first = first * (seq_idx[:, 0] == 0).to(first.dtype)[:, None]
            dh0 = first[:, :, None, None] * dh0_r
        return (du, dlog_decay, _group_sum(dB_head_r, B.shape[2]).flip(1), _group_sum(dC_head, C.shape[2]), dh0,
                None, None, None)
