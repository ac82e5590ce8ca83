"""Compiling generated C to shared libraries and loading them through ctypes.

    library = load_library("kernels_c.c")      # compiled once, cached on disk, loaded once per process
    library = load_library("kernels_c.c", defines=("SSMC_FLOAT", "SSMC_FORWARD"), symbols=("ssmc_scan_fwd_float",))

The system compiler (`backend.c_compiler()`, `$CC` with its arguments) compiles with `-O3 -march=native
-ffast-math -fopenmp` (OpenMP over batch x channel, glibc's vector math for `expf` & co. in
`#pragma omp simd` loops) and links without fast math (which would link crtfastmath.o, whose load turns
on flush-to-zero for the whole process: `COMPILE_ONLY_FLAGS`); where OpenMP is missing the build retries
with `-fopenmp-simd` (the simd pragmas still vectorise, the parallel ones are ignored), then with neither.
`SSMC_CFLAGS` adds flags (split like a shell would). `defines` adds -D flags, so that one source can be
built in parts (the generated kernels: one library per precision and direction, each compiled only when
first needed).

Cache (`<cache>/c/`, see `ssmc.runtime.cache`): the key hashes the source text, the flags, the
compiler (command and `--version`) and the host CPU (because of -march=native). Nothing found there
is trusted blindly, since a damaged library crashes the process that maps it:
- `<name>-<key>.json`, the manifest, names the library `<name>-<key>-<sha256 prefix>.so` and holds its
  full sha256 and size; a library is used only if it matches (else it is rebuilt).
- A build compiles the source text the caller holds (written to a fresh temporary directory, never
  a cached .c), checks the result (non-empty, loadable by ctypes, exports the `symbols` asked for),
  then publishes the library (named by its content, so never replaced by something else) and the
  manifest, each by an atomic rename. Two processes building the same key both succeed.
- Temporaries (`.ssmc-tmp-*`) of killed builds are removed by a later build after ten minutes.
- C sources are read and written as UTF-8 whatever the locale (the generated ones hold `·`, `Σ` in
  comments), and compiler messages are decoded with replacement, never as an encoding error.
- A build logs one line on the `ssmc.build` logger (see `ssmc.runtime.cache` to silence it);
  `build_count()` says how many builds this process ran.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import platform
import re
import shlex
import subprocess
import tempfile
import threading
from pathlib import Path

from ..errors import CompileError
from . import cache
from .backend import c_compiler

BASE_FLAGS = ("-O3", "-march=native", "-ffast-math", "-shared", "-fPIC")
# Fast math at link time makes gcc and clang link crtfastmath.o, whose constructor turns on the CPU's
# flush-to-zero and denormals-are-zero modes when the library is loaded: for the whole process, so every
# later float operation of the user's torch and numpy would flush subnormals to zero. So the source is
# compiled with these flags (-c) and the library linked without them.
COMPILE_ONLY_FLAGS = ("-ffast-math", "-Ofast", "-funsafe-math-optimizations")
BUILD_RECIPE = "compile -c; link without fast math"     # hashed into the cache key: older libraries set FTZ
OPENMP_FLAGS = ("-fopenmp",)
# without OpenMP: keep the simd pragmas if the compiler knows -fopenmp-simd, else plain
FALLBACK_FLAGS = (("-fopenmp-simd",), ())
LIBS = ("-lm",)
MANIFEST_LIMIT = 1 << 16

_LOADED: dict = {}
_LOCK = threading.RLock()
_BUILDS = [0]


def cache_dir() -> Path:
    """The directory of the C build cache (created and checked)."""
    return cache.directory("c")


def build_count() -> int:
    """How many libraries this process compiled (not found in the cache): so that a caller can tell
    a first call's build time from its run time."""
    return _BUILDS[0]


def extra_flags() -> tuple:
    text = os.environ.get("SSMC_CFLAGS", "")
    try:
        return tuple(shlex.split(text))
    except ValueError as exc:
        raise CompileError(f"SSMC_CFLAGS={text!r} cannot be split into flags ({exc}); quote it as in a shell, "
                           f"e.g. SSMC_CFLAGS='-DNAME=\"a b\" -O2'") from exc


