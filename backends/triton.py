"""The Triton backend (placeholder until the Triton kernels land)."""


def render_sources(lowered) -> dict:
    return {}
