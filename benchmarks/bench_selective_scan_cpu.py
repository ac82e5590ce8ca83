"""Selective scan on the CPU: ssmc's generated C kernels against the alternatives, forward only
(--mode forward, the default) or forward + backward (--mode train; --mode all runs both).

    python benchmarks/bench_selective_scan_cpu.py [--batch 2 --len 2048 --dim 1536 --state 16]
    python benchmarks/bench_selective_scan_cpu.py --mode train

Forward: times (median of --repeat runs after --warmup) the Mamba selective scan with
softplus(dt + bias) and the D skip (preset `ssmc.presets.mamba(d_state, gate=False)`), float32:
  - ssmc C:           the generated package's `apply` with SSMC_BACKEND=c (OpenMP + libmvec kernel)
  - ssmc torch:       the same package with SSMC_BACKEND=torch (the generated PyTorch fallback)
  - torch loop:       a plain PyTorch step loop written here (discretize everything, then step)
  - transformers:     transformers' own PyTorch fallback of Mamba (`mamba_selective_scan` in
                      transformers.models.mamba.modeling_mamba), if transformers is installed
and checks every result against the C kernel's (relative error, and the float64 reference on a
small slice). Speed-ups are against transformers' fallback, or the torch loop without it.

Train (forward + backward): y = scan(...), then y.backward(g) for a fixed random g, gradients with
respect to u, delta, A, B, C, D and the dt bias, float32, through autograd:
  - ssmc C:           `compile_package(mamba(d_state, gate=False)).apply` with SSMC_BACKEND=c: the C
                      forward saves per-chunk checkpoints, the C backward recomputes each chunk's states
  - ssmc torch:       the same package with SSMC_BACKEND=torch (the generated PyTorch backward)
  - torch loop:       PyTorch autograd through a step loop written here (discretize everything, then
                      step; per-step slices by `unbind`, so its backward is linear in len)
  - transformers:     PyTorch autograd through transformers' `mamba_selective_scan` (its step loop
                      indexes the (batch, dim, len, N) tensors per step, so autograd's backward writes
                      a full-size gradient per step: quadratic in len; minutes at len 2048)
Each implementation runs in a fresh subprocess, so that its peak memory is its own: peak resident set
(VmHWM) during its full-size forward + backward runs (warm-up included), minus the resident set just
before the first of them (inputs built; ssmc's kernels compiled and loaded on a tiny problem before),
with the peak reset through /proc/self/clear_refs; where that is unavailable, the process's
ru_maxrss minus the same baseline. The gradients (of u, delta, A, B, C, D, bias: the outputs) are
part of that peak. Gradients are checked against ssmc C's (relative error).
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

import ssmc
from ssmc.compiler import compile_package
from ssmc.reference import selective_scan_ref

from process_memory import memory_kib, reset_peak


def make_inputs(batch, dim, length, n_state, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        u=torch.randn(batch, dim, length, generator=gen),
        delta=0.5 * torch.randn(batch, dim, length, generator=gen) - 1.0,
        A=-torch.arange(1, n_state + 1, dtype=torch.float32).repeat(dim, 1),   # S4D-Real, as Mamba's init
        B=torch.randn(batch, n_state, length, generator=gen),
        C=torch.randn(batch, n_state, length, generator=gen),
        D=torch.ones(dim),
        delta_bias=0.1 * torch.randn(dim, generator=gen),
    )


def torch_loop(u, delta, A, B, C, D, delta_bias):
    """The straightforward PyTorch formulation: discretize the whole sequence, then step."""
    dt = F.softplus(delta + delta_bias[:, None])                  # (batch, dim, len)
    decay = torch.exp(dt[..., None] * A[None, :, None, :])        # (batch, dim, len, N)
    inputs = (dt * u)[..., None] * B.transpose(1, 2)[:, None]     # (batch, dim, len, N)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = decay[:, :, t] * h + inputs[:, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    return torch.stack(ys, dim=-1) + D[:, None] * u


def transformers_fallback():
    """transformers' PyTorch selective scan (the function its Mamba uses without mamba_ssm)."""
    try:
        from transformers.models.mamba import modeling_mamba
    except ImportError:
        return None, "not installed"
    for name in ("mamba_selective_scan", "selective_scan_fn", "selective_scan"):
        fn = getattr(modeling_mamba, name, None)
        if fn is not None:
            # the hub-kernel decorator may wrap it; the torch path is the undecorated function
            return inspect.unwrap(fn), f"transformers.models.mamba.modeling_mamba.{name}"
    return None, "installed, but no reference selective scan function found in modeling_mamba"


def timed(fn, warmup, repeat):
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, result


def rel_error(out, ref):
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def torch_loop_unbind(u, delta, A, B, C, D, delta_bias):
    """`torch_loop` for autograd: per-step slices by unbind (one backward for all of them)."""
    dt = F.softplus(delta + delta_bias[:, None])
    decay = torch.exp(dt[..., None] * A[None, :, None, :]).unbind(2)
    inputs = ((dt * u)[..., None] * B.transpose(1, 2)[:, None]).unbind(2)
    Cs = C.unbind(2)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = decay[t] * h + inputs[t]
        ys.append(torch.einsum("bdn,bn->bd", h, Cs[t]))
    return torch.stack(ys, dim=-1) + D[:, None] * u


