"""Gated linear attention on the CPU: ssmc's generated kernels (`ssmc.ops.chunk_gla`, the chunked
pipeline; `fused_recurrent_gla`, the sequential one) against a plain PyTorch chunked formulation of
the same layer, on the same inputs, forward and forward+backward (autograd for the baseline), with
peak memory.

The baseline is the textbook chunked GLA (Yang et al. 2024, section 4), the shape of
flash-linear-attention's naive chunk reference: per chunk of 64 steps, with b the within-chunk cumulative
log-decay, the intra-chunk scores (q·exp(b)) (k·exp(-b))ᵀ under a causal mask, the carried state read
by q·exp(b), and the state advanced by the chunk's keys decayed to its end. It is written with
batched torch ops over all chunks at once, except the inter-chunk state recurrence (a loop over
chunks). exp(-b) is unbounded: with GLA's usual decays (logsigmoid(x)/16, as in fla's tests) it stays
in range; ssmc's kernels are sub-chunked and never form a positive exponent.

Every case runs in a fresh subprocess, so that its peak resident memory (ru_maxrss, minus the resident
size after the inputs are made, before the first call) belongs to it alone. Times are the median of
`--repeat` runs after one warm-up.

    python benchmarks/bench_gla_cpu.py            # batch 2, len 2048, heads 4, K = V = 128
    python benchmarks/bench_gla_cpu.py --quick    # small shapes, to check the script runs
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

CHUNK = 64


def _inputs(batch, length, heads, K, V, seed=0):
    import torch
    import torch.nn.functional as F
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    return dict(q=randn(batch, length, heads, K), k=randn(batch, length, heads, K), v=randn(batch, length, heads, V),
                g=F.logsigmoid(randn(batch, length, heads, K)) / 16)


def torch_chunk_gla(q, k, v, g, chunk=CHUNK):
    """The plain PyTorch chunked GLA (the module docstring says which); o (batch, len, heads, V)."""
    import torch
    batch, length, heads, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5
    pad = (-length) % chunk
    if pad:
        q, k, v, g = (torch.nn.functional.pad(x, (0, 0, 0, 0, 0, pad)) for x in (q, k, v, g))
    n = (length + pad) // chunk
    # (batch, heads, chunks, chunk, dim)
    q, k, v, g = (x.reshape(batch, n, chunk, heads, -1).permute(0, 3, 1, 2, 4) for x in (q, k, v, g))
    b = g.cumsum(-2)
    q_dec = q * scale * b.exp()
    k_inv = k * (-b).exp()
    k_end = k * (b[..., -1:, :] - b).exp()
    mask = torch.ones(chunk, chunk, dtype=torch.bool).tril()
    scores = (q_dec @ k_inv.transpose(-1, -2)).masked_fill(~mask, 0.0)
    o = scores @ v
    state = q.new_zeros(batch, heads, K, V)
    inter = []
    for c in range(n):
        inter.append(q_dec[:, :, c] @ state)
        state = state * b[:, :, c, -1, :, None].exp() + k_end[:, :, c].transpose(-1, -2) @ v[:, :, c]
    o = o + torch.stack(inter, dim=2)
    return o.permute(0, 2, 3, 1, 4).reshape(batch, n * chunk, heads, V)[:, :length]


def run_case(case: dict) -> dict:
    """One measurement, in this process: {"ms": median, "peak_mb": peak RSS growth, "check": error}."""
    import torch
    inputs = _inputs(case["batch"], case["len"], case["heads"], case["K"], case["V"])
    if case["impl"] == "torch-chunked":
        function = torch_chunk_gla
    else:
        import ssmc.ops
        if case["impl"] == "ssmc-chunked":
            function = lambda q, k, v, g: ssmc.ops.chunk_gla(q, k, v, g)[0]  # noqa: E731
        else:
            function = lambda q, k, v, g: ssmc.ops.fused_recurrent_gla(q, k, v, gk=g)[0]  # noqa: E731
    backward = case["mode"] == "fwd+bwd"

    def once():
        args = {name: (x.clone().requires_grad_() if backward else x) for name, x in inputs.items()}
        with torch.set_grad_enabled(backward):
            o = function(**args)
            if backward:
                o.backward(torch.ones_like(o))
        return o

    base = rss_mb()
    out = once()                              # warm-up: compiles ssmc's package and C library once
    times = []
    for _ in range(case["repeat"]):
        start = time.perf_counter()
        once()
        times.append((time.perf_counter() - start) * 1e3)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # agreement with the float64 evaluation of the baseline formula on the same inputs
    ref = torch_chunk_gla(*(inputs[n].double() for n in ("q", "k", "v", "g")))
    check = ((out.detach().double() - ref).norm() / ref.norm()).item()
    return {"ms": statistics.median(times), "peak_mb": max(0.0, peak - base), "check": check}


def measure(case: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


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
    shape = dict(batch=2, len=2048, heads=4, K=128, V=128) if not args.quick else dict(batch=1, len=200, heads=2,
                                                                                       K=16, V=16)
    print(f"# GLA on the CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads); float32, "
          f"{', '.join(f'{k} {v}' for k, v in shape.items())}; median of {args.repeat}\n")
    print("| implementation | mode | ms | peak MB | rel. error vs float64 | vs torch-chunked |\n|---|---|---|---|---|---|")
    for mode in ("fwd", "fwd+bwd"):
        results = {}
        for impl in ("torch-chunked", "ssmc-chunked", "ssmc-sequential"):
            case = dict(impl=impl, mode=mode, repeat=args.repeat, **shape)
            result = results[impl] = measure(case)
            if "error" in result:
                print(f"| {impl} | {mode} | error: {result['error'][:100]} | | | |", flush=True)
                continue
            baseline = results.get("torch-chunked", {}).get("ms")
            ratio = f"{baseline / result['ms']:.2f}x" if baseline else "-"
            print(f"| {impl} | {mode} | {result['ms']:.1f} | {result['peak_mb']:.0f} | {result['check']:.1e} | "
                  f"{ratio} |", flush=True)


if __name__ == "__main__":
    main()
