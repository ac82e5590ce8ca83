"""Lazy loading of a generated package's per-backend kernel module (`kernels_<backend>.py`).

Loading is lazy so that a CPU user never imports triton, and so that TRITON_INTERPRET, read when a
kernel is decorated, can still be set by the caller before first use."""
from __future__ import annotations

import importlib

from .backend import select_backend


class KernelSet:
    def __init__(self, package: str):
        self.package = package
        self._loaded = {}

    def for_device(self, device):
        return self.get(select_backend(device))

    def get(self, backend: str):
        if backend not in self._loaded:
            self._loaded[backend] = importlib.import_module(f"{self.package}.kernels_{backend}")
        return self._loaded[backend]
