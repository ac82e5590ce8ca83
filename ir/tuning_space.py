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
per thread (6 tiles), its backward 147 / 255 (13 tiles). The time-parallel kernels loop over the
states, so their tile is one state's (BLOCK_D, BLOCK_T) (`one_state`), and everything per state (decay,
input, the scans' pairs, the carry applied, the readout; in the backward the reverse scan and the
gradients) is live at once beside the tile's per-step values (u, dt, y; in the backward dt one step
later, y's gradient and the per-step sums of x's and dt's). The forward, the next state's loads in
flight, takes about 100 / 140 / 185 registers at 2 / 4 / 8 elements per thread and spills at 16; the
backward (not unrolled) 128 / 212-245 at 4 / 8 and 255 at 16: 24 tiles keeps 8, prunes 16, for both.
Below 4 elements per thread the scans' cross-lane steps dominate: the forward's 45-137 instructions per
(t, n) element against 21-27 at 4-8, the backward's 94 at 2 against 56 at 8 (`min_per_thread`).
The decoding step (`scan_step`, one token: no time loop) keeps A, the decay, the input scale, B, C and
the state in one (BLOCK_D, N_PAD) tile each, the scale and B folding into sB before the state is
advanced: 6 tiles, like the forward. The sm_90 report measures fewer, about 4.3 (168 registers at 32
elements per thread, 94-96 at 16), so 6 is conservative; it prunes no config that would fit.
Its channel block ranges over 1..256 (the scan kernels' 8..128 walk a sequence; the step launches one
program per block and batch element, so a small block is what fills the GPU at small decode batches).
Shared memory is not a limit here (the report measures at most 1 KiB per program).
"""
from __future__ import annotations

import itertools
import math
import textwrap
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
    one_state: bool = False   # the tile is one state's (a loop over the states): N_PAD does not multiply it
    min_per_thread: int = 1   # fewer tile elements per thread cost more instructions per element than they save


# the chunk of the training forward's checkpoints (ssmc.runtime.ops.CHECKPOINT_CHUNK): the time-parallel
# backward's tile along time
CHECKPOINT_CHUNK = 64

MODELS = {
    "scan_fwd": KernelModel("scan_fwd", ("BLOCK_D",), 6),
    "scan_bwd": KernelModel("scan_bwd", ("BLOCK_D",), 13),
    "scan_tiled_fwd": KernelModel("scan_tiled_fwd", ("BLOCK_D", "BLOCK_T"), 24, one_state=True, min_per_thread=4),
    "scan_tiled_bwd": KernelModel("scan_tiled_bwd", ("BLOCK_D", "BLOCK_T"), 24, fixed=(("BLOCK_T", CHECKPOINT_CHUNK),),
                                  one_state=True, min_per_thread=4),
    "scan_step": KernelModel("scan_step", ("BLOCK_D",), 6),     # estimated (see above), not measured
}


def _points(axes: dict):
    names = list(axes)
    for values in itertools.product(*(sorted(axes[n]) for n in names)):
        yield dict(zip(names, values))


def estimated_registers(model: KernelModel, config: dict, n_pad: int, complex_state: bool) -> tuple:
    """(tile elements, threads, registers per thread) of `config` by the model."""
    sizes = dict(model.fixed) | config
    elements = (1 if model.one_state else n_pad) * math.prod(sizes[name] for name in model.tile)
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
        elif elements < model.min_per_thread * threads:
            pruned["few elements per thread"] += 1
        elif registers > REGISTER_LIMIT:
            pruned["registers"] += 1
        else:
            kept.append(config)
    if not kept:                     # a state too wide for every point: the smallest tile, which spills
        kept = [next(_points(tuned))]
        pruned["registers"] -= 1
    return kept, pruned


def config_comment(kernel: str, kept: list, pruned: Counter, planned: str = "from the spec's shapes") -> str:
    """A comment saying what the planner kept and pruned (printed above the configs in the module), wrapped."""
    why = ", ".join(f"{count} for {reason}" for reason, count in sorted(pruned.items()) if count) or "none"
    return textwrap.fill(f"# {kernel}: {len(kept)} configs planned {planned}; pruned: {why}", width=110,
                         subsequent_indent="#   ")


# -- the Mamba-2 (SSD) chunk stages: chunk_state, chunk_scan, state_passing --------------------------------
# (and GLA's two chunk stages, gla_chunk_state and gla_chunk_scan, planned and pruned the same way)
# The stage module (backends/stages_triton.py) does not depend on the spec: headdim, state and chunk are
# known at the call only. So the candidate configs are planned here once, pruned only by what holds at
# every call (idle threads; registers and shared memory with the whole-axis blocks at their smallest),
# and printed into the module; the module's early_config_prune applies the same model at the call, with
# the sizes. The model's numbers (STAGE_MODELS, STAGE_LIMITS) and its one function (stage_config_fault)
# are printed into the module from here (the module cannot import the compiler): one source of truth,
# tests/test_stage_configs.py checks the copies agree.
#
# Each axis lists the launcher's old fixed choice first (then smaller blocks, widest first, then larger):
# after the call's pruning (nothing wider than its axis), the first kept config is the old fixed choice
# wherever the model keeps it, and that is the config the interpreter runs (TRITON_INTERPRET=1: no driver
# to benchmark on). (chunk_scan past 128 states: the old 16x16 blocks gave way to 32x32 on 8 warps.)
# The GLA chunk stages' old fixed blocks spill at GLA's shape (key and value dims 128, chunk 64; fp32,
# sm_90: 255 registers, 14-16 spill instructions on the default 4 warps and 3 stages), so there the first
# kept config differs: gla_chunk_state's old (32, 64, 32) blocks run on 8 warps (255 registers, no spills;
# on 4 warps they spill at every stage count), gla_chunk_scan's old 64x64 on 2 stages (254 registers, no
# spills). gla_chunk_scan has no 3-stage candidate: 3 stages spilled every one of its 12 block and warp
# choices at GLA's shape, 2 stages only where 3 did too, and the model does not tell 3 from 2 (their
# difference is the pipeline's extra copies of the loop's key and decay loads). Its query sub-chunk (SUB,
# the diagonal block taken pair by pair) stays 16 rows: a fixed block of the model ("fixed").
STAGE_AXES = {
    "chunk_scan": {"BLOCK_M": [32, 16, 64], "BLOCK_P": [32, 16, 64], "num_warps": [4, 2, 8],
                   "num_stages": [3, 2, 1]},
    "chunk_state": {"BLOCK_P": [32, 16, 64], "BLOCK_N": [64, 32, 16, 128], "BLOCK_L": [32, 16],
                    "num_warps": [4, 2], "num_stages": [3, 2]},
    "state_passing": {"BLOCK": [1024, 512, 256, 128, 64, 32, 2048], "num_warps": [4, 1, 2, 8]},
    "gla_chunk_state": {"BLOCK_P": [32, 16, 64], "BLOCK_N": [64, 32, 16, 128], "BLOCK_L": [32, 16],
                        "num_warps": [4, 2, 8], "num_stages": [3, 2]},
    "gla_chunk_scan": {"BLOCK_P": [64, 32, 16, 128], "BLOCK_N": [64, 32, 16, 128], "num_warps": [4, 2, 8],
                       "num_stages": [2, 1]},
}

# sm_90: registers per thread before ptxas spills, shared memory per block (opt-in maximum), threads per
# warp, and the grid's axes 1-2 (axis 0, batch·chunks·heads, may reach 2^31 - 1)
STAGE_LIMITS = {"registers": REGISTER_LIMIT, "shared_bytes": 227 * 1024, "warp": WARP, "grid_axis": 65535,
                "element_bytes": 4}

# Per stage kernel:
# - blocks: {tuned block: the size it covers}; none wider than max(min_block, next_power_of_2(size)), and
#   none narrower than half of that or of the widest candidate (`largest`), whichever is smaller: of the
#   blocks that fit an axis the two widest are kept, so the autotuner benchmarks tens of configs at a real
#   shape, not hundreds (a narrower block only adds loop iterations or programs; chunk_state had 313);
#   min_block is 16 where the block enters a tl.dot (its smallest), 32 for state_passing (a warp);
# - whole: {block: size} set by the launcher to the whole axis (max(min_block, next_power_of_2(size)));
# - grid: the blocks whose counts (cdiv(size, block)) are grid axes 1-2 (at most 65535 each);
# - output: the tile whose elements each thread shares (fewer elements than threads: idle threads);
# - registers: base + Σ weight · tile elements / threads (+ `unstaged` · the loop's staged dot operands'
#   elements / threads when num_stages is 1: then they are not staged through shared memory), the
#   weights fitted to the registers ptxas gives every candidate at Mamba-2's shape (fp32, sm_90, triton
#   3.9, compiled as benchmarks/sm90_report.py does; GLA's at GLA's shape) so that the spilling ones,
#   and only they, pass REGISTER_LIMIT: chunk_scan 81 of 81 right (mean error 9 registers where none
#   spill; its (BLOCK_M, BLOCK_M, BLOCK_N) term is the C·B^T product's operands held per thread),
#   chunk_state 314 of 322 (mean error 15; kept but spilling: (P, N, L) (64, 128, 64) on 4 warps, 12-39 spill
#   instructions, (32, 64, 64) on 2 warps and 2 stages, 11, and three with 2-3; pruned though fitting:
#   two of 1 stage, 212 and 242 registers), state_passing (never near the limit) ~1.3 registers per
#   element; gla_chunk_state 41 of 48 right (mean error 48; none kept that spills; pruned though
#   fitting: (P, N, L) (32, 64, 16) on 2 warps, (32, 128, 16) and (64, 64, 16) on 4 warps, 225-255
#   registers, and (64, 128, 16) on 8 warps and 2 stages, 254: no sum of per-thread tiles tells
#   (64, 64, 16) on 4 warps from (64, 64, 32) on 8, which spills; its (P, L, N) term is the decayed
#   keys' product per thread), gla_chunk_scan 24 of 24 (mean error 26; its 2- and 1-stage candidates;
#   `unstaged` is negative: one stage frees the pipeline's registers, 164 for 64x64 on 4 warps where 2
#   stages take 254). ptxas gives ~128 registers to every small-tile config, so the GLA counts are
#   loose below the limit. Other states and headdims extrapolate;
# - fixed: {block: value} of constexpr blocks the launcher fixes (gla_chunk_scan's SUB = 16);
# - dots: per tl.dot its two operand tiles, (tile, where: "staged" loaded in the loop, "computed" in the
#   loop, None before it); the shared memory estimate is the largest of: the loop's operands (num_stages
#   buffers for a staged one, the pipeline's; one for a computed one), one dot's two operand tiles
#   (converted through shared memory into the dot's layout), and the output tile (converted to be
#   stored). An estimate: of the compiled candidates (Mamba-2's shape, fp32) chunk_scan's shared memory
#   is 0-14% below it, chunk_state's 0-62% below it, none above. GLA's are not bounded by it (the decay
#   loads are pipelined besides the dot operands; at GLA's shape gla_chunk_state compiles to 0.88-1.47
#   times the estimate, gla_chunk_scan 1.1-1.2 times), but their widest candidates take at most 96 KiB
#   (gla_chunk_state (64, 128, 32) on 3 stages) and 80 KiB (gla_chunk_scan 128x128), far under 227 KiB:
#   registers, not shared memory, bound them.
STAGE_MODELS = {
    "chunk_scan": {
        "blocks": {"BLOCK_M": "chunk", "BLOCK_P": "headdim"}, "largest": {"BLOCK_M": 64, "BLOCK_P": 64},
        "whole": {"BLOCK_N": "state"}, "min_block": 16,
        "grid": ("BLOCK_M", "BLOCK_P"), "output": ("BLOCK_M", "BLOCK_P"),
        "base": 32, "tiles": ((0.5, ("BLOCK_M", "BLOCK_N")), (1.5, ("BLOCK_M", "BLOCK_P")),
                              (2.0, ("BLOCK_M", "BLOCK_M")), (1 / 12, ("BLOCK_M", "BLOCK_M", "BLOCK_N"))),
        "unstaged": 12.0,
        "dots": (((("BLOCK_M", "BLOCK_N"), None), (("BLOCK_N", "BLOCK_P"), None)),
                 ((("BLOCK_M", "BLOCK_N"), None), (("BLOCK_N", "BLOCK_M"), "staged")),
                 ((("BLOCK_M", "BLOCK_M"), "computed"), (("BLOCK_M", "BLOCK_P"), "staged"))),
    },
    "chunk_state": {
        "blocks": {"BLOCK_P": "headdim", "BLOCK_N": "state", "BLOCK_L": "chunk"},
        "largest": {"BLOCK_P": 64, "BLOCK_N": 128, "BLOCK_L": 32}, "whole": {}, "min_block": 16,
        "grid": ("BLOCK_P", "BLOCK_N"), "output": ("BLOCK_P", "BLOCK_N"),
        "base": 32, "tiles": ((1.25, ("BLOCK_P", "BLOCK_N")), (1.0, ("BLOCK_P", "BLOCK_L")),
                              (0.5, ("BLOCK_L", "BLOCK_N"))),
        "unstaged": 1.0,
        "dots": (((("BLOCK_P", "BLOCK_L"), "staged"), (("BLOCK_L", "BLOCK_N"), "staged")),),
    },
    "state_passing": {
        "blocks": {"BLOCK": "size"}, "largest": {"BLOCK": 2048}, "whole": {}, "min_block": 32,
        "grid": ("BLOCK",), "output": ("BLOCK",),
        "base": 24, "tiles": ((1.5, ("BLOCK",)),),
        "unstaged": 0.0,
        "dots": (),
    },
    "gla_chunk_state": {
        "blocks": {"BLOCK_P": "headdim", "BLOCK_N": "state", "BLOCK_L": "chunk"},
        "largest": {"BLOCK_P": 64, "BLOCK_N": 128, "BLOCK_L": 32}, "whole": {}, "min_block": 16,
        "grid": ("BLOCK_P", "BLOCK_N"), "output": ("BLOCK_P", "BLOCK_N"),
        "base": 32, "tiles": ((2.5, ("BLOCK_P", "BLOCK_N")), (10.0, ("BLOCK_P", "BLOCK_L")),
                              (5.0, ("BLOCK_L", "BLOCK_N")), (1 / 8, ("BLOCK_P", "BLOCK_L", "BLOCK_N"))),
        "unstaged": 1.0,
        "dots": (((("BLOCK_P", "BLOCK_L"), "staged"), (("BLOCK_L", "BLOCK_N"), "staged")),),
    },
    "gla_chunk_scan": {
        "blocks": {"BLOCK_P": "headdim", "BLOCK_N": "state"},
        "largest": {"BLOCK_P": 128, "BLOCK_N": 128}, "whole": {}, "fixed": {"SUB": 16}, "min_block": 16,
        "grid": ("BLOCK_P",), "output": ("SUB", "BLOCK_P"),
        "base": 40, "tiles": ((7.5, ("SUB", "BLOCK_P")), (5.5, ("SUB", "BLOCK_N")),
                              (1.75, ("BLOCK_N", "BLOCK_P"))),
        "unstaged": -4.0,
        "dots": (((("SUB", "BLOCK_N"), None), (("BLOCK_N", "BLOCK_P"), None)),
                 ((("SUB", "BLOCK_N"), None), (("BLOCK_N", "SUB"), "computed")),
                 ((("SUB", "SUB"), "computed"), (("SUB", "BLOCK_P"), "staged")),
                 ((("SUB", "SUB"), None), (("SUB", "BLOCK_P"), None))),
    },
}


def stage_config_fault(model, config, sizes, limits):
    """Why `config` ({BLOCK_*: ..., num_warps, num_stages}) cannot be good for a stage kernel of `model`
    (a STAGE_MODELS value) at `sizes` ({size name: int}, or None when planning for any size), or None
    when it can. The estimates are returned too: (reason or None, {"registers", "shared_bytes"}).
    Self-contained (no imports): its source is printed into the generated stage module."""
    def widest(size):
        return max(model["min_block"], 1 << max(size - 1, 0).bit_length())

    def product(names):
        value = 1
        for name in names:
            value *= blocks[name]
        return value

    blocks = {name: value for name, value in config.items() if name.startswith("BLOCK")}
    for name, size in model["whole"].items():
        blocks[name] = widest(sizes[size]) if sizes else model["min_block"]
    blocks.update(model.get("fixed", {}))
    threads = limits["warp"] * config.get("num_warps", 4)
    stages = config.get("num_stages", 3)
    registers = model["base"] + sum(weight * product(tile) for weight, tile in model["tiles"]) / threads
    if stages == 1:
        loop_operands = sum(product(tile) for dot in model["dots"] for tile, in_loop in dot if in_loop == "staged")
        registers += model["unstaged"] * loop_operands / threads
    staged = sum(product(tile) * (stages if in_loop == "staged" else 1)
                 for dot in model["dots"] for tile, in_loop in dot if in_loop)
    largest_dot = max([sum(product(tile) for tile, _ in dot) for dot in model["dots"]] or [0])
    shared = max(staged, largest_dot, product(model["output"]) if model["dots"] else 0)
    shared *= limits["element_bytes"]
    estimate = {"registers": registers, "shared_bytes": shared}
    if sizes:
        if any(blocks[name] > widest(sizes[size]) for name, size in model["blocks"].items()):
            return "wider than the axis", estimate
        if any(2 * blocks[name] < min(widest(sizes[size]), model["largest"][name])
               for name, size in model["blocks"].items()):
            return "narrower than two wider ones that fit", estimate
        if any(-(-sizes[model["blocks"][name]] // blocks[name]) > limits["grid_axis"] for name in model["grid"]):
            return "grid", estimate
    if product(model["output"]) < threads:
        return "idle threads", estimate
    if registers > limits["registers"]:
        return "registers", estimate
    if shared > limits["shared_bytes"]:
        return "shared memory", estimate
    return None, estimate


def plan_stage_configs(stage: str, axes: dict | None = None, sizes: dict | None = None) -> tuple:
    """([config dicts kept], Counter of why the others were pruned) for a stage kernel (a STAGE_MODELS
    key) over its candidate axes (STAGE_AXES[stage] unless given), in the axes' order. sizes None: what
    holds at every call (the module's list); else the call's pruning at those sizes. Nothing kept: the
    config with the fewest estimated registers among those no wider than the axes (it may spill)."""
    model, axes = STAGE_MODELS[stage], axes or STAGE_AXES[stage]
    names = list(axes)
    configs = [dict(zip(names, values)) for values in itertools.product(*(axes[n] for n in names))]
    kept, pruned = [], Counter()
    for config in configs:
        reason, _ = stage_config_fault(model, config, sizes, STAGE_LIMITS)
        if reason:
            pruned[reason] += 1
        else:
            kept.append(config)
    if not kept:
        fitting = [c for c in configs
                   if stage_config_fault(model, c, sizes, STAGE_LIMITS)[0] != "wider than the axis"] or configs
        best = min(fitting, key=lambda c: stage_config_fault(model, c, sizes, STAGE_LIMITS)[1]["registers"])
        pruned[stage_config_fault(model, best, sizes, STAGE_LIMITS)[0]] -= 1
        kept = [best]
    return kept, pruned


def stage_configs_text() -> str:
    """What the stage module prints: the limits, the models, the pruning function and each stage kernel's
    planned configs (one commented list per stage)."""
    import inspect
    import pprint
    lines = ["# the stage kernels' resource model (ssmc/ir/tuning_space.py, printed: the module cannot import",
             "# the compiler); the launchers' early_config_prune applies it at the call's sizes",
             f"STAGE_LIMITS = {STAGE_LIMITS!r}",
             "STAGE_MODELS = " + pprint.pformat(STAGE_MODELS, width=110, sort_dicts=False), "", "",
             inspect.getsource(stage_config_fault).rstrip(), "", ""]
    for stage in STAGE_AXES:
        kept, pruned = plan_stage_configs(stage)
        lines += [config_comment(stage, kept, pruned, planned="for every size"),
                  f"{stage.upper()}_CONFIGS = ["]
        lines += [f"    dict({', '.join(f'{k}={v}' for k, v in config.items())})," for config in kept]
        lines += ["]"]
    return "\n".join(lines)
