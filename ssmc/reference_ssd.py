"""Float64 references for Mamba-2's multi-head recurrence (SSD), in two independent forms.

`ssd_sequential_ref` is the ground truth: one time step at a time, nothing clever. `ssd_chunked_ref`
is the state space duality algorithm, written as the four stages that the compiled `chunked`
schedule will have (cumulative log-decays, chunk states, state passing, chunk outputs), so that each
generated stage kernel can be tested against its own reference and the composition against the
sequential truth. Both are written for clarity, not speed, and are differentiable in every input.

Semantics are mamba_ssm's `mamba_chunk_scan_combined` (read from its Triton kernels in
`mamba_ssm/ops/triton/ssd_*.py`, where they differ from its own `_ref` helpers):
- layouts: x, z (batch, len, heads, P); dt (batch, len, heads); A (heads,); B, C (batch, len,
  groups, N), head h reads group h // (heads // groups); D (heads,) or (heads, P); states
  (batch, heads, P, N);
- dt = clamp(softplus(dt + dt_bias), *dt_limit): the clamp is applied always, so with the default
  (0, inf) a negative dt without softplus becomes 0;
- y = (C·h + D·x) · silu(z): z gates the output after the skip term (the non-fused-norm path);
- variable length: state is reset where `seq_idx` changes; the "previous id" before position 0 is 0,
  so the initial state belongs to the sequence with id 0 at the start of each row and every other
  sequence starts from zero. `cu_seqlens` (a packed batch of 1) means sequence i has id i;
- final states: (batch, heads, P, N), the state after the last position; with `cu_seqlens` one
  final state per sequence, (num_sequences, heads, P, N), like mamba_ssm's `varlen_states` (unlike
  mamba_ssm's kernel, the initial state is counted in sequence 0's final state even when that
  sequence ends inside the first chunk: the recurrence says it must be).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

INF = float("inf")


# ---------------------------------------------------------------------------------------------------
# Shared pieces: both forms must read the inputs the same way, or comparing them proves nothing.

def _f64(t):
    return None if t is None else t.to(torch.float64)


def process_dt(dt, dt_bias=None, dt_softplus=False, dt_limit=(0.0, INF)):
    """The step each position takes, exactly as mamba_ssm's chunk-cumsum kernel computes it
    (F.softplus's threshold of 20 matches the kernel's `dt <= 20` branch)."""
    dt = _f64(dt)
    if dt_bias is not None:
        dt = dt + _f64(dt_bias)
    if dt_softplus:
        dt = F.softplus(dt)
    return dt.clamp(min=dt_limit[0], max=dt_limit[1])


def heads_from_groups(BC, heads):
    """(batch, len, groups, N) -> (batch, len, heads, N): heads share B/C in consecutive blocks."""
    groups = BC.shape[2]
    if heads % groups:
        raise ValueError(f"B/C: groups={groups} must divide heads={heads}")
    return _f64(BC).repeat_interleave(heads // groups, dim=2)


def skip_and_gate(y, x, D=None, z=None):
    """The per-position epilogue: D adds before the gate, as in mamba_ssm's chunk-scan kernel."""
    if D is not None:
        D = _f64(D)
        y = y + _f64(x) * (D[:, None] if D.dim() == 1 else D)
    if z is not None:
        y = y * F.silu(_f64(z))
    return y


def resolve_seq_idx(seq_idx, cu_seqlens, batch, length):
    """One description of sequence boundaries for both forms: (batch, len) int64 ids, or None.

    Ids must not decrease along a row: the chunked form identifies a sequence by its id, so a
    repeated id after a different one would merge two sequences there but not in the recurrence."""
    if cu_seqlens is not None:
        cu = torch.as_tensor(cu_seqlens).to(torch.int64).flatten()
        if batch != 1:
            raise ValueError(f"cu_seqlens: needs a packed batch of 1, got batch={batch}")
        if cu[0] != 0 or cu[-1] != length or (cu[1:] < cu[:-1]).any():
            raise ValueError(f"cu_seqlens: expected non-decreasing offsets from 0 to len={length}, "
                             f"got {cu.tolist()}")
        derived = torch.searchsorted(cu[1:], torch.arange(length), right=True)[None]
        if seq_idx is not None and not torch.equal(torch.as_tensor(seq_idx).to(torch.int64), derived):
            raise ValueError("seq_idx: disagrees with cu_seqlens (sequence i must have id i)")
        return derived
    if seq_idx is None:
        return None
    seq_idx = torch.as_tensor(seq_idx).to(torch.int64)
    if seq_idx.shape != (batch, length):
        raise ValueError(f"seq_idx: expected shape {(batch, length)}, got {tuple(seq_idx.shape)}")
    if (seq_idx[:, 1:] < seq_idx[:, :-1]).any():
        raise ValueError("seq_idx: ids must not decrease along the sequence dimension")
    return seq_idx


