"""The persistent tuning cache (ssmc/runtime/tuning.py), the generated packages' use of it, and `ssmc tune`."""
import json
import os
import subprocess
import sys
import textwrap
import uuid
import warnings
from pathlib import Path

import pytest
import torch

import ssmc
from ssmc.compiler import compile_package
from ssmc.reference_ssd import ssd_sequential_ref
from ssmc.runtime import tuning
from ssmc.runtime.multihead import cost_target

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _fresh():
    tuning.forget()
    yield
    tuning.forget()


def _key():
    return f"test{uuid.uuid4().hex[:12]}_00000000"


def test_round_trip_and_bucket_sharing():
    key = _key()
    sizes = {"batch": 3, "len": 1000, "heads": 8, "headdim": 64, "state": 16}
    choice = {"pipeline": "chunked", "chunk": 128, "threads": 1}
    path = tuning.store(key, "c", sizes, choice)
    assert path is not None and path.parent == Path(os.environ["SSMC_CACHE_DIR"]) / "tuning"
    data = json.loads(path.read_text())
    assert data["schema"] == tuning.SCHEMA and data["package"] == key
    tuning.forget()                                     # read back from the file, as another process would
    assert tuning.lookup(key, "c", sizes) == choice
    # batch 3 and 4, len 1000 and 1024 share a bucket; batch 5 and another target do not
    assert tuning.lookup(key, "c", {**sizes, "batch": 4, "len": 1024}) == choice
    assert tuning.lookup(key, "c", {**sizes, "batch": 5}) is None
    assert tuning.lookup(key, "torch", sizes) is None
    assert tuning.bucket({"batch": 3, "len": 1}) == "batch=4,len=1"
    # a second store merges, keeping the first
    tuning.store(key, "c", {**sizes, "batch": 16}, {"pipeline": "sequential", "chunk": 0, "threads": 2})
    tuning.forget()
    assert tuning.lookup(key, "c", sizes) == choice
    assert tuning.lookup(key, "c", {**sizes, "batch": 9})["pipeline"] == "sequential"


def test_a_stage_s_entries_live_beside_the_schedule_s_in_one_file():
    """A stage's config (the SISO step's) is its own entry, keyed by stage; a file written before stages
    existed (schedule entries only, same schema version) reads as before and has no stage entries."""
    key = _key()
    sizes = {"batch": 8, "dim": 1536, "state": 16}
    path = tuning.cache_file(key, "triton")
    old = {**tuning._identity(key, "triton"), "entries": {"triton|batch=8,dim=2048,len=1024,state=16":
                                                           {"pipeline": "sequential", "chunk": None}}}
    path.write_text(json.dumps(old))
    schedule_sizes = {**sizes, "len": 1000}
    assert tuning.lookup(key, "triton", schedule_sizes)["pipeline"] == "sequential"
    assert tuning.lookup(key, "triton", sizes, stage="scan_step") is None
    step = {"config": {"BLOCK_D": 8, "num_warps": 2}, "step_s": 1e-5}
    assert tuning.store(key, "triton", sizes, step, stage="scan_step") == path
    tuning.forget()
    assert tuning.lookup(key, "triton", {**sizes, "batch": 7}, stage="scan_step") == step    # the same bucket
    assert tuning.lookup(key, "triton", schedule_sizes)["pipeline"] == "sequential"           # kept
    assert tuning.lookup(key, "triton", sizes) is None              # the schedule's key is not the stage's
    assert set(json.loads(path.read_text())["entries"]) == {"triton|batch=8,dim=2048,len=1024,state=16",
                                                            "triton/scan_step|batch=8,dim=2048,state=16"}


WRITER = textwrap.dedent("""
    import sys
    from ssmc.runtime import tuning
    key, first = sys.argv[1], int(sys.argv[2])
    for i in range(first, first + 40):
        tuning.store(key, "c", {"batch": 2 ** i}, {"pipeline": "sequential", "chunk": 0, "threads": i})
""")


