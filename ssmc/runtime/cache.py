"""Where ssmc keeps what it generates, and when it may use it.

    <root>/packages/<spec name>_<spec hash>_<schedule>_<compiler hash>[.1 ... .8]/   generated packages
                                                                         (compiler.py)
    <root>/c/<name>-<key>.json, <name>-<key>-<sha256>.so   C libraries and their manifests (cbuild.py)
    <root>/tuning/<device>-<triton>-<package key>.json      measured winners (tuning.py, `ssmc tune`)

`<root>` is `$SSMC_CACHE_DIR`, else `$XDG_CACHE_HOME/ssmc`, else `~/.cache/ssmc`; `~` is expanded and
a relative path is made absolute the first time it is used, so a later `os.chdir` changes nothing.

Why the rules below:
- ssmc imports code from its cache, so a cache directory (the root, `packages/`, `c/`) that another
  user owns or that group or others may write is refused with an SSMCError: anyone who can write
  there could plant an `__init__.py` that runs in your process. ssmc creates these directories
  without group/other write whatever the umask, and cache entries likewise; `ssmc compile` output
  follows the umask.
- A cache that cannot be used (read-only, not a directory, no usable HOME) is no reason to fail: ssmc
  then uses one temporary cache per process (removed at exit) and says so once, as a `CacheWarning`.
- Entries are immutable once published (new content gets a new name); temporaries start with
  `.ssmc-tmp-`, and those older than ten minutes are orphans of killed builds, removed by later builds
  (`clean_orphans`). Nothing else is ever removed: with SSMC_CACHE_DIR=$HOME, `~/c/` is the user's.
- A warning (`CacheWarning`) points at the first caller outside ssmc (`user_stacklevel`), not at
  ssmc's own lines.

Builds that take seconds (generating a package, compiling C kernels) log one INFO line on the
`ssmc.build` logger first (`announce`). ssmc sets no logger level. If the application configured no
logging at all (no handler on the root logger or on ssmc's loggers), ssmc prints the line on stderr
itself, as `ssmc: ...`; otherwise the application's levels and handlers decide as usual (so
`logging.basicConfig(level=logging.WARNING)` hides it and `level=logging.INFO` shows it once).
`logging.getLogger("ssmc").setLevel(logging.WARNING)` silences it either way.
"""
from __future__ import annotations

import atexit
import errno
import hashlib
import logging
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

from ..errors import SSMCError

TEMP_PREFIX = ".ssmc-tmp-"
ORPHAN_AGE_S = 600
KINDS = ("packages", "c", "tuning")
# temporary files of ssmc versions before TEMP_PREFIX, exactly as they were named (mkstemp in <root>/c
# for load_library("kernels_c.c")): regular files only, never directories
_LEGACY_TEMP = re.compile(r"^\.kernels_c-[a-z0-9_]{8}\.(so|c)$")

_LOCK = threading.RLock()
_ROOTS: dict = {}          # (SSMC_CACHE_DIR, XDG_CACHE_HOME, HOME) as first seen -> resolved root
_READY: dict = {}          # wanted directory -> directory in use (itself, or under the fallback)
_FALLBACK: list = []       # the per-process temporary cache, once created


class CacheWarning(UserWarning):
    """The cache directory cannot be used; ssmc falls back to a temporary one for this process."""


# ---- build messages -------------------------------------------------------------------------------

class _StderrUnlessConfigured(logging.StreamHandler):
    """Prints ssmc's messages on stderr unless the application has a logging handler of its own
    that will get them (then printing here too would double them)."""

    def emit(self, record):
        if _configured(logging.getLogger(record.name)):
            return
        self.stream = sys.stderr          # whatever sys.stderr is now (pytest swaps it)
        super().emit(record)


def _configured(logger: logging.Logger) -> bool:
    """Whether a handler other than ssmc's stderr fallback gets the records of `logger`: the
    application configured logging."""
    while logger is not None:
        if any(not isinstance(handler, _StderrUnlessConfigured) for handler in logger.handlers):
            return True
        logger = logger.parent if logger.propagate else None
    return False


def _install_build_logger() -> logging.Logger:
    """The `ssmc.build` logger, with the stderr fallback on `ssmc`. No logger level is set: that is
    the application's to decide."""
    parent = logging.getLogger("ssmc")
    if not any(isinstance(handler, _StderrUnlessConfigured) for handler in parent.handlers):
        handler = _StderrUnlessConfigured()
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter("ssmc: %(message)s"))
        parent.addHandler(handler)
    return logging.getLogger("ssmc.build")