@functools.lru_cache(maxsize=None)
def _compiler_identity(compiler: tuple) -> str:
    try:
        version = subprocess.run([*compiler, "--version"], capture_output=True, text=True, errors="replace",
                                 timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    return "\0".join(compiler) + f"\n{version}"


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


def _key(source: str, compiler: tuple, flags: tuple) -> str:
    digest = hashlib.sha256()
    for part in (source, "\0".join(flags), _compiler_identity(compiler), _host_identity(), BUILD_RECIPE):
        digest.update(part.encode())
        digest.update(b"\0\0")
    return digest.hexdigest()[:24]


# ---- the cache entry: manifest + library ----------------------------------------------------------

def _cached(directory: Path, stem: str) -> Path | None:
    """The library of `stem` if its manifest is sound and the file matches it, else None."""
    try:
        with open(directory / f"{stem}.json", "rb") as f:
            manifest = json.loads(f.read(MANIFEST_LIMIT))
        library = directory / manifest["library"]
        if not re.fullmatch(re.escape(stem) + r"-[0-9a-f]{16}\.so", manifest["library"]):
            return None
        if library.stat().st_size != manifest["size"] or cache.sha256_file(library) != manifest["sha256"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return library


def _publish(directory: Path, stem: str, built: Path, work: Path, facts: dict) -> Path:
    """Move the checked library `built` into the cache under its content's name, then its manifest."""
    sha = cache.sha256_file(built)
    library = directory / f"{stem}-{sha[:16]}.so"
    os.chmod(built, cache.cache_mode(directory=True))          # executable bits as for a program
    try:
        present = library.stat().st_size == built.stat().st_size and cache.sha256_file(library) == sha
    except OSError:
        present = False
    if not present:                # absent, or a damaged copy (which no manifest vouches for)
        os.replace(built, library)
    manifest = dict(facts, library=library.name, sha256=sha, size=library.stat().st_size)
    staged = work / f"{stem}.json"
    staged.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.chmod(staged, cache.cache_mode(directory=False))
    os.replace(staged, directory / f"{stem}.json")
    return library


# ---- building --------------------------------------------------------------------------------------

def _run_compiler(compiler: tuple, source_name: str, output: Path, flags: tuple, cwd: Path):
    """Compile the file `source_name` in `cwd` (a relative name: the object files record it, and a fixed
    name keeps builds of one key byte-identical) with `flags`, then link `output` without the fast-math
    ones (COMPILE_ONLY_FLAGS). (the command that failed or the last, the error or None)."""
    object_file = f"{output.stem}.o"
    compile_flags = [flag for flag in flags if flag != "-shared"]
    link_flags = [flag for flag in flags if flag not in COMPILE_ONLY_FLAGS and not flag.startswith("-D")]
    for command in ([*compiler, *compile_flags, "-c", source_name, "-o", object_file],
                    [*compiler, *link_flags, object_file, "-o", str(output), *LIBS]):
        try:
            result = subprocess.run(command, capture_output=True, text=True, errors="replace", cwd=cwd)
        except OSError as exc:
            return command, f"could not run {compiler[0]}: {exc}"
        if result.returncode != 0:
            return command, (result.stderr or result.stdout or f"exit status {result.returncode}").strip()
    return command, None


def _check_library(path: Path, symbols: tuple) -> str | None:
    """Why the freshly built `path` is unusable, or None: it must be a non-empty library that ctypes
    can load and that exports `symbols`."""
    if not path.is_file() or path.stat().st_size == 0:
        return "the compiler reported success but wrote no library (empty or missing output)"
    try:
        library = ctypes.CDLL(str(path))
    except OSError as exc:
        return f"the library it wrote cannot be loaded: {exc}"
    missing = [name for name in symbols if not hasattr(library, name)]
    if missing:
        return f"the library it wrote lacks the symbols {', '.join(missing)}"
    return None


def _build(compiler: tuple, source: str, directory: Path, stem: str, attempts: list, symbols: tuple,
           origin: str) -> Path:
    errors = []
    with tempfile.TemporaryDirectory(prefix=f"{cache.TEMP_PREFIX}{stem}-", dir=directory) as work:
        work = Path(work)
        (work / f"{stem}.c").write_text(source, encoding="utf-8")
        for number, flags in enumerate(attempts):
            output = work / f"{stem}-{number}.so"
            command, error = _run_compiler(compiler, f"{stem}.c", output, flags, work)
            if error is None:
                error = _check_library(output, symbols)
            if error is None:
                _BUILDS[0] += 1
                facts = dict(source=origin, flags=list(flags), compiler=list(compiler), symbols=list(symbols))
                return _publish(directory, stem, output, work, facts)
            errors.append(f"$ {shlex.join(command)}\n{error}")
    raise CompileError(f"the C compiler failed on {origin}:\n" + "\n\n".join(errors))


def _plan(source: str, name: str, defines: tuple, flags: tuple) -> tuple:
    """(compiler, stem `<name>-<key>`, flags of each attempt) of a build of `source`."""
    compiler = c_compiler()
    if compiler is None:
        raise CompileError("no C compiler found (tried $CC, cc, gcc, clang); use SSMC_BACKEND=torch")
    macros = tuple(f"-D{macro}" for macro in defines)
    extra = extra_flags()
    attempts = [BASE_FLAGS + parallel + tuple(flags) + macros + extra for parallel in (OPENMP_FLAGS, *FALLBACK_FLAGS)]
    # the key is that of the preferred flags: a fallback build is stored under it too, so that a
    # machine without OpenMP does not retry the failing build on every load
    return compiler, f"{name}-{_key(source, compiler, attempts[0])}", attempts


def _cached_or_built(plan: tuple, source: str, name: str, defines: tuple, symbols: tuple, origin: str | None) -> Path:
    """The library of `plan`: from the cache if it checks out, else built and published."""
    compiler, stem, attempts = plan
    with _LOCK:
        directory = cache_dir()
        library = _cached(directory, stem)
        if library is not None:
            return library
        cache.clean_orphans(directory)
        part = " ".join(defines) or "all of it"
        cache.announce("compiling C kernels from %s (%s) into %s/%s-*.so: a few seconds, once; later runs "
                       "load the cached library", origin or name, part, directory, stem)
        return _build(compiler, source, directory, stem, attempts, tuple(symbols), origin or f"{name}.c")


def compile_library(source: str, name: str = "kernels", defines: tuple = (), flags: tuple = (),
                    symbols: tuple = (), origin: str | None = None) -> Path:
    """Path of the verified shared library built from C `source` with -D`defines` and `flags` after
    the base flags (say, another -O level; SSMC_CFLAGS still come last), compiled unless cached.
    `symbols`: functions the library must export; `origin`: where the source came from (messages)."""
    return _cached_or_built(_plan(source, name, defines, flags), source, name, defines, symbols, origin)


def load_library(source_path, defines: tuple = (), flags: tuple = (), symbols: tuple = ()) -> ctypes.CDLL:
    """The compiled library of the C file at `source_path` (with -D`defines` and `flags`), verified
    and loaded once per process and cache key; it must export `symbols`."""
    source = Path(source_path).read_text(encoding="utf-8")
    name = Path(source_path).stem
    plan = _plan(source, name, defines, flags)
    with _LOCK:
        loaded = _LOADED.get(plan[1])
        if loaded is None:
            path = _cached_or_built(plan, source, name, defines, symbols, str(source_path))
            try:
                library = ctypes.CDLL(str(path))
            except OSError as exc:
                raise CompileError(f"the verified library {path} (built from {source_path}) cannot be loaded: "
                                   f"{exc}") from exc
            loaded = _LOADED[plan[1]] = (path, library)
    path, library = loaded
    missing = [symbol for symbol in symbols if not hasattr(library, symbol)]
    if missing:
        raise CompileError(f"the library {path} built from {source_path} lacks {', '.join(missing)}")
    return library


__all__ = ["compile_library", "load_library", "cache_dir", "build_count", "CompileError"]
