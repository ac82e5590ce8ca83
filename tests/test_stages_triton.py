"""The Triton stage kernels (backends/stages_triton.py) against the float64 core references
(ssmc.reference_ssd), run through the table-driven runtime under Triton's interpreter.

Each stage is checked alone on fresh random operands, then the chunked pipeline chunk_state ->
state_passing -> chunk_scan and the sequential ssd_scan against the sequential reference. Outputs
start as NaN (SSMC_POISON_OUTPUTS, set by conftest), and rel_error asserts they are finite, so an
element a kernel never writes fails. The cases cover grouped and per-head u/B/C, with and without h0
and seq_idx, lengths that are not a multiple of the chunk, a single step, and ("blocks") sizes past
one block of every kernel: several headdim and state blocks, chunk rows split in two with the
causal loop over two column blocks, a chunk that is not a power of two.
"""
import ast

import pytest
import torch

from conftest import rel_error
from ssmc.backends.stages_triton import render_triton_stages
from ssmc.errors import CompileError
from ssmc.ir.stages import CHUNK_SCAN, MULTIHEAD_STAGES, SSD_SCAN
from ssmc.reference_ssd import (core_chunk_inputs, core_chunk_scan_ref, core_chunk_state_ref,
                                core_state_passing_ref, ssd_core_ref)
from stage_harness import core_inputs, stage_library, run_chunked

CASES = {
    "grouped-h0-L37-c8": dict(length=37, chunk=8),
    "per_head-L40-c16": dict(length=40, u_heads=4, b_heads=4, c_heads=4, h0=False, chunk=16),
    "seq_idx-h0-L29-c8": dict(length=29, seq_idx=True, chunk=8),
    "seq_idx-L33-c16": dict(length=33, u_heads=1, b_heads=2, c_heads=1, h0=False, seq_idx=True, chunk=16),
    "L1": dict(length=1, seq_idx=True, chunk=8),
    "blocks-L40-c48": dict(batch=1, length=40, heads=2, headdim=40, state=70, u_heads=1, b_heads=1, c_heads=2,
                           seq_idx=True, chunk=48),
}
DTYPES = {"f64": (torch.float64, 1e-10), "f32": (torch.float32, 1e-5)}


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    files = render_triton_stages(MULTIHEAD_STAGES.values())
    return stage_library(tmp_path_factory.mktemp("stages_triton"), files)


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request):
    return dict(CASES[request.param])


@pytest.fixture(params=list(DTYPES), ids=list(DTYPES))
def dtype(request):
    return DTYPES[request.param]


def _operands(case, dtype, seed=0):
    """(core operands, chunk, cum, carry, entering_ids), the chunked ones in the operands' dtype."""
    chunk = case.pop("chunk")
    ops = core_inputs(dtype=dtype, seed=seed, **case)
    cum, carry, entering_ids = core_chunk_inputs(ops["log_decay"], ops["seq_idx"], chunk)
    return ops, chunk, cum.to(dtype), carry.to(dtype), entering_ids


def test_ssd_scan(library, backend, case, dtype):
    backend("triton")
    dtype, tol = dtype
    ops, *_ = _operands(case, dtype)
    y, final = library.run("ssd_scan", **ops)
    y_ref, final_ref = ssd_core_ref(**ops)
    assert y.dtype == final.dtype == dtype
    assert rel_error(y, y_ref) < tol
    assert rel_error(final, final_ref) < tol


def test_chunk_state(library, backend, case, dtype):
    backend("triton")
    dtype, tol = dtype
    ops, chunk, cum, carry, entering_ids = _operands(case, dtype, seed=1)
    states, = library.run("chunk_state", u=ops["u"], cum=cum, B=ops["B"], seq_idx=ops["seq_idx"])
    assert rel_error(states, core_chunk_state_ref(ops["u"], cum, ops["B"], ops["seq_idx"])) < tol


def test_state_passing(library, backend, case, dtype):
    backend("triton")
    dtype, tol = dtype
    ops, chunk, cum, carry, entering_ids = _operands(case, dtype, seed=2)
    batch, heads, chunks, _ = cum.shape
    states = torch.randn(batch, chunks, heads, *ops["u"].shape[3:], ops["B"].shape[3], dtype=dtype)
    entering, final = library.run("state_passing", states=states, carry=carry, h0=ops["h0"])
    entering_ref, final_ref = core_state_passing_ref(states, carry, ops["h0"])
    assert rel_error(entering, entering_ref) < tol
    assert rel_error(final, final_ref) < tol


@pytest.mark.parametrize("with_ids", [True, False], ids=["entering_ids", "ids_from_seq_idx"])
def test_chunk_scan(library, backend, case, dtype, with_ids):
    """Without entering_ids the kernel reads them from seq_idx, by the rule core_chunk_inputs uses."""
    backend("triton")
    dtype, tol = dtype
    ops, chunk, cum, carry, entering_ids = _operands(case, dtype, seed=3)
    batch, heads, chunks, _ = cum.shape
    entering = torch.randn(batch, chunks, heads, *ops["u"].shape[3:], ops["B"].shape[3], dtype=dtype)
    common = dict(u=ops["u"], cum=cum, B=ops["B"], C=ops["C"], entering=entering, seq_idx=ops["seq_idx"])
    y, = library.run("chunk_scan", **common, entering_ids=entering_ids if with_ids else None)
    assert rel_error(y, core_chunk_scan_ref(**common, entering_ids=entering_ids)) < tol


def test_chunked_pipeline_is_the_recurrence(library, backend, case, dtype):
    """chunk_state -> state_passing -> chunk_scan computes what the sequential reference computes."""
    backend("triton")
    dtype, tol = dtype
    ops, chunk, cum, carry, entering_ids = _operands(case, dtype, seed=4)
    y, final = run_chunked(library, ops, cum, carry, entering_ids)
    y_ref, final_ref = ssd_core_ref(**ops)
    assert rel_error(y, y_ref) < tol
    assert rel_error(final, final_ref) < tol


# ---- the rendered module ----------------------------------------------------------------------------

def test_renders_only_the_stages_given():
    text = render_triton_stages([CHUNK_SCAN, SSD_SCAN])["stages_triton.py"]
    functions = {node.name for node in ast.parse(text).body if isinstance(node, ast.FunctionDef)}
    assert {"chunk_scan", "ssd_scan", "_chunk_scan_kernel", "_ssd_scan_kernel"} <= functions
    assert not functions & {"chunk_state", "state_passing", "_chunk_state_kernel", "_state_passing_kernel"}
    assert CHUNK_SCAN.content_hash() in text and SSD_SCAN.content_hash() in text


def test_generated_module_imports_only_triton():
    """A generated package must not load the compiler (see test_layering): the module needs Triton only."""
    tree = ast.parse(render_triton_stages(MULTIHEAD_STAGES.values())["stages_triton.py"])
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"triton"}


def test_unknown_stage_is_a_compile_error():
    from ssmc.ir.stages import Operand, Stage
    stage = Stage("mystery", "no template", inputs=(Operand("x", ("n",)),), outputs=(Operand("y", ("n",)),))
    with pytest.raises(CompileError, match="mystery"):
        render_triton_stages([stage])
