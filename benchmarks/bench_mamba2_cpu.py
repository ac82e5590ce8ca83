"""Mamba-2 (SSD) on the CPU: ssmc's generated kernels against transformers' torch implementation of
the same algorithm (`transformers.models.mamba2.modeling_mamba2.mamba2_chunk_scan`, the Mamba2Mixer
torch path), on the same inputs, forward and forward+backward, with peak memory; and ssmc's chunked
against its sequential schedule at several lengths, to check the cost model's choice.

Every case runs in a fresh subprocess, so that its peak resident memory (ru_maxrss, minus the
process's resident size after the inputs are made, before the first call) belongs to it alone. Times are the median of
`--repeat` runs after one warm-up. transformers is a benchmark-only dependency
(`pip install transformers`); its cases are skipped, and said so, without it.

    python benchmarks/bench_mamba2_cpu.py                 # the full table (several minutes on 2 cores)
    python benchmarks/bench_mamba2_cpu.py --quick         # small shapes, to check the script runs
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

from process_memory import rss_mb


def _inputs(batch, length, heads, headdim, state, groups=1, seed=0):
    import torch
    gen = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(batch, length, heads, headdim, generator=gen),
                dt=torch.randn(batch, length, heads, generator=gen) - 2.0,
                A=-torch.rand(heads, generator=gen) - 0.5,
                B=torch.randn(batch, length, groups, state, generator=gen),
                C=torch.randn(batch, length, groups, state, generator=gen),
                D=torch.randn(heads, generator=gen), dt_bias=torch.rand(heads, generator=gen))


def run_case(case: dict) -> dict:
    """One measurement, in this process: {"ms": median, "peak_mb": peak RSS growth}."""
    import torch
    inputs = _inputs(case["batch"], case["len"], case["heads"], case["headdim"], case["state"])
    if case["impl"] == "transformers":
        from transformers.models.mamba2.modeling_mamba2 import mamba2_chunk_scan as function
        chunk = case["chunk"]
    else:
        import ssmc
        function = ssmc.ops.mamba_chunk_scan_combined
        chunk = case["chunk"]
        if case["impl"] == "ssmc-sequential":
            # the sequential pipeline, through the same package: the cost model's other candidate
            from ssmc.compiler import compile_package
            package = compile_package(ssmc.ops._spec_of(ssmc.ops.chunk_scan_key(case["state"], case["headdim"], 1,
                                                                                 True, False))[0], "sequential")
            function = lambda x, dt, A, B, C, chunk_size, **kw: package.apply(x, dt, A, B, C, **kw)  # noqa: E731
    backward = case["mode"] == "fwd+bwd"

    def once():
        args = {k: (v.clone().requires_grad_() if backward else v) for k, v in inputs.items()}
        with torch.set_grad_enabled(backward):
            y = function(args["x"], args["dt"], args["A"], args["B"], args["C"], chunk, D=args["D"],
                         dt_bias=args["dt_bias"], dt_softplus=True)
            if backward:
                y.backward(torch.ones_like(y))
        return y

    base = rss_mb()                          # inputs made, libraries imported; before any call
    once()                                    # warm-up: compiles ssmc's package and C library once
    times = []
    for _ in range(case["repeat"]):
        start = time.perf_counter()
        once()
        times.append((time.perf_counter() - start) * 1e3)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"ms": statistics.median(times), "peak_mb": max(0.0, peak - base)}


def measure(case: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _row(case, result):
    if "error" in result:
        return f"| {case['impl']} | {case['chunk']} | {case['mode']} | {case['len']} | error: {result['error'][:80]} | |"
    chunk = case["chunk"] or ("-" if case["impl"] == "ssmc-sequential" else "cost model")
    return (f"| {case['impl']} | {chunk} | {case['mode']} | {case['len']} | "
            f"{result['ms']:.1f} | {result['peak_mb']:.0f} |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--case")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    import torch
    shape = dict(batch=2, heads=32, headdim=64, state=128) if not args.quick else dict(batch=1, heads=4, headdim=16,
                                                                                        state=16)
    length = 2048 if not args.quick else 256
    try:
        import transformers
        have_transformers = f"transformers {transformers.__version__}"
    except ImportError:
        have_transformers = None
    print(f"# Mamba-2 SSD on the CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{have_transformers or 'transformers not installed: its rows are skipped'}; float32, "
          f"batch {shape['batch']}, heads {shape['heads']}, headdim {shape['headdim']}, N {shape['state']}; "
          f"median of {args.repeat}\n")
    print("| implementation | chunk | mode | len | ms | peak MB |\n|---|---|---|---|---|---|")
    cases = []
    for mode in ("fwd", "fwd+bwd"):
        if have_transformers:
            cases.append(dict(impl="transformers", chunk=256, mode=mode, len=length))
        cases += [dict(impl="ssmc", chunk=None, mode=mode, len=length), dict(impl="ssmc", chunk=64, mode=mode, len=length)]
    lengths = (512, 2048, 8192) if not args.quick else (64, 256)
    for L in lengths:
        for chunk in (64, 128, 256):
            cases.append(dict(impl="ssmc", chunk=chunk, mode="fwd", len=L))
        cases.append(dict(impl="ssmc-sequential", chunk=None, mode="fwd", len=L))
        cases.append(dict(impl="ssmc", chunk=None, mode="fwd", len=L))
    for case in cases:
        case.update(shape, repeat=args.repeat)
        print(_row(case, measure(case)), flush=True)


if __name__ == "__main__":
    main()
