"""`ssmc tune SPEC.py [--shape ...]`: measure every candidate of each spec's schedule on the device at
hand and store the winners in the tuning cache (ssmc/runtime/tuning.py), which the generated
packages read instead of their cost model.

Per spec with pipeline candidates (MultiHead, gated, MIMO): each candidate (each chunk size) and,
on the C backend, each thread count in {1, all cores} is timed forward and forward+backward (the
median of a few runs after a warm-up), one progress line per config, then a table; the winner (by
forward+backward time, or forward with `--objective forward`) is stored for the shape's bucket.
A SISO spec's Triton scan has two schedules (sequential, time-parallel): on the Triton backend (a GPU)
both are timed the same way and the winner stored, which the package's kernels read per shape bucket;
its scan/convolution choice stays the cost model's, and on the C and torch backends a SISO spec has
nothing to tune (reported as skipped).
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


def _label(candidate) -> str:
    if isinstance(candidate, tuple):
        name, chunk = candidate
        return f"{name}{chunk}" if name == "chunked" else name
    return str(candidate)


def tune_spec(variable: str, spec, shape: dict, warmup: int = 1, repeats: int = 3, objective: str = "train",
              out=print) -> dict | None:
    """Time every (candidate, threads) of `spec` at `shape`, store the winner; returns the stored choice
    (None for a spec with nothing to tune)."""
    import torch

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
    if family == "siso" and (backend != "triton" or module.OPS.scan is None):
        out(f"{variable}: spec '{spec.name}' (SISO) has nothing to tune on the {backend} backend"
            + (" (its schedule has no scan)" if module.OPS.scan is None else "")
            + ": its scan/convolution choice is the cost model's, and the Triton scan's schedule is tuned on a "
              "GPU; skipped")
        return None
    sizes, run = _workload(module, family, spec, full, device)
    cores = os.cpu_count() or 1
    thread_counts = sorted({1, cores}) if backend == "c" else [None]
    candidates = module.SCAN_SCHEDULES if family == "siso" else module.CANDIDATES
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
