"""The compiler's plan of the SISO Triton kernels' autotune configs (ir/tuning_space.py): pruned by
idle threads and estimated registers from the spec's state size, printed into the generated module
and used by its autotuners."""
import pytest

import ssmc
from ssmc.compiler import compile_package
from ssmc.ir.tuning_space import MODELS, REGISTER_LIMIT, config_comment, estimated_registers, plan_configs

SEQUENTIAL_AXES = {"BLOCK_D": [8, 16, 32, 64, 128], "num_warps": [1, 2, 4, 8]}
TILED_AXES = {"BLOCK_D": [1, 2, 4, 8, 16], "num_warps": [1, 2, 4, 8]}       # the backward's: its time tile is the chunk
TILED_FWD_AXES = {"BLOCK_D": [1, 2, 4, 8, 16], "BLOCK_T": [16, 32, 64, 128, 256], "num_warps": [1, 2, 4, 8]}
STEP_AXES = {"BLOCK_D": [1, 2, 4, 8, 16, 32, 64, 128, 256], "num_warps": [1, 2, 4, 8]}


def test_the_sm90_report_s_spilling_and_idle_configs_are_pruned():
    """Mamba-1 (N 16): the report's best forward config (64 channels, 2 warps: 16 elements per thread,
    128 registers measured) is kept; 8 channels on 8 warps (128 elements for 256 threads) and a time
    tile of (8, 16, 64) on one warp (255 registers and 10185 spill instructions measured) are not."""
    kept, pruned = plan_configs("scan_fwd", SEQUENTIAL_AXES, 16, False)
    assert {"BLOCK_D": 64, "num_warps": 2} in kept
    assert {"BLOCK_D": 8, "num_warps": 8} not in kept and pruned["idle threads"] >= 1

def test_the_time_parallel_forward_s_tile_is_one_state_s():
    """The time-parallel forward loops over the states: its tile is (BLOCK_D, BLOCK_T) whatever N, so N 4
    and N 16 plan the same list. By the sm_90 report (Mamba-1, bf16, with checkpoints): (8, 64) on 2 warps
    (8 elements per thread) takes 186 registers and 23.2 instructions per element, kept; (8, 64) on one
    warp (16 per thread) 255 registers and 24 spill instructions, pruned; (8, 64) on 8 warps (2 per
    thread) 43.1 per element, pruned as too few elements per thread."""
    kept, pruned = plan_configs("scan_tiled_fwd", TILED_FWD_AXES, 16, False)
    assert kept == plan_configs("scan_tiled_fwd", TILED_FWD_AXES, 4, False)[0]
    assert {"BLOCK_D": 8, "BLOCK_T": 64, "num_warps": 2} in kept
    assert {"BLOCK_D": 8, "BLOCK_T": 64, "num_warps": 1} not in kept and pruned["registers"] >= 1
    assert {"BLOCK_D": 8, "BLOCK_T": 64, "num_warps": 8} not in kept and pruned["few elements per thread"] >= 1
    for config in kept:
        elements, threads, registers = estimated_registers(MODELS["scan_tiled_fwd"], config, 16, False)
        assert 4 * threads <= elements == config["BLOCK_D"] * config["BLOCK_T"] and registers <= REGISTER_LIMIT
    complex_kept, _ = plan_configs("scan_tiled_fwd", TILED_FWD_AXES, 16, True)
    assert set(map(str, complex_kept)) < set(map(str, kept))


def test_the_backward_keeps_fewer_tiles_per_thread_and_complex_states_twice_fewer():
    forward, _ = plan_configs("scan_fwd", SEQUENTIAL_AXES, 16, False)
    backward, _ = plan_configs("scan_bwd", SEQUENTIAL_AXES, 16, False)
    complex_backward, _ = plan_configs("scan_bwd", SEQUENTIAL_AXES, 16, True)
    assert set(map(str, complex_backward)) < set(map(str, backward)) < set(map(str, forward))


def test_the_backward_tile_along_time_is_the_checkpoint_chunk_not_tuned():
    # the compiler (ir) cannot import the runtime: its copy of the chunk must be the runtime's
    import ssmc.ir.tuning_space as tuning_space
    import ssmc.runtime.ops as runtime_ops
    assert tuning_space.CHECKPOINT_CHUNK == runtime_ops.CHECKPOINT_CHUNK
    kept, _ = plan_configs("scan_tiled_bwd", TILED_AXES, 16, False)
    assert kept and all(set(config) == {"BLOCK_D", "num_warps"} for config in kept)


