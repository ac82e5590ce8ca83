"""The compile pipeline: spec -> lowered IR -> rendered package on disk -> imported module.

`compile(spec, schedule)` caches by content hash and schedule, in process and on disk
(`ssmc.runtime.cache`: by default ~/.cache/ssmc/packages/<spec name>_<spec hash>_<schedule>_<compiler
hash>/). The schedule is a compile option, not part of the spec: one spec compiled under two
schedules is two packages, so the schedule is part of the key.

Every package ssmc writes holds a marker, `.ssmc-package` (JSON: ssmc version, spec name and hash,
schedule, compiler fingerprint, and the sha256 of every file). Files are written as UTF-8 whatever the
locale (the sources hold `·` and `Σ`; the marker hashes UTF-8 bytes). The marker is what makes a
directory ssmc's own:
- In the cache, the package is written into a staging directory beside its final name, marker
  last, and published by one rename: an entry whose marker matches its files is complete. Entries
  are immutable (a process may be importing one at any time): never replaced, never removed. An
  entry that does not match its marker (damaged, or written before markers) is left alone and the
  package goes to the next free name, `<key>.1`, `<key>.2`, ... A process that loses a publishing
  race discards its staging directory once the winner's entry checks out.
- `ssmc compile` (`write_package`) replaces an existing OUT/<name>/ only if ssmc wrote it: a sound
  marker, no file changed since (a generated file that was deleted is nothing lost; one replaced by
  a directory, a symbolic link or anything but the same bytes is a change), nothing else in it but
  `__pycache__`. Anything else is refused, naming the path, unless `force`. A symbolic link is
  never replaced nor followed, force or not.
  Replacing: stage beside it, move the old one aside, move the new one in, delete the old one.

First use from several threads is safe: one lock per package key, and a module becomes visible to
other threads only once it has run.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import sys
import tempfile
import threading
from pathlib import Path

from . import __version__
from .backends.package import render_package
from .errors import SpecError, SSMCError
from .ir.pass_manager import check_schedule, lower
from .runtime import cache
from .spec import SSM

MARKER = ".ssmc-package"
MARKER_LIMIT = 1 << 20
SPARE_NAMES = 8           # <key>.1 ... <key>.8 beside damaged cache entries

_IMPORTED = {}
_LOCKS: dict = {}
_LOCKS_GUARD = threading.Lock()


def cache_dir() -> Path:
    """The cache root (absolute, created, checked)."""
    return cache.root()


@functools.lru_cache(maxsize=None)
def compiler_fingerprint() -> str:
    """Hash of the compiler's own sources, so that a changed ssmc never reuses a stale package."""
    from . import backends, ir, templates
    digest = hashlib.sha256()
    for package in (ir, backends, templates):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*")):
            if path.suffix in (".py", ".jinja"):
                digest.update(path.read_bytes())
    return digest.hexdigest()[:8]


def package_key(spec: SSM, schedule: str = "auto") -> str:
    """The cache name of the package of `spec` under `schedule` (checked: it becomes a path)."""
    return f"{spec.name}_{spec.content_hash()}_{check_schedule(schedule)}_{compiler_fingerprint()}"


def schedule_text(schedule) -> str:
    """The schedule as the marker and cache keys write it (a record by its text, e.g. chunked128)."""
    return check_schedule(schedule)


def render_files(spec: SSM, schedule: str = "auto") -> dict:
    """{file name: text} of the package of `spec` under `schedule` (nothing written)."""
    lowered = lower(spec, schedule)
    if spec.is_gated:
        from .backends.gla import render_gated_package
        return render_gated_package(lowered)
    if spec.is_multihead:
        from .backends.multihead import render_multihead_package
        return render_multihead_package(lowered)
    if spec.is_mimo:
        from .backends.mimo import render_mimo_package
        return render_mimo_package(lowered)
    return render_package(lowered)


def _lock(name: str) -> threading.RLock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(name, threading.RLock())


# ---- the marker -------------------------------------------------------------------------------------

def _identity(spec: SSM, schedule) -> dict:
    """What a spec's package is, as its marker records it (the compiler fingerprint is added)."""
    return {"spec": spec.name, "spec_hash": spec.content_hash(), "schedule": schedule_text(schedule)}


def _marker_text(identity: dict, files: dict) -> str:
    marker = {"format": 1, "ssmc": __version__, **identity, "compiler": compiler_fingerprint(),
              "files": {name: cache.sha256_bytes(text.encode("utf-8")) for name, text in sorted(files.items())}}
    return json.dumps(marker, indent=1, sort_keys=True) + "\n"


