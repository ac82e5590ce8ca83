"""Ready layers built from the presets."""
from .s4d import S4D  # noqa: F401