def test_two_processes_writing_at_once_keep_both_entries():
    key = _key()
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, key, str(first)], cwd=ROOT, env=dict(os.environ))
               for first in (0, 40)]
    assert all(w.wait(timeout=120) == 0 for w in writers)
    path = tuning.cache_file(key, "c")
    data = json.loads(path.read_text())                 # valid JSON: never a torn file
    assert len(data["entries"]) == 80
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".ssmc-tmp-")]


@pytest.mark.parametrize("content", [b"{\"schema\": \"ssmc-tun", b"\x00\xff garbage", b'{"hello": "world"}',
                                     b'[1, 2, 3]'])
def test_corrupt_or_foreign_file_is_ignored_with_a_warning_and_kept(content):
    key = _key()
    path = tuning.cache_file(key, "c")
    path.write_bytes(content)
    sizes = {"batch": 1}
    with pytest.warns(tuning.TuningWarning, match=str(path.name)):
        assert tuning.lookup(key, "c", sizes) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")                  # one warning per file, not one per call
        assert tuning.lookup(key, "c", sizes) is None
    # not ssmc's (no schema marker): left alone, nothing written over it
    if b"ssmc-tuning" not in content:
        assert tuning.store(key, "c", sizes, {"pipeline": "sequential", "chunk": 0}) is None
        assert path.read_bytes() == content


def test_ssmc_file_of_another_device_is_ignored_then_replaced():
    key = _key()
    path = tuning.cache_file(key, "c")
    foreign = {"schema": tuning.SCHEMA, "version": tuning.VERSION, "device": "some other CPU", "triton": "none",
               "package": key, "entries": {"c|batch=1": {"pipeline": "chunked", "chunk": 64}}}
    path.write_text(json.dumps(foreign))
    with pytest.warns(tuning.TuningWarning, match="device"):
        assert tuning.lookup(key, "c", {"batch": 1}) is None
    assert tuning.store(key, "c", {"batch": 1}, {"pipeline": "sequential", "chunk": 0}) == path
    tuning.forget()
    assert tuning.lookup(key, "c", {"batch": 1}) == {"pipeline": "sequential", "chunk": 0}


def _mamba2_inputs(batch=2, length=40, heads=4, headdim=8, state=5):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, length, heads, headdim, generator=gen)
    dt = 0.05 + 0.2 * torch.rand(batch, length, heads, generator=gen)
    A = -0.5 - torch.rand(heads, generator=gen)
    B = torch.randn(batch, length, 1, state, generator=gen)
    C = torch.randn(batch, length, 1, state, generator=gen)
    return x, dt, A, B, C


@pytest.mark.parametrize("backend_name", ["c", "torch"])
def test_package_follows_a_stored_winner(backend, monkeypatch, backend_name):
    backend(backend_name)
    module = compile_package(ssmc.presets.mamba2(d_state=5, headdim=8, name="tuned_m2"))
    x, dt, A, B, C = _mamba2_inputs()
    sizes = {"batch": 2, "len": 40, "heads": 4, "headdim": 8, "state": 5}
    default = module.choose_pipeline(*sizes.values(), target=backend_name)
    other = next(c for c in module.CANDIDATES if c != default)      # one the cost model would not pick
    tuning.store(module.TUNING.key, backend_name, sizes, {"pipeline": other[0], "chunk": other[1], "threads": 1})
    tuning.forget()
    seen = []
    core = module.OPS.core

    def spy(*args):
        seen.append(tuple(args[-2:]))
        return core(*args)
    monkeypatch.setattr(module.OPS, "core", spy)
    y = module.apply(x, dt, A, B, C)
    assert seen == [other]
    assert module.choose_pipeline(2, 33, 3, 7, 5, target=backend_name) == other     # the same bucket
    assert module.choose_pipeline(8, 40, 4, 8, 5, target=backend_name) == default   # another one: the cost model
    if backend_name == "c":
        module.choose_pipeline(2, 40, 4, 8, 5, target="c")
        assert module.LIBRARY.c_threads == 1
    ref = ssd_sequential_ref(x.double(), dt.double(), A.double(), B.double(), C.double())
    assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-5
    module.TUNING.force(None)
    module.LIBRARY.c_threads = None


