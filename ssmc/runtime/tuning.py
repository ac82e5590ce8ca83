"""The persistent tuning cache: measured winners per device, package and shape bucket.

    <root>/tuning/<device>-<triton version or "none">-<package key>.json

One JSON file per (device name, Triton version, package): the package key is the spec hash plus a
hash of the schedule's candidates (`package_key`), so a package compiled under another schedule, or
a changed spec, never reads another's winners. Inside, entries keyed by target and shape bucket
(`bucket`: each size rounded up to a power of two, so batch 3 and 4 share one) map to the winning
choice: the pipeline and chunk, and on the C backend the thread count, plus the measured times.
A stage tuned on its own (the SISO decoding step, `scan_step`, and the autotuned Triton stages of the
MultiHead and gated packages, chunk_state etc.: a kernel's launch config) has
entries keyed by target, stage and bucket (`triton/scan_step|batch=8,dim=2048,state=16`) holding
`{"config": {...}, ...}`; the format is otherwise unchanged (same VERSION: a file without such
entries reads as before, and a reader that does not know them never looks them up).

`ssmc tune` writes it (`store`); generated packages read it (`PackageTuning.choose`, and
`PackageTuning.stage_config` for a stage's config): the file is
read once per process, then a call costs a bucket computation and a dict lookup. Where nothing was
tuned, under torch.compile's tracing, and under the Triton interpreter, the package's cost model
decides (the shipped default).

Writes are atomic (a temporary file in the same directory, then `os.replace`) and merge under an
exclusive lock on a `.lock` file next to it (`fcntl.flock` where it exists): two processes storing
at once both keep their entries. A file that cannot be read, is not JSON, or belongs to another
schema, version, device or package is ignored with one `TuningWarning` naming it; ssmc overwrites
it with a fresh file only if it carries ssmc's schema marker (it wrote it), never otherwise, and
never deletes it.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import re
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from . import cache

try:
    import fcntl
except ImportError:         # not POSIX: the merge still happens, without a lock
    fcntl = None

SCHEMA = "ssmc-tuning"
VERSION = 1
_MARKER = f'"schema": "{SCHEMA}"'

_LOCK = threading.RLock()
_LOADED: dict = {}          # path -> {entry key: choice} as read (or stored) in this process
_WARNED: set = set()
_GENERATION = [0]           # bumped by store() and forget(): packages' memoised entries are stale


class TuningWarning(UserWarning):
    """A tuning cache file that ssmc ignores (corrupt, truncated, foreign)."""


# ---- identities -----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def device_name(target: str) -> str:
    """The device whose timings a target's winners are: the CUDA device's name for Triton, the CPU
    (model and core count) for C and torch."""
    if target == "triton":
        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
        return "triton-interpreter"
    model = platform.processor() or platform.machine() or "cpu"
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} x{os.cpu_count() or 1}"


@functools.lru_cache(maxsize=None)
def triton_version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
        try:
            return version("triton")
        except PackageNotFoundError:
            return "none"
    except ImportError:
        return "none"


def package_key(spec_hash: str, candidates) -> str:
    """The spec hash and a short hash of the schedule's candidates (its schedule key)."""
    text = json.dumps([list(c) if isinstance(c, (list, tuple)) else c for c in candidates])
    return f"{spec_hash}_{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def bucket(sizes: dict) -> str:
    """`batch=4,len=2048,...`: every size rounded up to a power of two, names sorted."""
    return ",".join(f"{name}={1 << max(int(value) - 1, 0).bit_length()}" for name, value in sorted(sizes.items()))


def entry_key(target: str, sizes: dict, stage: str | None = None) -> str:
    """`target|bucket` for the schedule's winner, `target/stage|bucket` for one stage's config."""
    return f"{target}|{bucket(sizes)}" if stage is None else f"{target}/{stage}|{bucket(sizes)}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_")[:80] or "device"


def cache_file(key: str, target: str) -> Path:
    device = device_name(target)
    return cache.directory("tuning") / f"{_safe(device)}-{_safe(triton_version())}-{_safe(key)}.json"


def _identity(key: str, target: str) -> dict:
    return {"schema": SCHEMA, "version": VERSION, "device": device_name(target), "triton": triton_version(),
            "package": key}


# ---- reading ------------------------------------------------------------------------------------

def _warn_once(path: Path, why: str):
    if str(path) in _WARNED:
        return
    _WARNED.add(str(path))
    warnings.warn(f"ssmc: ignoring the tuning cache file {path}: {why}", TuningWarning,
                  stacklevel=cache.user_stacklevel())


def _read(path: Path, identity: dict) -> tuple:
    """(entries or None, ours): the file's entries if it is a sound file of `identity`; `ours` says
    whether ssmc wrote it (its schema marker), i.e. whether it may be replaced."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}, True
    except OSError as exc:
        _warn_once(path, f"cannot read it ({exc.strerror or exc})")
        return None, False
    ours = _MARKER.encode() in raw
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        _warn_once(path, "not valid JSON (corrupt or truncated)")
        return None, ours
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        _warn_once(path, f"not an ssmc tuning file (schema {SCHEMA!r} expected)")
        return None, False
    for field, expected in identity.items():
        if data.get(field) != expected:
            _warn_once(path, f"{field} is {data.get(field)!r}, expected {expected!r}")
            return None, True
    entries = data.get("entries")
    if not isinstance(entries, dict) or not all(isinstance(v, dict) for v in entries.values()):
        _warn_once(path, "its entries are not a mapping of choices")
        return None, True
    return entries, True


def load(key: str, target: str) -> dict:
    """The entries of a package's file for `target`, read once per process."""
    path = cache_file(key, target)
    with _LOCK:
        entries = _LOADED.get(str(path))
        if entries is None:
            entries, _ = _read(path, _identity(key, target))
            entries = _LOADED[str(path)] = entries or {}
        return entries


