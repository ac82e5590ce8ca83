"""The stage kernels of a MIMO recurrence (S5) and their operand tables (see ir/stages.py).

    x_t = decay_t ⊙ x_{t-1} + b_t          one diagonal state of `state` entries per batch element
    b_t = scale_t ⊙ (B u_t),   y_t = Re(C x_t)

Complex values are real tensors with a trailing `parts` axis (2: re, im interleaved; 1: a real
recurrence): torch's `view_as_real` of a complex tensor, so that the module hands its complex
prologue to a kernel without a copy, and one table serves real and complex layers. A decay or scale
that does not vary over time (a time-invariant layer) has `dbatch` = `dlen` = 1 and is broadcast;
the runtime (ssmc.runtime.mimo) allows only 1 or the full size there.

`reverse` = 1 runs backward in time, x_t = decay_t ⊙ x_{t+1} + b_t: the second direction of a
bidirectional layer, and (with conjugated decays shifted by one step) the adjoint of the forward.
"""
from __future__ import annotations

from .stages import Operand, Stage

PARTS_DOC = "complex numbers as (re, im) pairs in the last axis (parts = 2), or real (parts = 1)"
B_IN = Operand("b", ("batch", "len", "state", "parts"), doc="each step's input term b_t; " + PARTS_DOC)
DECAY = Operand("decay", ("dbatch", "dlen", "state", "parts"),
                doc="each step's decay (dbatch, dlen: 1 for a time-invariant layer, broadcast)")
STATES = Operand("x", ("batch", "len", "state", "parts"), doc="the state after every step")

MIMO_SCAN = Stage(
    "mimo_scan",
    "the diagonal scan x_t = decay_t·x_{t-1} + b_t over (batch, len, state), writing every state "
    "(the associative pipeline's middle stage; the projections around it are matrix products)",
    inputs=(B_IN, DECAY), outputs=(STATES,), params=("reverse",),
    checks=(("divides", "dbatch", "batch"), ("divides", "dlen", "len")))

MIMO_FUSED = Stage(
    "mimo_fused",
    "per time tile: project b = scale·(u Bᵀ), scan, and read out y = Re(C x); the (batch, len, state) "
    "states never leave the tile",
    inputs=(Operand("u", ("batch", "len", "H"), doc="the real input"),
            Operand("Bt", ("H", "state", "parts"), doc="the input projection, transposed (Bᵀ: H x state)"),
            Operand("scale", ("dbatch", "dlen", "state", "parts"), optional=True,
                    doc="the input scale per step (absent: already folded into Bt)"),
            DECAY,
            Operand("C", ("H", "state", "parts"), doc="the readout (y = Re(C x)), any factor 2 folded in")),
    outputs=(Operand("y", ("batch", "len", "H")),), params=("reverse",),
    checks=(("divides", "dbatch", "batch"), ("divides", "dlen", "len")))

MIMO_STAGES = {stage.name: stage for stage in (MIMO_SCAN, MIMO_FUSED)}
