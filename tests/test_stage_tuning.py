"""`ssmc tune` on the autotuned Triton stages (Mamba-2's chunk_state, state_passing, chunk_scan; GLA's
chunk stages): each stage call of the winning pipeline is timed in every planned config its autotuner
would benchmark there, the fastest stored per stage and shape bucket (ssmc/cli_tune.py: tune_stages), and
the package's stage library launches a stored config (ssmc/runtime/stages.py), under Triton's interpreter.
"""
import pytest
import torch

import ssmc
from conftest import rel_error
from ssmc.cli_tune import _record_stage_calls, _workload, tune_spec, tune_stages
from ssmc.compiler import compile_package
from ssmc.reference_ssd import ssd_sequential_ref
from ssmc.runtime import tuning
from test_gla import gla_ref

MAMBA2_STAGES = {"chunk_state", "state_passing", "chunk_scan"}
GLA_STAGES = {"gla_chunk_state", "gla_chunk_scan"}


@pytest.fixture(autouse=True)
def _fresh():
    tuning.forget()
    yield
    tuning.forget()


def _chunked(module):
    return next(c for c in module.CANDIDATES if c[0] == "chunked")


def _tune(spec, family, shape):
    """(module, workload's run, output lines, stored entries) of tune_stages on `spec` forced to its first
    chunked candidate."""
    module = compile_package(spec, "auto")
    _, run = _workload(module, family, spec, shape, torch.device("cpu"))
    pipeline, chunk = _chunked(module)
    module.TUNING.force({"pipeline": pipeline, "chunk": chunk, "threads": None})
    lines = []
    try:
        stored = tune_stages("m", module, run, torch.device("cpu"), warmup=0, repeats=1, out=lines.append)
        calls = _record_stage_calls(module, run)
    finally:
        module.TUNING.force(None)
    return module, calls, "\n".join(lines), stored


@pytest.mark.parametrize("family, make, stages", [
    ("multihead", lambda: ssmc.presets.mamba2(d_state=16, headdim=16, name="stage_tune_m2"), MAMBA2_STAGES),
    ("gated", lambda: ssmc.presets.gla(key_dim=16, value_dim=16, name="stage_tune_gla"), GLA_STAGES),
])
def test_every_autotuned_stage_call_is_timed_in_its_candidates_and_stored(backend, family, make, stages):
    """Forward and backward call the stages at several buckets (the backward's chunk_state reads B in u's
    place); each distinct one is tuned over exactly the configs its autotuner would benchmark there, and the
    fastest stored under that stage and bucket."""
    backend("triton")
    module, calls, text, stored = _tune(make(), family, {"batch": 1, "len": 64, "heads": 2})
    assert {name for name, *_ in calls} == stages
    assert len(stored) == len(calls) == text.count("planned configs")
    timed = 0
    for (name, _, _, sizes), entry in zip(calls, stored):
        candidates = module.LIBRARY.candidates(name, sizes)
        timed += len(candidates)
        assert f"stage {name} at {tuning.bucket(sizes)}: {len(candidates)} planned configs" in text
        assert entry["config"] in candidates and entry["stage_s"] > 0
        assert tuning.lookup(module.TUNING.key, "triton", sizes, stage=name) == entry
    assert text.count("  [") == timed and text.count("  stored ") == len(calls)


def _spy_configs(module, monkeypatch, name):
    """Record the `config` each launch of the Triton stage `name` receives."""
    kernels = module.LIBRARY._module("triton")
    original = getattr(kernels, name)
    seen = []

    def spy(*args, config=None, **kwargs):
        seen.append(config)
        return original(*args, config=config, **kwargs)
    monkeypatch.setattr(kernels, name, spy)
    return seen


def _mamba2_inputs(gen, batch=1, length=64, heads=2, headdim=16, state=16):
    x = torch.randn(batch, length, heads, headdim, generator=gen)
    dt = 0.05 + 0.2 * torch.rand(batch, length, heads, generator=gen)
    A = -0.5 - torch.rand(heads, generator=gen)
    B, C = (torch.randn(batch, length, 1, state, generator=gen) for _ in range(2))
    return x, dt, A, B, C


def _forward_calls(spec, family):
    """(module, its first chunked candidate, the autotuned stage calls of one forward under it)."""
    module = compile_package(spec, "auto")
    chunked = _chunked(module)
    _, run = _workload(module, family, spec, {"batch": 1, "len": 64, "heads": 2}, torch.device("cpu"))
    module.TUNING.force({"pipeline": chunked[0], "chunk": chunked[1], "threads": None})
    try:
        calls = _record_stage_calls(module, lambda grad: run(False))
    finally:
        module.TUNING.force(None)
    return module, chunked, calls


