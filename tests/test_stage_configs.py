"""The Mamba-2 (SSD) chunk stages' autotune configs (ir/tuning_space.py: STAGE_AXES, STAGE_MODELS,
plan_stage_configs), printed into the stage module (backends/stages_triton.py) and pruned there at the
call by the same model.

- the module's copies of the model (limits, per-stage numbers, the pruning function, the planned lists)
  are the compiler's, and its early_config_prune keeps what plan_stage_configs keeps at those sizes;
- the model: blocks no wider than their axis, grid axes 1-2 within 65535, idle threads, registers and
  shared memory past sm_90's limits are pruned; the sm_90 report's measured spilling configs are;
- every planned config, through the untuned kernel handle under the interpreter, computes what the
  float64 references compute, outputs NaN-poisoned, at an odd shape (headdim 24, state 20, chunk 24:
  every mask matters) and a power-of-two one. num_warps and num_stages do not change what the
  interpreter runs, so each distinct set of blocks runs once;
- the autotuned launchers run the first config kept at the call (the old fixed blocks) and match.
"""
import importlib

import pytest
import torch

from conftest import rel_error
from ssmc.backends.stages_triton import render_triton_stages
from ssmc.ir.stages import MULTIHEAD_STAGES
from ssmc.ir.tuning_space import (STAGE_AXES, STAGE_LIMITS, STAGE_MODELS, plan_stage_configs,
                                  stage_config_fault)
from ssmc.reference_ssd import (core_chunk_inputs, core_chunk_scan_ref, core_chunk_state_ref,
                                core_state_passing_ref)
from stage_harness import core_inputs, stage_library

MAMBA2 = dict(headdim=64, state=128, chunk=256, size=64 * 128)
SHAPES = {
    "odd-P24-N20-c24": dict(batch=1, length=43, heads=2, headdim=24, state=20, u_heads=1, b_heads=1, c_heads=2,
                            seq_idx=True, chunk=24),
    "pow2-P16-N32-c32": dict(batch=1, length=64, heads=2, headdim=16, state=32, u_heads=2, b_heads=1, c_heads=1,
                             h0=True, chunk=32),
}


@pytest.fixture(scope="module")
def module(tmp_path_factory):
    library = stage_library(tmp_path_factory.mktemp("stage_configs"),
                            render_triton_stages(MULTIHEAD_STAGES.values()))
    return library, importlib.import_module(f"{library.package}.stages_triton")


def _old_fixed_blocks(stage, sizes):
    """The launchers' blocks before autotuning (the interpreter's config must stay these)."""
    def block(size, widest):
        return max(16, min(widest, 1 << max(size - 1, 0).bit_length()))
    if stage == "chunk_scan":
        return dict(BLOCK_M=block(sizes["chunk"], 32), BLOCK_P=block(sizes["headdim"], 32))
    if stage == "chunk_state":
        return dict(BLOCK_P=block(sizes["headdim"], 32), BLOCK_N=block(sizes["state"], 64),
                    BLOCK_L=block(sizes["chunk"], 32))
    return dict(BLOCK=min(1 << max(sizes["size"] - 1, 0).bit_length(), 1024))


def _blocks(config):
    return {k: v for k, v in config.items() if k.startswith("BLOCK")}


# ---- the model's copies in the module ---------------------------------------------------------------

def test_the_module_prints_the_compiler_s_model_and_plans(module, monkeypatch):
    _, mod = module
    assert mod.STAGE_LIMITS == STAGE_LIMITS
    assert mod.STAGE_MODELS == STAGE_MODELS
    import inspect
    assert inspect.getsource(mod.stage_config_fault) == inspect.getsource(stage_config_fault)
    for stage in STAGE_AXES:
        assert getattr(mod, f"{stage.upper()}_CONFIGS") == plan_stage_configs(stage)[0], stage
    # the autotuners hold every planned config; their pruners keep what the planner keeps at the call
    monkeypatch.setattr(mod, "_interpreted", lambda: False)
    sizes = [MAMBA2, dict(headdim=24, state=20, chunk=24, size=480), dict(headdim=3, state=5, chunk=8, size=15),
             dict(headdim=128, state=256, chunk=64, size=128 * 256), dict(headdim=8, state=2048, chunk=16, size=1)]
    for stage, args in (("chunk_scan", ("headdim", "state", "chunk")), ("chunk_state", ("headdim", "state", "chunk")),
                        ("state_passing", ("size",))):
        autotuner = getattr(mod, f"_{stage}_kernel")
        assert len(autotuner.configs) == len(plan_stage_configs(stage)[0])
        assert set(autotuner.keys) == {"bucket", *args}
        for at in sizes:
            named = {name: at[name] for name in args}
            kept = [mod._config_dict(c) for c in autotuner.early_config_prune(autotuner.configs, named)]
            planned = plan_stage_configs(stage, sizes=named)[0]
            assert len(kept) == len(planned)
            assert [{k: c[k] for k in p} for c, p in zip(kept, planned)] == planned, (stage, at)


