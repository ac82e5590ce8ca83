"""Lowering of a gated spec (A=ssmc.InputDecay: GLA, RWKV-6, simple GLA): the structured recurrence
with its decay given by the layer's inputs, the prologue (the log-decay formula over the declared
inputs, printed as torch), and the schedule.

    per (batch, head):  h_t = decay_t ⊙ h_{t-1} + v_t ⊗ k_t        (value_dim x key_dim: headdim x state)
                        o_t = h_t · (scale·q_t)  (+ the bonus term)

A per-head decay (simple GLA) is Mamba-2's recurrence with u = v, B = k, C = scale·q: it is scheduled
by ir/pipelines.py onto the SSD stages. A per-state decay (GLA's gk) has its own stages
(ir/gla_stages.py) and pipelines, ranked by the cost model below.

Cost model of the per-state pipelines (flop-equivalents per (batch, head), the constants of
ir/pipelines.py plus an exponential's cost). Sequential: per step 2·P·N multiply-adds and N
exponentials. Chunked (chunk Q, sub-chunks of 16): per chunk the cross-sub-chunk scores (Q²·N/2),
scores·v (Q²·P/2), the chunk's state and the entering state's readout (2·Q·P·N) as products, Q·N·Q/16
exponentials for the sub-chunk-relative keys and Q·16·N/2 pairwise ones on the diagonal, and two
(P, N) states stored and reloaded. Not calibrated against measurements yet (estimates).
"""
from __future__ import annotations

from dataclasses import dataclass

import sympy

from ..errors import ScheduleError
from .gla_stages import GLA_CHUNK_SCAN, GLA_CHUNK_STATE, GLA_SCAN, GLA_STATE_PASSING
from .multihead import LoweredMultiHead
from .pipelines import COSTS, DIMS, MultiHeadSchedule, PipelineRecord, plan
from .recurrence import Recurrence
from .stages import SSD_SCAN

GATED_CHUNK_SIZES = (16, 32, 64)      # sub-chunks of 16 inside; fla's chunk_gla uses 64
EXP_COST = {"c": 8, "torch": 8, "triton": 4}     # one exponential, in multiply-adds
SUB_CHUNK = 16


@dataclass(frozen=True)
class GatedRecord(PipelineRecord):
    """A pipeline of the per-state (GLA) stages: same names and JSON as PipelineRecord."""

    @property
    def stages(self) -> tuple:
        return (GLA_SCAN,) if self.name == "sequential" else (GLA_CHUNK_STATE, GLA_STATE_PASSING, GLA_CHUNK_SCAN)

    def cost(self, target: str = "c"):
        b, L, H, P, N = DIMS.values()
        scan, product, stored, step, passing = COSTS[target]
        exp = EXP_COST[target]
        if self.name == "sequential":
            return b * H * L * (2 * P * N * scan + N * exp) + step * L
        Q = self.chunk
        sub = min(Q, SUB_CHUNK)
        chunks = sympy.ceiling(L / Q)
        products = Q * Q * N / 2 + Q * Q * P / 2 + 2 * Q * P * N
        exps = Q * N * Q / sub + Q * sub * N / 2
        return b * H * chunks * (products * product + exps * exp + 4 * P * N * stored) + passing * chunks


def gated_recurrence(spec) -> Recurrence:
    """h (headdim = value, state = key) per (batch, head); the decay's layout says it is an input."""
    per_state = spec.A.per == "state"
    return Recurrence(
        state=("headdim", "state"), decay="per_state" if per_state else "per_head", resets=False,
        input="u[headdim], B[state] -> h[headdim, state]",
        readout="h[headdim, state], C[state] -> y[headdim]",
        layouts=(("v", ("batch", "len", "heads", "headdim")), ("k", ("batch", "len", "heads", "state")),
                 ("q", ("batch", "len", "heads", "state")),
                 ("g", ("batch", "len", "heads", "state") if per_state else ("batch", "len", "heads")),
                 ("h", ("batch", "heads", "headdim", "state"))))


def plan_gated(request) -> MultiHeadSchedule:
    """The per-state schedule for a request: "auto", "sequential" (alias "scan"), "chunked", or a
    record (or its JSON) to replay."""
    if isinstance(request, dict):
        request = PipelineRecord.from_json(request)
    if isinstance(request, PipelineRecord):
        if request.name == "chunked" and request.chunk < SUB_CHUNK:
            raise ScheduleError(f"{request.text}: the gated chunked stages take chunks of at least {SUB_CHUNK} "
                                f"steps (their sub-chunk), got {request.chunk}")
        return MultiHeadSchedule(request.text, (GatedRecord(request.name, request.chunk),))
    chunked = tuple(GatedRecord("chunked", q) for q in GATED_CHUNK_SIZES)
    if request == "auto":
        return MultiHeadSchedule(request, (GatedRecord("sequential"),) + chunked)
    if request in ("sequential", "scan"):
        return MultiHeadSchedule("sequential", (GatedRecord("sequential"),))
    if request == "chunked":
        return MultiHeadSchedule(request, chunked)
    if request == "conv":
        raise ScheduleError("conv: the convolution schedule needs a time-invariant recurrence, and a gated "
                            "layer's decays come from its inputs; use 'auto', 'sequential' or 'chunked'")
    raise ScheduleError(f"schedule must be 'auto', 'sequential', 'chunked' or a PipelineRecord, got {request!r}")


@dataclass(frozen=True)
class LoweredGated(LoweredMultiHead):
    """A gated spec lowered: per-state decays run the GLA stages, per-head ones the SSD stages."""

    @property
    def per_state(self) -> bool:
        return self.spec.A.per == "state"

    @property
    def core(self):
        return GLA_SCAN if self.per_state else SSD_SCAN

    @property
    def stages(self) -> tuple:
        """The schedule's stages; a per-state package always has gla_scan too: the backward's
        transposed runs decay along the headdim axis, which only the sequential stage takes."""
        stages = self.schedule.stages
        return stages if not self.per_state or GLA_SCAN in stages else (GLA_SCAN,) + stages


def lower_gated(spec, request="auto") -> LoweredGated:
    recurrence = gated_recurrence(spec)
    schedule = plan_gated(request) if spec.A.per == "state" else plan(recurrence, request)
    return LoweredGated(spec, recurrence, (("log_decay", spec.A.log_decay),), schedule)

