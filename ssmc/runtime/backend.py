"""Backend choice: CUDA tensors -> Triton, CPU tensors -> generated C, and a generated PyTorch
fallback where no C compiler exists. `SSMC_BACKEND=triton|c|torch` forces one (CI runs the Triton
kernels on CPU tensors under TRITON_INTERPRET=1 this way).

`CC` may carry arguments (`CC="ccache gcc"`, `CC="gcc -m64"`): it is split as a shell would split it.
A `CC` whose program is not found is not fatal (CC is often set for other tools, and any C compiler
builds the same kernels): ssmc warns once per CC value, with a `CompilerWarning` that names CC and the
compiler used instead (the first of cc, gcc, clang on PATH; or none, and then the torch backend)."""
from __future__ import annotations

import functools
import os
import shlex
import shutil
import warnings

from ..errors import SSMCError
from .cache import user_stacklevel

BACKENDS = ("triton", "c", "torch")


class CompilerWarning(UserWarning):
    """`$CC` names a program that is not found; ssmc uses another C compiler (or none)."""


def c_compiler() -> tuple | None:
    """The C compiler's command as a tuple of words (the program's full path first), from `$CC`,
    else the first of cc, gcc, clang on PATH; None if there is none."""
    return _find_compiler(os.environ.get("CC", ""))


@functools.lru_cache(maxsize=None)
def _find_compiler(cc: str) -> tuple | None:
    fallback = next(((found,) for name in ("cc", "gcc", "clang") if (found := shutil.which(name))), None)
    if not cc.strip():
        return fallback
    try:
        words = tuple(shlex.split(cc))
    except ValueError as exc:
        raise SSMCError(f"CC={cc!r} cannot be split into words ({exc}); quote it as in a shell, "
                        f"e.g. CC='ccache gcc'") from exc
    found = shutil.which(words[0]) if words else None
    if found:
        return (found, *words[1:])
    instead = (f"using {fallback[0]} instead" if fallback is not None else
               "no other C compiler (cc, gcc, clang) is on PATH either, so the torch backend is used")
    warnings.warn(f"ssmc: CC={cc!r} names no program found on PATH; {instead}. Set CC to an installed C "
                  f"compiler, or unset it.", CompilerWarning, stacklevel=user_stacklevel())
    return fallback


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
