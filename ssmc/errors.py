"""ssmc's exception types.

Every message names the offending field and what was expected, so that a bad spec or a bad tensor
is refused at the boundary instead of failing deep inside a generated kernel.
"""


class SSMCError(Exception):
    """Base class of every error ssmc raises on purpose."""


class SpecError(SSMCError, ValueError):
    """An `ssmc.SSM` spec (or one of its parts) is invalid."""


class ScheduleError(SSMCError):
    """A schedule primitive's precondition failed (e.g. an FFT convolution of a selective scan)."""


class ShapeError(SSMCError, ValueError):
    """A tensor passed to a compiled op or module has the wrong shape, dtype or device."""


class CompileError(SSMCError):
    """Code generation or the C compiler failed; the message carries the compiler's output."""
