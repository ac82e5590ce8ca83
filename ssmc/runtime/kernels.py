"""Lazy loading of a generated package's per-backend kernel module (`kernels_<backend>.py`).

Loading is lazy so that a CPU user never imports triton, and so that TRITON_INTERPRET, read when a
kernel is decorated, can still be set by the caller before first use. First uses may come from
several threads at once: a lock makes them load the module once, and none sees it half-loaded."""
from __future__ import annotations

import importlib
import threading

from .backend import select_backend


class KernelSet:
    def __init__(self, package: str):
        self.package = package
        self._loaded = {}
        self._lock = threading.Lock()

    def for_device(self, device):
        return self.get(select_backend(device))

    def get(self, backend: str):
        module = self._loaded.get(backend)
        if module is None:
            with self._lock:
                module = self._loaded.get(backend)
                if module is None:
                    module = importlib.import_module(f"{self.package}.kernels_{backend}")
                    self._loaded[backend] = module
        return module
