"""Run the Mamba-2 package written by `ssmc compile` on the CPU, under the cost model's pipeline and
under a fixed chunk size, and check both against the float64 sequential reference.

    ssmc compile examples/mamba2.py -o build
    python examples/run_mamba2.py build mamba2
"""
import importlib
import sys
import time

import torch

from ssmc.reference_ssd import ssd_sequential_ref


def main(build_dir="build", name="mamba2"):
    sys.path.insert(0, build_dir)
    package = importlib.import_module(name)
    torch.manual_seed(0)
    batch, length, heads = 2, 1024, 8
    x = torch.randn(batch, length, heads, package.HEADDIM)
    dt = torch.randn(batch, length, heads) - 2
    A = -torch.rand(heads) - 0.5
    B, C = (torch.randn(batch, length, package.GROUPS, package.D_STATE) for _ in range(2))
    D, z, dt_bias = torch.randn(heads), torch.randn_like(x), torch.rand(heads)
    ref = ssd_sequential_ref(x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=True)
    for chunk_size in (None, 64):
        with torch.no_grad():
            package.apply(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=True)
            start = time.perf_counter()
            y = package.apply(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=True)
            elapsed = time.perf_counter() - start
        pipeline = package.choose_pipeline(batch, length, heads, package.HEADDIM, package.D_STATE, chunk_size)
        error = ((y.double() - ref).norm() / ref.norm()).item()
        print(f"{name}: x {tuple(x.shape)} -> y {tuple(y.shape)} by {pipeline[0]}"
              f"{'' if pipeline[0] == 'sequential' else f' (chunk {pipeline[1]})'} in {elapsed * 1e3:.1f} ms; "
              f"relative error vs float64 reference: {error:.2e}")
        if not error < 1e-4:
            raise SystemExit("mismatch with the reference")


if __name__ == "__main__":
    main(*sys.argv[1:])
