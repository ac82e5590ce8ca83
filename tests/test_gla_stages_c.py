"""The C kernels of the GLA stages (ir/gla_stages.py) against the torch stage kernels, compiled by
ssmc.runtime.cbuild and run through the table-driven runtime.

The torch kernels are the statement of each stage (verified elsewhere against a sequential
reference); every C stage must compute what its torch stage computes on the same operands, in
float64 and float32, at odd shapes: a single step, lengths that are not a multiple of the chunk,
headdim and state that are not multiples of the vector width, chunks of 8, 16 (one sub-chunk) and
64 (four), and ("blocks") sizes with several register tiles and headdim blocks. gla_scan is checked
with each decay present or absent (both, either, neither) and with and without h0; the chunked
pipeline gla_chunk_state -> gla_state_passing -> gla_chunk_scan must equal the sequential gla_scan;
strong decays (down to exp(−20) per step at chunk 64, where any positive exponent overflows) must
stay finite and agree; thread counts agree bit for bit. Outputs start as NaN (SSMC_POISON_OUTPUTS,
set by conftest) and rel_error asserts they are finite, so an element a kernel never writes fails.
float32 results are compared with the torch stage in float64 on the same (float32) operands.
"""
import os

import pytest
import torch

from conftest import rel_error
from ssmc.backends.stages_c import render_c_stages
from ssmc.backends.stages_torch import render_torch_stages
from ssmc.errors import ShapeError
from ssmc.ir.gla_stages import GLA_STAGES
from ssmc.runtime.backend import c_compiler
from gla_stage_inputs import DECAYS, case_inputs, chunked_decays, gla_inputs, run, run_chunked
from stage_harness import assert_threads_agree, stage_library

# CI has a C compiler, and there a missing one is a failure, never a skip
pytestmark = pytest.mark.skipif(c_compiler() is None and not os.environ.get("CI"), reason="no C compiler")

STAGES = list(GLA_STAGES.values())

CASES = {
    "L37-p3-n5-c16": dict(length=37, headdim=3, state=5, chunk=16),
    "L100-p17-n33-c64": dict(length=100, headdim=17, state=33, chunk=64),
    "L1-p5-n17-c8": dict(length=1, headdim=5, state=17, chunk=8),
    "L37-p33-n3-c8": dict(batch=1, length=37, headdim=33, state=3, chunk=8),
    # several register tiles and headdim blocks, partial ones at the edges, one head
    "blocks-L100-p70-n70-c64": dict(batch=1, heads=1, length=100, headdim=70, state=70, chunk=64),
}
DTYPES = {"f64": (torch.float64, 1e-12), "f32": (torch.float32, 2e-5)}


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    files = {**render_c_stages(STAGES), **render_torch_stages(STAGES)}
    return stage_library(tmp_path_factory.mktemp("gla_stages_c"), files, stages=STAGES)


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request):
    return dict(CASES[request.param])


@pytest.fixture(params=list(DTYPES), ids=list(DTYPES))
def dtype(request):
    return DTYPES[request.param]


def both(library, backend, name, **operands):
    """(C outputs, torch outputs) of stage `name`; torch in float64 on the same operands."""
    wide = {key: (x.double() if isinstance(x, torch.Tensor) else x) for key, x in operands.items()}
    return run(library, backend, "c", name, **operands), run(library, backend, "torch", name, **wide)


def _agree(outputs, references, tol):
    for out, ref in zip(outputs, references):
        assert rel_error(out, ref) < tol


@pytest.mark.parametrize("decays", list(DECAYS), ids=list(DECAYS))
@pytest.mark.parametrize("h0", [True, False], ids=["h0", "no_h0"])
def test_gla_scan(library, backend, case, dtype, decays, h0):
    dtype, tol = dtype
    ops, _ = case_inputs(case, decays=DECAYS[decays], h0=h0, dtype=dtype, seed=1)
    (y, final), references = both(library, backend, "gla_scan", **ops)
    assert y.dtype == final.dtype == dtype
    _agree((y, final), references, tol)