def test_the_interpreter_runs_the_old_fixed_blocks(module):
    """Under TRITON_INTERPRET=1 the pruner keeps one config (nothing to benchmark): the first kept,
    whose blocks are the launchers' old fixed ones."""
    _, mod = module
    assert mod._interpreted()
    for at in (MAMBA2, dict(headdim=24, state=20, chunk=24), dict(headdim=3, state=5, chunk=8),
               dict(headdim=40, state=70, chunk=48), dict(headdim=64, state=64, chunk=64)):
        at = dict(at, size=at["headdim"] * at["state"])
        for stage, args in (("chunk_scan", ("headdim", "state", "chunk")),
                            ("chunk_state", ("headdim", "state", "chunk")), ("state_passing", ("size",))):
            autotuner = getattr(mod, f"_{stage}_kernel")
            kept = autotuner.early_config_prune(autotuner.configs, {name: at[name] for name in args})
            assert len(kept) == 1
            expected = _old_fixed_blocks(stage, at)
            if stage == "state_passing" and expected["BLOCK"] < 32:
                expected["BLOCK"] = 32               # a block under a warp is no candidate
            assert kept[0].kwargs == expected, (stage, at)


# ---- the model ---------------------------------------------------------------------------------------

def test_mamba2_shape_plan():
    """At Mamba-2's shape (headdim 64, state 128, chunk 256) the configs the sm_90 report measured
    spilling are pruned and the measured good ones kept (fp32, triton 3.9: chunk_scan 32x32 on 4 warps
    112 registers, no spills; BLOCK_M 64 spills on every warp count; the report's best per element,
    chunk_scan (32, 64) on 4 warps and 2 stages, chunk_state (64, 128, 16) on 2 warps and 2 stages),
    blocks narrower than two wider ones that fit are pruned, and tens of configs are left, not hundreds."""
    kept, pruned = plan_stage_configs("chunk_scan", sizes=MAMBA2)
    assert dict(BLOCK_M=32, BLOCK_P=32, num_warps=4, num_stages=3) == kept[0]
    assert not any(c["BLOCK_M"] == 64 for c in kept)
    assert dict(BLOCK_M=32, BLOCK_P=64, num_warps=4, num_stages=2) in kept
    assert not any(16 in _blocks(c).values() for c in kept)
    assert pruned["registers"] > 0 and pruned["narrower than two wider ones that fit"] > 0
    assert len(kept) + sum(pruned.values()) == 81
    kept, pruned = plan_stage_configs("chunk_state", sizes=MAMBA2)
    assert dict(BLOCK_P=64, BLOCK_N=128, BLOCK_L=16, num_warps=2, num_stages=2) in kept
    assert not any(c["BLOCK_P"] == 16 or c["BLOCK_N"] in (16, 32) for c in kept)
    for stage in STAGE_AXES:
        assert 0 < len(plan_stage_configs(stage, sizes=MAMBA2)[0]) <= 32, stage
    for stage in STAGE_AXES:
        for config in plan_stage_configs(stage, sizes=MAMBA2)[0]:
            reason, estimate = stage_config_fault(STAGE_MODELS[stage], config, MAMBA2, STAGE_LIMITS)
            assert reason is None
            assert estimate["registers"] <= STAGE_LIMITS["registers"]
            assert estimate["shared_bytes"] <= STAGE_LIMITS["shared_bytes"]


