"""The Triton kernels of the GLA stages (ir/gla_stages.py) against the torch stage kernels, run
through the table-driven runtime under Triton's interpreter.

The torch kernels are the statement of each stage (verified elsewhere against a sequential
reference); here every Triton stage must compute what its torch stage computes on the same
operands, in float64 and float32, at small odd shapes: a single step, lengths that are not a
multiple of the chunk, a chunk below the kernels' 16-row sub-chunk and one of two sub-chunks, and
("blocks") sizes past one block of every kernel. Then the chunked pipeline gla_chunk_state ->
gla_state_passing -> gla_chunk_scan must equal the sequential gla_scan, and strong decays (down to
exp(−20) per step, chunk 64) must stay finite and still agree. Outputs start as NaN
(SSMC_POISON_OUTPUTS, set by conftest) and rel_error asserts they are finite, so an element a kernel
never writes fails.
"""
import pytest
import torch

from conftest import rel_error
from ssmc.backends.stages_torch import render_torch_stages
from ssmc.backends.stages_triton import render_triton_stages
from ssmc.ir.gla_stages import GLA_STAGES
from gla_stage_inputs import DECAYS, case_inputs, chunked_decays, gla_inputs, run, run_chunked
from stage_harness import stage_library

STAGES = list(GLA_STAGES.values())

CASES = {
    "L37-p3-n5-c16": dict(length=37, headdim=3, state=5, chunk=16),
    "L37-p17-n33-c32": dict(length=37, headdim=17, state=33, chunk=32),
    "L1-p5-n16-c16": dict(length=1, headdim=5, state=16, chunk=16),
    "L21-p5-n5-c8": dict(length=21, headdim=5, state=5, chunk=8),
    # several headdim and state blocks in every kernel, three sub-chunks of the chunk
    "blocks-L50-p70-n70-c48": dict(batch=1, heads=1, length=50, headdim=70, state=70, chunk=48),
}
DTYPES = {"f64": (torch.float64, 1e-10), "f32": (torch.float32, 1e-5)}


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    files = {**render_triton_stages(STAGES), **render_torch_stages(STAGES)}
    return stage_library(tmp_path_factory.mktemp("gla_stages_triton"), files, stages=STAGES)


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request):
    return dict(CASES[request.param])


@pytest.fixture(params=list(DTYPES), ids=list(DTYPES))
def dtype(request):
    return DTYPES[request.param]


def both(library, backend, name, **operands):
    """(Triton outputs, torch outputs) of stage `name` on the same operands."""
    return run(library, backend, "triton", name, **operands), run(library, backend, "torch", name, **operands)


@pytest.mark.parametrize("decays", list(DECAYS), ids=list(DECAYS))
@pytest.mark.parametrize("h0", [True, False], ids=["h0", "no_h0"])
def test_gla_scan(library, backend, dtype, decays, h0):
    dtype, tol = dtype
    for case in ("L37-p3-n5-c16", "L1-p5-n16-c16"):
        ops, _ = case_inputs(dict(CASES[case]), decays=DECAYS[decays], h0=h0, dtype=dtype, seed=1)
        (y, final), (y_ref, final_ref) = both(library, backend, "gla_scan", **ops)
        assert y.dtype == final.dtype == dtype
        assert rel_error(y, y_ref) < tol
        assert rel_error(final, final_ref) < tol


def test_gla_scan_sizes(library, backend, case, dtype):
    """gla_scan at every case's sizes, both decays (several headdim blocks at "blocks")."""
    dtype, tol = dtype
    ops, _ = case_inputs(case, decays=DECAYS["both"], dtype=dtype, seed=2)
    (y, final), (y_ref, final_ref) = both(library, backend, "gla_scan", **ops)
    assert rel_error(y, y_ref) < tol
    assert rel_error(final, final_ref) < tol


def test_gla_chunk_state(library, backend, case, dtype):
    dtype, tol = dtype
    ops, chunk = case_inputs(case, dtype=dtype, seed=3)
    cum, _ = chunked_decays(ops["g_state"], chunk)
    (states,), (states_ref,) = both(library, backend, "gla_chunk_state", u=ops["u"], cum=cum, B=ops["B"])
    assert rel_error(states, states_ref) < tol


@pytest.mark.parametrize("h0", [True, False], ids=["h0", "no_h0"])
def test_gla_state_passing(library, backend, case, dtype, h0):
    dtype, tol = dtype
    ops, chunk = case_inputs(case, h0=h0, dtype=dtype, seed=4)
    _, carry = chunked_decays(ops["g_state"], chunk)
    batch, chunks, heads, state = carry.shape
    states = torch.randn(batch, chunks, heads, ops["u"].shape[3], state, dtype=dtype)
    (entering, final), (entering_ref, final_ref) = both(library, backend, "gla_state_passing",
                                                        states=states, carry=carry, h0=ops["h0"])
    assert rel_error(entering, entering_ref) < tol
    assert rel_error(final, final_ref) < tol


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
    """The three chunked Triton stages compute what the sequential Triton gla_scan computes."""
    dtype, tol = dtype
    ops, chunk = case_inputs(case, h0=h0, dtype=dtype, seed=6)
    y, final = run_chunked(library, backend, "triton", ops, chunk)
    y_ref, final_ref = run(library, backend, "triton", "gla_scan", **ops)
    assert rel_error(y, y_ref) < tol
    assert rel_error(final, final_ref) < tol


@pytest.mark.parametrize("decay", ["uniform", "constant"])
def test_strong_decays_stay_finite(library, backend, dtype, decay):
    """Log-decays down to −20 per step at chunk 64: cum reaches −1280 inside a chunk, so any
    positive exponent would overflow (exp(+1280) is inf in float64 too); the chunked stages stay
    finite and agree with the torch stages in the same dtype, and in float64 with gla_scan."""
    dtype, tol = dtype
    ops = gla_inputs(batch=1, length=70, heads=1, headdim=5, state=16, strength=20.0, dtype=dtype, seed=7)
    if decay == "constant":
        ops["g_state"] = torch.full_like(ops["g_state"], -20.0)
    y, final = run_chunked(library, backend, "triton", ops, 64)
    y_ref, final_ref = run_chunked(library, backend, "torch", ops, 64)
    assert rel_error(y, y_ref) < tol          # (asserts y finite)
    assert rel_error(final, final_ref) < tol
    if dtype == torch.float64:
        y_scan, final_scan = run(library, backend, "triton", "gla_scan", **ops)
        assert rel_error(y, y_scan) < 1e-8
        assert rel_error(final, final_scan) < 1e-8


def test_launchers_carry_the_stage_docs():
    text = render_triton_stages(STAGES)["stages_triton.py"]
    for stage in STAGES:
        assert f"def {stage.name}(" in text and f"def _{stage.name}_kernel(" in text
        assert stage.content_hash() in text
