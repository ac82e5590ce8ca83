"""S5 on the CPU: ssmc's `s5_scan` (each pipeline, and the cost model's choice) against a plain
PyTorch S5 layer built on a log-depth associative scan, forward and forward+backward, with peak memory
and agreement checks.

The baseline is S5's own algorithm (Smith et al. 2023, the JAX code's `apply_ssm`) in torch ops:
ZOH discretization, the input projection B̄u, `jax.lax.associative_scan` over the pairs
(Λ̄_t, B̄u_t) with the operator (a_i, b_i) ∘ (a_j, b_j) = (a_j·a_i, a_j·b_i + b_j), and the readout
y = 2·Re(C x) + D·u, over complex64 tensors, differentiated by autograd. Two scans:
- "blelloch": the work-efficient recursive odd/even scan that `jax.lax.associative_scan` runs
  (combine neighbouring pairs, scan the half-length sequence, fill in the even positions);
- "hillis-steele": log2(len) passes, each combining every element with the one 2^k steps back.
Λ̄ does not depend on the batch, so its sequence is kept with a batch axis of 1 (broadcast), which
only helps the baseline. The projections are real matrix products on the real and imaginary parts
(u is real; only Re(C x) is needed), not complex ones, so the baseline does no wasted products.

ssmc's pipelines (`ssmc.ops.s5_scan(..., pipeline=...)`): "associative" (the projections as torch
matrix products around the generated diagonal scan kernel, the states written), "fused" (projection,
scan and readout in one kernel, the states never written), and None (the cost model's choice).

Every case runs in a fresh subprocess: its time is the median of `--repeat` runs after one warm-up
at full size (ssmc's package and C library are compiled and loaded on a tiny problem first); its peak
memory is the peak resident set (VmHWM, reset through /proc/self/clear_refs just before the full-size
runs; ru_maxrss where that is unavailable) minus the resident set at that moment, so the inputs do not
count and, in fwd+bwd, the gradients do. Each case saves its output (and gradients) and the parent
compares them with a float64 (complex128) evaluation of the baseline on the same inputs.

    python benchmarks/bench_s5_cpu.py                  # batch 8, len 4096, H 256, P 256 (minutes)
    python benchmarks/bench_s5_cpu.py --batch 2 --len 2048
    python benchmarks/bench_s5_cpu.py --quick          # small shapes, to check the script runs

P is the number of complex states `s5_scan` holds (Lambda (P,)); with conj_sym each stands for a
conjugate pair, so the paper's latent size is 2P.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from process_memory import memory_kib, reset_peak

IMPLS = ("torch-blelloch", "torch-hillis-steele", "ssmc-associative", "ssmc-fused", "ssmc-auto")
GRAD_NAMES = ("u", "Lambda", "B", "C", "D", "step")


# ---- inputs ---------------------------------------------------------------------------------------

def make_inputs(batch, length, H, P, seed=0):
    """u (batch, len, H); Lambda (P,) S4D-Lin (-1/2 + iπn); B (P, H), C (H, P) complex normal over
    sqrt(2·fan-in); D (H,); step (P,) log-uniform in [1e-3, 1e-1]; dy (batch, len, H), the output
    gradient of the fwd+bwd cases."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    cplx = lambda *s: torch.complex(randn(*s), randn(*s))  # noqa: E731
    return dict(u=randn(batch, length, H),
                Lambda=torch.complex(torch.full((P,), -0.5), math.pi * torch.arange(P, dtype=torch.float32)),
                B=cplx(P, H) / math.sqrt(2 * H), C=cplx(H, P) / math.sqrt(2 * P), D=randn(H),
                step=torch.exp(math.log(1e-3) + torch.rand(P, generator=gen) * (math.log(1e-1) - math.log(1e-3))),
                dy=randn(batch, length, H))


# ---- the plain PyTorch baseline ---------------------------------------------------------------------

def _combine(a_i, b_i, a_j, b_j):
    """(a_i, b_i) then (a_j, b_j): x -> a_j (a_i x + b_i) + b_j."""
    return a_j * a_i, a_j * b_i + b_j


