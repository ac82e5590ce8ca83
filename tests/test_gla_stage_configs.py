"""The GLA chunk stages' autotune configs (ir/tuning_space.py: STAGE_AXES, STAGE_MODELS["gla_chunk_state"]
and ["gla_chunk_scan"]), as tests/test_stage_configs.py checks the Mamba-2 ones (which also checks that
the module prints every STAGE_MODELS entry and that each model's `largest` is its axes' widest block).

- the GLA module's autotuners hold the planned configs, keyed on the bucket, headdim, state and chunk, and
  their early_config_prune keeps what plan_stage_configs keeps at those sizes;
- at GLA's shape (key and value dims 128, chunk 64) the configs the sm_90 report measured spilling
  are pruned (the old fixed blocks among them), tens of configs are left, and the best measured kept;
- under the interpreter the first kept config is the old fixed blocks wherever the model keeps them;
- every planned config, through the untuned kernel handle under the interpreter, computes what the
  torch stage computes in float64, outputs NaN-poisoned, at an odd shape (length 61, headdim 24, state
  20, chunk 48: every mask matters, a partial last chunk, three sub-chunks) and a power-of-two one.
  num_warps and num_stages do not change what the interpreter runs, so each distinct set of blocks runs
  once;
- the autotuned launchers (through the runtime's table) match and ran the first config kept.
"""
import importlib

import pytest
import torch

from conftest import rel_error
from gla_stage_inputs import chunked_decays, gla_inputs
from ssmc.backends.stages_torch import render_torch_stages
from ssmc.backends.stages_triton import render_triton_stages
from ssmc.ir.gla_stages import GLA_STAGES
from ssmc.ir.tuning_space import STAGE_AXES, STAGE_LIMITS, STAGE_MODELS, plan_stage_configs, stage_config_fault
from stage_harness import stage_library

STAGES = list(GLA_STAGES.values())
GLA = dict(headdim=128, state=128, chunk=64)        # benchmarks/sm90_report.py's GLA_DIMS
SIZES = ("headdim", "state", "chunk")
SHAPES = {
    # (the torch gla_chunk_scan takes a chunk of whole 16-row sub-chunks, or one below 16)
    "odd-P24-N20-c48": dict(batch=1, length=61, heads=2, headdim=24, state=20, chunk=48),
    "pow2-P16-N32-c32": dict(batch=1, length=64, heads=2, headdim=16, state=32, chunk=32),
}


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    files = {**render_triton_stages(STAGES), **render_torch_stages(STAGES)}
    return stage_library(tmp_path_factory.mktemp("gla_stage_configs"), files, stages=STAGES)


@pytest.fixture(scope="module")
def mod(library):
    return importlib.import_module(f"{library.package}.stages_triton")


def _blocks(config):
    return {k: v for k, v in config.items() if k.startswith("BLOCK")}


def _old_fixed_blocks(stage, sizes):
    """The launchers' blocks before autotuning."""
    def block(size, widest):
        return max(16, min(widest, 1 << max(size - 1, 0).bit_length()))
    if stage == "gla_chunk_state":
        return dict(BLOCK_P=block(sizes["headdim"], 32), BLOCK_N=block(sizes["state"], 64),
                    BLOCK_L=block(sizes["chunk"], 32))
    return dict(BLOCK_P=block(sizes["headdim"], 64), BLOCK_N=block(sizes["state"], 64))


# ---- the module's autotuners ------------------------------------------------------------------------

def test_the_autotuners_hold_the_plans_and_prune_as_the_planner(mod, monkeypatch):
    monkeypatch.setattr(mod, "_interpreted", lambda: False)
    for stage in ("gla_chunk_state", "gla_chunk_scan"):
        assert getattr(mod, f"{stage.upper()}_CONFIGS") == plan_stage_configs(stage)[0]
        autotuner = getattr(mod, f"_{stage}_kernel")
        assert len(autotuner.configs) == len(plan_stage_configs(stage)[0])
        assert set(autotuner.keys) == {"bucket", *SIZES}
        for at in (GLA, dict(headdim=24, state=20, chunk=24), dict(headdim=3, state=5, chunk=8),
                   dict(headdim=64, state=256, chunk=128), dict(headdim=70, state=70, chunk=48)):
            kept = [mod._config_dict(c) for c in autotuner.early_config_prune(autotuner.configs, dict(at))]
            planned = plan_stage_configs(stage, sizes=at)[0]
            assert [{k: c[k] for k in p} for c, p in zip(kept, planned)] == planned and len(kept) == len(planned)