def _zero_state(x, N):
    batch, _, heads, P = x.shape
    return torch.zeros(batch, heads, P, N, dtype=torch.float64)


def _start_state(x, N, initial_states):
    return _zero_state(x, N) if initial_states is None else _f64(initial_states)


def _sequence_final_states(cu_seqlens, state_after, initial_states, x, N):
    """Per-sequence final states of a packed batch of 1; `state_after(t)` is the state after
    position t. An empty sequence ends in the state it starts from (the initial one for id 0)."""
    cu = torch.as_tensor(cu_seqlens).to(torch.int64).flatten().tolist()
    start = _start_state(x, N, initial_states)[0]
    finals = []
    for i, (s, e) in enumerate(zip(cu[:-1], cu[1:])):
        if e > s:
            finals.append(state_after(e - 1))
        else:
            finals.append(start if i == 0 else torch.zeros_like(start))
    return torch.stack(finals)


# ---------------------------------------------------------------------------------------------------
# The sequential form: the definition.

def ssd_sequential_ref(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                       dt_limit=(0.0, INF), initial_states=None, seq_idx=None, cu_seqlens=None,
                       return_final_states=False):
    """h_t = exp(dt_t·A)·h_{t-1} + dt_t·x_t ⊗ B_t  (P, N),  y_t = h_t·C_t + D·x_t, times silu(z_t),
    per (batch, head), h_{-1} = initial_states; reset to 0 where seq_idx changes (module docstring).

    Returns y (batch, len, heads, P) float64, and with return_final_states the final state(s)."""
    x, A = _f64(x), _f64(A)
    batch, length, heads, P = x.shape
    dt = process_dt(dt, dt_bias, dt_softplus, dt_limit)
    B, C = heads_from_groups(B, heads), heads_from_groups(C, heads)
    N = B.shape[-1]
    seq_idx = resolve_seq_idx(seq_idx, cu_seqlens, batch, length)
    h = _start_state(x, N, initial_states)
    prev_id = torch.zeros(batch, dtype=torch.int64)
    ys, hs = [], []
    for t in range(length):
        if seq_idx is not None:
            same_sequence = (seq_idx[:, t] == prev_id).to(torch.float64)
            h = h * same_sequence[:, None, None, None]
            prev_id = seq_idx[:, t]
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        h = decay * h + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", h, C[:, t]))
        hs.append(h)
    y = skip_and_gate(torch.stack(ys, dim=1), x, D, z)
    if not return_final_states:
        return y
    if cu_seqlens is None:
        return y, h
    return y, _sequence_final_states(cu_seqlens, lambda t: hs[t][0], initial_states, x, N)


# ---------------------------------------------------------------------------------------------------
# The chunked (SSD) form: four stages, each with mamba_ssm's intermediate layouts.
# Lengths are padded to whole chunks with dt = 0 after dt processing, so padded positions add
# nothing and do not decay; padded seq_idx repeats the last id, so a chunk's last id is its last
# real position's id.

def _pad_to_chunks(t, chunk_size, mode="zeros"):
    """Pad dim 1 (len) up to a multiple of chunk_size and split it into (chunks, chunk)."""
    length = t.shape[1]
    pad = -length % chunk_size
    if pad:
        fill = t[:, -1:].expand(t.shape[0], pad, *t.shape[2:]) if mode == "repeat" else \
            t.new_zeros(t.shape[0], pad, *t.shape[2:])
        t = torch.cat([t, fill], dim=1)
    return t.reshape(t.shape[0], -1, chunk_size, *t.shape[2:])


def _chunk_ids(seq_idx, chunk_size):
    """(batch, len) -> (batch, chunks, chunk) ids, and the id entering each chunk (batch, chunks):
    the previous chunk's last id, 0 before the first (mamba_ssm's rule for the initial state)."""
    ids = _pad_to_chunks(seq_idx, chunk_size, mode="repeat")
    entering = F.pad(ids[:, :-1, -1], (1, 0), value=0)
    return ids, entering


