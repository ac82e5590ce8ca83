"""Backend choice: CUDA tensors -> Triton, CPU tensors -> generated C, and a generated PyTorch
fallback where no C compiler exists. `SSMC_BACKEND=triton|c|torch` forces one (CI runs the Triton
kernels on CPU tensors under TRITON_INTERPRET=1 this way)."""
from __future__ import annotations

import functools
import os
import shutil

from ..errors import SSMCError

BACKENDS = ("triton", "c", "torch")


@functools.lru_cache(maxsize=None)
def c_compiler() -> str | None:
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available_backends() -> tuple:
    found = ["torch"]
    if c_compiler():
        found.insert(0, "c")
    try:
        import triton  # noqa: F401
        found.insert(0, "triton")
    except ImportError:
        pass
    return tuple(found)


def select_backend(device) -> str:
    forced = os.environ.get("SSMC_BACKEND", "").strip().lower()
    if forced:
        if forced not in BACKENDS:
            raise SSMCError(f"SSMC_BACKEND must be one of {BACKENDS}, got {forced!r}")
        if forced == "triton" and getattr(device, "type", "cpu") != "cuda" and not triton_interpreted():
            raise SSMCError("SSMC_BACKEND=triton with CPU tensors needs TRITON_INTERPRET=1 "
                            "(set before anything imports triton kernels)")
        return forced
    if getattr(device, "type", "cpu") == "cuda":
        return "triton"
    return "c" if c_compiler() else "torch"
