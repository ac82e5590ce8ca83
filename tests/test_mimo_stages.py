"""The C and Triton kernels of the MIMO (S5) stages (ir/mimo_stages.py) against the torch stage
kernels, run through the table-driven runtime (Triton under its interpreter on CPU tensors).

The torch kernels are the statement of each stage (the package they make up is checked against the
float64 reference in tests/test_s5.py); here every C and Triton stage must compute what its torch
stage computes on the same operands, in float64 and float32: complex (parts = 2) and real (parts = 1)
recurrences, forward and reversed in time, decays and scales per (batch, step), broadcast over both
(time-invariant), over batch only or over time only, and a scale absent (folded into Bᵀ). Shapes: a
single step, odd sizes, lengths past the C fused kernel's time tile (64) and past Triton's tiles (16,
64), H past one Triton block (32), state past one C / Triton scan block (64) and past one Triton fused
block (16). Outputs start as NaN (SSMC_POISON_OUTPUTS, set by conftest) and rel_error asserts they are
finite, so an element a kernel never writes fails. float32 results are compared with the torch stage in
float64 on the same (float32) operands.
"""
import os

import pytest
import torch

from conftest import rel_error
from ssmc.backends.mimo import _render_c, _render_torch, _render_triton
from ssmc.errors import ShapeError
from ssmc.ir.mimo_stages import MIMO_STAGES
from ssmc.runtime.backend import c_compiler
from stage_harness import assert_threads_agree, stage_library

STAGES = list(MIMO_STAGES.values())
DTYPES = {"f64": (torch.float64, 1e-12), "f32": (torch.float32, 2e-5)}
HAVE_C = c_compiler() is not None or bool(os.environ.get("CI"))     # CI: a missing compiler fails
BACKENDS = [pytest.param("c", marks=pytest.mark.skipif(not HAVE_C, reason="no C compiler")), "triton"]

# (batch, len, state), parts, reverse, decay broadcast
SCAN_CASES = {
    "L37-S5-cx-full": ((2, 37, 5), 2, 0, "full"),
    "L37-S5-re-rev-lti": ((2, 37, 5), 1, 1, "lti"),
    "L1-S3-cx-rev-full": ((1, 1, 3), 2, 1, "full"),
    "L1-S3-re-lti": ((1, 1, 3), 1, 0, "lti"),
    "L150-S5-cx-rev-batch": ((2, 150, 5), 2, 1, "batch"),
    "L150-S5-re-step": ((2, 150, 5), 1, 0, "step"),
    "L20-S70-cx-full": ((1, 20, 70), 2, 0, "full"),
    "L20-S70-re-rev-lti": ((1, 20, 70), 1, 1, "lti"),
    "L37-S5-cx-rev-step": ((2, 37, 5), 2, 1, "step"),
    "L37-S5-re-batch": ((2, 37, 5), 1, 0, "batch"),
}
# (batch, len, H, state), parts, reverse, scale broadcast (None: absent), decay broadcast (scale and
# decay share the table's dbatch and dlen: when both are given they broadcast alike)
FUSED_CASES = {
    "L37-H5-S3-cx-noscale-lti": ((2, 37, 5, 3), 2, 0, None, "lti"),
    "L37-H5-S3-cx-rev-full": ((2, 37, 5, 3), 2, 1, "full", "full"),
    "L37-H5-S3-re-full": ((2, 37, 5, 3), 1, 0, "full", "full"),
    "L37-H5-S3-re-rev-noscale-lti": ((2, 37, 5, 3), 1, 1, None, "lti"),
    "L1-H3-S1-cx-rev-full": ((1, 1, 3, 1), 2, 1, "full", "full"),
    "L1-H3-S1-re-noscale-lti": ((1, 1, 3, 1), 1, 0, None, "lti"),
    "L100-H40-S20-cx-rev-batch": ((2, 100, 40, 20), 2, 1, "batch", "batch"),
    "L100-H40-S20-re-step": ((2, 100, 40, 20), 1, 0, "step", "step"),
    "L100-H40-S20-cx-noscale-full": ((2, 100, 40, 20), 2, 0, None, "full"),
    "L20-H3-S70-cx-lti": ((1, 20, 3, 70), 2, 0, "lti", "lti"),
}


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    files = {"stages_c.c": _render_c(STAGES), "stages_triton.py": _render_triton(STAGES),
             "stages_torch.py": _render_torch(STAGES)}
    return stage_library(tmp_path_factory.mktemp("mimo_stages"), files, stages=STAGES)


@pytest.fixture(params=list(DTYPES), ids=list(DTYPES))
def dtype(request):
    return DTYPES[request.param]