def test_the_decoding_step_is_planned_with_the_same_rules():
    """Mamba-1's decode (N 16): the old fixed block (4096 // 16 = 256 channels, capped by dim) gave
    batch 8 x dim 1536 only 48 programs on a 132-SM GPU; the planned list reaches down to 2 channels (32
    elements, one warp), keeps the widest block only where its registers fit (256 channels on 8 warps: 16
    elements per thread), and prunes blocks with idle threads or too many elements per thread."""
    kept, pruned = plan_configs("scan_step", STEP_AXES, 16, False)
    model = MODELS["scan_step"]
    assert {"BLOCK_D": 2, "num_warps": 1} == kept[0]                # the interpreter's config: the smallest
    assert {"BLOCK_D": 1, "num_warps": 1} not in kept               # 16 elements for 32 threads
    assert {"BLOCK_D": 256, "num_warps": 8} in kept and {"BLOCK_D": 256, "num_warps": 1} not in kept
    assert pruned == {"idle threads": 10, "registers": 3}
    assert len(kept) + sum(pruned.values()) == len(STEP_AXES["BLOCK_D"]) * len(STEP_AXES["num_warps"])
    for config in kept:
        elements, threads, registers = estimated_registers(model, config, 16, False)
        assert threads <= elements and registers <= REGISTER_LIMIT
    programs = max(-(-1536 // c["BLOCK_D"]) * 8 for c in kept)
    assert programs >= 4 * 132
    # complex states count twice: fewer wide blocks survive
    complex_kept, complex_pruned = plan_configs("scan_step", STEP_AXES, 16, True)
    assert set(map(str, complex_kept)) < set(map(str, kept)) and complex_pruned["registers"] > pruned["registers"]


def test_a_state_too_wide_for_every_config_keeps_the_smallest():
    kept, pruned = plan_configs("scan_bwd", SEQUENTIAL_AXES, 4096, True)
    assert kept == [{"BLOCK_D": 8, "num_warps": 1}]
    assert pruned["registers"] == len(SEQUENTIAL_AXES["BLOCK_D"]) * len(SEQUENTIAL_AXES["num_warps"]) - 1


def test_the_time_parallel_backward_s_tile_is_one_state_s():
    """The time-parallel backward loops over the states too: (BLOCK_D, chunk 64) whatever N, 4 to 8 elements per
    thread. By the sm_90 report (Mamba-1, bf16): (4, 64) on one warp 212 registers and 56 instructions per
    element in its states' loop, kept; (2, 64) on one warp 128 registers and 72, kept; (1, 64) on one warp (2
    elements per thread) 94, pruned; (8, 64) on one warp (16 per thread) 255 registers, pruned."""
    kept, pruned = plan_configs("scan_tiled_bwd", TILED_AXES, 16, False)
    assert kept == plan_configs("scan_tiled_bwd", TILED_AXES, 4096, False)[0]
    assert {"BLOCK_D": 4, "num_warps": 1} in kept and {"BLOCK_D": 2, "num_warps": 1} in kept
    assert {"BLOCK_D": 1, "num_warps": 1} not in kept and pruned["few elements per thread"] >= 1
    assert {"BLOCK_D": 8, "num_warps": 1} not in kept and pruned["registers"] >= 1
    for config in kept:
        elements, threads, registers = estimated_registers(MODELS["scan_tiled_bwd"], config, 16, False)
        assert 4 * threads <= elements == config["BLOCK_D"] * 64 and registers <= REGISTER_LIMIT


@pytest.mark.parametrize("spec", [ssmc.presets.mamba(d_state=16), ssmc.SSM("cx", 4, A=ssmc.Diagonal(real=False))],
                         ids=["mamba16", "complex4"])
def test_the_generated_module_runs_the_planned_configs(spec):
    kernels = compile_package(spec, "scan").KERNELS.get("triton")
    for variable, kernel in (("SCAN_FWD_CONFIGS", "scan_fwd"), ("SCAN_BWD_CONFIGS", "scan_bwd"),
                             ("TILED_FWD_CONFIGS", "scan_tiled_fwd"), ("TILED_BWD_CONFIGS", "scan_tiled_bwd"),
                             ("STEP_CONFIGS", "scan_step")):
        axes = (TILED_FWD_AXES if kernel == "scan_tiled_fwd" else TILED_AXES if "tiled" in kernel
                else STEP_AXES if kernel == "scan_step" else SEQUENTIAL_AXES)
        assert getattr(kernels, variable) == plan_configs(kernel, axes, spec.d_state, spec.is_complex)[0], variable
    # the autotuners hold the planned configs (the first alone under the interpreter)
    for variable, autotuner in (("SCAN_FWD_CONFIGS", kernels._scan_fwd_kernel),
                                ("STEP_CONFIGS", kernels._scan_step_kernel)):
        first = getattr(kernels, variable)[0]
        config = autotuner.configs[0]
        assert config.kwargs == {k: v for k, v in first.items() if k != "num_warps"}
        assert config.num_warps == first["num_warps"]
    # each list is printed with what was pruned and why
    import inspect
    source = inspect.getsource(kernels)
    kept, pruned = plan_configs("scan_step", STEP_AXES, spec.d_state, spec.is_complex)
    assert config_comment("scan_step", kept, pruned) + "\nSTEP_CONFIGS = [" in source


def test_every_autotuned_kernel_keeps_its_winners_across_processes():
    """Triton's cache_results on every autotuner: a winner goes to Triton's cache and the next process reads
    it. Triton turns it off under the interpreter (one config, never benchmarked), so this reads the source:
    the GPU path itself has not run here."""
    import inspect
    kernels = compile_package(ssmc.SSM("s4dv", 4, A=ssmc.Diagonal(real=False)), "auto").KERNELS.get("triton")
    source = inspect.getsource(kernels)
    # scan fwd/bwd, tiled fwd/bwd, the decoding step, Vandermonde fwd/bwd
    assert source.count("triton.autotune(") == 7
    assert source.count("cache_results=True") == 7
