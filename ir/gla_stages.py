"""Stage tables of the gated (GLA-style) multi-head recurrence: decays given per state entry.

    h_t[p, n] = exp(g_state_t[n] + g_headdim_t[p]) · h_{t-1}[p, n] + u_t[p]·B_t[n]   (headdim x state) per (batch, head)
    y_t[p]    = Σ_n h_t[p, n]·C_t[n]

In GLA's names (flash-linear-attention): the state is Sᵀ, u = v (values, headdim = V), B = k (keys,
state = K), C = q·scale, g_state = gk (the key-side log-decay), g_headdim = gv (the value-side one).
Either log-decay is optional; a run with neither is plain linear attention.

Why two decay axes in one sequential stage: the derived backward (ssmc.runtime.gla) obtains dq and dk
as runs of the forward recurrence on the *transposed* state, whose decay then acts on the other axis
(and fla's `fused_recurrent_gla` takes gk and gv). So one kernel serves the forward, the backward's
four runs and fla's value decays.

The chunked stages take the state-axis decay only (chunk_gla's g) as its per-chunk cumulative sum.
Inside a chunk the pairwise factor exp(cum_i[n] − cum_j[n]) differs per state entry, so it is no
longer a mask on a (chunk x chunk) score matrix; the kernels must also stay finite for decays down to
exp(−20) per step, where cum spans hundreds: they never exponentiate a positive difference (secondary
chunking: a sub-chunk's scores are taken relative to the query sub-chunk's first step, and the
diagonal sub-chunks pairwise). Every operand is per head (no groups: GLA's q, k, v are per head).
"""
from __future__ import annotations

from .stages import Operand, Stage

HEAD_DIMS = ("batch", "len", "heads")

U = Operand("u", HEAD_DIMS + ("headdim",), doc="values (the input of each state row)")
G_STATE = Operand("g_state", HEAD_DIMS + ("state",), optional=True,
                  doc="log of each step's decay along the state axis (gk; <= 0 for a stable layer)")
G_HEADDIM = Operand("g_headdim", HEAD_DIMS + ("headdim",), optional=True,
                    doc="log of each step's decay along the headdim axis (gv)")
B = Operand("B", HEAD_DIMS + ("state",), doc="keys")
C = Operand("C", HEAD_DIMS + ("state",), doc="queries, scaled")
H0 = Operand("h0", ("batch", "heads", "headdim", "state"), optional=True, doc="state before the first step")
Y = Operand("y", HEAD_DIMS + ("headdim",))
FINAL = Operand("final", ("batch", "heads", "headdim", "state"), doc="state after the last step")
CUM = Operand("cum", ("batch", "chunks", "chunk", "heads", "state"),
              doc="inclusive cumulative sum of g_state from each chunk's start (the log-decays padded with 0 past len)")
STATES = Operand("states", ("batch", "chunks", "heads", "headdim", "state"))
CARRY = Operand("carry", ("batch", "chunks", "heads", "state"),
                doc="factor carrying the state across each chunk: exp(cum at the chunk's last step)")
ENTERING = Operand("entering", ("batch", "chunks", "heads", "headdim", "state"), doc="state entering each chunk")

COVERS_LEN = (("covers", "chunks", "chunk", "len"),)

GLA_SCAN = Stage(
    "gla_scan",
    "the sequential schedule of the gated recurrence: one pass over time per (batch, head), decays along "
    "the state axis, the headdim axis, both or neither",
    inputs=(U, G_STATE, G_HEADDIM, B, C, H0), outputs=(Y, FINAL))

GLA_CHUNK_STATE = Stage(
    "gla_chunk_state",
    "each chunk's own state at its last step, from a zero state: Σ_l u_l ⊗ (B_l ⊙ exp(cum_last − cum_l)), "
    "a (headdim x chunk)(chunk x state) product",
    inputs=(U, CUM, B), outputs=(STATES,), checks=COVERS_LEN)

GLA_STATE_PASSING = Stage(
    "gla_state_passing",
    "the states entering each chunk: entering_0 = h0, entering_{c+1} = entering_c ⊙ carry_c (per state "
    "column) + states_c",
    inputs=(STATES, CARRY, H0), outputs=(ENTERING, FINAL))

GLA_CHUNK_SCAN = Stage(
    "gla_chunk_scan",
    "each chunk's outputs: Σ_{j <= i} (Σ_n C_i[n]·B_j[n]·exp(cum_i[n] − cum_j[n]))·u_j inside the chunk, "
    "plus the entering state read out through C_i ⊙ exp(cum_i)",
    inputs=(U, CUM, B, C, ENTERING), outputs=(Y,), checks=COVERS_LEN)

GLA_STAGES = {stage.name: stage for stage in (GLA_SCAN, GLA_CHUNK_STATE, GLA_STATE_PASSING, GLA_CHUNK_SCAN)}