def per_step(broadcast, batch, length, state, parts, fill, gen, dtype):
    """A decay or scale of shape (1 or batch, 1 or len, state, parts), or None."""
    if broadcast is None:
        return None
    shape = {"full": (batch, length), "lti": (1, 1), "batch": (batch, 1), "step": (1, length)}[broadcast]
    return fill(*shape, state, parts, gen=gen).to(dtype)


def decays(*shape, gen):
    """|decay| uniform in (0.5, 0.99), with a random phase for complex pairs."""
    *lead, parts = shape
    r = 0.5 + 0.49 * torch.rand(*lead, generator=gen, dtype=torch.float64)
    if parts == 1:
        return (r * torch.sign(torch.rand(*lead, generator=gen, dtype=torch.float64) - 0.2))[..., None]
    return torch.view_as_real(torch.polar(r, 6.3 * torch.rand(*lead, generator=gen, dtype=torch.float64)))


def normal(*shape, gen):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def run(library, backend, which, name, params, **operands):
    backend(which)
    return library.run(name, params, **operands)


def both(library, backend, which, name, params, **operands):
    """(outputs of `which`, torch outputs in float64 on the same operands)."""
    wide = {key: (x.double() if isinstance(x, torch.Tensor) else x) for key, x in operands.items()}
    return run(library, backend, which, name, params, **operands), run(library, backend, "torch", name, params, **wide)


def scan_operands(case, dtype, seed):
    (batch, length, state), parts, reverse, broadcast = SCAN_CASES[case]
    gen = torch.Generator().manual_seed(seed)
    return dict(b=normal(batch, length, state, parts, gen=gen).to(dtype),
                decay=per_step(broadcast, batch, length, state, parts, decays, gen, dtype)), {"reverse": reverse}


def fused_operands(case, dtype, seed):
    (batch, length, H, state), parts, reverse, scale, decay = FUSED_CASES[case]
    gen = torch.Generator().manual_seed(seed)
    return dict(u=normal(batch, length, H, gen=gen).to(dtype), Bt=normal(H, state, parts, gen=gen).to(dtype),
                scale=per_step(scale, batch, length, state, parts, normal, gen, dtype),
                decay=per_step(decay, batch, length, state, parts, decays, gen, dtype),
                C=normal(H, state, parts, gen=gen).to(dtype)), {"reverse": reverse}


@pytest.mark.parametrize("which", BACKENDS)
@pytest.mark.parametrize("case", list(SCAN_CASES))
def test_mimo_scan(library, backend, which, case, dtype):
    dtype, tol = dtype
    operands, params = scan_operands(case, dtype, seed=1)
    (x,), (x_ref,) = both(library, backend, which, "mimo_scan", params, **operands)
    assert x.dtype == dtype and x.shape == operands["b"].shape
    assert rel_error(x, x_ref) < tol


@pytest.mark.parametrize("which", BACKENDS)
@pytest.mark.parametrize("case", list(FUSED_CASES))
def test_mimo_fused(library, backend, which, case, dtype):
    dtype, tol = dtype
    operands, params = fused_operands(case, dtype, seed=2)
    (y,), (y_ref,) = both(library, backend, which, "mimo_fused", params, **operands)
    assert y.dtype == dtype and y.shape == operands["u"].shape
    assert rel_error(y, y_ref) < tol


def test_torch_scan_is_the_recurrence(library, backend):
    """The torch scan (the statement the other kernels are held to), step by step in float64."""
    for case in ("L37-S5-cx-rev-step", "L37-S5-re-batch", "L1-S3-cx-rev-full"):
        operands, params = scan_operands(case, torch.float64, seed=3)
        x, = run(library, backend, "torch", "mimo_scan", params, **operands)
        b, a = operands["b"], operands["decay"]
        as_c = (lambda t: torch.view_as_complex(t)) if b.shape[-1] == 2 else (lambda t: t[..., 0])  # noqa: E731
        b, a = as_c(b), as_c(a).expand(b.shape[0], b.shape[1], -1)
        length, state = b.shape[1], torch.zeros_like(b[:, 0])
        expected = torch.zeros_like(b)
        for t in (range(length - 1, -1, -1) if params["reverse"] else range(length)):
            state = a[:, t] * state + b[:, t]
            expected[:, t] = state
        assert rel_error(as_c(x), expected) < 1e-13