def test_the_interpreter_runs_the_old_fixed_blocks_where_the_model_keeps_them(mod):
    assert mod._interpreted()
    for at in (dict(headdim=24, state=20, chunk=24), dict(headdim=3, state=5, chunk=8),
               dict(headdim=16, state=32, chunk=32), dict(headdim=40, state=70, chunk=48), GLA):
        for stage in ("gla_chunk_state", "gla_chunk_scan"):
            autotuner = getattr(mod, f"_{stage}_kernel")
            kept = autotuner.early_config_prune(autotuner.configs, dict(at))
            assert len(kept) == 1
            assert mod._config_dict(kept[0]) == plan_stage_configs(stage, sizes=at)[0][0]
            old = _old_fixed_blocks(stage, at)
            reason, _ = stage_config_fault(STAGE_MODELS[stage], dict(old, num_warps=4), at, STAGE_LIMITS)
            if reason is None:
                assert kept[0].kwargs == old, (stage, at)


# ---- the model at GLA's shape ------------------------------------------------------------------------

def test_gla_shape_plan():
    """fp32, sm_90, triton 3.9 (benchmarks/sm90_report.py): the old fixed blocks spill on 4 warps (255
    registers, 14-16 spill instructions) and are pruned; kept first: gla_chunk_state's old blocks on 8
    warps (255 registers, no spills), gla_chunk_scan's 64x64 on 2 stages (254, none); the best per
    element measured kept: gla_chunk_state (64, 64, 16) on 8 warps (123 registers), gla_chunk_scan
    128x128 on 8 warps and 1 stage (193 registers); none of those kept spills."""
    kept, pruned = plan_stage_configs("gla_chunk_state", sizes=GLA)
    assert kept[0] == dict(BLOCK_P=32, BLOCK_N=64, BLOCK_L=32, num_warps=8, num_stages=3)
    assert not any(c["num_warps"] == 4 and c["BLOCK_L"] == 32 for c in kept)     # every one spills
    assert not any(c["num_warps"] == 2 for c in kept)     # all spill but (32, 64, 16), pruned though fitting
    assert all(c["BLOCK_P"] >= 32 and c["BLOCK_N"] >= 64 for c in kept)
    assert dict(BLOCK_P=64, BLOCK_N=64, BLOCK_L=16, num_warps=8, num_stages=2) in kept
    assert pruned["registers"] > 0 and pruned["narrower than two wider ones that fit"] > 0
    assert len(kept) + sum(pruned.values()) == 3 * 4 * 2 * 3 * 2
    kept, pruned = plan_stage_configs("gla_chunk_scan", sizes=GLA)
    assert kept[0] == dict(BLOCK_P=64, BLOCK_N=64, num_warps=4, num_stages=2)
    assert dict(BLOCK_P=128, BLOCK_N=128, num_warps=8, num_stages=1) in kept
    assert not any(c["num_warps"] == 2 for c in kept)                              # every one spills
    assert dict(BLOCK_P=64, BLOCK_N=128, num_warps=4, num_stages=1) not in kept     # 283 spill insts
    assert all(c["BLOCK_P"] >= 64 and c["BLOCK_N"] >= 64 for c in kept)
    assert len(kept) + sum(pruned.values()) == 4 * 4 * 3 * 2
    for stage in ("gla_chunk_state", "gla_chunk_scan"):
        kept, _ = plan_stage_configs(stage, sizes=GLA)
        assert 0 < len(kept) <= 32
        for config in kept:
            reason, estimate = stage_config_fault(STAGE_MODELS[stage], config, GLA, STAGE_LIMITS)
            assert reason is None and estimate["registers"] <= STAGE_LIMITS["registers"]
    # the scan's sub-chunk is the model's fixed 16 rows: its output tile is (16, BLOCK_P), 256 elements at
    # the narrowest, no idle thread on 8 warps
    reason, _ = stage_config_fault(STAGE_MODELS["gla_chunk_scan"], dict(BLOCK_P=16, BLOCK_N=16, num_warps=8,
                                                                        num_stages=2),
                                   dict(headdim=8, state=8, chunk=8), STAGE_LIMITS)
    assert reason is None


