"""The C stage kernels (backends/stages_c.py) against the float64 core references
(ssmc.reference_ssd), compiled by ssmc.runtime.cbuild and run through the table-driven runtime.

Each stage is checked alone on fresh random operands, then the chunked pipeline chunk_state ->
state_passing -> chunk_scan and the sequential ssd_scan against the sequential reference. Outputs
start as NaN (SSMC_POISON_OUTPUTS, set by conftest), and rel_error asserts they are finite, so an
element a kernel never writes fails. The cases cover grouped and per-head u/B/C, with and without h0
and seq_idx, lengths that are not a multiple of the chunk, a single step, batch 1 and 2, chunks of 8
and 16, and ("tiles") sizes where the register tiles are full, with partial ones at the edges, and
where the work is large enough for the runtime to run several threads.
"""
import os

import pytest
import torch

from conftest import rel_error
from ssmc.backends.stages_c import render_c_stages
from ssmc.errors import CompileError, ShapeError
from ssmc.ir.stages import CHUNK_STATE, MULTIHEAD_STAGES, SSD_SCAN, Operand, Stage
from ssmc.reference_ssd import (core_chunk_inputs, core_chunk_scan_ref, core_chunk_state_ref,
                                core_state_passing_ref, ssd_core_ref)
from ssmc.runtime.backend import c_compiler
from stage_harness import assert_threads_agree, core_inputs, run_chunked, stage_library

# CI has a C compiler, and there a missing one is a failure, never a skip
pytestmark = pytest.mark.skipif(c_compiler() is None and not os.environ.get("CI"), reason="no C compiler")

CASES = {
    "grouped-h0-L37": dict(length=37),
    "per_head-B1-L40": dict(batch=1, length=40, u_heads=4, b_heads=4, c_heads=4, h0=False),
    "seq_idx-h0-L29": dict(length=29, seq_idx=True),
    "seq_idx-groups1-L33": dict(length=33, u_heads=1, b_heads=2, c_heads=1, h0=False, seq_idx=True),
    "L1": dict(batch=1, length=1, seq_idx=True),
    "tiles-L90": dict(length=90, heads=6, headdim=19, state=70, u_heads=3, b_heads=2, c_heads=6, seq_idx=True),
    "threads-L160": dict(length=160, heads=4, headdim=16, state=64, u_heads=4, b_heads=1, c_heads=1),
}
CHUNKS = {"c8": 8, "c16": 16, "c64": 64}
DTYPES = {"f64": (torch.float64, 1e-12), "f32": (torch.float32, 1e-5)}


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return stage_library(tmp_path_factory.mktemp("stages_c"), render_c_stages(MULTIHEAD_STAGES.values()))


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request):
    return CASES[request.param]


@pytest.fixture(params=list(CHUNKS), ids=list(CHUNKS))
def chunk(request):
    return CHUNKS[request.param]


@pytest.fixture(params=list(DTYPES), ids=list(DTYPES))
def dtype(request):
    return DTYPES[request.param]


def _chunked(ops, chunk, dtype):
    """(cum, carry, entering_ids) of the chunked pipeline, the float ones in the operands' dtype."""
    cum, carry, entering_ids = core_chunk_inputs(ops["log_decay"], ops["seq_idx"], chunk)
    return cum.to(dtype), carry.to(dtype), entering_ids


def _state_shape(ops, chunks):
    batch, _, heads = ops["log_decay"].shape
    return batch, chunks, heads, ops["u"].shape[3], ops["B"].shape[3]


def test_ssd_scan(library, backend, case, dtype):
    backend("c")
    dtype, tol = dtype
    ops = core_inputs(dtype=dtype, seed=0, **case)
    y, final = library.run("ssd_scan", **ops)
    y_ref, final_ref = ssd_core_ref(**ops)
    assert y.dtype == final.dtype == dtype
    assert rel_error(y, y_ref) < tol
    assert rel_error(final, final_ref) < tol