TRAIN_IMPLEMENTATIONS = {
    "ssmc-c": "ssmc C (generated: C forward + C backward)",
    "ssmc-torch": "ssmc torch fallback (generated)",
    "torch-loop": "plain PyTorch autograd loop (this script)",
    "transformers": "transformers mamba_selective_scan + autograd",
}
GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def train_child(args):
    """One implementation's forward + backward, in this (fresh) process: prints one JSON line."""
    impl = args.child
    if impl.startswith("ssmc"):
        os.environ["SSMC_BACKEND"] = impl.split("-")[1]
        pkg = compile_package(ssmc.presets.mamba(d_state=args.state, gate=False))
        # compile and load the kernels on a tiny problem first: neither compile time nor the
        # libraries count below
        tiny = {k: v.requires_grad_() for k, v in make_inputs(1, 16, 16, args.state).items()}
        pkg.apply(**tiny).sum().backward()
    torch.manual_seed(0)
    x = make_inputs(args.batch, args.dim, args.len, args.state)
    leaves = {k: x[k].clone().requires_grad_() for k in GRAD_NAMES}
    grad_y = torch.randn(args.batch, args.dim, args.len, generator=torch.Generator().manual_seed(1))
    del x
    if impl.startswith("ssmc"):
        forward = lambda: pkg.apply(**leaves)                                      # noqa: E731
    elif impl == "torch-loop":
        forward = lambda: torch_loop_unbind(**leaves)                              # noqa: E731
    else:
        fn, where = transformers_fallback()
        if fn is None:
            print(json.dumps({"impl": impl, "error": where}))
            return
        forward = lambda: fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"],  # noqa: E731
                             leaves["D"], None, leaves["delta_bias"], True)

    def step():
        for leaf in leaves.values():
            leaf.grad = None
        forward().backward(grad_y)

    # peak memory: over every full-size run, the first one included (before it the process holds
    # the inputs and nothing else of the implementation: a run after a warm-up would find freed
    # memory kept by the allocator and look free)
    import gc
    gc.collect()
    baseline = memory_kib("VmRSS")
    reset = reset_peak()
    warmup = args.warmup if impl == "ssmc-c" else 0
    repeat = args.repeat if impl == "ssmc-c" else args.train_slow_repeat
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = memory_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = {"impl": impl, "ms": statistics.median(times) * 1e3, "runs": len(times),
              "peak_extra_mib": (peak - baseline) / 1024, "baseline_mib": baseline / 1024,
              "peak_method": "VmHWM after clear_refs" if reset else "ru_maxrss"}
    if args.grads_to:
        torch.save({k: v.grad for k, v in leaves.items()}, args.grads_to)
    print(json.dumps(result))


