"""What generated packages import at run time: backend choice, kernel loading, the C loader, the
FFT convolution and input checks. A leaf: it imports torch only (never sympy, networkx, jinja2),
so that importing a compiled module stays light."""
from .backend import available_backends, select_backend  # noqa: F401
from .kernels import KernelSet  # noqa: F401