def lookup(key: str, target: str, sizes: dict, stage: str | None = None) -> dict | None:
    return load(key, target).get(entry_key(target, sizes, stage))


def forget():
    """Drop what this process has read (the next lookup reads the files again)."""
    with _LOCK:
        _LOADED.clear()
        _WARNED.clear()
        _GENERATION[0] += 1


# ---- writing ------------------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(path: Path):
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)        # releases the lock


def store(key: str, target: str, sizes: dict, choice: dict, stage: str | None = None) -> Path | None:
    """Merge `choice` (JSON-able: pipeline, chunk, threads, times...; for a `stage`, its config) into
    the package's file under the shape bucket of `sizes`; atomically, keeping other processes' entries.
    Returns the file, or None (with a warning) when a foreign file is in the way."""
    path = cache_file(key, target)
    identity = _identity(key, target)
    with _LOCK, _locked(path):
        entries, ours = _read(path, identity)
        if entries is None and not ours:
            return None          # someone else's file: leave it alone
        merged = dict(entries or {})
        merged[entry_key(target, sizes, stage)] = choice
        text = json.dumps({**identity, "entries": merged}, indent=1, sort_keys=True) + "\n"
        fd, temporary = tempfile.mkstemp(prefix=cache.TEMP_PREFIX, suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(temporary, cache.cache_mode(False))
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        _LOADED[str(path)] = merged
        _GENERATION[0] += 1
    return path


# ---- what generated packages call ------------------------------------------------------------------

def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


class PackageTuning:
    """A generated package's view of its winners: `choose(target, sizes)` returns the stored
    candidate for the call's bucket (and sets the C stages' thread count), or None for the cost
    model. `force(choice)` makes every call take `choice` (what `ssmc tune` times)."""

    def __init__(self, spec_hash: str, candidates, library=None):
        self.candidates = [tuple(c) if isinstance(c, (list, tuple)) else c for c in candidates]
        self.key = package_key(spec_hash, self.candidates)
        self.library = library
        if library is not None:
            library.tuning = self       # its Triton stages launch the configs stored for them
        self.forced = None
        self._entries = {}          # target -> (generation, entries): one dict lookup per call

    def _lookup(self, target: str, sizes: dict, stage: str | None = None):
        memo = self._entries.get(target)
        if memo is None or memo[0] != _GENERATION[0]:
            generation = _GENERATION[0]
            memo = self._entries[target] = (generation, load(self.key, target))
        return memo[1].get(entry_key(target, sizes, stage))

    def force(self, choice: dict | None):
        self.forced = choice
        if self.library is not None:
            self.library.c_threads = None if choice is None else choice.get("threads")

    def _candidate(self, choice: dict):
        pipeline, chunk = choice.get("pipeline"), choice.get("chunk")
        for candidate in self.candidates:
            if isinstance(candidate, tuple) and candidate == (pipeline, chunk):
                return candidate
            if candidate == pipeline:
                return candidate
        return None

    def choose(self, target: str, sizes: dict):
        if torch.compiler.is_compiling():
            return None
        if self.forced is not None:
            return self._candidate(self.forced)
        if target == "triton" and _interpreted():
            return None
        try:
            choice = self._lookup(target, sizes)
        except Exception:       # noqa: BLE001 -- an unusable cache never fails a call (nor is retried)
            self._entries[target] = (_GENERATION[0], {})
            choice = None
        candidate = self._candidate(choice) if choice is not None else None
        if self.library is not None:
            threads = choice.get("threads") if candidate is not None else None
            self.library.c_threads = threads if isinstance(threads, int) and threads > 0 else None
        return candidate

    def threads(self, target: str, sizes: dict) -> int | None:
        """The thread count a C kernel runs with at the call's bucket: the forced choice's (what `ssmc tune`
        times), else the stored winner's, else None (the kernels' own rule). For the SISO C kernels, whose
        one tunable is their OpenMP thread count."""
        if torch.compiler.is_compiling():
            return None
        choice = self.forced
        if choice is None:
            try:
                choice = self._lookup(target, sizes)
            except Exception:       # noqa: BLE001 -- an unusable cache never fails a call (nor is retried)
                self._entries[target] = (_GENERATION[0], {})
                return None
        threads = choice.get("threads") if isinstance(choice, dict) else None
        return threads if isinstance(threads, int) and not isinstance(threads, bool) and threads > 0 else None

    def stage_config(self, stage: str, target: str, sizes: dict):
        """The launch config (a dict, e.g. {"BLOCK_D": 8, "num_warps": 2}) `ssmc tune` stored for `stage`
        at the call's bucket, or None: nothing stored, a stored entry without a config mapping, under
        torch.compile's tracing or the Triton interpreter. The package checks it is one of its planned
        configs."""
        if torch.compiler.is_compiling() or (target == "triton" and _interpreted()):
            return None
        try:
            choice = self._lookup(target, sizes, stage)
        except Exception:       # noqa: BLE001 -- an unusable cache never fails a call (nor is retried)
            self._entries[target] = (_GENERATION[0], {})
            return None
        config = choice.get("config") if choice is not None else None
        return config if isinstance(config, dict) else None


__all__ = ["SCHEMA", "VERSION", "TuningWarning", "PackageTuning", "bucket", "cache_file", "device_name", "entry_key",
           "forget", "load", "lookup", "package_key", "store", "triton_version"]