def test_shared_memory_and_registers_past_the_limits_are_pruned():
    model, limits = STAGE_MODELS["chunk_state"], STAGE_LIMITS
    at = dict(headdim=64, state=256, chunk=256)
    # three stages of the (32, 128) u and (128, 256) B tiles pass 227 KiB; the registers do not
    reason, estimate = stage_config_fault(model, dict(BLOCK_P=32, BLOCK_N=256, BLOCK_L=128, num_warps=8,
                                                      num_stages=3), at, limits)
    assert reason == "shared memory" and estimate["shared_bytes"] > limits["shared_bytes"]
    assert estimate["registers"] <= limits["registers"]
    # a step of 64 fits
    reason, estimate = stage_config_fault(model, dict(BLOCK_P=32, BLOCK_N=256, BLOCK_L=64, num_warps=8,
                                                      num_stages=3), at, limits)
    assert reason is None and estimate["shared_bytes"] <= limits["shared_bytes"]
    model = STAGE_MODELS["chunk_scan"]
    reason, estimate = stage_config_fault(model, dict(BLOCK_M=64, BLOCK_P=64, num_warps=2, num_stages=3),
                                          MAMBA2, limits)
    assert reason == "registers" and estimate["registers"] > limits["registers"]
    # the shared estimate counts the loop's operands num_stages times
    one = stage_config_fault(STAGE_MODELS["chunk_state"], dict(BLOCK_P=32, BLOCK_N=64, BLOCK_L=32, num_warps=4,
                                                                num_stages=1), MAMBA2, limits)[1]["shared_bytes"]
    three = stage_config_fault(STAGE_MODELS["chunk_state"], dict(BLOCK_P=32, BLOCK_N=64, BLOCK_L=32, num_warps=4,
                                                                  num_stages=3), MAMBA2, limits)[1]["shared_bytes"]
    assert three == 3 * one == 3 * 4 * (32 * 32 + 32 * 64)


def test_nothing_wider_than_its_axis_idle_threads_and_grid():
    at = dict(headdim=24, state=20, chunk=24)
    for stage in ("chunk_scan", "chunk_state"):
        kept, pruned = plan_stage_configs(stage, sizes=at)
        assert kept and pruned["wider than the axis"] > 0
        assert all(v <= 32 for c in kept for v in _blocks(c).values())
    kept, _ = plan_stage_configs("chunk_scan", sizes=dict(headdim=8, state=4, chunk=8))
    assert {c["BLOCK_M"] for c in kept} == {c["BLOCK_P"] for c in kept} == {16}     # tl.dot's smallest
    # state_passing: a block under 32 lanes per warp count is idle threads, at every size
    planned, pruned = plan_stage_configs("state_passing")
    assert all(c["BLOCK"] >= 32 * c["num_warps"] for c in planned) and pruned["idle threads"] > 0
    # grid axis 1 past 65535 blocks: the narrow blocks go
    huge = dict(size=65535 * 1024 + 1)
    kept, pruned = plan_stage_configs("state_passing", sizes=huge)
    assert pruned["grid"] > 0 and all(c["BLOCK"] == 2048 for c in kept)


def test_a_state_too_wide_for_every_config_keeps_the_fewest_registers():
    at = dict(headdim=64, state=8192, chunk=256)
    kept, pruned = plan_stage_configs("chunk_scan", sizes=at)
    assert len(kept) == 1 and kept[0]["BLOCK_M"] == 16 and kept[0]["BLOCK_P"] == 16
    assert sum(pruned.values()) == 80


# ---- every planned config against the references -----------------------------------------------------

def _operands(shape, dtype=torch.float32, seed=0):
    shape = dict(shape)
    chunk = shape.pop("chunk")
    ops = core_inputs(dtype=dtype, seed=seed, **shape)
    cum, carry, entering_ids = core_chunk_inputs(ops["log_decay"], ops["seq_idx"], chunk)
    return ops, cum.to(dtype), carry.to(dtype), entering_ids


def _distinct_blocks(stage):
    """The planned configs with distinct blocks (what the interpreter can tell apart)."""
    seen = {}
    for config in plan_stage_configs(stage)[0]:
        seen.setdefault(tuple(sorted(_blocks(config).items())), config)
    return list(seen.values())