def read_marker(directory: Path) -> dict | None:
    """The marker of `directory` if it is a real directory with a well-formed marker, else None."""
    directory = Path(directory)
    try:
        if directory.is_symlink() or not directory.is_dir():
            return None
        with open(directory / MARKER, "rb") as f:
            marker = json.loads(f.read(MARKER_LIMIT))
        files = marker["files"]
        if not (isinstance(files, dict) and all(isinstance(name, str) and isinstance(sha, str) and name
                                                and os.path.basename(name) == name and name not in (".", "..")
                                                for name, sha in files.items())):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return marker


def _changed_files(directory: Path, marker: dict, missing_counts: bool) -> list:
    """Files of the marker that are not what ssmc wrote. Only a name with nothing at all there
    (`os.path.lexists` false) is missing, and counts only if `missing_counts`: whatever else is there
    in its place (other content, a directory, a symbolic link, a file ssmc cannot read) is changed,
    since it may be the user's."""
    changed = []
    for name, sha in marker["files"].items():
        path = directory / name
        if not os.path.lexists(path):
            if missing_counts:
                changed.append(name)
        elif cache.sha256_file(path) != sha:       # None for anything but a readable regular file
            changed.append(name)
    return changed


def _sound_entry(directory: Path, identity: dict) -> bool:
    """A complete, unaltered cache entry of the package `identity` names, by this compiler."""
    marker = read_marker(directory)
    return (marker is not None and all(marker.get(k) == v for k, v in identity.items())
            and marker.get("compiler") == compiler_fingerprint()
            and not _changed_files(directory, marker, missing_counts=True))


# ---- writing ----------------------------------------------------------------------------------------

def _stage(parent: Path, name: str, files: dict, marker: str, mode) -> Path:
    """A new directory beside `parent/name` holding `files`, then the marker; modes from `mode`."""
    try:
        staging = Path(tempfile.mkdtemp(prefix=f"{cache.TEMP_PREFIX}{name}-", dir=parent))
    except OSError as exc:
        raise SSMCError(f"output directory {parent} is not writable: {exc.strerror or exc}") from exc
    try:
        file_mode = mode(directory=False)                  # once: it reads the umask
        for file_name, text in [*files.items(), (MARKER, marker)]:
            path = staging / file_name
            path.write_text(text, encoding="utf-8")        # what the marker hashes, whatever the locale
            os.chmod(path, file_mode)
        os.chmod(staging, mode(directory=True))
    except BaseException as exc:         # any failure, KeyboardInterrupt included: no staging left behind
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise SSMCError(f"could not write the package {name} in {parent}: {exc.strerror or exc}") from exc
        raise
    return staging


