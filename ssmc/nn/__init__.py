"""Ready layers built on ssmc's compiled ops."""
from .mamba import Mamba  # noqa: F401
from .mamba2 import InferenceCache, Mamba2  # noqa: F401
from .s4d import S4D  # noqa: F401
