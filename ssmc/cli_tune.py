"""`ssmc tune SPEC.py [--shape ...]`: measure every candidate of each spec's schedule on the device at
hand and store the winners in the tuning cache (ssmc/runtime/tuning.py), which the generated
packages read instead of their cost model.

Per spec with pipeline candidates (MultiHead, gated, MIMO): each candidate (each chunk size) and,
on the C backend, each thread count in {1, all cores} is timed forward and forward+backward (the
median of a few runs after a warm-up), one progress line per config, then a table; the winner (by
forward+backward time, or forward with `--objective forward`) is stored for the shape's bucket.
A SISO spec's Triton scan has two schedules (sequential, time-parallel): on the Triton backend (a GPU)
both are timed the same way and the winner stored, which the package's kernels read per shape bucket;
then its decoding step (`scan_step`, one token at the shape's batch and dim) is timed in every config the
compiler planned for it (STEP_CONFIGS, those no wider than the channels) and the fastest stored as the
step stage's config for its (batch, dim, state) bucket, which the package's `scan_step` runs instead of
Triton's autotuner. On the C backend (a CPU) a SISO spec's scan is timed with 1 and all cores and the
faster thread count stored, which the package's C kernels read per shape bucket (`PackageTuning.threads`).
Its scan/convolution choice stays the cost model's, and on the torch backend a SISO spec has nothing to
tune (reported as skipped).
A MultiHead or gated spec on Triton then has the autotuned stages of its winning pipeline tuned one by one
(`tune_stages`): each call the pipeline makes of chunk_state, state_passing, chunk_scan or the GLA chunk
stages, forward and backward, is timed on its own operands in every config the stage's autotuner would
benchmark there, and the fastest stored as that stage's config for the call's bucket, which the
package's stage library launches (ssmc/runtime/stages.py).
"""
from __future__ import annotations

import os
import statistics
import time

from .errors import SSMCError

# small enough that one spec tunes in well under a minute on a 2-core CPU
DEFAULT_SHAPES = {
    "multihead": {"batch": 4, "len": 1024, "heads": 8},
    "gated": {"batch": 4, "len": 1024, "heads": 8},
    "mimo": {"batch": 4, "len": 1024, "dim": 128},
    "siso": {"batch": 4, "len": 1024, "dim": 256},
}


def _time(fn, device, warmup: int, repeats: int) -> float:
    """Median seconds of `fn()` after `warmup` calls."""
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _workload(module, family: str, spec, shape: dict, device):
    """(sizes as choose_pipeline sees them, forward(grad: bool) -> output) at `shape`."""
    import torch
    gen = torch.Generator().manual_seed(0)

    def randn(*s):
        return torch.randn(*s, generator=gen).to(device)

    batch, length = shape["batch"], shape["len"]
    if family == "siso":
        from .cli_bench import build_case
        case = build_case(spec, module, shape, device)
        leaves = [case.inputs[name] for name in case.grads if case.inputs[name].is_floating_point()
                  or case.inputs[name].is_complex()]

        def forward():
            return case.ssmc(case.inputs)
        sizes = {"batch": batch, "dim": shape["dim"], "len": length, "state": spec.d_state}
    elif family == "multihead":
        heads, headdim, state, groups = shape["heads"], spec.heads.headdim, spec.d_state, spec.heads.groups
        if heads % groups:
            raise SSMCError(f"--shape: heads={heads} must be a multiple of the spec's groups={groups}")
        x, B, C = randn(batch, length, heads, headdim), randn(batch, length, groups, state), \
            randn(batch, length, groups, state)
        dt = (0.01 + 0.1 * torch.rand(batch, length, heads, generator=gen)).to(device)
        A = (-0.5 - torch.rand(heads, generator=gen)).to(device)
        leaves = (x, B, C)

        def forward():
            return module.apply(x, dt, A, B, C)
        sizes = {"batch": batch, "len": length, "heads": heads, "headdim": headdim, "state": state}
    elif family == "gated":
        heads, key_dim, value_dim = shape["heads"], module.KEY_DIM, module.VALUE_DIM
        q, k, v = randn(batch, length, heads, key_dim), randn(batch, length, heads, key_dim), \
            randn(batch, length, heads, value_dim)
        g_shape = (batch, length, heads, key_dim) if module.PER_STATE else (batch, length, heads)
        g = torch.nn.functional.logsigmoid(randn(*g_shape)) / 16
        leaves = (q, k, v)

        def forward():
            return module.apply_gated(q, k, v, g)[0]
        sizes = {"batch": batch, "len": length, "heads": heads, "headdim": value_dim, "state": key_dim}
    else:
        H = shape["dim"]
        torch.manual_seed(0)
        layer = module.Layer(H).to(device)
        u = randn(batch, length, H)
        leaves = (u,)

        def forward():
            return layer(u)
        sizes = {"batch": batch, "len": length, "H": H, "state": module.D_STATE}

    def run(grad: bool):
        if not grad:
            with torch.no_grad():
                return forward()
        for leaf in leaves:
            leaf.requires_grad_(True)
            leaf.grad = None
        out = forward()
        out.sum().backward()
        return out
    return sizes, run