def _interleave(even, odd):
    """even[0], odd[0], even[1], odd[1], ... along axis 1 (len(even) = len(odd) or len(odd) + 1)."""
    import torch
    if even.shape[1] == odd.shape[1]:
        return torch.stack([even, odd], dim=2).flatten(1, 2)
    return torch.cat([torch.stack([even[:, :-1], odd], dim=2).flatten(1, 2), even[:, -1:]], dim=1)


def blelloch_scan(a, b):
    """Inclusive scan of (a, b) along axis 1 by jax.lax.associative_scan's recursion; a may have a
    batch axis of 1. Returns (cumulative a, states)."""
    import torch
    n = b.shape[1]
    if n < 2:
        return a, b
    reduced = _combine(a[:, 0:n - 1:2], b[:, 0:n - 1:2], a[:, 1::2], b[:, 1::2])
    odd_a, odd_b = blelloch_scan(*reduced)                         # results at positions 1, 3, 5, ...
    if n % 2 == 0:
        even_a, even_b = _combine(odd_a[:, :-1], odd_b[:, :-1], a[:, 2::2], b[:, 2::2])
    else:
        even_a, even_b = _combine(odd_a, odd_b, a[:, 2::2], b[:, 2::2])
    even_a, even_b = torch.cat([a[:, :1], even_a], 1), torch.cat([b[:, :1], even_b], 1)
    return _interleave(even_a, odd_a), _interleave(even_b, odd_b)


def hillis_steele_scan(a, b):
    """Inclusive scan of (a, b) along axis 1 in ceil(log2 len) passes; returns (cumulative a, states)."""
    import torch
    n, d = b.shape[1], 1
    while d < n:
        new_a, new_b = _combine(a[:, :-d], b[:, :-d], a[:, d:], b[:, d:])
        a, b = torch.cat([a[:, :d], new_a], 1), torch.cat([b[:, :d], new_b], 1)
        d *= 2
    return a, b


def torch_s5(u, Lambda, B, C, D, step, scan=blelloch_scan):
    """S5 (conj_sym, ZOH, LTI) in plain PyTorch: y (batch, len, H) real."""
    import torch
    batch, length, H = u.shape
    Lambda_bar = torch.exp(Lambda * step)                                  # (P,)
    B_bar = ((Lambda_bar - 1) / Lambda)[:, None] * B                       # (P, H)
    Bu = torch.complex(u @ B_bar.real.t(), u @ B_bar.imag.t())             # (batch, len, P)
    a = Lambda_bar.expand(1, length, -1)
    _, x = scan(a, Bu)
    y = 2 * (x.real @ C.real.t() - x.imag @ C.imag.t())                    # 2·Re(C x)
    return y + D * u


# ---- one case, in a fresh process ---------------------------------------------------------------

def _function(impl):
    """f(u, Lambda, B, C, D, step) -> y for one implementation."""
    if impl.startswith("torch-"):
        scan = blelloch_scan if impl == "torch-blelloch" else hillis_steele_scan
        return lambda *args: torch_s5(*args, scan=scan)
    import ssmc.ops
    pipeline = {"ssmc-associative": "associative", "ssmc-fused": "fused", "ssmc-auto": None}[impl]
    return lambda *args: ssmc.ops.s5_scan(*args, pipeline=pipeline)