def _remove(path: Path):
    """Remove what ssmc moved aside (rmtree never follows symbolic links)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        os.unlink(path)


def check_output(directory: Path, force: bool = False) -> bool:
    """Whether `ssmc compile` may write the package directory `directory`, replacing what is there
    (True) or creating it (False); an SSMCError naming the path when it may not."""
    directory = Path(directory)
    if directory.is_symlink():
        raise SSMCError(f"{directory} is a symbolic link: ssmc compile never replaces or follows links; "
                        f"remove it or choose another output directory (-o)")
    if not os.path.lexists(directory):
        return False
    if force:
        return True
    if not directory.is_dir():
        raise SSMCError(f"{directory} exists and is not a directory ssmc wrote; move it away, choose another "
                        f"output directory (-o), or pass --force to replace it")
    marker = read_marker(directory)
    if marker is None:
        raise SSMCError(f"{directory} exists and has no {MARKER} marker, so ssmc did not write it: ssmc compile "
                        f"replaces only its own packages; move it away, choose another output directory (-o), "
                        f"or pass --force to replace it")
    changed = _changed_files(directory, marker, missing_counts=False)
    foreign = sorted(set(os.listdir(directory)) - set(marker["files"]) - {MARKER, "__pycache__"})
    if changed or foreign:
        what = "; ".join(part for part in (
            f"files changed since ssmc wrote them: {', '.join(changed)}" if changed else "",
            f"files ssmc did not write: {', '.join(foreign[:8])}{', ...' if len(foreign) > 8 else ''}"
            if foreign else "") if part)
        raise SSMCError(f"{directory} holds {what}; replacing it would lose them: move them away, or pass "
                        f"--force to replace it anyway")
    return True


def write_package(spec: SSM, directory: Path, schedule: str = "auto", force: bool = False,
                  files: dict | None = None) -> Path:
    """Write the package of `spec` under `schedule` (or the `files` rendered from them) to `directory`,
    replacing a previous package only as `check_output` allows. Returns `directory`."""
    directory = Path(directory)
    check_schedule(schedule)
    replace = check_output(directory, force)
    files = render_files(spec, schedule) if files is None else files
    parent = directory.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SSMCError(f"output directory {parent}: cannot create it: {exc.strerror or exc}") from exc
    staging = _stage(parent, directory.name, files, _marker_text(_identity(spec, schedule), files), cache.output_mode)
    (_swap_in if replace else _move_in)(staging, directory)
    return directory


def _move_in(staging: Path, directory: Path):
    try:
        os.rename(staging, directory)
    except OSError as exc:           # say, created meanwhile by someone else: never silent success
        shutil.rmtree(staging, ignore_errors=True)
        raise SSMCError(f"could not create {directory}: {exc.strerror or exc}") from exc


def _swap_in(staging: Path, directory: Path):
    """Replace `directory` by `staging`: the old one moves aside first, so that a failure at any step
    leaves one complete version in place (or says where it is)."""
    aside = directory.parent / f"{cache.TEMP_PREFIX}{directory.name}-old-{secrets.token_hex(4)}"
    try:
        os.rename(directory, aside)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise SSMCError(f"could not replace {directory}: moving it aside failed: {exc.strerror or exc}") from exc
    try:
        os.rename(staging, directory)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        try:
            os.rename(aside, directory)
        except OSError:
            raise SSMCError(f"could not replace {directory} ({exc.strerror or exc}); its previous version is "
                            f"now at {aside}") from exc
        raise SSMCError(f"could not replace {directory}: {exc.strerror or exc}") from exc
    try:
        _remove(aside)
    except OSError as exc:
        raise SSMCError(f"wrote {directory}, but could not remove its previous version, now at {aside}: "
                        f"{exc.strerror or exc}") from exc


# ---- the cache --------------------------------------------------------------------------------------

def _cache_entry(spec: SSM, key: str, schedule: str = "auto") -> Path:
    """The directory of the sound cache entry of `spec` under `schedule` (whose name is `key`),
    published first if there is none."""
    return publish(key, _identity(spec, schedule), lambda: render_files(spec, schedule),
                   f"the package of spec '{spec.name}' (schedule {schedule_text(schedule)})")


def publish(key: str, identity: dict, render, what: str) -> Path:
    """The sound cache entry `<cache>/packages/<key>` (or `<key>.N`) of the package that `identity`
    (marker fields) names, rendered by `render()` and published first if there is none: staged,
    marker last, one rename; a damaged or foreign entry is never touched and the next name is used.
    Spec packages and spec-independent ones (the causal conv1d) share this one path."""
    packages = cache.directory("packages")
    candidates = [packages / key] + [packages / f"{key}.{number}" for number in range(1, SPARE_NAMES + 1)]
    for directory in candidates:
        if _sound_entry(directory, identity):
            return directory
    cache.clean_orphans(packages)
    cache.announce("generating %s in %s: a few seconds, once; later runs import it", what, candidates[0])
    files = render()
    marker = _marker_text(identity, files)
    for directory in candidates:
        if os.path.lexists(directory):
            if _sound_entry(directory, identity):   # another process published it meanwhile
                return directory
            continue                        # damaged or foreign: never touched, the next name is used
        staging = _stage(packages, key, files, marker, cache.cache_mode)
        try:
            os.rename(staging, directory)
            return directory
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise SSMCError(f"could not publish the package {directory}: {exc.strerror or exc}") from exc
        if _sound_entry(directory, identity):   # another process published it first
            return directory
    raise SSMCError(f"the cache entries {candidates[0]} and {candidates[0]}.1 to .{SPARE_NAMES} are all damaged "
                    f"or foreign; remove them")


def import_package(directory: Path, module_name: str):
    """The module of the package in `directory`, executed once per process. Under the name's lock,
    so that no thread gets it before it has run (a failed run leaves nothing behind)."""
    with _lock(module_name):
        module = sys.modules.get(module_name)
        if module is not None:
            return module
        init = Path(directory) / "__init__.py"
        spec = importlib.util.spec_from_file_location(module_name, init,
                                                      submodule_search_locations=[str(directory)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
        return module


def compile_package(spec: SSM, schedule: str = "auto"):
    """The imported generated package of `spec` (its `apply`, `Layer`, kernels). `schedule`: "scan",
    "conv" (time-invariant layers only: ScheduleError otherwise), or "auto" (the cost model chooses
    per call); a compile option, not part of the spec, so it is part of the cache key."""
    if not isinstance(spec, SSM):
        raise SpecError(f"compile expects an ssmc.SSM spec, got {type(spec).__name__}")
    key = package_key(spec, schedule)
    module = _IMPORTED.get(key)
    if module is None:
        with _lock(key):
            module = _IMPORTED.get(key)
            if module is None:
                module = _IMPORTED[key] = import_package(_cache_entry(spec, key, schedule), f"ssmc_gen_{key}")
    return module


def compile(spec: SSM, schedule: str = "auto"):
    """The nn.Module class of `spec` (on (batch, len, channels) inputs), computed by `schedule`."""
    return compile_package(spec, schedule).Layer
