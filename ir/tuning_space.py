"""The autotune configs of the SISO Triton kernels, planned by the compiler from the spec's shapes.

A pasted list of configs either wastes tuning time or, worse, keeps configs that cannot be good: the
sm_90 report (benchmarks/sm90_report.py) showed a 16x spread per (t, n) element across the Mamba-1
forward's configs, the worst ones those with more threads than tile elements (replicated work) or with
so many elements per thread that registers spill. Both limits follow from shapes the compiler knows:
a kernel's register tile is the product of its block sizes and the padded state size N_PAD, fixed by
the spec's d_state (and doubled by complex states); only the channel count and the segment (groups of
a time-varying B/C) wait for the call, and the launchers prune by those.

Per kernel, every point of the schedule's candidate axes (ir/passes/fuse.py: `with_tunables`) is kept
unless
- idle threads: fewer tile elements than threads (32 · num_warps), or
- registers: the estimated registers per thread, BASE_REGISTERS + live_tiles · elements per thread
  (times 2 for complex pairs), pass REGISTER_LIMIT, where the kernel spills.
`live_tiles`, the number of float tiles live in a kernel's loop, is calibrated on the sm_90 report of
the kernels (benchmarks/RESULTS.md): the sequential forward uses 80 / 128 registers at 8 / 16 elements
per thread (6 tiles), its backward 147 / 255 (13 tiles); the time-parallel forward alike (6), its
backward, whose two scans carry four values each, spills at 16 elements per thread (14 tiles).
The decoding step (`scan_step`, one token: no time loop) is an estimate, not yet measured: it keeps A,
the decay, the input scale, B, C and the state in one (BLOCK_D, N_PAD) tile each, the scale and B
folding into sB before the state is advanced, so about 6 tiles are live at its peak, like the forward.
Its channel block ranges over 1..256 (the scan kernels' 8..128 walk a sequence; the step launches one
program per block and batch element, so a small block is what fills the GPU at small decode batches).
Shared memory is not a limit here (the report measures at most 1 KiB per program).
"""
from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass

REGISTER_LIMIT = 255
BASE_REGISTERS = 32
WARP = 32


@dataclass(frozen=True)
class KernelModel:
    """What the planner knows of one kernel: the block sizes whose product (with N_PAD) is its register
    tile, and how many tiles of that shape its loop keeps live."""
    name: str
    tile: tuple          # tunable names multiplied with N_PAD; a name absent from a config counts as `fixed`
    live_tiles: int
    fixed: tuple = ()    # ((name, value), ...): a tile size set by the launcher, not tuned (the backward's chunk)


# the chunk of the training forward's checkpoints (ssmc.runtime.ops.CHECKPOINT_CHUNK): the time-parallel
# backward's tile along time
CHECKPOINT_CHUNK = 64

MODELS = {
    "scan_fwd": KernelModel("scan_fwd", ("BLOCK_D",), 6),
    "scan_bwd": KernelModel("scan_bwd", ("BLOCK_D",), 13),
    "scan_tiled_fwd": KernelModel("scan_tiled_fwd", ("BLOCK_D", "BLOCK_T"), 6),
    "scan_tiled_bwd": KernelModel("scan_tiled_bwd", ("BLOCK_D", "BLOCK_T"), 14,
                                  fixed=(("BLOCK_T", CHECKPOINT_CHUNK),)),
    "scan_step": KernelModel("scan_step", ("BLOCK_D",), 6),     # estimated (see above), not measured
}


def _points(axes: dict):
    names = list(axes)
    for values in itertools.product(*(sorted(axes[n]) for n in names)):
        yield dict(zip(names, values))


def estimated_registers(model: KernelModel, config: dict, n_pad: int, complex_state: bool) -> tuple:
    """(tile elements, threads, registers per thread) of `config` by the model."""
    sizes = dict(model.fixed) | config
    elements = n_pad * math.prod(sizes[name] for name in model.tile)
    threads = WARP * config.get("num_warps", 4)
    per_thread = elements / threads
    return elements, threads, BASE_REGISTERS + model.live_tiles * (2 if complex_state else 1) * per_thread


def plan_configs(kernel: str, axes: dict, n_state: int, complex_state: bool) -> tuple:
    """([config dicts kept], Counter of why the others were pruned) for `kernel` (a MODELS key) over the
    candidate `axes` ({tunable: [values]}, num_warps among them). A model's fixed sizes are left out
    of the configs. The kept ones keep the axes' order (smallest first): under the interpreter the
    launchers run the first."""
    model = MODELS[kernel]
    n_pad = 1 << max(n_state - 1, 0).bit_length()
    tuned = {name: values for name, values in axes.items() if name not in dict(model.fixed)}
    kept, pruned = [], Counter()
    for config in _points(tuned):
        elements, threads, registers = estimated_registers(model, config, n_pad, complex_state)
        if elements < threads:
            pruned["idle threads"] += 1
        elif registers > REGISTER_LIMIT:
            pruned["registers"] += 1
        else:
            kept.append(config)
    if not kept:                     # a state too wide for every point: the smallest tile, which spills
        kept = [next(_points(tuned))]
        pruned["registers"] -= 1
    return kept, pruned


def config_comment(kernel: str, kept: list, pruned: Counter) -> str:
    """One line saying what the planner kept and pruned (printed above the configs in the module)."""
    why = ", ".join(f"{count} for {reason}" for reason, count in sorted(pruned.items()) if count) or "none"
    return f"# {kernel}: {len(kept)} configs planned from the spec's shapes; pruned: {why}"