def run_case(case: dict) -> dict:
    """One measurement in this process: {"ms", "peak_mb", "peak_method"[, "pipeline"]}; saves the
    output and gradients of the last run to case["save"]."""
    import torch
    inputs = make_inputs(case["batch"], case["len"], case["H"], case["P"])
    dy = inputs.pop("dy")
    backward = case["mode"] == "fwd+bwd"
    if case["impl"] == "reference":        # the baseline in float64 / complex128
        args = {k: (v.to(torch.complex128) if v.is_complex() else v.double()).requires_grad_(backward)
                for k, v in inputs.items()}
        y = torch_s5(*args.values())
        if backward:
            y.backward(dy.double())
        torch.save({"y": y.detach(), **({k: v.grad for k, v in args.items()} if backward else {})}, case["save"])
        return {}
    function = _function(case["impl"])
    result = {}
    if case["impl"].startswith("ssmc"):
        import ssmc.ops
        from ssmc.runtime.multihead import cost_target
        tiny = make_inputs(1, 16, 4, case["P"])
        tiny.pop("dy")
        tiny = {k: v.requires_grad_() for k, v in tiny.items()}
        function(*tiny.values()).sum().backward()          # compile and load the package first
        package = ssmc.ops._package(ssmc.ops.s5_key(case["P"]))
        result["pipeline"] = package.choose_pipeline(case["batch"], case["len"], case["H"], case["P"],
                                                     cost_target("cpu"))

    def once():
        args = {k: (v.clone().requires_grad_() if backward else v) for k, v in inputs.items()}
        with torch.set_grad_enabled(backward):
            y = function(*args.values())
            if backward:
                y.backward(dy)
        return y, args

    reset = reset_peak()
    base = memory_kib("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    once()                                                  # warm-up at full size (its output is dropped)
    times, y, args = [], None, None
    for _ in range(case["repeat"]):
        y = args = None                                     # the previous run's output is not kept alive
        start = time.perf_counter()
        y, args = once()
        times.append((time.perf_counter() - start) * 1e3)
    peak = memory_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.save({"y": y.detach(), **({k: v.grad for k, v in args.items()} if backward else {})}, case["save"])
    result.update(ms=statistics.median(times), peak_mb=max(0.0, (peak - base) / 1024),
                  peak_method="VmHWM after clear_refs" if reset else "ru_maxrss", times=times)
    return result


def measure(case: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def rel_error(x, ref) -> float:
    import torch
    x, ref = (torch.view_as_real(t) if t.is_complex() else t for t in (x, ref))
    return ((x.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30)).item()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case")
    parser.add_argument("--quick", action="store_true", help="small shapes, to check the script runs")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--len", type=int, default=4096)
    parser.add_argument("--H", type=int, default=256)
    parser.add_argument("--P", type=int, default=256, help="complex states (conjugate pairs) of Lambda")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--modes", default="fwd,fwd+bwd")
    parser.add_argument("--impls", default=",".join(IMPLS))
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    import torch
    shape = dict(batch=args.batch, len=args.len, H=args.H, P=args.P)
    if args.quick:
        shape = dict(batch=2, len=300, H=32, P=16)
    load = os.getloadavg()
    print(f"# S5 on the CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads); float32 (complex64), conj_sym, ZOH, "
          f"{', '.join(f'{k} {v}' for k, v in shape.items())}; median of {args.repeat}; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    print("| implementation | mode | ms | peak MB | rel. error of y | max rel. error of grads | vs torch-blelloch |\n"
          "|---|---|---:|---:|---:|---:|---:|", flush=True)
    impls = [i for i in args.impls.split(",") if i]
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            ref_path = os.path.join(tmp, f"reference-{mode}.pt")
            ref_result = measure(dict(impl="reference", mode=mode, save=ref_path, repeat=0, **shape))
            ref = torch.load(ref_path) if "error" not in ref_result else None
            results = {}
            for impl in impls:
                path = os.path.join(tmp, f"{impl}-{mode}.pt")
                result = results[impl] = measure(dict(impl=impl, mode=mode, save=path, repeat=args.repeat, **shape))
                if "error" in result:
                    print(f"| {impl} | {mode} | error: {result['error'][:100]} | | | | |", flush=True)
                    continue
                err_y = err_g = "-"
                if ref is not None:
                    out = torch.load(path)
                    err_y = f"{rel_error(out['y'], ref['y']):.1e}"
                    if mode == "fwd+bwd":
                        err, worst = max((rel_error(out[k], ref[k]), k) for k in GRAD_NAMES)
                        err_g = f"{err:.1e} ({worst})"
                    os.remove(path)
                baseline = results.get("torch-blelloch", {}).get("ms")
                ratio = f"{baseline / result['ms']:.2f}x" if baseline else "-"
                name = impl + (f" (→ {result['pipeline']})" if impl == "ssmc-auto" else "")
                print(f"| {name} | {mode} | {result['ms']:.1f} | {result['peak_mb']:.0f} | {err_y} | {err_g} | "
                      f"{ratio} |", flush=True)
                print(f"<!-- {impl} {mode}: runs {', '.join(f'{t:.1f}' for t in result['times'])} ms; "
                      f"peak by {result['peak_method']} -->", flush=True)
    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