def chunk_cumsum_ref(dt, A, chunk_size, dt_bias=None, dt_softplus=False, dt_limit=(0.0, INF)):
    """Stage (a). dt: (batch, len, heads), A: (heads,) ->
    dt (batch, heads, chunks, chunk), processed and 0 past the end;
    dA_cumsum (batch, heads, chunks, chunk) = Σ_{s ≤ l in the chunk} dt_s·A, the log of the decay
    from the chunk's start to (and including) position l. Every later decay is a difference of
    these, so no stage ever multiplies a long product of decays."""
    dt = _pad_to_chunks(process_dt(dt, dt_bias, dt_softplus, dt_limit), chunk_size)
    dt = dt.permute(0, 3, 1, 2)
    dA_cumsum = torch.cumsum(dt * _f64(A)[:, None, None], dim=-1)
    return dt, dA_cumsum


def chunk_state_ref(B, x, dt, dA_cumsum, seq_idx=None):
    """Stage (b). The state each chunk produces from a zero state, at its last position:
    states[b, c, h] = Σ_l exp(cum_last − cum_l)·dt_l·x_l ⊗ B_l  -> (batch, chunks, heads, P, N),
    over the positions l of the sequence that is current at the chunk's end (earlier sequences in
    the chunk are finished and must not leak into it). exp(cum_last − cum_l) ≤ 1 for decays ≤ 1."""
    heads, chunk_size = x.shape[2], dt.shape[-1]
    xc = _pad_to_chunks(_f64(x), chunk_size)
    Bc = _pad_to_chunks(heads_from_groups(B, heads), chunk_size)
    weight = torch.exp(dA_cumsum[..., -1:] - dA_cumsum) * dt
    if seq_idx is not None:
        ids, _ = _chunk_ids(seq_idx, chunk_size)
        weight = weight * (ids == ids[..., -1:]).to(torch.float64)[:, None]
    return torch.einsum("bhcl,bclhp,bclhn->bchpn", weight, xc, Bc)


def state_passing_ref(states, dA_chunk_cumsum, initial_states=None, seq_idx=None, chunk_size=None):
    """Stage (c). The state entering each chunk: s_0 = initial, s_{c+1} = exp(Σ_chunk dA)·s_c +
    states_c, with the carry dropped when chunk c ends in a different sequence than chunk c−1
    (or, for c = 0, than id 0). states: (batch, chunks, heads, P, N); dA_chunk_cumsum: (batch,
    heads, chunks), each chunk's total log-decay -> (entering (batch, chunks, heads, P, N),
    final (batch, heads, P, N)). A loop over chunks: it is the short sequential part of SSD."""
    batch, chunks, heads, P, N = states.shape
    h = torch.zeros(batch, heads, P, N, dtype=torch.float64) if initial_states is None \
        else _f64(initial_states)
    ends = entering_ids = None
    if seq_idx is not None:
        ids, entering_ids = _chunk_ids(seq_idx, chunk_size)
        ends = ids[..., -1]
    entering = []
    for c in range(chunks):
        entering.append(h)
        carry = torch.exp(dA_chunk_cumsum[:, :, c])[:, :, None, None]
        if ends is not None:
            carry = carry * (ends[:, c] == entering_ids[:, c]).to(torch.float64)[:, None, None, None]
        h = carry * h + states[:, c]
    return torch.stack(entering, dim=1), h


def _intra_chunk_decay(dA_cumsum, ids=None):
    """L[b, h, c, i, j] = exp(cum_i − cum_j) for j ≤ i in the same sequence, else 0.

    The differences are masked *before* exp: above the diagonal they are large and positive
    (−Σ dA over the gap), and exp would overflow to inf and turn into NaN in the backward."""
    chunk_size = dA_cumsum.shape[-1]
    allowed = torch.ones(chunk_size, chunk_size, dtype=torch.bool).tril()
    if ids is not None:
        allowed = allowed & (ids[..., :, None] == ids[..., None, :])[:, None]
    log_decay = dA_cumsum[..., :, None] - dA_cumsum[..., None, :]
    return torch.exp(log_decay.masked_fill(~allowed, -INF))