# decoding steps per timed run: one step is a few microseconds on a GPU, below the timer's resolution
STEP_CALLS = 50


def _step_operands(kernels, spec, batch: int, dim: int, device) -> dict:
    """Random operands of the Triton `scan_step` launcher (the kernel's own forms, by the package's flags) for
    one decoding step at (batch, dim), the state zeros."""
    import torch
    gen = torch.Generator().manual_seed(0)
    flags, n_state = kernels.SCAN_FLAGS, spec.d_state
    groups = getattr(spec, "groups", 1) or 1
    groups = groups if dim % groups == 0 else 1

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device)

    def pair(*shape):
        return randn(*shape), (randn(*shape) if flags["IS_COMPLEX"] else None)

    operands = dict(u=randn(batch, dim))
    operands["delta"] = 0.5 * randn(batch, dim) if flags["DT_VARIES"] else 0.01 + 0.1 * randn(dim).abs()
    operands["dt_bias"] = 0.1 * randn(dim) if flags["HAS_DT_BIAS"] else None
    operands["A_re"] = -0.1 - randn(dim, n_state).abs()
    operands["A_im"] = 3 * randn(dim, n_state) if flags["IS_COMPLEX"] else None
    for name in ("B", "C"):
        operands[f"{name}_re"], operands[f"{name}_im"] = pair(
            *((batch, groups, n_state) if flags[f"{name}_VARIES"] else (dim, n_state)))
    operands["D"] = randn(dim) if flags["HAS_D"] else None
    operands["z"] = randn(batch, dim) if flags["HAS_Z"] else None
    operands["h_re"] = torch.zeros(batch, dim, n_state, device=device)
    operands["h_im"] = torch.zeros(batch, dim, n_state, device=device) if flags["IS_COMPLEX"] else None
    return operands


def step_configs(kernels, dim: int) -> list:
    """The planned step configs (dicts) a call with `dim` channels can use: as the autotuner's early pruner,
    no wider than next_power_of_2(dim), the narrowest always kept."""
    narrowest = min(config["BLOCK_D"] for config in kernels.STEP_CONFIGS)
    widest = max(1 << max(dim - 1, 0).bit_length(), narrowest)
    return [config for config in kernels.STEP_CONFIGS if config["BLOCK_D"] <= widest]


def _config_label(config: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in config.items())