@pytest.mark.parametrize("decays", ["state", "headdim", "both"])
@pytest.mark.parametrize("strength", [20.0, 60.0, 0.01])
def test_gla_scan_runs(library, backend, dtype, decays, strength):
    """gla_scan carries the state rescaled by the decay since the start of a run and restarts a run
    before the scale could overflow: decays far from 1 (a run per step or two, and exp(−60) that
    underflows float32) and slow ones (runs longer than a segment of prepared steps)."""
    dtype, tol = dtype
    ops = gla_inputs(batch=1, length=150, heads=3, headdim=20, state=24, decays=DECAYS[decays],
                     strength=strength, dtype=dtype, seed=8)
    (y, final), references = both(library, backend, "gla_scan", **ops)
    _agree((y, final), references, tol)


def test_gla_scan_mixed_decays(library, backend, dtype):
    """A few state columns decay hard while the rest barely decay (a restart every step or two,
    forced by some columns only), and headdim decays slow."""
    dtype, tol = dtype
    ops = gla_inputs(batch=2, length=90, heads=2, headdim=19, state=21, decays=DECAYS["both"], strength=0.05,
                     dtype=dtype, seed=9)
    ops["g_state"][..., ::5] = -25.0
    (y, final), references = both(library, backend, "gla_scan", **ops)
    _agree((y, final), references, tol)


def test_gla_chunk_state(library, backend, case, dtype):
    dtype, tol = dtype
    ops, chunk = case_inputs(case, dtype=dtype, seed=3)
    cum, _ = chunked_decays(ops["g_state"], chunk)
    (states,), (states_ref,) = both(library, backend, "gla_chunk_state", u=ops["u"], cum=cum, B=ops["B"])
    assert rel_error(states, states_ref) < tol


def test_gla_chunk_state_of_a_chunk_past_len(library, backend):
    """chunks·chunk may exceed len by more than a chunk: a chunk with no step has a zero state."""
    ops = gla_inputs(length=10, dtype=torch.float64, seed=10)
    cum, _ = chunked_decays(ops["g_state"], 8)
    cum = torch.cat([cum, torch.zeros_like(cum[:, :1])], dim=1)     # a third chunk, past len
    (states,), (states_ref,) = both(library, backend, "gla_chunk_state", u=ops["u"], cum=cum, B=ops["B"])
    assert rel_error(states, states_ref) < 1e-12
    assert not states[:, 2].any()


@pytest.mark.parametrize("h0", [True, False], ids=["h0", "no_h0"])
def test_gla_state_passing(library, backend, case, dtype, h0):
    dtype, tol = dtype
    ops, chunk = case_inputs(case, h0=h0, dtype=dtype, seed=4)
    _, carry = chunked_decays(ops["g_state"], chunk)
    batch, chunks, heads, state = carry.shape
    states = torch.randn(batch, chunks, heads, ops["u"].shape[3], state, dtype=dtype)
    results = both(library, backend, "gla_state_passing", states=states, carry=carry, h0=ops["h0"])
    _agree(*results, tol)


def test_gla_state_passing_wide_state(library, backend):
    """A state row longer than the kernel's block of elements (one row per block)."""
    carry = torch.rand(1, 3, 2, 2100, dtype=torch.float64)
    states = torch.randn(1, 3, 2, 3, 2100, dtype=torch.float64)
    results = both(library, backend, "gla_state_passing", states=states, carry=carry,
                   h0=torch.randn(1, 2, 3, 2100, dtype=torch.float64))
    _agree(*results, 1e-12)


def test_gla_chunk_scan(library, backend, case, dtype):
    dtype, tol = dtype
    ops, chunk = case_inputs(case, dtype=dtype, seed=5)
    cum, _ = chunked_decays(ops["g_state"], chunk)
    batch, chunks, _, heads, state = cum.shape
    entering = torch.randn(batch, chunks, heads, ops["u"].shape[3], state, dtype=dtype)
    (y,), (y_ref,) = both(library, backend, "gla_chunk_scan", u=ops["u"], cum=cum, B=ops["B"], C=ops["C"],
                          entering=entering)
    assert rel_error(y, y_ref) < tol


@pytest.mark.parametrize("h0", [True, False], ids=["h0", "no_h0"])
def test_chunked_pipeline_is_gla_scan(library, backend, case, dtype, h0):
    """The three chunked C stages compute what the sequential C gla_scan computes."""
    dtype, tol = dtype
    ops, chunk = case_inputs(case, h0=h0, dtype=dtype, seed=6)
    y, final = run_chunked(library, backend, "c", ops, chunk)
    y_ref, final_ref = run(library, backend, "c", "gla_scan", **ops)
    assert rel_error(y, y_ref) < 5 * tol
    assert rel_error(final, final_ref) < 5 * tol


