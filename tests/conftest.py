"""Shared test helpers: random inputs, relative errors, poisoned outputs, backend forcing.

TRITON_INTERPRET is set here, before anything can import a generated Triton kernel (Triton reads it
when a kernel is decorated), so that every Triton kernel runs on CPU tensors in the interpreter.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
# stage kernels' outputs start as NaN (ssmc.runtime.stages), so an element never written fails a test
os.environ.setdefault("SSMC_POISON_OUTPUTS", "1")
# torch.compile's check that a custom op returns no input and no tensor twice: an error when the CI
# variable is set, a mere warning otherwise; an error everywhere, so a local run fails as CI would
os.environ.setdefault("TORCHINDUCTOR_ERROR_ON_CUSTOM_OP_ALIASING", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import ssmc  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """One compile cache per test session, never the user's ~/.cache."""
    monkeypatch.setenv("SSMC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "ssmc-cache"))


def rel_error(out, ref) -> float:
    out, ref = out.detach(), ref.detach()
    if out.is_complex() or ref.is_complex():
        out, ref = out.to(torch.complex128), ref.to(torch.complex128)
    else:
        out, ref = out.double(), ref.double()
    assert torch.isfinite(torch.view_as_real(out) if out.is_complex() else out).all(), "output has NaN/inf"
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


@pytest.fixture
def backend(monkeypatch):
    """Force a backend for the code under test: `backend("c")`."""
    def force(name):
        monkeypatch.setenv("SSMC_BACKEND", name)
        return name
    return force


def scan_inputs(batch=2, dim=6, length=33, n_state=8, groups=1, complex_state=False, selective=("dt", "B", "C"),
                seed=None, dtype=torch.float32):
    """Fresh random inputs of selective_scan_fn; well-conditioned decays (|exp(dt A)| < 1)."""
    gen = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item()))

    def randn(*shape, complex_=False):
        if complex_:
            return torch.complex(torch.randn(*shape, generator=gen), torch.randn(*shape, generator=gen))
        return torch.randn(*shape, generator=gen)

    u = randn(batch, dim, length).to(dtype)
    if "dt" in selective:
        delta = (0.5 * randn(batch, dim, length)).to(dtype)
    else:
        delta = 0.01 + 0.1 * torch.rand(dim, generator=gen)
    a_re = -0.1 - torch.rand(dim, n_state, generator=gen)
    A = torch.complex(a_re, 3 * randn(dim, n_state)) if complex_state else a_re
    bc_shape = (batch, groups, n_state, length)
    B = randn(*bc_shape, complex_=complex_state) if "B" in selective else randn(dim, n_state, complex_=complex_state)
    C = randn(*bc_shape, complex_=complex_state) if "C" in selective else randn(dim, n_state, complex_=complex_state)
    if "B" in selective and not complex_state:
        B = B.to(dtype)
    if "C" in selective and not complex_state:
        C = C.to(dtype)
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=randn(dim), z=randn(batch, dim, length).to(dtype),
                delta_bias=0.1 * randn(dim))


# Specs whose gradients every backend's backward tests check: name -> (spec, schedule to compile it
# with, selective, groups). The time-invariant ones are compiled with "scan", so that these tests
# check the scan's backward (the convolution's has tests of its own).
GRADIENT_SPECS = {
    "mamba_groups": (ssmc.presets.mamba(d_state=3, groups=2), "auto", ("dt", "B", "C"), 2),
    "complex_selective": (ssmc.SSM("cx", 3, A=ssmc.Diagonal(real=False), discretization=ssmc.ZOH(),
                                   selective=("dt", "B", "C"), dt_softplus=True, dt_bias=True, gate=True),
                          "auto", ("dt", "B", "C"), 1),
    "lti_complex_bilinear": (ssmc.SSM("lb", 3, A=ssmc.Diagonal(real=False), discretization=ssmc.Bilinear()),
                             "scan", (), 1),
    "lti_complex_zoh": (ssmc.SSM("lz", 3, A=ssmc.Diagonal(real=False), discretization=ssmc.ZOH()), "scan", (), 1),
    "lti_real_zoh_bias": (ssmc.SSM("lr", 3, discretization=ssmc.ZOH(), dt_bias=True, dt_softplus=True),
                          "scan", (), 1),
    "lti_real_bilinear": (ssmc.SSM("lrb", 3, discretization=ssmc.Bilinear()), "scan", (), 1),
    "custom_only_B": (ssmc.SSM("cb", 2, discretization=ssmc.Custom(decay="1/(1 - dt*A)", input_scale="dt/(1 - dt*A)"),
                               selective=("B",), skip_D=False), "auto", ("B",), 1),
}
