"""Gated linear attention ops with flash-linear-attention's names, layouts and semantics (re-exported
by ssmc.ops): GLA's `chunk_gla` / `fused_recurrent_gla`, `chunk_simple_gla` (one decay per head) and
RWKV-6's `chunk_rwkv6`. Each call compiles the package of its shape signature once per process (like
the other ops in ssmc.ops) and runs the generated stage kernels: C on CPU tensors, Triton on CUDA ones.

Layouts: q, k (batch, len, heads, key_dim); v (batch, len, heads, value_dim); states (num_sequences,
heads, key_dim, value_dim). With cu_seqlens (a packed batch of 1, num_sequences + 1 offsets) every
sequence starts from its own initial state and returns its own final state. All inputs are
differentiable, initial_state included; gradients flow through the generated kernels (the backward
is derived from the forward, ssmc.runtime.gla).
"""
from __future__ import annotations

import operator

import torch

from .errors import ShapeError

SCHEDULES = {"chunk": "chunked", "fused_recurrent": "sequential"}


def gated_key(key_dim, value_dim, per="state", schedule="chunked") -> tuple:
    """The signature under which these ops cache the package of a call."""
    return ("gla", key_dim, value_dim, per, schedule)


def gated_spec(key: tuple) -> tuple:
    """(spec, schedule) of a gated key."""
    from .spec import SSM, InputDecay, MultiHead
    _, key_dim, value_dim, per, schedule = key
    return SSM(name=f"gla_{per}", d_state=key_dim, A=InputDecay(per=per, log_decay="g", inputs=("g",)),
               selective=("B", "C"), heads=MultiHead(headdim=value_dim), skip_D=False), schedule


def _package(q, v, per, schedule):
    from .ops import _package as package
    for name, x in (("q", q), ("v", v)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[3] < 1:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ShapeError(f"{name}: expected a tensor of shape (batch, len, heads, dim) with dim >= 1, got {got}")
    return package(gated_key(operator.index(q.shape[3]), operator.index(v.shape[3]), per, schedule))


def chunk_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """GLA (Yang et al. 2024): per head, S_t = diag(exp(g_t))·S_{t-1} + k_t ⊗ v_t, o_t = scale·q_t·S_t,
    g (batch, len, heads, key_dim) the log-decays (<= 0), scale default key_dim ** -0.5.
    Runs the chunked pipeline (sub-chunked, safe for decays down to exp(-20) per step), the chunk
    chosen by the cost model. Returns (o like v, final state (num_sequences, heads, key_dim, value_dim)
    in float32 — float64 for float64 inputs — or None without output_final_state)."""
    return _package(q, v, "state", "chunked").apply_gated(q, k, v, g, None, scale, initial_state, output_final_state,
                                                          cu_seqlens)


def fused_recurrent_gla(q, k, v, gk=None, gv=None, scale=None, initial_state=None, output_final_state=False,
                        reverse=False, cu_seqlens=None):
    """GLA one step at a time (the sequential pipeline), with optional key-side log-decays gk (batch,
    len, heads, key_dim) and value-side ones gv (batch, len, heads, value_dim):
    S_t = (exp(gk_t) ⊗ exp(gv_t)) ⊙ S_{t-1} + k_t ⊗ v_t; `reverse` runs from the last step to the
    first. Returns (o, final state or None) as `chunk_gla`."""
    return _package(q, v, "state", "sequential").apply_gated(q, k, v, gk, gv, scale, initial_state,
                                                             output_final_state, cu_seqlens, reverse)


def chunk_simple_gla(q, k, v, g, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """Simple GLA / RetNet: one log-decay per head and step, g (batch, len, heads); Mamba-2's stages
    (the chunked pipeline). Returns (o, final state or None) as `chunk_gla`."""
    return _package(q, v, "head", "chunked").apply_gated(q, k, v, g, None, scale, initial_state, output_final_state,
                                                         cu_seqlens)


def chunk_rwkv6(r, k, v, w, u, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
    """RWKV-6's time mixing: w (batch, len, heads, key_dim) the log-decays (RWKV-6's -exp(w_raw)), u
    (heads, key_dim) the bonus of the current token:
        o_t = scale·r_t·(S_{t-1} + diag(u)·k_t ⊗ v_t),   S_t = diag(exp(w_t))·S_{t-1} + k_t ⊗ v_t.
    Returns (o, final state or None) as `chunk_gla`."""
    if u is None:
        raise ShapeError("u: RWKV-6's bonus (heads, key_dim) is required")
    return _package(r, v, "state", "chunked").apply_gated(r, k, v, w, None, scale, initial_state, output_final_state,
                                                          cu_seqlens, False, u)