@pytest.mark.parametrize("decay", ["uniform", "constant"])
def test_strong_decays_stay_finite(library, backend, dtype, decay):
    """Log-decays down to −20 per step at chunk 64: cum reaches −1280 inside a chunk, so any
    positive exponent would overflow (exp(+1280) is inf in float64 too); the chunked C stages stay
    finite and agree with the torch stages, and with the C gla_scan."""
    dtype, tol = dtype
    ops = gla_inputs(batch=1, length=150, heads=2, headdim=19, state=35, strength=20.0, dtype=dtype, seed=7)
    if decay == "constant":
        ops["g_state"] = torch.full_like(ops["g_state"], -20.0)
    y, final = run_chunked(library, backend, "c", ops, 64)
    y_ref, final_ref = run_chunked(library, backend, "torch",
                                   {key: x.double() if x is not None else None for key, x in ops.items()}, 64)
    assert rel_error(y, y_ref) < tol          # (asserts y finite)
    assert rel_error(final, final_ref) < tol
    y_scan, final_scan = run(library, backend, "c", "gla_scan", **ops)
    assert rel_error(y, y_scan) < 5 * tol
    assert rel_error(final, final_scan) < 5 * tol


def test_threads_agree(library, backend):
    """Every thread count computes the same outputs, bit for bit (tasks own disjoint outputs, and
    gla_scan's runs do not depend on how headdim is split). The sizes are above the runtime's
    serial threshold; one (batch, head) makes gla_scan split headdim across threads."""
    backend("c")
    ops = gla_inputs(batch=1, length=140, heads=1, headdim=64, state=48, decays=DECAYS["both"],
                     dtype=torch.float32, seed=11)
    chunked = gla_inputs(batch=2, length=140, heads=3, headdim=32, state=40, dtype=torch.float32, seed=12)
    cum, carry = chunked_decays(chunked["g_state"], 16)
    states = torch.randn(2, cum.shape[1], 3, 32, 40)
    calls = dict(gla_scan=ops,
                 gla_chunk_state=dict(u=chunked["u"], cum=cum, B=chunked["B"]),
                 gla_state_passing=dict(states=states, carry=carry, h0=chunked["h0"]),
                 gla_chunk_scan=dict(u=chunked["u"], cum=cum, B=chunked["B"], C=chunked["C"], entering=states))
    assert_threads_agree(library, calls)


def test_wrong_shapes_are_refused_before_any_kernel_runs(library, backend, monkeypatch):
    backend("c")
    ops = gla_inputs(length=12, decays=DECAYS["both"], dtype=torch.float32)

    def no_kernel(*args, **kwargs):
        raise AssertionError("a kernel ran on operands that disagree")

    monkeypatch.setattr(library, "_run_c", no_kernel)
    with pytest.raises(ShapeError, match="len"):
        library.run("gla_scan", **dict(ops, B=ops["B"][:, :11]))
    with pytest.raises(ShapeError, match="headdim"):
        library.run("gla_scan", **dict(ops, g_headdim=ops["g_headdim"][..., :2]))
    with pytest.raises(ShapeError, match="state"):
        library.run("gla_scan", **dict(ops, h0=ops["h0"][..., :4]))
    cum, carry = chunked_decays(ops["g_state"], 8)
    with pytest.raises(ShapeError, match="cover"):
        library.run("gla_chunk_state", u=ops["u"], cum=cum[:, :1], B=ops["B"])
    with pytest.raises(ShapeError, match="chunks"):
        library.run("gla_state_passing", states=torch.zeros(2, 3, 2, 3, 5), carry=carry, h0=None)
    with pytest.raises(ShapeError, match="float32"):
        library.run("gla_chunk_scan", u=ops["u"], cum=cum.double(), B=ops["B"], C=ops["C"],
                    entering=torch.zeros(2, 2, 2, 3, 5))


def test_renders_every_gla_stage():
    text = render_c_stages(STAGES)["stages_c.c"]
    for stage in STAGES:
        assert f"SSMC_EXPORT({stage.name})(" in text and stage.content_hash() in text
