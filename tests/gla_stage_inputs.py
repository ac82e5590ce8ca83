"""Operands of the GLA stages (ir/gla_stages.py) and the chunked pipeline run stage by stage, shared
by the C and Triton stage tests (each compares its backend's kernels with the torch ones)."""
import torch

DECAYS = {"state": ("g_state",), "headdim": ("g_headdim",), "both": ("g_state", "g_headdim"), "none": ()}


def gla_inputs(batch=2, length=37, heads=2, headdim=3, state=5, decays=("g_state",), h0=True,
               strength=1.0, dtype=torch.float64, seed=0):
    """Operands of gla_scan; each log-decay uniform in [−strength, 0]."""
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    log_decay = lambda *s: -strength * torch.rand(*s, generator=gen, dtype=dtype)  # noqa: E731
    return dict(u=randn(batch, length, heads, headdim),
                g_state=log_decay(batch, length, heads, state) if "g_state" in decays else None,
                g_headdim=log_decay(batch, length, heads, headdim) if "g_headdim" in decays else None,
                B=randn(batch, length, heads, state), C=randn(batch, length, heads, state),
                h0=randn(batch, heads, headdim, state) if h0 else None)


def chunked_decays(g_state, chunk):
    """(cum, carry) of the chunked stages: cum the inclusive cumsum of g_state inside each chunk,
    padded with log-decays 0 past len; carry = exp(cum at each chunk's last step)."""
    batch, length, heads, state = g_state.shape
    chunks = -(-length // chunk)
    padded = torch.cat([g_state, g_state.new_zeros(batch, chunks * chunk - length, heads, state)], dim=1)
    cum = padded.reshape(batch, chunks, chunk, heads, state).cumsum(2)
    return cum, torch.exp(cum[:, :, -1])


def run(library, backend, which, name, **operands):
    backend(which)
    return library.run(name, **operands)


def run_chunked(library, backend, which, ops, chunk):
    """(y, final) of gla_chunk_state -> gla_state_passing -> gla_chunk_scan on gla_scan's operands
    (g_state only)."""
    cum, carry = chunked_decays(ops["g_state"], chunk)
    states, = run(library, backend, which, "gla_chunk_state", u=ops["u"], cum=cum, B=ops["B"])
    entering, final = run(library, backend, which, "gla_state_passing", states=states, carry=carry, h0=ops["h0"])
    y, = run(library, backend, which, "gla_chunk_scan", u=ops["u"], cum=cum, B=ops["B"], C=ops["C"],
             entering=entering)
    return y, final


def case_inputs(case, **kwargs):
    chunk = case.pop("chunk")
    return gla_inputs(**case, **kwargs), chunk
