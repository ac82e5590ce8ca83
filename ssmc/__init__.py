"""ssmc: a compiler for State Space Model kernels.

Write a layer as a declarative `ssmc.SSM` spec; `ssmc.compile(spec)` lowers it through the IR and
its passes, generates Triton, C and PyTorch kernels, and returns an `nn.Module` class.
"""
from .errors import CompileError, ScheduleError, ShapeError, SpecError, SSMCError  # noqa: F401
from .spec import (SISO, SSM, ZOH, Bilinear, Custom, Diagonal, Euler, MambaZOH, Scalar)  # noqa: F401
from . import presets  # noqa: F401

__version__ = "0.1.0"


def compile(spec):
    """The nn.Module class of `spec`: (batch, len, channels) in and out."""
    from .compiler import compile as _compile
    return _compile(spec)


def __getattr__(name):
    # ops and nn pull in the compiler (sympy, jinja2); load them on first use only
    if name in ("ops", "nn", "reference", "compiler"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'ssmc' has no attribute {name!r}")
