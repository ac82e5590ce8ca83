"""Run a package written by `ssmc compile` on the CPU and check it against the float64 reference.

    ssmc compile examples/mamba.py -o build
    python examples/run_compiled.py build mamba
"""
import importlib
import sys
import time

import torch

from ssmc.reference import selective_scan_ref
from ssmc.runtime import cbuild


def main(build_dir="build", name="mamba"):
    sys.path.insert(0, build_dir)
    package = importlib.import_module(name)
    torch.manual_seed(0)
    layer = package.Layer(d_model=256)
    x = torch.randn(2, 512, 256)
    z = torch.randn(2, 512, 256) if package.SIGNATURE.has_z else None
    with torch.no_grad():
        builds = cbuild.build_count()
        start = time.perf_counter()
        y = layer(x, z) if z is not None else layer(x)        # first call: builds the C kernel unless cached
        first = time.perf_counter() - start
        first_call = "with the kernel build" if cbuild.build_count() > builds else "no kernel build: it was cached"
        start = time.perf_counter()
        y = layer(x, z) if z is not None else layer(x)
        elapsed = time.perf_counter() - start
        # the same layer through the float64 reference recurrence
        u = x.transpose(1, 2)
        dt_low, B, C = torch.split(layer.x_proj(x), layer.split, dim=-1)
        delta = (dt_low @ layer.dt_proj.weight.t()).transpose(1, 2)
        B = B.reshape(2, 512, 1, -1).permute(0, 2, 3, 1)
        C = C.reshape(2, 512, 1, -1).permute(0, 2, 3, 1)
        ref = selective_scan_ref(u, delta, layer.A(), B, C, layer.D, z.transpose(1, 2) if z is not None else None,
                                 layer.dt_proj.bias, delta_softplus=True).transpose(1, 2)
    error = ((y.double() - ref).norm() / ref.norm()).item()
    print(f"{name}: input {tuple(x.shape)} -> output {tuple(y.shape)} in {elapsed * 1e3:.1f} ms "
          f"(first call {first * 1e3:.0f} ms, {first_call}) "
          f"(backend: {package.KERNELS.for_device(x.device).__name__.rsplit('.', 1)[-1]}); "
          f"relative error vs float64 reference: {error:.2e}")
    if not error < 1e-4:
        raise SystemExit("mismatch with the reference")


if __name__ == "__main__":
    main(*sys.argv[1:])
