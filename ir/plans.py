"""Kernel plans: the contract between the IR (after fusion) and the backends.

A plan says everything a backend needs to render one fused kernel and nothing about how: which
operands vary over (batch, time), whether the state is a complex pair, and the fused arithmetic as
straight-line blocks of `(target, sympy expression)` assignments. Backends print the blocks with
their own printer and place them in a template; the recurrence core itself (complex multiply-add,
readout) is the template's.

Block symbols (all real; complex operands arrive split into `_re` / `_im`):
  dt_block        delta, dt_bias                  -> dt
  discretize      dt, A | A_re, A_im              -> decay | decay_re, decay_im, scale | scale_re, scale_im
  kernel_block    dt, A, B, C  (complex symbols)  -> log_decay, coeff   (host prologue, torch complex)
  epilogue        y, u, D, z                      -> out

Backward blocks (from sympy differentiation of the forward blocks, ir/passes/backward.py):
  grad_epilogue   y, u, D, z, grad_out            -> grad_y, grad_u, grad_D, grad_z (those present)
  grad_discretize dt, A_*, grad_decay_*, grad_scale_*  -> grad_dt, grad_A | grad_A_re, grad_A_im
  grad_dt         delta, dt_bias, grad_dt         -> grad_delta, grad_dt_bias
Each grad_x is the gradient of a real loss with respect to the real quantity x (complex values as
their real and imaginary parts), so no holomorphy is assumed of a custom formula.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields

import sympy

from ..errors import CompileError
from ..formula import read_srepr
from .functions import IR_FUNCTIONS

Block = tuple  # tuple[tuple[str, sympy.Expr], ...]


def block_to_json(block: Block) -> list:
    return [[target, sympy.srepr(expr)] for target, expr in block]


def block_from_json(data) -> Block:
    """Read back without sympify (which evaluates Python: graph.json may have been edited)."""
    return tuple((target, read_srepr(text, f"plan block {target}", IR_FUNCTIONS, error=CompileError))
                 for target, text in data)


@dataclass(frozen=True)
class _Plan:
    def to_json(self) -> dict:
        out = {"plan": type(self).__name__}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = block_to_json(value) if f.name.endswith("block") else value
        return out

    @classmethod
    def from_json(cls, data: dict):
        kwargs = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            kwargs[f.name] = block_from_json(value) if f.name.endswith("block") else value
        return cls(**kwargs)

    def content_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ScanPlan(_Plan):
    """One fused selective (or time-invariant) scan: discretization, recurrence, readout, skip and
    gate in one kernel whose state stays on chip; writes y (batch, dim, len) and the last state."""

    complex: bool
    selective_dt: bool
    selective_B: bool
    selective_C: bool
    has_dt_bias: bool
    has_D: bool
    has_z: bool
    direction: str
    dt_block: Block
    discretize_block: Block
    epilogue_block: Block
    # filled by the backward-derivation pass (ir/passes/backward.py); empty before it
    grad_epilogue_block: Block = ()
    grad_discretize_block: Block = ()
    grad_dt_block: Block = ()


@dataclass(frozen=True)
class ConvPlan(_Plan):
    """A time-invariant layer as a convolution: per-(dim, state) coefficients and log-decays
    (tiny, computed on the host), the Vandermonde kernel K[dim, len] = Re Σ_n coeff·exp(l·log_decay),
    the FFT convolution of x with K, then the epilogue."""

    complex: bool
    has_dt_bias: bool
    has_D: bool
    has_z: bool
    dt_block: Block
    kernel_block: Block
    epilogue_block: Block


PLAN_TYPES = {"ScanPlan": ScanPlan, "ConvPlan": ConvPlan}


def plan_from_json(data: dict):
    return PLAN_TYPES[data["plan"]].from_json(data)
