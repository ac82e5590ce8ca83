"""Ready layers built on ssmc's compiled ops."""
from .lm import MambaConfig, MambaLMHeadModel, load_transformers_state_dict  # noqa: F401
from .mamba import Mamba  # noqa: F401
from .mamba2 import InferenceCache, Mamba2  # noqa: F401
from .s4d import S4D  # noqa: F401