def tune_step(variable: str, spec, module, shape: dict, device, warmup: int = 1, repeats: int = 3,
              out=print) -> dict | None:
    """Time the SISO Triton package's decoding step (`scan_step`, one token at the shape's batch and dim) in
    each planned config, store the fastest as the stage's config for the (batch, dim, state) bucket;
    returns the stored entry (None when it could not be stored)."""
    import torch

    from .runtime import tuning
    kernels = module.KERNELS.get("triton")
    batch, dim = shape["batch"], shape["dim"]
    sizes = {"batch": batch, "dim": dim, "state": spec.d_state}
    operands = _step_operands(kernels, spec, batch, dim, device)
    configs = step_configs(kernels, dim)
    calls = 1 if kernels.INTERPRETED else STEP_CALLS
    out(f"{variable}: decoding step (scan_step) at batch={batch}, dim={dim}, state={spec.d_state}: "
        f"{len(configs)} planned configs")
    results = []
    with torch.no_grad():
        for number, config in enumerate(configs, 1):
            launch = kernels.step_config(config)

            def run():
                for _ in range(calls):
                    kernels.scan_step_launch(**operands, config=launch)
            seconds = _time(run, device, warmup, repeats) / calls
            results.append((config, seconds))
            out(f"  [{number}/{len(configs)}] {_config_label(config):<24} step {seconds * 1e6:10.2f} us")
    best = min(results, key=lambda r: r[1])
    out(f"\n  {'step config':<24} {'us':>10}")
    for config, seconds in results:
        out(f"  {_config_label(config):<24} {seconds * 1e6:10.2f}{'  <- winner' if config == best[0] else ''}")
    stored = {"config": dict(best[0]), "step_s": best[1], "shape": sizes, "repeats": repeats,
              "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = tuning.store(module.TUNING.key, "triton", sizes, stored, stage="scan_step")
    if path is None:
        out("  not stored: a file that ssmc did not write is in the way (see the warning)")
        return None
    out(f"  stored step {_config_label(best[0])} for bucket {tuning.bucket(sizes)} in {path}")
    return stored


def _record_stage_calls(module, run) -> list:
    """The Triton calls of autotuned stages that one forward+backward of the package makes (under its
    current choice), one per (stage, shape bucket): [(name, params, operands, sizes)]."""
    from .runtime import tuning
    library = module.LIBRARY
    library.recording = []
    try:
        run(True)
        calls = library.recording
    finally:
        library.recording = None
    distinct = {}
    for name, params, operands, sizes in calls:
        distinct.setdefault((name, tuning.bucket(sizes)), (name, params, operands, sizes))
    return list(distinct.values())


def tune_stages(variable: str, module, run, device, warmup: int = 1, repeats: int = 3, out=print) -> list:
    """Time each autotuned Triton stage that the package's chosen pipeline calls (chunk_state, state_passing,
    chunk_scan; the GLA chunk stages), at the operands of that call, in every planned config its autotuner
    would benchmark there (the stage module's `stage_candidates`), and store the fastest as the stage's
    config for the call's bucket, which the package's stage library then launches; returns the stored
    entries."""
    import torch

    from .runtime import tuning
    calls = _record_stage_calls(module, run)
    if not calls:
        out(f"{variable}: the chosen pipeline calls no autotuned Triton stage")
        return []
    stored_entries = []
    with torch.no_grad():
        for name, params, operands, sizes in calls:
            configs = module.LIBRARY.candidates(name, sizes)
            out(f"{variable}: stage {name} at {tuning.bucket(sizes)}: {len(configs)} planned configs")
            results = []
            for number, config in enumerate(configs, 1):
                seconds = _time(lambda: module.LIBRARY.run_config(name, config, params, operands),
                                device, warmup, repeats)
                results.append((config, seconds))
                out(f"  [{number}/{len(configs)}] {_config_label(config):<56} {seconds * 1e6:10.2f} us")
            best = min(results, key=lambda r: r[1])
            stored = {"config": dict(best[0]), "stage_s": best[1], "shape": sizes, "repeats": repeats,
                      "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            path = tuning.store(module.TUNING.key, "triton", sizes, stored, stage=name)
            if path is None:
                out("  not stored: a file that ssmc did not write is in the way (see the warning)")
                continue
            out(f"  stored {name} {_config_label(best[0])} ({best[1] * 1e6:.2f} us) in {path}")
            stored_entries.append(stored)
    return stored_entries


def _label(candidate) -> str:
    if candidate is None:
        return "scan"
    if isinstance(candidate, tuple):
        name, chunk = candidate
        return f"{name}{chunk}" if name == "chunked" else name
    return str(candidate)


def tune_spec(variable: str, spec, shape: dict, warmup: int = 1, repeats: int = 3, objective: str = "train",
              out=print) -> dict | None:
    """Time every (candidate, threads) of `spec` at `shape`, store the winner; returns the stored choice
    (None for a spec with nothing to tune). A SISO spec on Triton then has its decoding step tuned
    (`tune_step`), stored as that stage's own entry."""
    import torch

    from .cli_bench import check_fits
    from .compiler import compile_package
    from .runtime import tuning
    from .runtime.backend import select_backend
    from .runtime.multihead import cost_target

    family = spec.family
    full = dict(DEFAULT_SHAPES[family])
    full.update({k: v for k, v in shape.items() if k in full})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    target = cost_target(device.type)
    backend = select_backend(device)
    module = compile_package(spec, "auto")
    if family == "siso" and (backend not in ("triton", "c") or module.OPS.scan is None):
        out(f"{variable}: spec '{spec.name}' (SISO) has nothing to tune on the {backend} backend"
            + (" (its schedule has no scan)" if module.OPS.scan is None else "")
            + ": its scan/convolution choice is the cost model's; the scan's schedule is tuned on the Triton "
              "backend, its thread count on the C backend; skipped")
        return None
    check_fits(spec, module, full, device)
    sizes, run = _workload(module, family, spec, full, device)
    cores = os.cpu_count() or 1
    thread_counts = sorted({1, cores}) if backend == "c" else [None]
    if family == "siso":     # on C, one schedule: only the thread count is tuned
        candidates = module.SCAN_SCHEDULES if backend == "triton" else (None,)
    else:
        candidates = module.CANDIDATES
    configs = [(c, t) for c in candidates for t in thread_counts]
    shape_text = ", ".join(f"{k}={v}" for k, v in sizes.items())
    out(f"{variable}: spec '{spec.name}' on {tuning.device_name(target)} ({backend} backend), {shape_text}: "
        f"{len(configs)} configs")
    results = []
    try:
        for number, (candidate, threads) in enumerate(configs, 1):
            choice = {"pipeline": candidate[0] if isinstance(candidate, tuple) else candidate,
                      "chunk": candidate[1] if isinstance(candidate, tuple) else None, "threads": threads}
            module.TUNING.force(choice)
            forward = _time(lambda: run(False), device, warmup, repeats)
            train = _time(lambda: run(True), device, warmup, repeats)
            results.append((candidate, threads, forward, train))
            out(f"  [{number}/{len(configs)}] {_label(candidate):<12} threads={threads or '-':<3} "
                f"forward {forward * 1e3:9.3f} ms   forward+backward {train * 1e3:9.3f} ms")
    finally:
        module.TUNING.force(None)
    index = 3 if objective == "train" else 2
    best = min(results, key=lambda r: r[index])
    out(f"\n  {'config':<12} {'threads':>7} {'forward ms':>11} {'fwd+bwd ms':>11}")
    for candidate, threads, forward, train in results:
        mark = "  <- winner" if (candidate, threads) == best[:2] else ""
        out(f"  {_label(candidate):<12} {threads or '-':>7} {forward * 1e3:11.3f} {train * 1e3:11.3f}{mark}")
    candidate, threads, forward, train = best
    stored = {"pipeline": candidate[0] if isinstance(candidate, tuple) else candidate,
              "chunk": candidate[1] if isinstance(candidate, tuple) else None, "threads": threads,
              "objective": objective, "forward_s": forward, "train_s": train,
              "shape": sizes, "repeats": repeats, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    path = tuning.store(module.TUNING.key, target, sizes, stored)
    if path is None:
        out("  not stored: a file that ssmc did not write is in the way (see the warning)")
    else:
        out(f"  stored {_label(candidate)} threads={threads or '-'} for bucket {tuning.bucket(sizes)} in {path}")
    out("")
    if family == "siso" and backend == "triton":
        tune_step(variable, spec, module, full, device, warmup=warmup, repeats=repeats, out=out)
        out("")
    if family in ("multihead", "gated") and backend == "triton":
        module.TUNING.force(stored)         # the stages of the winning pipeline, at its chunk size
        try:
            tune_stages(variable, module, run, device, warmup=warmup, repeats=repeats, out=out)
        finally:
            module.TUNING.force(None)
        out("")
    return stored


def cmd_tune(args) -> int:
    from .cli import load_specs, parse_shape
    shape = parse_shape(args.shape or "")
    if args.repeats < 1 or args.warmup < 0:
        raise SSMCError("--repeats must be >= 1 and --warmup >= 0")
    for variable, spec in load_specs(args.spec).items():
        tune_spec(variable, spec, shape, warmup=args.warmup, repeats=args.repeats, objective=args.objective)
    return 0


def add_parser(sub) -> None:
    """Register `ssmc tune` on the CLI's subparsers."""
    import argparse
    p = sub.add_parser("tune", help="time every pipeline candidate on this device and store the winners")
    p.add_argument("spec", metavar="SPEC.py")
    p.add_argument("--shape", default="", help="e.g. batch=8,len=2048,heads=8 (MIMO: dim is H); default: small "
                                               "shapes per spec family")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per config, the median kept (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    p.add_argument("--objective", choices=("train", "forward"), default="train",
                   help="rank configs by forward+backward (train, default) or forward time")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    p.set_defaults(run=cmd_tune)