def chunk_scan_ref(B, C, x, dt, dA_cumsum, prev_states, D=None, z=None, seq_idx=None):
    """Stage (d). Outputs (batch, len, heads, P) as the two SSD terms:
    intra-chunk, a masked matrix product (attention-like):
        y_i += Σ_{j ≤ i} (C_i·B_j)·exp(cum_i − cum_j)·dt_j·x_j
    inter-chunk, the entering state read out through the decay since the chunk's start:
        y_i += exp(cum_i)·C_i·prev_state   (only if position i continues the entering sequence),
    then the D skip and the z gate. prev_states: (batch, chunks, heads, P, N) from stage (c)."""
    length, heads = x.shape[1], x.shape[2]
    chunk_size = dt.shape[-1]
    xc = _pad_to_chunks(_f64(x), chunk_size)
    Bc = _pad_to_chunks(heads_from_groups(B, heads), chunk_size)
    Cc = _pad_to_chunks(heads_from_groups(C, heads), chunk_size)
    ids, entering = (None, None) if seq_idx is None else _chunk_ids(seq_idx, chunk_size)

    scores = torch.einsum("bclhn,bcshn->bhcls", Cc, Bc) * _intra_chunk_decay(dA_cumsum, ids)
    y_intra = torch.einsum("bhcls,bhcs,bcshp->bclhp", scores, dt, xc)

    readout = torch.exp(dA_cumsum)
    if ids is not None:
        readout = readout * (ids == entering[..., None]).to(torch.float64)[:, None]
    y_inter = torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, _f64(prev_states), readout)

    y = (y_intra + y_inter).flatten(1, 2)[:, :length]
    return skip_and_gate(y, x, D, z)


def varlen_states_ref(B, x, dt, dA_cumsum, prev_states, cu_seqlens, initial_states=None):
    """Final state of each sequence of a packed batch of 1 -> (num_sequences, heads, P, N):
    the state after a sequence's last position t in chunk c is stage (d)'s state before readout,
        exp(cum_t)·prev_state_c [if the sequence entered chunk c] + Σ_{j ≤ t, same seq}
        exp(cum_t − cum_j)·dt_j·x_j ⊗ B_j."""
    heads, chunk_size = x.shape[2], dt.shape[-1]
    xc = _pad_to_chunks(_f64(x), chunk_size)[0]
    Bc = _pad_to_chunks(heads_from_groups(B, heads), chunk_size)[0]
    ids, entering = _chunk_ids(resolve_seq_idx(None, cu_seqlens, 1, x.shape[1]), chunk_size)
    ids, entering, dt, cum = ids[0], entering[0], dt[0], dA_cumsum[0]

    def state_after(t):
        c, k = divmod(t, chunk_size)
        mine = (ids[c, : k + 1] == ids[c, k]).to(torch.float64)
        weight = torch.exp(cum[:, c, k, None] - cum[:, c, : k + 1]) * dt[:, c, : k + 1] * mine
        h = torch.einsum("hl,lhp,lhn->hpn", weight, xc[c, : k + 1], Bc[c, : k + 1])
        if entering[c] == ids[c, k]:
            h = h + torch.exp(cum[:, c, k])[:, None, None] * _f64(prev_states)[0, c]
        return h

    return _sequence_final_states(cu_seqlens, state_after, initial_states, x, Bc.shape[-1])


def ssd_chunked_ref(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False,
                    dt_limit=(0.0, INF), initial_states=None, seq_idx=None, cu_seqlens=None,
                    return_final_states=False):
    """`ssd_sequential_ref` computed by the SSD stages (a)→(b)→(c)→(d); same arguments and results."""
    batch, length = x.shape[:2]
    seq_idx = resolve_seq_idx(seq_idx, cu_seqlens, batch, length)
    heads_from_groups(B, x.shape[2])  # refuse bad groups before any stage runs
    dt_c, dA_cumsum = chunk_cumsum_ref(dt, A, chunk_size, dt_bias, dt_softplus, dt_limit)
    states = chunk_state_ref(B, x, dt_c, dA_cumsum, seq_idx)
    prev_states, final = state_passing_ref(states, dA_cumsum[..., -1], initial_states, seq_idx,
                                           chunk_size)
    y = chunk_scan_ref(B, C, x, dt_c, dA_cumsum, prev_states, D, z, seq_idx)
    if not return_final_states:
        return y
    if cu_seqlens is None:
        return y, final
    return y, varlen_states_ref(B, x, dt_c, dA_cumsum, prev_states, cu_seqlens, initial_states)


# ---------------------------------------------------------------------------------------------------
# The core form that ssmc's stage kernels compute (ir/stages.py): the discretization already applied,
#     h_t = exp(log_decay_t)·keep_t·h_{t-1} + u_t ⊗ B_t,   y_t = h_t·C_t,
# keep_t = [seq_idx_t == seq_idx_{t-1}], seq_idx_{-1} = 0. u, B and C each come in "groups" of heads
# (u_heads, b_heads, c_heads dividing heads): head h reads group h // (heads // groups).

def _by_head(t, heads):
    return heads_from_groups(t, heads)