def test_torch_fused_is_scan_then_readout(library, backend):
    """The torch fused stage is the scan of scale·(u Bᵀ) read out by Re(C x)."""
    for case in ("L100-H40-S20-cx-rev-batch", "L37-H5-S3-re-full", "L37-H5-S3-cx-noscale-lti"):
        operands, params = fused_operands(case, torch.float64, seed=4)
        y, = run(library, backend, "torch", "mimo_fused", params, **operands)
        u, Bt, scale, C = operands["u"], operands["Bt"], operands["scale"], operands["C"]
        as_c = (lambda t: torch.view_as_complex(t)) if Bt.shape[-1] == 2 else (lambda t: t[..., 0])  # noqa: E731
        v = u.to(as_c(Bt).dtype) @ as_c(Bt)
        if scale is not None:
            v = v * as_c(scale)
        b = torch.view_as_real(v) if Bt.shape[-1] == 2 else v[..., None]
        x, = run(library, backend, "torch", "mimo_scan", params, b=b.contiguous(), decay=operands["decay"])
        assert rel_error(y, (as_c(x) @ as_c(C).t()).real) < 1e-13


@pytest.mark.parametrize("which", BACKENDS)
def test_strong_and_slow_decays(library, backend, which):
    """Decays of e^-20 per step next to 1 - 1e-6 (states that barely decay over the sequence)."""
    gen = torch.Generator().manual_seed(5)
    batch, length, H, state = 2, 40, 4, 6
    r = torch.tensor([2e-9, 1 - 1e-6] * 3, dtype=torch.float64).expand(batch, length, state)
    decay = torch.view_as_real(torch.polar(r, 0.3 * torch.rand(batch, length, state, generator=gen,
                                                               dtype=torch.float64))).contiguous()
    u, Bt, C = normal(batch, length, H, gen=gen), normal(H, state, 2, gen=gen), normal(H, state, 2, gen=gen)
    for reverse in (0, 1):
        (y,), (y_ref,) = both(library, backend, which, "mimo_fused", {"reverse": reverse}, u=u, Bt=Bt, scale=None,
                              decay=decay, C=C)
        assert rel_error(y, y_ref) < 1e-12
        (x,), (x_ref,) = both(library, backend, which, "mimo_scan", {"reverse": reverse},
                              b=normal(batch, length, state, 2, gen=gen), decay=decay)
        assert rel_error(x, x_ref) < 1e-12


@pytest.mark.skipif(not HAVE_C, reason="no C compiler")
def test_c_threads_agree(library, backend):
    """Every thread count computes the same outputs, bit for bit (tasks own disjoint outputs); the
    sizes are above the runtime's serial threshold."""
    backend("c")
    gen = torch.Generator().manual_seed(6)
    calls = {"mimo_scan": dict(b=normal(2, 300, 70, 2, gen=gen), decay=decays(2, 300, 70, 2, gen=gen)),
             "mimo_fused": dict(u=normal(4, 200, 100, gen=gen), Bt=normal(100, 20, 2, gen=gen),
                                scale=normal(4, 200, 20, 2, gen=gen), decay=decays(4, 200, 20, 2, gen=gen),
                                C=normal(100, 20, 2, gen=gen))}
    assert_threads_agree(library, calls, {"reverse": 1})


@pytest.mark.skipif(not HAVE_C, reason="no C compiler")
def test_wrong_operands_are_refused_before_any_kernel_runs(library, backend, monkeypatch):
    backend("c")

    def no_kernel(*args, **kwargs):
        raise AssertionError("a kernel ran on operands that disagree")

    monkeypatch.setattr(library, "_run_c", no_kernel)
    operands, params = fused_operands("L37-H5-S3-cx-rev-full", torch.float64, seed=7)
    with pytest.raises(ShapeError, match="dimension state"):
        library.run("mimo_fused", params, **dict(operands, C=operands["C"][:, :2]))
    with pytest.raises(ShapeError, match="dimension parts"):
        library.run("mimo_fused", params, **dict(operands, decay=operands["decay"][..., :1]))
    with pytest.raises(ShapeError, match="dimension H"):
        library.run("mimo_fused", params, **dict(operands, Bt=operands["Bt"][:4]))
    with pytest.raises(ShapeError, match="dbatch=3 must divide batch=2"):
        library.run("mimo_fused", params,
                    **dict(operands, scale=None, decay=torch.zeros(3, 37, 3, 2, dtype=torch.float64)))
    with pytest.raises(ShapeError, match="dimension dlen is 37 in scale but 1 in decay"):
        library.run("mimo_fused", params, **dict(operands, decay=operands["decay"][:, :1]))
    with pytest.raises(ShapeError, match="float64"):
        library.run("mimo_fused", params, **dict(operands, scale=operands["scale"].float()))
    scan, params = scan_operands("L37-S5-cx-full", torch.float64, seed=8)
    with pytest.raises(ShapeError, match="dlen=36 must divide len=37"):
        library.run("mimo_scan", params, b=scan["b"], decay=scan["decay"][:, :36])
    with pytest.raises(ShapeError, match="operand decay is required"):
        library.run("mimo_scan", params, b=scan["b"], decay=None)