def test_a_stored_stage_config_is_launched_and_a_foreign_one_ignored(backend, monkeypatch):
    """The package's chunk_state launches the config stored for its bucket (not the interpreter's first
    planned one) and still equals the float64 reference; a stored config that is not one of the module's
    planned configs, or a bucket with nothing stored, leaves the choice to Triton's autotuner."""
    backend("triton")
    spec = ssmc.presets.mamba2(d_state=16, headdim=16, gate=False, name="stage_follow_m2")
    module, chunked, calls = _forward_calls(spec, "multihead")
    sizes = next(sizes for name, _, _, sizes in calls if name == "chunk_state")
    candidates = module.LIBRARY.candidates("chunk_state", sizes)
    winner = candidates[-1]
    assert winner != candidates[0]          # the interpreter's autotuner would run the first
    tuning.store(module.TUNING.key, "triton", sizes, {"config": winner}, stage="chunk_state")
    tuning.forget()
    monkeypatch.setattr(tuning, "_interpreted", lambda: False)      # the interpreter never reads the cache
    seen = _spy_configs(module, monkeypatch, "chunk_state")
    gen = torch.Generator().manual_seed(7)
    x, dt, A, B, C = _mamba2_inputs(gen)
    y = module.apply(x, dt, A, B, C, chunk_size=chunked[1])
    assert seen == [winner]
    assert rel_error(y, ssd_sequential_ref(x.double(), dt.double(), A.double(), B.double(), C.double())) < 1e-5
    # another bucket (batch 3 -> 4): nothing stored
    module.apply(*_mamba2_inputs(gen, batch=3), chunk_size=chunked[1])
    assert seen[-1] is None
    # a config of another compiler's (not planned here), or a malformed one: ignored
    for foreign in ({**winner, "BLOCK_P": 24}, {k: str(v) for k, v in winner.items()}):
        tuning.store(module.TUNING.key, "triton", sizes, {"config": foreign}, stage="chunk_state")
        module.apply(x, dt, A, B, C, chunk_size=chunked[1])
        assert seen[-1] is None


def test_gla_follows_a_stored_chunk_scan_config(backend, monkeypatch):
    backend("triton")
    module, chunked, calls = _forward_calls(ssmc.presets.gla(key_dim=16, value_dim=16, name="stage_follow_gla"),
                                            "gated")
    sizes = next(sizes for name, _, _, sizes in calls if name == "gla_chunk_scan")
    winner = module.LIBRARY.candidates("gla_chunk_scan", sizes)[-1]
    tuning.store(module.TUNING.key, "triton", sizes, {"config": winner}, stage="gla_chunk_scan")
    tuning.forget()
    monkeypatch.setattr(tuning, "_interpreted", lambda: False)
    monkeypatch.setattr(module, "choose_pipeline", lambda *a, **k: chunked)
    seen = _spy_configs(module, monkeypatch, "gla_chunk_scan")
    gen = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, 64, 2, 16, generator=gen) for _ in range(3))
    g = torch.nn.functional.logsigmoid(torch.randn(1, 64, 2, 16, generator=gen)) / 16
    out = module.apply_gated(q, k, v, g)[0]
    assert seen == [winner]
    assert rel_error(out, gla_ref(q.double(), k.double(), v.double(), g.double())[0]) < 1e-5


def test_tune_spec_tunes_the_stages_of_the_winning_pipeline(backend, monkeypatch):
    """tune_spec hands tune_stages the package with the stored winner forced, and lifts the force after."""
    import ssmc.cli_tune as cli_tune
    backend("triton")
    seen = []

    def spy(variable, module, run, device, **kwargs):
        seen.append(dict(module.TUNING.forced))
        return []
    monkeypatch.setattr(cli_tune, "tune_stages", spy)
    spec = ssmc.presets.mamba2(d_state=4, headdim=4, name="stage_tune_spec")
    stored = tune_spec("m2", spec, {"batch": 1, "len": 32, "heads": 2}, warmup=0, repeats=1, out=lambda line: None)
    assert len(seen) == 1 and (seen[0]["pipeline"], seen[0]["chunk"]) == (stored["pipeline"], stored["chunk"])
    assert compile_package(spec, "auto").TUNING.forced is None


def test_a_launch_config_is_refused_off_triton_and_for_a_stage_not_autotuned(backend):
    from ssmc.errors import ScheduleError
    module = compile_package(ssmc.presets.mamba2(d_state=4, headdim=4, name="stage_config_refused"), "auto")
    operands = dict(states=torch.zeros(1, 2, 2, 4, 4), carry=torch.ones(1, 2, 2), h0=None)
    backend("torch")
    with pytest.raises(ScheduleError, match="Triton backend only"):
        module.LIBRARY.run_config("state_passing", {"BLOCK": 32, "num_warps": 1}, None, operands)
    backend("triton")
    gen = torch.Generator().manual_seed(2)
    step = dict(u=torch.randn(1, 2, 4, generator=gen), log_decay=-torch.rand(1, 2, generator=gen),
                B=torch.randn(1, 1, 4, generator=gen), C=torch.randn(1, 1, 4, generator=gen),
                ssm_state=torch.zeros(1, 2, 4, 4))
    with pytest.raises(ScheduleError, match="ssd_step: not an autotuned stage"):
        module.LIBRARY.run_config("ssd_step", {"BLOCK": 32}, None, step)
    # a planned config runs, and runs right: entering_{c+1} = carry_c · entering_c + states_c from zero
    states, carry = torch.randn(1, 2, 2, 4, 4, generator=gen), torch.rand(1, 2, 2, generator=gen)
    config = module.LIBRARY.candidates("state_passing", {"headdim": 4, "state": 4})[0]
    entering, final = module.LIBRARY.run_config("state_passing", config, None, dict(states=states, carry=carry, h0=None))
    expected = torch.zeros(1, 2, 4, 4)
    for c in range(2):
        assert torch.allclose(entering[:, c], expected)
        expected = carry[:, :, c, None, None] * expected + states[:, c]
    assert torch.allclose(final, expected)