@pytest.mark.parametrize("decays", ["strong", "mixed", "growing"])
def test_ssd_scan_rescaled_runs(library, backend, dtype, decays):
    """ssd_scan carries the state rescaled by the decay since the start of a run, and starts a new
    run before 1/decay could overflow: decays far from 1 (a run per step or two), a few deep
    drops in slow decay, and growth (log_decay > 0) must all give the recurrence's values."""
    backend("c")
    dtype, tol = dtype
    ops = core_inputs(length=200, heads=4, headdim=20, state=24, dtype=dtype, seed=6, seq_idx=decays == "mixed")
    gen = torch.Generator().manual_seed(7)
    uniform = torch.rand(ops["log_decay"].shape, generator=gen, dtype=dtype)
    ops["log_decay"] = {"strong": -60 * uniform,
                        "mixed": torch.where(uniform < 0.05, -45.0, -0.02).to(dtype),
                        "growing": 0.3 * uniform}[decays]
    y, final = library.run("ssd_scan", **ops)
    y_ref, final_ref = ssd_core_ref(**ops)
    assert rel_error(y, y_ref) < tol
    assert rel_error(final, final_ref) < tol


def test_chunk_state(library, backend, case, chunk, dtype):
    backend("c")
    dtype, tol = dtype
    ops = core_inputs(dtype=dtype, seed=1, **case)
    cum, _, _ = _chunked(ops, chunk, dtype)
    states, = library.run("chunk_state", u=ops["u"], cum=cum, B=ops["B"], seq_idx=ops["seq_idx"])
    assert rel_error(states, core_chunk_state_ref(ops["u"], cum, ops["B"], ops["seq_idx"])) < tol


def test_state_passing(library, backend, case, chunk, dtype):
    backend("c")
    dtype, tol = dtype
    ops = core_inputs(dtype=dtype, seed=2, **case)
    cum, carry, _ = _chunked(ops, chunk, dtype)
    states = torch.randn(*_state_shape(ops, cum.shape[2]), dtype=dtype)
    entering, final = library.run("state_passing", states=states, carry=carry, h0=ops["h0"])
    entering_ref, final_ref = core_state_passing_ref(states, carry, ops["h0"])
    assert rel_error(entering, entering_ref) < tol
    assert rel_error(final, final_ref) < tol


def test_chunk_scan(library, backend, case, chunk, dtype):
    """With seq_idx, also without entering_ids: the kernel then reads them from seq_idx, by the rule
    core_chunk_inputs uses."""
    backend("c")
    dtype, tol = dtype
    ops = core_inputs(dtype=dtype, seed=3, **case)
    cum, _, entering_ids = _chunked(ops, chunk, dtype)
    entering = torch.randn(*_state_shape(ops, cum.shape[2]), dtype=dtype)
    common = dict(u=ops["u"], cum=cum, B=ops["B"], C=ops["C"], entering=entering, seq_idx=ops["seq_idx"])
    y_ref = core_chunk_scan_ref(**common, entering_ids=entering_ids)
    for ids in ((entering_ids, None) if entering_ids is not None else (None,)):
        y, = library.run("chunk_scan", **common, entering_ids=ids)
        assert rel_error(y, y_ref) < tol


def test_chunked_pipeline_is_the_recurrence(library, backend, case, chunk, dtype):
    """chunk_state -> state_passing -> chunk_scan computes what the sequential reference computes."""
    backend("c")
    dtype, tol = dtype
    ops = core_inputs(dtype=dtype, seed=4, **case)
    cum, carry, entering_ids = _chunked(ops, chunk, dtype)
    y, final = run_chunked(library, ops, cum, carry, entering_ids)
    y_ref, final_ref = ssd_core_ref(**ops)
    assert rel_error(y, y_ref) < tol
    assert rel_error(final, final_ref) < tol