BUILD_LOG = _install_build_logger()


def announce(message: str, *args):
    """One line before a build that takes seconds, so that a silent pause has an explanation.

    Logged at INFO on `ssmc.build`. Where the application configured no logging and set no level on
    ssmc's loggers, the root logger's default WARNING would drop it: the record then goes to the
    handlers directly (that is, to the stderr fallback), so an unconfigured program still shows it."""
    if BUILD_LOG.isEnabledFor(logging.INFO):
        BUILD_LOG.info(message, *args)
    elif (not _configured(BUILD_LOG) and BUILD_LOG.manager.disable < logging.INFO and not BUILD_LOG.disabled
          and all(logger.level == logging.NOTSET for logger in (BUILD_LOG, BUILD_LOG.parent))):
        BUILD_LOG.handle(BUILD_LOG.makeRecord(BUILD_LOG.name, logging.INFO, "(unknown file)", 0, message, args,
                                              None))


# ---- warnings and hashes --------------------------------------------------------------------------

_INTERNAL = ("ssmc", "ssmc_gen_", "torch", "importlib", "functools", "threading", "contextlib")


def user_stacklevel() -> int:
    """The `stacklevel` for a `warnings.warn` called by the caller of this function that points at
    the first frame outside ssmc (its generated packages, and torch's and the standard library's
    plumbing between them, included): the user's line."""
    frame, level = sys._getframe(1), 1
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not any(name == part or name.startswith(part if part.endswith("_") else part + ".")
                   for part in _INTERNAL):
            return level
        frame, level = frame.f_back, level + 1
    return max(level - 1, 1)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path) -> str | None:
    """The sha256 of the regular file `path`, read in blocks; None for anything else (a symbolic link,
    which is not followed, a directory, a device) or a file that cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        with os.fdopen(fd, "rb") as f:
            digest = hashlib.sha256()
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


# ---- file modes -----------------------------------------------------------------------------------

def umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask would race with
    threads creating files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def output_mode(directory: bool) -> int:
    """Mode of what `ssmc compile` writes: what the umask allows."""
    return (0o777 if directory else 0o666) & ~umask()


def cache_mode(directory: bool) -> int:
    """Mode of cache entries: what the umask allows, but never writable by group or others (such a
    cache is refused)."""
    return output_mode(directory) & ~0o022


# ---- the cache root -------------------------------------------------------------------------------

def _home() -> str | None:
    home = os.environ.get("HOME")
    if home is None:
        home = os.path.expanduser("~")     # the password database
    return home if home and os.path.isabs(home) and home.rstrip("/") else None


def _configured_root() -> tuple:
    """(absolute root, None) or (None, why there is none)."""
    raw = os.environ.get("SSMC_CACHE_DIR", "")
    if raw:
        if raw.startswith("~"):
            if raw == "~" or raw.startswith("~/"):
                if _home() is None:
                    return None, f"SSMC_CACHE_DIR={raw!r} starts with ~ but HOME is empty or not absolute"
                raw = _home() + raw[1:]
            else:
                raw = os.path.expanduser(raw)
        return Path(os.path.abspath(raw)), None
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        return Path(xdg) / "ssmc", None
    home = _home()
    if home is None:
        return None, "HOME is empty or not an absolute path, and SSMC_CACHE_DIR is not set"
    return Path(home) / ".cache" / "ssmc", None


def check_private(path: Path):
    """Refuse a cache directory that someone else could write: ssmc imports code from it."""
    if not hasattr(os, "getuid"):
        return
    info = os.stat(path)
    if info.st_uid != os.getuid():
        raise SSMCError(f"cache directory {path} is owned by uid {info.st_uid}, not by you (uid {os.getuid()}): "
                        f"ssmc imports code from its cache, so it refuses one that another user controls; set "
                        f"SSMC_CACHE_DIR to a directory of your own")
    if info.st_mode & 0o022:
        who = " and ".join(w for bit, w in ((0o020, "group"), (0o002, "others")) if info.st_mode & bit)
        raise SSMCError(f"cache directory {path} is writable by {who} (mode {stat.S_IMODE(info.st_mode):o}): "
                        f"anyone who can write there could plant code that ssmc imports; run `chmod go-w {path}` "
                        f"or set SSMC_CACHE_DIR to a private directory")


def _writable(path: Path) -> str | None:
    """None if a file can be created in `path`, else why not (a real try: os.access is blind to
    read-only file systems and, as root, to modes)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=TEMP_PREFIX + "probe-", dir=path)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    os.unlink(probe)
    return None