def train_main(args):
    print(f"selective scan forward + backward, batch {args.batch}, len {args.len}, dim {args.dim}, "
          f"N {args.state}, float32, softplus(dt + bias), D skip; gradients of u, delta, A, B, C, D, bias; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}")
    print("each implementation in a fresh subprocess; memory: peak RSS during its forward + backward runs "
          "minus RSS before them")
    rows, grads = [], {}
    with tempfile.TemporaryDirectory() as folder:
        for impl in args.train_impls.split(","):
            path = os.path.join(folder, f"{impl}.pt")
            command = [sys.executable, os.path.abspath(__file__), "--child", impl, "--grads-to", path,
                       "--batch", str(args.batch), "--len", str(args.len), "--dim", str(args.dim),
                       "--state", str(args.state), "--warmup", str(args.warmup), "--repeat", str(args.repeat),
                       "--train-slow-repeat", str(args.train_slow_repeat)]
            start = time.perf_counter()
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=args.train_timeout)
            except subprocess.TimeoutExpired:
                rows.append({"impl": impl, "error": f"did not finish in {args.train_timeout} s"})
                print(f"{impl}: timed out after {args.train_timeout} s", flush=True)
                continue
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode != 0 or not lines:
                rows.append({"impl": impl, "error": (done.stderr or done.stdout).strip()[-500:]})
                print(f"{impl}: failed\n{rows[-1]['error']}", flush=True)
                continue
            row = json.loads(lines[-1])
            rows.append(row)
            if "error" not in row:
                grads[impl] = torch.load(path)
            print(f"{impl}: done in {time.perf_counter() - start:.1f} s (process)", flush=True)
    base = next((r for r in rows if r["impl"] == "transformers" and "ms" in r), None)
    base = base or next((r for r in rows if r["impl"] == "torch-loop" and "ms" in r), None)
    reference = grads.get("ssmc-c")
    print()
    header = f"{'implementation':48s} {'ms':>10s} {'runs':>5s} {'speed-up vs ' + (base['impl'] if base else '-'):>26s} " \
             f"{'peak extra MiB':>15s} {'max grad rel err vs C':>22s}"
    print(header)
    for row in rows:
        name = TRAIN_IMPLEMENTATIONS.get(row["impl"], row["impl"])
        if "ms" not in row:
            print(f"{name:48s} {row.get('error', '?')[:80]}")
            continue
        err = "-"
        if reference is not None and row["impl"] in grads and row["impl"] != "ssmc-c":
            err = f"{max(rel_error(grads[row['impl']][k], reference[k]) for k in GRAD_NAMES):.2e}"
        speedup = f"{base['ms'] / row['ms']:25.1f}x" if base else f"{'-':>26s}"
        print(f"{name:48s} {row['ms']:10.1f} {row['runs']:5d} {speedup} {row['peak_extra_mib']:15.1f} {err:>22s}")
    methods = {row.get("peak_method") for row in rows if "peak_method" in row}
    print(f"(peak memory method: {', '.join(sorted(methods))})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--len", type=int, default=2048)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--slow-repeat", type=int, default=3, help="runs of the slow PyTorch baselines")
    parser.add_argument("--mode", choices=("forward", "train", "all"), default="forward",
                        help="forward only, forward + backward (train), or both")
    parser.add_argument("--train-impls", default=",".join(TRAIN_IMPLEMENTATIONS),
                        help="comma-separated implementations of the train mode: " + ", ".join(TRAIN_IMPLEMENTATIONS))
    parser.add_argument("--train-slow-repeat", type=int, default=1,
                        help="train-mode runs of the baselines (transformers takes minutes per run)")
    parser.add_argument("--train-timeout", type=float, default=None, help="seconds per train-mode implementation")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--grads-to", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return train_child(args)
    if args.mode in ("train", "all"):
        train_main(args)
        if args.mode == "train":
            return
        print()

    spec = ssmc.presets.mamba(d_state=args.state, gate=False)
    pkg = compile_package(spec)
    x = make_inputs(args.batch, args.dim, args.len, args.state)
    call = dict(u=x["u"], delta=x["delta"], A=x["A"], B=x["B"], C=x["C"], D=x["D"], delta_bias=x["delta_bias"])

    def ssmc_with(backend):
        def run():
            previous = os.environ.get("SSMC_BACKEND")
            os.environ["SSMC_BACKEND"] = backend
            try:
                return pkg.apply(**call)
            finally:
                if previous is None:
                    del os.environ["SSMC_BACKEND"]
                else:
                    os.environ["SSMC_BACKEND"] = previous
        return run

    print(f"selective scan forward, batch {args.batch}, len {args.len}, dim {args.dim}, N {args.state}, float32, "
          f"softplus(dt + bias), D skip; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}")
    start = time.perf_counter()
    ssmc_with("c")()
    print(f"(first C call, compile or cache load included: {time.perf_counter() - start:.2f} s)")

    rows = []
    ms, y_c = timed(ssmc_with("c"), args.warmup, args.repeat)
    rows.append(("ssmc C (generated: OpenMP, SIMD exp)", ms, y_c))
    ms, y = timed(ssmc_with("torch"), min(args.warmup, 1), args.slow_repeat)
    rows.append(("ssmc torch fallback (generated)", ms, y))
    ms, y = timed(lambda: torch_loop(**call), min(args.warmup, 1), args.slow_repeat)
    rows.append(("plain PyTorch loop (this script)", ms, y))
    fn, where = transformers_fallback()
    transformers_ms = None
    if fn is not None:
        ms, y = timed(lambda: fn(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], None, x["delta_bias"], True),
                      min(args.warmup, 1), args.slow_repeat)
        rows.append(("transformers PyTorch fallback", ms, y))
        transformers_ms = ms
        print(f"transformers: {where}")
    else:
        print(f"transformers: {where}")

    # the C kernel against the float64 reference on a slice of channels (the reference is slow)
    sl = slice(0, min(args.dim, 64))
    ref = selective_scan_ref(x["u"][:, sl], x["delta"][:, sl], x["A"][sl], x["B"], x["C"], x["D"][sl],
                             delta_bias=x["delta_bias"][sl], delta_softplus=True)
    print(f"C kernel vs float64 reference (channels {sl.start}..{sl.stop}): rel error {rel_error(y_c[:, sl], ref):.2e}")

    base_name, base_ms = ("transformers", transformers_ms) if transformers_ms else ("torch loop", rows[2][1])
    print()
    print(f"{'implementation':40s} {'ms':>10s} {'speed-up vs ' + base_name:>26s} {'rel err vs C':>14s}")
    for name, ms, y in rows:
        print(f"{name:40s} {ms:10.1f} {base_ms / ms:25.1f}x {rel_error(y, y_c):14.2e}")
    if fn is None:
        print(f"{'transformers PyTorch fallback':40s} {'not installed':>10s}")


if __name__ == "__main__":
    main()
