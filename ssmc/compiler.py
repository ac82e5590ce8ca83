"""The compile pipeline: spec -> lowered IR -> rendered package on disk -> imported module.

`compile(spec)` caches by content hash, in process and on disk (`$SSMC_CACHE_DIR`, by default
~/.cache/ssmc): the package directory is written under a temporary name and renamed into place, so
two processes compiling the same spec never see a half-written package.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from .backends.package import render_package
from .ir.pass_manager import lower
from .spec import SSM
from .errors import SpecError

_IMPORTED = {}


def cache_dir() -> Path:
    root = os.environ.get("SSMC_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "ssmc")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


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


def write_package(spec: SSM, directory: Path, schedule: str | None = None) -> Path:
    """Write the package of `spec` into `directory` (created; replaced atomically if present)."""
    files = render_package(lower(spec, schedule))
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    for name, text in files.items():
        (staging / name).write_text(text)
    if directory.exists():
        shutil.rmtree(directory, ignore_errors=True)
    try:
        os.replace(staging, directory)
    except OSError:
        # another process won the race with identical content
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def import_package(directory: Path, module_name: str):
    if module_name in sys.modules:
        return sys.modules[module_name]
    init = Path(directory) / "__init__.py"
    spec = importlib.util.spec_from_file_location(module_name, init, submodule_search_locations=[str(directory)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def compile_package(spec: SSM):
    """The imported generated package of `spec` (its `apply`, `Layer`, kernels)."""
    if not isinstance(spec, SSM):
        raise SpecError(f"compile expects an ssmc.SSM spec, got {type(spec).__name__}")
    key = f"{spec.name}_{spec.content_hash()}_{compiler_fingerprint()}"
    if key in _IMPORTED:
        return _IMPORTED[key]
    directory = cache_dir() / "packages" / key
    if not (directory / "__init__.py").exists():
        write_package(spec, directory)
    module = import_package(directory, f"ssmc_gen_{key}")
    _IMPORTED[key] = module
    return module


def compile(spec: SSM):
    """The nn.Module class of `spec` (on (batch, len, channels) inputs)."""
    return compile_package(spec).Layer