def _usable(path: Path) -> str | None:
    """Create `path` if needed and say why it cannot be used (None: it can). Unsafe is an error."""
    try:
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create it: {exc.strerror or exc}"
    if not path.is_dir():
        return "it is not a directory"
    check_private(path)
    return _writable(path)


def _fallback(wanted: Path | None, reason: str) -> Path:
    """The per-process temporary cache, created (and announced, once) on first need."""
    if not _FALLBACK:
        try:
            temporary = Path(tempfile.mkdtemp(prefix="ssmc-cache-"))
        except OSError as exc:
            raise SSMCError(f"no usable cache directory ({reason}) and no temporary directory either: {exc}; "
                            f"set SSMC_CACHE_DIR to a writable directory") from exc
        atexit.register(shutil.rmtree, temporary, True)
        _FALLBACK.append(temporary)
        where = f"the cache directory {wanted}" if wanted is not None else "no cache directory"
        warnings.warn(f"ssmc: {where} is not usable ({reason}); using the temporary cache {temporary} for this "
                      f"process, so compiled kernels will not be reused by later processes. Set SSMC_CACHE_DIR "
                      f"to a writable directory of your own.", CacheWarning, stacklevel=user_stacklevel())
    return _FALLBACK[0]


def root() -> Path:
    """The cache root in use, absolute, resolved once per environment."""
    env = tuple(os.environ.get(name) for name in ("SSMC_CACHE_DIR", "XDG_CACHE_HOME", "HOME"))
    with _LOCK:
        found = _ROOTS.get(env)
        if found is None:
            wanted, reason = _configured_root()
            if wanted is not None:
                reason = _usable(wanted)
            found = _ROOTS[env] = wanted if reason is None else _fallback(wanted, reason)
        return found


def directory(kind: str) -> Path:
    """`<root>/<kind>` (kind: packages, c or tuning), created, checked, writable; or its stand-in in the
    temporary cache."""
    if kind not in KINDS:
        raise ValueError(f"cache kind must be one of {KINDS}, got {kind!r}")
    wanted = root() / kind
    with _LOCK:
        found = _READY.get(wanted)
        if found is None or not found.is_dir():
            reason = _usable(wanted)
            if reason is None:
                found = wanted
            else:
                found = _fallback(wanted, reason) / kind
                found.mkdir(mode=0o700, exist_ok=True)
            _READY[wanted] = found
        return found


# ---- temporaries ----------------------------------------------------------------------------------

def _own_temporary(entry: os.DirEntry, legacy: bool) -> bool:
    """Whether `entry` is a temporary that ssmc creates: a `.ssmc-tmp-` regular file, a `.ssmc-tmp-`
    directory holding only regular files (staging and build directories are flat), or (`legacy`, in
    `<root>/c`) a `.kernels_c-XXXXXXXX.so`/`.c` file of ssmc versions before that prefix. Never a
    symbolic link, never anything else: the cache root may be a directory of the user's."""
    try:
        if entry.name.startswith(TEMP_PREFIX):
            if entry.is_file(follow_symlinks=False):
                return True
            if entry.is_dir(follow_symlinks=False):
                with os.scandir(entry.path) as inside:
                    return all(item.is_file(follow_symlinks=False) for item in inside)
            return False
        return legacy and bool(_LEGACY_TEMP.match(entry.name)) and entry.is_file(follow_symlinks=False)
    except OSError:
        return False


def clean_orphans(path: Path, now: float | None = None):
    """Remove temporaries that killed builds left in the cache directory `path` (only what ssmc
    creates, see `_own_temporary`, and only older than ORPHAN_AGE_S: a younger one may be in use)."""
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(path))
    except OSError:
        return
    legacy = Path(path).name == "c"
    for entry in entries:
        if not _own_temporary(entry, legacy):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if now - info.st_mtime < ORPHAN_AGE_S:
                continue
            if stat.S_ISDIR(info.st_mode):
                shutil.rmtree(entry.path)          # never follows symlinks
            else:
                os.unlink(entry.path)
        except OSError as exc:
            if exc.errno != errno.ENOENT:      # another process cleaned it first: fine
                BUILD_LOG.debug("could not remove the orphan %s: %s", entry.path, exc)


__all__ = ["CacheWarning", "announce", "root", "directory", "check_private", "clean_orphans", "output_mode",
           "cache_mode", "umask", "user_stacklevel", "sha256_bytes", "sha256_file", "TEMP_PREFIX", "BUILD_LOG"]