def ssd_core_ref(u, log_decay, B, C, h0=None, seq_idx=None):
    """The sequential core: (y (batch, len, heads, P), final (batch, heads, P, N)), float64."""
    log_decay = _f64(log_decay)
    batch, length, heads = log_decay.shape
    u, B, C = _by_head(u, heads), _by_head(B, heads), _by_head(C, heads)
    P, N = u.shape[-1], B.shape[-1]
    h = torch.zeros(batch, heads, P, N, dtype=torch.float64) if h0 is None else _f64(h0)
    prev = torch.zeros(batch, dtype=torch.int64)
    ys = []
    for t in range(length):
        decay = torch.exp(log_decay[:, t])
        if seq_idx is not None:
            decay = decay * (seq_idx[:, t] == prev).to(torch.float64)[:, None]
            prev = seq_idx[:, t]
        h = decay[:, :, None, None] * h + u[:, t, :, :, None] * B[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", h, C[:, t]))
    y = torch.stack(ys, dim=1) if ys else torch.zeros(batch, 0, heads, P, dtype=torch.float64)
    return y, h


def core_chunk_inputs(log_decay, seq_idx, chunk):
    """What the chunked pipeline computes on the host from the per-step log-decays:
    cum (batch, heads, chunks, chunk) = within-chunk cumulative log-decay (0 past the end),
    carry (batch, heads, chunks) = exp(cum at the chunk's end) · [the chunk's last sequence is the
    one entering it], entering_ids (batch, chunks) (None without seq_idx)."""
    log_decay = _f64(log_decay)
    cum = _pad_to_chunks(log_decay, chunk).permute(0, 3, 1, 2).cumsum(-1)
    carry = torch.exp(cum[..., -1])
    entering_ids = None
    if seq_idx is not None:
        ids, entering_ids = _chunk_ids(seq_idx, chunk)
        carry = carry * (ids[..., -1] == entering_ids).to(torch.float64)[:, None]
    return cum, carry, entering_ids


def core_chunk_state_ref(u, cum, B, seq_idx=None):
    """states (batch, chunks, heads, P, N) = Σ_l exp(cum_last − cum_l)·u_l ⊗ B_l over the steps l of
    the chunk that belong to the sequence current at the chunk's last step (padding included)."""
    heads, chunk = cum.shape[1], cum.shape[-1]
    uc = _pad_to_chunks(_by_head(u, heads), chunk)
    Bc = _pad_to_chunks(_by_head(B, heads), chunk)
    weight = torch.exp(cum[..., -1:] - cum)
    if seq_idx is not None:
        ids, _ = _chunk_ids(seq_idx, chunk)
        weight = weight * (ids == ids[..., -1:]).to(torch.float64)[:, None]
    return torch.einsum("bhcl,bclhp,bclhn->bchpn", weight, uc, Bc)


def core_state_passing_ref(states, carry, h0=None):
    """(entering (batch, chunks, heads, P, N), final): entering_0 = h0, entering_{c+1} = carry_c ·
    entering_c + states_c."""
    batch, chunks, heads, P, N = states.shape
    h = torch.zeros(batch, heads, P, N, dtype=torch.float64) if h0 is None else _f64(h0)
    entering = []
    for c in range(chunks):
        entering.append(h)
        h = _f64(carry)[:, :, c, None, None] * h + _f64(states[:, c])
    stacked = torch.stack(entering, dim=1) if entering else states.new_zeros(states.shape).double()
    return stacked, h


def core_chunk_scan_ref(u, cum, B, C, entering, seq_idx=None, entering_ids=None):
    """y (batch, len, heads, P): Σ_{j ≤ i, same sequence} (C_i·B_j) exp(cum_i − cum_j) u_j inside the
    chunk, plus exp(cum_i)·entering·C_i where step i continues the entering sequence."""
    length = u.shape[1]
    heads, chunk = cum.shape[1], cum.shape[-1]
    uc = _pad_to_chunks(_by_head(u, heads), chunk)
    Bc = _pad_to_chunks(_by_head(B, heads), chunk)
    Cc = _pad_to_chunks(_by_head(C, heads), chunk)
    ids = None
    if seq_idx is not None:
        ids, _ = _chunk_ids(seq_idx, chunk)
    scores = torch.einsum("bclhn,bcshn->bhcls", Cc, Bc) * _intra_chunk_decay(cum, ids)
    y = torch.einsum("bhcls,bcshp->bclhp", scores, uc)
    readout = torch.exp(cum)
    if ids is not None:
        readout = readout * (ids == entering_ids[..., None]).to(torch.float64)[:, None]
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, _f64(entering), readout)
    return y.flatten(1, 2)[:, :length]