def test_threads_agree(library, backend):
    """Every thread count computes the same outputs, bit for bit (tasks own disjoint outputs: no
    races, no order-dependent sums). The sizes are above the runtime's serial threshold."""
    backend("c")
    ops = core_inputs(length=140, heads=8, headdim=32, state=64, u_heads=8, b_heads=1, c_heads=2, seq_idx=True,
                      dtype=torch.float32, seed=5)
    cum, carry, entering_ids = _chunked(ops, 16, torch.float32)
    calls = dict(ssd_scan=ops,
                 chunk_state=dict(u=ops["u"], cum=cum, B=ops["B"], seq_idx=ops["seq_idx"]),
                 state_passing=dict(states=torch.randn(*_state_shape(ops, cum.shape[2])), carry=carry, h0=ops["h0"]),
                 chunk_scan=dict(u=ops["u"], cum=cum, B=ops["B"], C=ops["C"], seq_idx=ops["seq_idx"],
                                 entering=torch.randn(*_state_shape(ops, cum.shape[2])), entering_ids=entering_ids))
    assert_threads_agree(library, calls)


def test_group_counts_that_do_not_divide_heads_are_refused(library, backend):
    """The table binds sizes per dimension name; it does not say that u_heads must divide heads.
    The kernel refuses such sizes with a status (the runtime raises), rather than dividing by zero
    or reading out of bounds."""
    backend("c")
    ops = core_inputs(length=9, heads=4, u_heads=3, b_heads=1, c_heads=1, dtype=torch.float64)
    with pytest.raises((CompileError, ShapeError)):
        library.run("ssd_scan", **ops)


# ---- refused operands ---------------------------------------------------------------------------------

def test_wrong_shape_is_refused_before_any_kernel_runs(library, backend, monkeypatch):
    backend("c")
    ops = core_inputs(length=12, dtype=torch.float32)

    def no_kernel(*args, **kwargs):
        raise AssertionError("a kernel ran on operands that disagree")

    monkeypatch.setattr(library, "_run_c", no_kernel)
    with pytest.raises(ShapeError, match="len"):
        library.run("ssd_scan", **dict(ops, B=ops["B"][:, :11]))
    cum, carry, _ = _chunked(ops, 8, torch.float32)
    with pytest.raises(ShapeError, match="chunks"):
        library.run("state_passing", states=torch.zeros(*_state_shape(ops, 3)), carry=carry, h0=None)
    with pytest.raises(ShapeError, match="float64"):
        library.run("chunk_state", u=ops["u"], cum=cum.double(), B=ops["B"], seq_idx=None)


# ---- the rendered source -----------------------------------------------------------------------------

def test_renders_only_the_stages_given():
    text = render_c_stages([CHUNK_STATE, SSD_SCAN])["stages_c.c"]
    assert text.startswith("/* Generated by ssmc") and "Do not edit" in text.splitlines()[0]
    assert "SSMC_EXPORT(chunk_state)(" in text and "SSMC_EXPORT(ssd_scan)(" in text
    assert "SSMC_EXPORT(chunk_scan)" not in text and "SSMC_EXPORT(state_passing)" not in text
    assert CHUNK_STATE.content_hash() in text and SSD_SCAN.content_hash() in text


def test_signature_follows_the_table():
    """The C parameters are the table's: inputs (const), outputs, sizes in `dims` order, threads."""
    stage = Stage("probe", "", outputs=(Operand("out", ("m",)),),
                  inputs=(Operand("x", ("n", "m")), Operand("ids", ("n",), dtype="int64", optional=True)))
    from ssmc.backends.stages_c import c_signature
    flat = " ".join(c_signature(stage).split())
    assert flat == ("int SSMC_EXPORT(probe)( const real *restrict x, const int64_t *restrict ids, "
                    "real *restrict out, int64_t n, int64_t m, int threads)")


def test_unknown_stage_is_a_compile_error():
    stage = Stage("mystery", "no template", inputs=(Operand("x", ("n",)),), outputs=(Operand("y", ("n",)),))
    with pytest.raises(CompileError, match="mystery"):
        render_c_stages([stage])
