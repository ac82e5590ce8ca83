"""ssmc: a compiler for State Space Model kernels.

Write a layer as a declarative `ssmc.SSM` spec; `ssmc.compile(spec)` lowers it through the IR and
its passes, generates Triton, C and PyTorch kernels, and returns an `nn.Module` class.

Everything but the error types is loaded on first use: a generated package imports
`ssmc.runtime`, and that must not pull in the compiler's sympy, networkx or jinja2.
"""
import importlib

from .errors import CompileError, ScheduleError, ShapeError, SpecError, SSMCError  # noqa: F401

__version__ = "0.1.0"

_SPEC_NAMES = ("SSM", "Diagonal", "Scalar", "SISO", "MultiHead", "MIMO", "ZOH", "Bilinear", "Euler", "MambaZOH", "Custom", "InputDecay", "Given")
_SUBMODULES = ("presets", "ops", "nn", "reference", "compiler", "spec", "formula", "cli")


def compile(spec, schedule="auto"):
    """The nn.Module class of `spec`: (batch, len, channels) in and out. `schedule` is how it is
    computed, not what it is (so not a spec field): "sequential" (alias "scan"), "conv"
    (time-invariant specs only), "chunked" (MultiHead specs), or "auto", the cost model choosing per
    call; or a schedule record (ssmc.ir.pipelines.PipelineRecord) to replay exactly."""
    from .compiler import compile as _compile
    return _compile(spec, schedule)


def __getattr__(name):
    if name in _SPEC_NAMES:
        return getattr(importlib.import_module(".spec", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'ssmc' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SPEC_NAMES) + list(_SUBMODULES))
