"""Selective scan forward on the CPU: ssmc's generated C kernel against the alternatives.

    python benchmarks/bench_selective_scan_cpu.py [--batch 2 --len 2048 --dim 1536 --state 16]

Times (median of --repeat runs after --warmup) the Mamba selective scan with softplus(dt + bias)
and the D skip (preset `ssmc.presets.mamba(d_state, gate=False)`), float32:
  - ssmc C:           the generated package's `apply` with SSMC_BACKEND=c (OpenMP + libmvec kernel)
  - ssmc torch:       the same package with SSMC_BACKEND=torch (the generated PyTorch fallback)
  - torch loop:       a plain PyTorch step loop written here (discretize everything, then step)
  - transformers:     transformers' own PyTorch fallback of Mamba (`mamba_selective_scan` in
                      transformers.models.mamba.modeling_mamba), if transformers is installed
and checks every result against the C kernel's (relative error, and the float64 reference on a
small slice). Speed-ups are against transformers' fallback, or the torch loop without it.
"""
from __future__ import annotations

import argparse
import inspect
import os
import statistics
import time

import torch
import torch.nn.functional as F

import ssmc
from ssmc.compiler import compile_package
from ssmc.reference import selective_scan_ref


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--len", type=int, default=2048)
    parser.add_argument("--dim", type=int, default=1536)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--slow-repeat", type=int, default=3, help="runs of the slow PyTorch baselines")
    args = parser.parse_args()

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
