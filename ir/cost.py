"""The cost model behind scan-vs-convolution, as sympy formulas over the dimension symbols.

Units are flop-equivalents of one GPU-or-CPU lane. The constants are coarse on purpose: the model
has to rank two algorithms whose costs differ by growing factors, not predict times.
- scan:  B·D·L·N complex (or real) multiply-adds, plus a latency term for its L dependent steps
         (while one step waits, a wide machine idles: STEP_LATENCY lanes' worth of work).
- conv:  the Vandermonde kernel D·N·L (one complex exp-and-multiply per term, batch-independent),
         three length-2L real FFTs per (batch, channel) row at FFT_FLOPS·2L·log2(2L), and the
         pointwise product; depth log2(2L) steps.
"""
from __future__ import annotations

import sympy

from ..errors import ScheduleError
from ..formula import parse
from .dims import symbols

DIM_SYMBOLS = symbols()
B, D, L, N = (DIM_SYMBOLS[n] for n in ("batch", "dim", "len", "state"))

SCAN_FLOPS_PER_STATE = {False: 4, True: 8}      # real vs complex multiply-add + readout
VANDERMONDE_FLOPS = 12                           # complex exp + complex multiply-add per (d, n, l)
FFT_FLOPS = 2.5                                  # per point per log2 level, real-input FFT
STEP_LATENCY = 2 ** 14                           # lanes idled per dependent step


def scan_cost(complex_state: bool) -> sympy.Expr:
    return B * D * L * N * SCAN_FLOPS_PER_STATE[complex_state] + STEP_LATENCY * L


def conv_cost(complex_state: bool) -> sympy.Expr:
    n_fft_rows = 2 * B * D + D          # rfft(u), irfft(y), rfft(K)
    fft = n_fft_rows * FFT_FLOPS * 2 * L * sympy.log(2 * L, 2)
    return D * N * L * VANDERMONDE_FLOPS + fft + 6 * B * D * L + STEP_LATENCY * sympy.log(2 * L, 2)


def evaluate(expr, shape: dict) -> float:
    """A cost formula (sympy, or its text as stored in a schedule) at concrete dimensions."""
    if isinstance(expr, str):
        # a stored schedule's text: parsed by whitelist, never evaluated (`len` is a dimension here)
        expr = parse(expr, "cost formula", DIM_SYMBOLS, functions={"log": sympy.log}, constants={}, error=ScheduleError)
    return float(expr.subs({DIM_SYMBOLS[k]: v for k, v in shape.items() if k in DIM_SYMBOLS}))
