"""The gated recurrence (GLA's per-state decays) as one differentiable custom op per package, run by a
pipeline of the GLA stages (ssmc/ir/gla_stages.py), with a backward derived from the forward.

Forward, per (batch, head), state (P, N) = (value, key):
    h_t = exp(g_headdim_t)[:, None] · exp(g_state_t)[None, :] ⊙ h_{t-1} + u_t ⊗ B_t,   y_t = h_t·C_t

Backward, as for Mamba-2's core (ssmc.runtime.ssd): the adjoint is the same recurrence run backward in
time, so every gradient is a run of the forward stages with operands permuted; what changes is that a
transposed state (N, P) decays along its *rows* — g_state becomes the headdim-axis decay, which is
why gla_scan takes both axes:
    du  = reverse-run(u=dy, B=C, C=B, h0=dfinal)                       same orientation
    dC  = run(u=B, B=u, C=dy, g_state=g_headdim, g_headdim=g_state, h0=h0ᵀ)      Σ_p h_t[p, n]·dy_t[p]
    dB  = reverse-run(u=C, B=dy, C=u, g_state=..., g_headdim=..., h0=dfinalᵀ)     Σ_p G_t[p, n]·u_t[p]
and the log-decays' gradients are reverse cumulative sums of per-step terms (every pair (t, s) of
the quadratic form appears once with each sign):
    dg_state_t[n]   = Σ_{s ≥ t} (C_s[n]·dC_s[n] − B_s[n]·dB_s[n])   (+ Σ_p dfinal·final at the last step)
    dg_headdim_t[p] = Σ_{s ≥ t} (dy_s[p]·y_s[p] − u_s[p]·du_s[p])   (+ Σ_n dfinal·final at the last step)
The transposed runs decay along the headdim axis, which only the sequential stage takes, so they
run it even when the forward is chunked.

`gated_call` is the functional form in flash-linear-attention's conventions (q, k, v (batch, len,
heads, dim), states (key, value)), with variable-length batches, reversal and RWKV-6's bonus.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ScheduleError, ShapeError
from .ssd import NAMESPACE, _reverse_decay, _segment_reverse_cumsum
from .stages import StageLibrary, StageTable

PIPELINES = ("sequential", "chunked")


class GatedOps:
    """The core op of one gated package: `core(u, g_state, g_headdim, B, C, h0, pipeline, chunk)`."""

    def __init__(self, key: str, library: StageLibrary, core_table: dict):
        self.library = library
        self.table = table = StageTable(core_table)
        name = f"{key}_gla_core"
        qualname = f"{NAMESPACE}::{name}"
        torch.library.define(qualname, table.schema().replace(") ->", ", str pipeline, int chunk) ->", 1))
        torch.library.impl(qualname, "default")(self._run)
        torch.library.register_fake(qualname)(self._fake)
        torch.library.register_autograd(qualname, self._backward, setup_context=self._setup_context)
        self.op = getattr(getattr(torch.ops, NAMESPACE), name)

    def core(self, u, g_state, g_headdim, B, C, h0=None, pipeline="sequential", chunk=64):
        if pipeline not in PIPELINES:
            raise ScheduleError(f"pipeline must be one of {PIPELINES}, got {pipeline!r}")
        return self.op(u, g_state, g_headdim, B, C, h0, pipeline, chunk)

    # ---- forward ----------------------------------------------------------------------------------
    def _fake(self, u, g_state, g_headdim, B, C, h0, pipeline, chunk):
        sizes = self.table.bind(dict(u=u, g_state=g_state, g_headdim=g_headdim, B=B, C=C, h0=h0))
        return tuple(u.new_empty(shape) for shape in self.table.output_shapes(sizes))

    def _run(self, u, g_state, g_headdim, B, C, h0, pipeline, chunk):
        """(y, final) by the stages: chunked only where the decay is along the state axis alone."""
        if u.numel() * B.numel() == 0:
            y, final = (t.zero_() for t in self._fake(u, g_state, g_headdim, B, C, h0, pipeline, chunk))
            return y, (h0.clone() if h0 is not None and u.shape[1] == 0 else final)
        run = self.library.run
        if pipeline != "chunked" or g_headdim is not None:
            y, final = run("gla_scan", u=u, g_state=g_state, g_headdim=g_headdim, B=B, C=C, h0=h0)
            return y, final
        cum, carry = _chunk_inputs(g_state, u, B, chunk)
        states, = run("gla_chunk_state", u=u, cum=cum, B=B)
        entering, final = run("gla_state_passing", states=states, carry=carry, h0=h0)
        y, = run("gla_chunk_scan", u=u, cum=cum, B=B, C=C, entering=entering)
        return y, final

    # ---- the derived backward -----------------------------------------------------------------------
    def _setup_context(self, ctx, inputs, output):
        u, g_state, g_headdim, B, C, h0, pipeline, chunk = inputs
        ctx.save_for_backward(u, g_state, g_headdim, B, C, h0, output[0], output[1])
        ctx.pipeline, ctx.chunk = pipeline, chunk

    def _backward(self, ctx, dy, dfinal):
        u, g_state, g_headdim, B, C, h0, y, final = ctx.saved_tensors
        run = lambda *a: self._run(*a, ctx.pipeline, ctx.chunk)  # noqa: E731
        dy = dy.contiguous() if dy is not None else torch.zeros_like(y)
        dfinal = dfinal.contiguous() if dfinal is not None else None
        flip = lambda x: None if x is None else x.flip(1).contiguous()  # noqa: E731
        reverse = lambda g: None if g is None else _reverse_decay(g).contiguous()  # noqa: E731
        transpose = lambda s: None if s is None else s.transpose(-1, -2).contiguous()  # noqa: E731
        gs_r, gh_r = reverse(g_state), reverse(g_headdim)
        dy_r, C_r = flip(dy), flip(C)

        du_r, dh0_r = run(dy_r, gs_r, gh_r, C_r, flip(B), dfinal)
        du = du_r.flip(1)
        dC, _ = run(B, g_headdim, g_state, u, dy, transpose(h0))
        dB = run(C_r, gh_r, gs_r, dy_r, flip(u), transpose(dfinal))[0].flip(1)

        dg_state = dg_headdim = None
        if g_state is not None:
            per_step = C * dC - B * dB
            if dfinal is not None:          # the final state is read out at the last step too
                per_step[:, -1] += (dfinal * final).sum(-2)
            dg_state = _segment_reverse_cumsum(per_step, None).to(g_state.dtype)
        if g_headdim is not None:
            per_step = dy * y - u * du
            if dfinal is not None:
                per_step[:, -1] += (dfinal * final).sum(-1)
            dg_headdim = _segment_reverse_cumsum(per_step, None).to(g_headdim.dtype)
        dh0 = None
        if h0 is not None:
            first = torch.ones_like(h0[:, :, :1, :1])
            if g_state is not None:
                first = first * torch.exp(g_state[:, 0])[:, :, None, :]
            if g_headdim is not None:
                first = first * torch.exp(g_headdim[:, 0])[:, :, :, None]
            dh0 = first * dh0_r
        return du, dg_state, dg_headdim, dB, dC, dh0, None, None


def _chunk_inputs(g_state, u, B, chunk):
    """cum (batch, chunks, chunk, heads, state): the inclusive cumulative log-decay from each chunk's
    start (the decays padded with 0 past len), and carry = exp(cum at each chunk's last step)."""
    batch, length, heads, state = B.shape
    chunks = -(-length // chunk)
    if g_state is None:
        cum = B.new_zeros(batch, chunks, chunk, heads, state)
    else:
        padded = F.pad(g_state, (0, 0, 0, 0, 0, chunks * chunk - length))
        cum = padded.reshape(batch, chunks, chunk, heads, state).cumsum(2).contiguous()
    return cum, torch.exp(cum[:, :, -1]).contiguous()


# ---- flash-linear-attention's functional form -----------------------------------------------------------
def _tensor(name, x, rank, what):
    if not isinstance(x, torch.Tensor) or x.dim() != rank:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ShapeError(f"{name}: expected a tensor of shape {what}, got {got}")
    if not (x.is_floating_point()):
        raise ShapeError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    return x


def _expect(name, x, shape, what):
    if x is not None:
        _tensor(name, x, len(shape), what)
        if tuple(x.shape) != tuple(shape):
            raise ShapeError(f"{name}: expected shape {what} = {tuple(shape)}, got {tuple(x.shape)}")
    return x


def check_input(name, x, shape, like):
    """A declared input of a gated spec: a floating tensor of the log-decays' shape, on q's device."""
    what = "(batch, len, heads, key_dim)" if shape is not None and len(shape) == 4 else "(batch, len, heads)"
    _expect(name, x, shape if shape is not None else (), what)
    if x is not None and isinstance(like, torch.Tensor) and x.device != like.device:
        raise ShapeError(f"{name}: on {x.device}, q on {like.device}")
    if x is None:
        raise ShapeError(f"{name}: the spec's input {name} {what} is required")


def check_offsets(cu_seqlens, batch, length):
    """cu_seqlens as a list of ints: 1-D integer offsets from 0 to len, non-decreasing, batch 1."""
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 \
            or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ShapeError(f"cu_seqlens: expected a 1-D int32/int64 tensor of num_sequences + 1 offsets, got "
                         f"{cu_seqlens.dtype if isinstance(cu_seqlens, torch.Tensor) else type(cu_seqlens).__name__}"
                         f"{tuple(cu_seqlens.shape) if isinstance(cu_seqlens, torch.Tensor) else ''}")
    if batch != 1:
        raise ShapeError(f"cu_seqlens: a variable-length batch is packed into batch 1, got batch {batch}")
    offsets = [int(x) for x in cu_seqlens.tolist()]
    if offsets[0] != 0 or offsets[-1] != length or any(b < a for a, b in zip(offsets, offsets[1:])):
        raise ShapeError(f"cu_seqlens: expected non-decreasing offsets from 0 to len={length}, got "
                         f"{offsets if len(offsets) <= 8 else offsets[:4] + ['...'] + offsets[-2:]}")
    return offsets


class Packing:
    """A packed batch of 1 with offsets as a zero-padded (num_sequences, max_len, ...) batch and back.
    Padded steps follow each sequence: a zero input and a zero log-decay leave its state unchanged,
    so the last state of a row is its sequence's final state; their outputs are dropped."""

    def __init__(self, offsets, device):
        lengths = torch.tensor([b - a for a, b in zip(offsets, offsets[1:])], device=device)
        self.max_len = int(lengths.max()) if len(lengths) else 0
        self.mask = torch.arange(self.max_len, device=device)[None, :] < lengths[:, None]

    def unpack(self, x):
        if x is None:
            return None
        out = x.new_zeros(self.mask.shape + x.shape[2:])
        out[self.mask] = x[0]
        return out

    def pack(self, x):
        return x[self.mask][None]


def _shift(x, front: bool):
    """x with one zero step added before its first step (front) or after its last."""
    pad = (0, 0) * (x.dim() - 2) + ((1, 0) if front else (0, 1))
    return F.pad(x, pad)


def gated_call(core, choose, q, k, v, g_state=None, g_headdim=None, scale=None, initial_state=None,
               output_final_state=False, cu_seqlens=None, reverse=False, bonus=None, chunk_size=None,
               per_state=True, sequential_only=False):
    """(o, final_state or None) in fla's conventions; see ssmc.ops.chunk_gla for the arguments.

    `core(u, g_state, g_headdim, B, C, h0, pipeline, chunk)` runs the recurrence; `choose(batch, len,
    heads, headdim, state, target)` picks (pipeline, chunk) by the package's cost model."""
    from .multihead import cost_target
    _tensor("q", q, 4, "(batch, len, heads, key_dim)")
    batch, length, heads, key_dim = q.shape
    _expect("k", k, q.shape, "(batch, len, heads, key_dim)")
    _tensor("v", v, 4, "(batch, len, heads, value_dim)")
    value_dim = v.shape[3]
    _expect("v", v, (batch, length, heads, value_dim), "(batch, len, heads, value_dim)")
    if per_state:
        _expect("g", g_state, (batch, length, heads, key_dim), "(batch, len, heads, key_dim)")
    else:
        _expect("g", g_state, (batch, length, heads), "(batch, len, heads)")
    _expect("gv", g_headdim, (batch, length, heads, value_dim), "(batch, len, heads, value_dim)")
    _expect("u", bonus, (heads, key_dim), "(heads, key_dim)")
    if not isinstance(output_final_state, bool) or not isinstance(reverse, bool):
        raise ShapeError(f"output_final_state and reverse: expected bools, got {output_final_state!r}, {reverse!r}")
    if scale is None:
        scale = key_dim ** -0.5 if key_dim else 1.0
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ShapeError(f"scale: expected a finite real number or None, got {scale!r}")
    if any(x.device != q.device for x in (k, v, g_state, g_headdim, bonus, initial_state) if x is not None):
        raise ShapeError("q, k, v, g, gv, u and initial_state must be on one device")
    offsets = check_offsets(cu_seqlens, batch, length) if cu_seqlens is not None else None
    sequences = len(offsets) - 1 if offsets is not None else batch
    _expect("initial_state", initial_state, (sequences, heads, key_dim, value_dim),
            "(num_sequences, heads, key_dim, value_dim)" if offsets is not None else "(batch, heads, key_dim, value_dim)")

    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    cast = lambda t: None if t is None else t.to(compute)  # noqa: E731
    C, B, u, gs, gh = cast(q) * scale, cast(k), cast(v), cast(g_state), cast(g_headdim)
    packing = Packing(offsets, q.device) if offsets is not None else None
    if packing is not None:
        C, B, u, gs, gh = (packing.unpack(t) for t in (C, B, u, gs, gh))
    if reverse:
        C, B, u, gs, gh = (None if t is None else t.flip(1) for t in (C, B, u, gs, gh))
    steps = C.shape[1]
    Cr, Br, ur, gsr, ghr = C, B, u, gs, gh
    if bonus is not None:
        # o_t reads the state before step t: run the recurrence one step late (inputs shifted by one,
        # a zero query after the last step, whose state is then the final one)
        Cr, Br, ur = _shift(C, front=False), _shift(B, front=True), _shift(u, front=True)
        gsr, ghr = (None if t is None else _shift(t, front=True) for t in (gs, gh))
    h0 = cast(initial_state).transpose(-1, -2).contiguous() if initial_state is not None else None
    pipeline, chunk = choose(Cr.shape[0], Cr.shape[1], heads, value_dim, key_dim, cost_target(q.device.type))
    if sequential_only or gh is not None:
        pipeline, chunk = "sequential", 0
    if chunk_size is not None:
        pipeline, chunk = "chunked", int(chunk_size)
    y, final = core(ur.contiguous(), None if gsr is None else gsr.contiguous(),
                    None if ghr is None else ghr.contiguous(), Br.contiguous(), Cr.contiguous(), h0, pipeline, chunk)
    y = y[:, :steps]
    if bonus is not None:
        y = y + ((C * cast(bonus) * B).sum(-1, keepdim=True)) * u
    if reverse:
        y = y.flip(1)
    if packing is not None:
        y = packing.pack(y)
    o = y.to(v.dtype)
    return o, (final.transpose(-1, -2).contiguous() if output_final_state else None)