def test_tune_cli_writes_the_cache_and_prints_the_table(tmp_path):
    spec_file = tmp_path / "tiny.py"
    spec_file.write_text("import ssmc\nm2 = ssmc.presets.mamba2(d_state=4, headdim=4, name='tiny_tune')\n"
                         "s4 = ssmc.presets.s4d(d_state=4)\n")
    result = subprocess.run([sys.executable, "-m", "ssmc.cli", "tune", str(spec_file), "--shape",
                             "batch=1,len=32,heads=2", "--repeats", "1", "--warmup", "0"],
                            capture_output=True, text=True, cwd=ROOT, env=dict(os.environ), timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "[1/" in out and "fwd+bwd ms" in out and "<- winner" in out
    assert "s4: spec" in out and out.count("  stored ") == 2           # the SISO spec's C thread count too
    module = compile_package(ssmc.presets.mamba2(d_state=4, headdim=4, name="tiny_tune"))
    sizes = {"batch": 1, "len": 32, "heads": 2, "headdim": 4, "state": 4}
    target = cost_target("cpu")
    stored = tuning.lookup(module.TUNING.key, target, sizes)
    assert stored is not None and (stored["pipeline"], stored["chunk"]) in [tuple(c) for c in module.CANDIDATES]
    assert str(tuning.cache_file(module.TUNING.key, target)) in out


def test_a_stored_winner_keeps_apply_traceable_with_fullgraph(backend):
    """Under torch.compile's tracing the cache is not consulted (the cost model decides): no graph break."""
    backend("c")
    module = compile_package(ssmc.presets.mamba2(d_state=5, headdim=8, name="tuned_m2"))
    x, dt, A, B, C = _mamba2_inputs()
    sizes = {"batch": 2, "len": 40, "heads": 4, "headdim": 8, "state": 5}
    tuning.store(module.TUNING.key, "c", sizes, {"pipeline": "chunked", "chunk": 64, "threads": 1})
    tuning.forget()
    compiled = torch.compile(lambda x: module.apply(x, dt, A, B, C), backend="eager", fullgraph=True)
    y = compiled(x)
    ref = ssd_sequential_ref(x.double(), dt.double(), A.double(), B.double(), C.double())
    assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-5
    module.LIBRARY.c_threads = None


def _apply_mamba1(module, batch, dim, length, gen, backward=False):
    """A Mamba-1 package's layer (N 4, one group) on random inputs, its output checked against the float64
    reference; with `backward`, its backward run too."""
    from ssmc.reference import selective_scan_ref
    u, delta, z = (torch.randn(batch, dim, length, generator=gen) for _ in range(3))
    A, B, C = -torch.rand(dim, 4, generator=gen) - 0.5, torch.randn(batch, 1, 4, length, generator=gen), \
        torch.randn(batch, 1, 4, length, generator=gen)
    D, bias = torch.randn(dim, generator=gen), torch.randn(dim, generator=gen)
    u.requires_grad_(backward)
    y = module.apply(u, delta, A, B, C, D=D, z=z, delta_bias=bias)
    if backward:
        y.sum().backward()
    ref = selective_scan_ref(*(t.detach().double() for t in (u, delta, A, B, C)), D=D.double(), z=z.double(),
                             delta_bias=bias.double(), delta_softplus=True)
    assert ((y.detach().double() - ref).norm() / ref.norm()).item() < 1e-5


def test_siso_scan_schedule_is_tuned_on_triton_and_followed(backend, monkeypatch):
    """On the Triton backend (here its interpreter) `ssmc tune` times a SISO spec's two scan schedules and
    stores the winner; the package's kernels then run the stored schedule for that shape bucket, whatever
    their shipped preference, and the output still equals the reference."""
    from ssmc.cli_tune import tune_spec
    backend("triton")
    spec = ssmc.presets.mamba(d_state=4, name="tuned_m1")
    lines = []
    stored = tune_spec("m1", spec, {"batch": 1, "len": 20, "dim": 4}, warmup=0, repeats=1, out=lines.append)
    text = "\n".join(lines)
    assert "[1/2] sequential" in text and "[2/2] time_parallel" in text and "<- winner" in text
    assert stored["pipeline"] in ("sequential", "time_parallel")
    module = compile_package(spec, "auto")
    sizes = {"batch": 1, "dim": 4, "len": 20, "state": 4}
    assert tuning.lookup(module.TUNING.key, "triton", sizes)["pipeline"] == stored["pipeline"]
    # the decoding step too (4 channels: one planned config no wider than them, the narrowest)
    assert "decoding step (scan_step) at batch=1, dim=4, state=4: 1 planned configs" in text
    assert "stored step BLOCK_D=8 num_warps=1" in text
    step = tuning.lookup(module.TUNING.key, "triton", {"batch": 1, "dim": 4, "state": 4}, stage="scan_step")
    assert step["config"] == module.KERNELS.get("triton").STEP_CONFIGS[0]
    # follow a stored time-parallel winner (the shipped preference is sequential); the interpreter normally
    # keeps the shipped default, so pretend to be compiled
    tuning.store(module.TUNING.key, "triton", sizes, {"pipeline": "time_parallel", "chunk": None, "threads": None})
    tuning.forget()
    monkeypatch.setattr(tuning, "_interpreted", lambda: False)
    kernels = module.KERNELS.get("triton")
    calls = []
    original = kernels.scan_fwd_time_parallel
    monkeypatch.setattr(kernels, "scan_fwd_time_parallel", lambda *a, **k: calls.append(1) or original(*a, **k))
    _apply_mamba1(module, 1, 4, 20, torch.Generator().manual_seed(3))
    assert calls == [1]


def test_siso_step_is_tuned_and_a_stored_winner_followed(backend, monkeypatch):
    """`tune_step` times every planned step config no wider than the channels (16 here: 3 of them at N 4)
    and stores the fastest; the package's `scan_step` then launches the stored config for that (batch, dim,
    state) bucket, and Triton's autotuner elsewhere, or where the stored config is not a planned one."""
    from ssmc.cli_tune import tune_step
    from ssmc.reference import selective_scan_ref
    backend("triton")
    spec = ssmc.presets.mamba(d_state=4, name="tuned_step")
    module = compile_package(spec, "auto")
    kernels = module.KERNELS.get("triton")
    lines = []
    stored = tune_step("m1", spec, module, {"batch": 2, "dim": 16}, torch.device("cpu"), warmup=0, repeats=1,
                       out=lines.append)
    text = "\n".join(lines)
    assert "3 planned configs" in text and "[3/3] BLOCK_D=16 num_warps=2" in text and "<- winner" in text
    sizes = {"batch": 2, "dim": 16, "state": 4}
    assert tuning.lookup(module.TUNING.key, "triton", sizes, stage="scan_step") == stored
    assert stored["config"] in kernels.STEP_CONFIGS and stored["config"]["BLOCK_D"] <= 16
    # follow a stored winner (not the interpreter's first config); the interpreter normally keeps the
    # autotuner's, so pretend to be compiled
    winner = {"BLOCK_D": 16, "num_warps": 2}
    assert winner in kernels.STEP_CONFIGS and winner != kernels.STEP_CONFIGS[0]
    tuning.store(module.TUNING.key, "triton", sizes, {"config": winner}, stage="scan_step")
    tuning.forget()
    monkeypatch.setattr(tuning, "_interpreted", lambda: False)
    launched = []
    original = kernels.scan_step_launch

    def spy(*args, **kwargs):
        config = args[-1] if len(args) == 14 else kwargs.get("config")
        launched.append(None if config is None else {**config.kwargs, "num_warps": config.num_warps})
        return original(*args, **kwargs)
    monkeypatch.setattr(kernels, "scan_step_launch", spy)
    gen = torch.Generator().manual_seed(5)
    u, delta, z = (torch.randn(2, 16, 1, generator=gen) for _ in range(3))
    A, B, C = -torch.rand(16, 4, generator=gen) - 0.5, torch.randn(2, 1, 4, 1, generator=gen), \
        torch.randn(2, 1, 4, 1, generator=gen)
    D, bias, h0 = torch.randn(16, generator=gen), torch.randn(16, generator=gen), torch.randn(2, 16, 4, generator=gen)
    state = h0.clone()
    y = module.step(u[..., 0], delta[..., 0], A, B[..., 0], C[..., 0], state, D=D, z=z[..., 0], delta_bias=bias)
    assert launched == [winner]
    y_ref, h_ref = selective_scan_ref(*(t.double() for t in (u, delta, A, B, C)), D=D.double(), z=z.double(),
                                      delta_bias=bias.double(), delta_softplus=True, initial_state=h0.double(),
                                      return_last_state=True)
    assert ((y.double() - y_ref[..., 0]).norm() / y_ref.norm()).item() < 1e-5
    assert ((state.double() - h_ref).norm() / h_ref.norm()).item() < 1e-5
    # another bucket (batch 3 -> 4): nothing stored, the autotuner's
    module.step(u[:1, :, 0].expand(3, 16), delta[:1, :, 0].expand(3, 16), A, B[:1, ..., 0].expand(3, 1, 4),
                C[:1, ..., 0].expand(3, 1, 4), torch.zeros(3, 16, 4), D=D, z=z[:1, :, 0].expand(3, 16),
                delta_bias=bias)
    assert launched[-1] is None
    # a stored config that is not one of the planned ones (another compiler's): ignored
    tuning.store(module.TUNING.key, "triton", sizes, {"config": {"BLOCK_D": 3, "num_warps": 1}}, stage="scan_step")
    module.step(u[..., 0], delta[..., 0], A, B[..., 0], C[..., 0], state, D=D, z=z[..., 0], delta_bias=bias)
    assert launched[-1] is None


def test_siso_spec_on_the_torch_backend_has_nothing_to_tune(backend):
    from ssmc.cli_tune import tune_spec
    backend("torch")
    lines = []
    assert tune_spec("m1", ssmc.presets.mamba(d_state=4), {}, out=lines.append) is None
    assert "nothing to tune on the torch backend" in lines[0] and "skipped" in lines[0]


def test_siso_scan_threads_are_tuned_on_the_c_backend_and_followed(backend, monkeypatch):
    """On the C backend `ssmc tune` times a SISO spec's scan with 1 and all cores and stores the faster count;
    the package's C scan kernels then run with the stored count for that shape bucket, with their own rule
    in another bucket, and the output still equals the reference."""
    from ssmc.cli_tune import tune_spec
    backend("c")
    spec = ssmc.presets.mamba(d_state=4, name="tuned_m1_c")
    lines = []
    stored = tune_spec("m1", spec, {"batch": 1, "len": 24, "dim": 8}, warmup=0, repeats=1, out=lines.append)
    text = "\n".join(lines)
    counts = sorted({1, os.cpu_count() or 1})
    assert f"[1/{len(counts)}] scan" in text and "<- winner" in text and "decoding step" not in text
    assert stored["threads"] in counts
    module = compile_package(spec, "auto")
    sizes = {"batch": 1, "dim": 8, "len": 24, "state": 4}
    assert tuning.lookup(module.TUNING.key, "c", sizes)["threads"] == stored["threads"]
    tuning.store(module.TUNING.key, "c", sizes, {"pipeline": None, "chunk": None, "threads": 3})
    tuning.forget()
    kernels = module.KERNELS.get("c")
    seen = []
    original = kernels._kernel

    def spy(name, dtype):                   # records the thread count, the C call's last argument
        function = original(name, dtype)

        def call(*args):
            seen.append((name, args[-1]))
            return function(*args)
        return call
    monkeypatch.setattr(kernels, "_kernel", spy)
    gen = torch.Generator().manual_seed(4)
    for batch, threads in ((1, 3), (4, 1)):     # the stored bucket; another (small work: one thread)
        seen.clear()
        _apply_mamba1(module, batch, 8, 24, gen, backward=True)
        assert seen == [("scan_fwd", threads), ("scan_bwd", threads)]