def _nan(*shape, dtype=torch.float32):
    return torch.full(shape, float("nan"), dtype=dtype)


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_every_planned_chunk_state_config(module, shape):
    _, mod = module
    ops, cum, carry, _ = _operands(SHAPES[shape], seed=1)
    batch, heads, chunks, _ = cum.shape
    reference = core_chunk_state_ref(ops["u"], cum, ops["B"], ops["seq_idx"])
    configs = _distinct_blocks("chunk_state")
    assert len(configs) == len(STAGE_AXES["chunk_state"]["BLOCK_P"]) * len(STAGE_AXES["chunk_state"]["BLOCK_N"]) * len(
        STAGE_AXES["chunk_state"]["BLOCK_L"])
    for config in configs:
        states = _nan(batch, chunks, heads, ops["u"].shape[3], ops["B"].shape[3])
        mod.chunk_state(ops["u"], cum, ops["B"], ops["seq_idx"], states, config=config)
        assert rel_error(states, reference) < 1e-5, config


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_every_planned_chunk_scan_config(module, shape):
    _, mod = module
    ops, cum, carry, entering_ids = _operands(SHAPES[shape], seed=2)
    batch, heads, chunks, _ = cum.shape
    gen = torch.Generator().manual_seed(3)
    entering = torch.randn(batch, chunks, heads, ops["u"].shape[3], ops["B"].shape[3], generator=gen)
    common = dict(u=ops["u"], cum=cum, B=ops["B"], C=ops["C"], entering=entering, seq_idx=ops["seq_idx"])
    reference = core_chunk_scan_ref(**common, entering_ids=entering_ids)
    configs = _distinct_blocks("chunk_scan")
    assert len(configs) == 9
    for config in configs:
        y = _nan(*ops["u"].shape[:2], heads, ops["u"].shape[3])
        mod.chunk_scan(**common, entering_ids=entering_ids, y=y, config=config)
        assert rel_error(y, reference) < 1e-5, config


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_every_planned_state_passing_config(module, shape):
    _, mod = module
    ops, cum, carry, _ = _operands(SHAPES[shape], seed=4)
    batch, heads, chunks, _ = cum.shape
    gen = torch.Generator().manual_seed(5)
    states = torch.randn(batch, chunks, heads, ops["u"].shape[3], ops["B"].shape[3], generator=gen)
    entering_ref, final_ref = core_state_passing_ref(states, carry, ops["h0"])
    configs = _distinct_blocks("state_passing")
    assert len(configs) == len(STAGE_AXES["state_passing"]["BLOCK"])
    for config in configs:
        entering, final = _nan(*states.shape), _nan(batch, heads, *states.shape[3:])
        mod.state_passing(states, carry, ops["h0"], entering, final, config=config)
        assert rel_error(entering, entering_ref) < 1e-5, config
        assert rel_error(final, final_ref) < 1e-5, config


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_the_autotuned_launchers_match_the_references(module, backend, shape):
    """Through the runtime's table (poisoned outputs): the autotuners run the first config kept."""
    backend("triton")
    library, mod = module
    ops, cum, carry, entering_ids = _operands(SHAPES[shape], seed=6)
    states, = library.run("chunk_state", u=ops["u"], cum=cum, B=ops["B"], seq_idx=ops["seq_idx"])
    assert rel_error(states, core_chunk_state_ref(ops["u"], cum, ops["B"], ops["seq_idx"])) < 1e-5
    entering, final = library.run("state_passing", states=states, carry=carry, h0=ops["h0"])
    entering_ref, final_ref = core_state_passing_ref(states, carry, ops["h0"])
    assert rel_error(entering, entering_ref) < 1e-5 and rel_error(final, final_ref) < 1e-5
    common = dict(u=ops["u"], cum=cum, B=ops["B"], C=ops["C"], entering=entering, seq_idx=ops["seq_idx"])
    y, = library.run("chunk_scan", **common, entering_ids=entering_ids)
    assert rel_error(y, core_chunk_scan_ref(**common, entering_ids=entering_ids)) < 1e-5
    at = dict(headdim=ops["u"].shape[3], state=ops["B"].shape[3], chunk=cum.shape[3])
    at["size"] = at["headdim"] * at["state"]
    for stage in ("chunk_state", "state_passing", "chunk_scan"):    # the GLA stages: test_gla_stage_configs
        best = mod._config_dict(getattr(mod, f"_{stage}_kernel").best_config)
        first = plan_stage_configs(stage, sizes=at)[0][0]
        assert {k: best[k] for k in first} == first, stage


def test_each_model_s_largest_block_is_its_axis_widest_candidate():
    """`largest` (the narrow-block rule's cap) is a copy of the candidate axes' widest block: they agree."""
    for stage, model in STAGE_MODELS.items():
        assert model["largest"] == {name: max(STAGE_AXES[stage][name]) for name in model["blocks"]}, stage