# ---- every planned config against the references -----------------------------------------------------

def _operands(shape, seed):
    """float32 operands and their float64 copies (the references run the torch stages in float64)."""
    shape = dict(shape)
    chunk = shape.pop("chunk")
    ops = gla_inputs(**shape, decays=("g_state",), h0=False, dtype=torch.float64, seed=seed)
    cum, _ = chunked_decays(ops["g_state"], chunk)
    return ops, cum


def _torch64(library, backend, name, **operands):
    backend("torch")
    return library.run(name, **operands)


def _distinct_blocks(stage):
    seen = {}
    for config in plan_stage_configs(stage)[0]:
        seen.setdefault(tuple(sorted(_blocks(config).items())), config)
    return list(seen.values())


def _nan(*shape):
    return torch.full(shape, float("nan"), dtype=torch.float32)


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_every_planned_gla_chunk_state_config(library, mod, backend, shape):
    ops, cum = _operands(SHAPES[shape], seed=1)
    reference, = _torch64(library, backend, "gla_chunk_state", u=ops["u"], cum=cum, B=ops["B"])
    batch, chunks, _, heads, state = cum.shape
    configs = _distinct_blocks("gla_chunk_state")
    # (block sets over the limit on every warp count are never planned: (64, 128, 32) and the like)
    assert all({c[name] for c in configs} == set(values) for name, values in STAGE_AXES["gla_chunk_state"].items()
               if name.startswith("BLOCK"))
    u, cum32, B = ops["u"].float(), cum.float(), ops["B"].float()
    for config in configs:
        states = _nan(batch, chunks, heads, u.shape[3], state)
        mod.gla_chunk_state(u, cum32, B, states, config=config)
        assert rel_error(states, reference) < 1e-5, config


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_every_planned_gla_chunk_scan_config(library, mod, backend, shape):
    ops, cum = _operands(SHAPES[shape], seed=2)
    batch, chunks, _, heads, state = cum.shape
    gen = torch.Generator().manual_seed(3)
    entering = torch.randn(batch, chunks, heads, ops["u"].shape[3], state, generator=gen, dtype=torch.float64)
    common = dict(u=ops["u"], cum=cum, B=ops["B"], C=ops["C"], entering=entering)
    reference, = _torch64(library, backend, "gla_chunk_scan", **common)
    configs = _distinct_blocks("gla_chunk_scan")
    axes = STAGE_AXES["gla_chunk_scan"]
    assert len(configs) == len(axes["BLOCK_P"]) * len(axes["BLOCK_N"])
    common32 = {k: v.float() for k, v in common.items()}
    for config in configs:
        y = _nan(*ops["u"].shape)
        mod.gla_chunk_scan(**common32, y=y, config=config)
        assert rel_error(y, reference) < 1e-5, config


@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_the_autotuned_launchers_match_the_references(library, mod, backend, shape):
    """Through the runtime's table (poisoned outputs): the autotuners run the first config kept."""
    ops, cum = _operands(SHAPES[shape], seed=6)
    states_ref, = _torch64(library, backend, "gla_chunk_state", u=ops["u"], cum=cum, B=ops["B"])
    batch, chunks, _, heads, state = cum.shape
    entering = torch.randn(batch, chunks, heads, ops["u"].shape[3], state, dtype=torch.float64,
                           generator=torch.Generator().manual_seed(7))
    common = dict(u=ops["u"], cum=cum, B=ops["B"], C=ops["C"], entering=entering)
    y_ref, = _torch64(library, backend, "gla_chunk_scan", **common)
    backend("triton")
    states, = library.run("gla_chunk_state", u=ops["u"].float(), cum=cum.float(), B=ops["B"].float())
    assert rel_error(states, states_ref) < 1e-5
    y, = library.run("gla_chunk_scan", **{k: v.float() for k, v in common.items()})
    assert rel_error(y, y_ref) < 1e-5
    at = dict(headdim=ops["u"].shape[3], state=state, chunk=cum.shape[2])
    for stage in ("gla_chunk_state", "gla_chunk_scan"):
        best = mod._config_dict(getattr(mod, f"_{stage}_kernel").best_config)
        first = plan_stage_configs(stage, sizes=at)[0][0]
        assert {k: best[k] for k in first} == first, stage
