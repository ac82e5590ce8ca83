"""Compiling generated C to shared libraries and loading them through ctypes.

    library = load_library("kernels_c.c")      # compiled once, cached on disk, loaded once per process
    library = load_library("kernels_c.c", defines=("SSMC_FLOAT", "SSMC_FORWARD"))   # a part of it

The system compiler (`backend.c_compiler()`) builds with `-O3 -march=native -ffast-math -fopenmp`
(OpenMP over batch x channel, glibc's vector math for `expf` & co. in `#pragma omp simd` loops); where
OpenMP is missing the build retries with `-fopenmp-simd` (the simd pragmas still vectorise, the
parallel ones are ignored), then with neither. `SSMC_CFLAGS` adds flags (split like a shell would).
`defines` adds -D flags, so that one source can be built in parts (the generated kernels: one
library per precision and direction, each compiled only when first needed).

Cache: `$SSMC_CACHE_DIR/c/<hash>.so` (by default ~/.cache/ssmc/c), the hash covering the source
text, the flags, the compiler (path and `--version`) and the host CPU (because of -march=native).
The compiler writes a temporary file in the same directory that is then renamed into place, so two
processes compiling the same kernel at once both succeed and nobody loads half a library.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import subprocess
import tempfile
import threading
from pathlib import Path

from ..errors import CompileError
from .backend import c_compiler

BASE_FLAGS = ("-O3", "-march=native", "-ffast-math", "-shared", "-fPIC")
OPENMP_FLAGS = ("-fopenmp",)
# without OpenMP: keep the simd pragmas if the compiler knows -fopenmp-simd, else plain
FALLBACK_FLAGS = (("-fopenmp-simd",), ())
LIBS = ("-lm",)

_LOADED: dict = {}
_LOCK = threading.Lock()


def cache_dir() -> Path:
    root = os.environ.get("SSMC_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "ssmc")
    path = Path(root) / "c"
    path.mkdir(parents=True, exist_ok=True)
    return path


def extra_flags() -> tuple:
    return tuple(shlex.split(os.environ.get("SSMC_CFLAGS", "")))


@functools.lru_cache(maxsize=None)
def _compiler_identity(compiler: str) -> str:
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    return f"{compiler}\n{version}"


@functools.lru_cache(maxsize=None)
def _host_identity() -> str:
    """What -march=native depends on: the CPU model and its feature flags."""
    lines = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags")):
                    lines.append(line.strip())
                    if len(lines) == 2:
                        break
    except OSError:
        pass
    return f"{platform.machine()}\n{platform.processor()}\n" + "\n".join(lines)


def _key(source: str, compiler: str, flags: tuple) -> str:
    digest = hashlib.sha256()
    for part in (source, "\0".join(flags), _compiler_identity(compiler), _host_identity()):
        digest.update(part.encode())
        digest.update(b"\0\0")
    return digest.hexdigest()[:24]


def _run_compiler(compiler: str, source_path: Path, output: Path, flags: tuple):
    command = [compiler, *flags, str(source_path), "-o", str(output), *LIBS]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except OSError as exc:
        return command, f"could not run {compiler}: {exc}"
    if result.returncode != 0:
        return command, (result.stderr or result.stdout or f"exit status {result.returncode}").strip()
    return command, None


def compile_library(source: str, name: str = "kernels", defines: tuple = (), flags: tuple = ()) -> Path:
    """Path of the shared library built from C `source` with -D`defines` and `flags` after the base
    flags (say, another -O level; SSMC_CFLAGS still come last) (compiled unless cached)."""
    compiler = c_compiler()
    if compiler is None:
        raise CompileError("no C compiler found (tried $CC, cc, gcc, clang); use SSMC_BACKEND=torch")
    directory = cache_dir()
    macros = tuple(f"-D{macro}" for macro in defines)
    attempts = [BASE_FLAGS + parallel + tuple(flags) + macros + extra_flags()
                for parallel in (OPENMP_FLAGS, *FALLBACK_FLAGS)]
    # the key is that of the preferred flags: a fallback build is stored under it too, so that a
    # machine without OpenMP does not retry the failing build on every load
    key = _key(source, compiler, attempts[0])
    target = directory / f"{name}-{key}.so"
    if target.exists():
        return target
    source_path = directory / f"{name}-{key}.c"
    if not source_path.exists():
        fd, tmp_source = tempfile.mkstemp(prefix=f".{name}-", suffix=".c", dir=directory)
        with os.fdopen(fd, "w") as f:
            f.write(source)
        os.replace(tmp_source, source_path)
    errors = []
    for attempt in attempts:
        fd, tmp_output = tempfile.mkstemp(prefix=f".{name}-", suffix=".so", dir=directory)
        os.close(fd)
        command, error = _run_compiler(compiler, source_path, Path(tmp_output), attempt)
        if error is None:
            os.replace(tmp_output, target)
            return target
        try:
            os.unlink(tmp_output)
        except OSError:
            pass
        errors.append(f"$ {' '.join(command)}\n{error}")
    raise CompileError(f"the C compiler failed on {source_path}:\n" + "\n\n".join(errors))


def load_library(source_path, defines: tuple = (), flags: tuple = ()) -> ctypes.CDLL:
    """The compiled library of the C file at `source_path` (with -D`defines` and `flags`), loaded
    once per process."""
    source = Path(source_path).read_text()
    name = Path(source_path).stem
    with _LOCK:
        path = compile_library(source, name, defines, flags)
        library = _LOADED.get(path)
        if library is None:
            try:
                library = ctypes.CDLL(str(path))
            except OSError:
                # a damaged cache entry (say, from a full disk): build it again, once
                path.unlink(missing_ok=True)
                path = compile_library(source, name, defines, flags)
                library = ctypes.CDLL(str(path))
            _LOADED[path] = library
        return library


__all__ = ["compile_library", "load_library", "cache_dir", "CompileError"]
