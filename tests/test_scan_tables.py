"""The SISO kernels' operand tables (ssmc/ir/scan_stages.py) drive their contract: the package's
operands.json, the custom ops' schemas and fake kernels, the argument checks, the C signatures and
ctypes argtypes, and the launchers' parameter names."""
import ctypes
import inspect
import json
import re
import sys

import pytest
import torch

import ssmc
from ssmc import presets
from ssmc.backends.package import render_package
from ssmc.compiler import lower
from ssmc.errors import ShapeError
from ssmc.runtime.scan_tables import load_scan_tables

_I64, _PTR, _INT = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int


@pytest.fixture(scope="module")
def files():
    """{spec name: the package's files} of a mamba (selective, real) and an s4d (LTI, complex) layer."""
    return {spec.name: render_package(lower(spec)) for spec in (presets.mamba(), presets.s4d())}


def _has_triton():
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _package(spec):
    return sys.modules[ssmc.compile(spec).__module__]


def test_operands_json_of_mamba_and_s4d(files):
    mamba = json.loads(files["mamba"]["operands.json"])
    assert list(mamba) == ["scan_bwd", "scan_fwd", "scan_step"]         # a scan schedule: no Vandermonde kernel
    scan = mamba["scan_fwd"]
    assert [o["name"] for o in scan["inputs"]] == ["u", "delta", "dt_bias", "A_re", "A_im", "B_re", "B_im", "C_re",
                                                  "C_im", "D", "z", "h0_re", "h0_im"]
    assert [o["name"] for o in scan["outputs"]] == ["out", "state_re", "state_im", "ckpt_re", "ckpt_im"]
    dims = {o["name"]: o["dims"] for o in scan["inputs"]}
    assert dims["delta"] == ["batch", "dim", "len"] and dims["B_re"] == ["batch", "groups_B", "state", "len"]
    assert set(scan["absent"]) == {"A_im", "B_im", "C_im", "h0_im", "state_im", "ckpt_im"}    # real A
    assert scan["c_sizes"] == ["batch", "dim", "len", "state", "groups_B", "groups_C", "chunk"]
    assert scan["c_layout"]["B_re"] == ["batch", "groups_B", "len", "state"]                   # time-major for C
    assert scan["when"] == [["ckpt_re", "chunk"], ["ckpt_im", "chunk"]]

    s4d = json.loads(files["s4d"]["operands.json"])
    assert set(s4d) == {"scan_fwd", "scan_bwd", "scan_step", "vandermonde", "vandermonde_bwd"}  # auto keeps both forms
    assert [o["name"] for o in s4d["scan_step"]["inputs"] if o["mutated"]] == ["h_re", "h_im"]   # decoding state
    dims = {o["name"]: o["dims"] for o in s4d["scan_fwd"]["inputs"]}
    assert dims["delta"] == ["dim"] and dims["B_re"] == ["dim", "state"]
    assert set(s4d["scan_fwd"]["absent"]) == {"dt_bias", "z"} and s4d["scan_fwd"]["c_layout"] == {}
    assert ["groups_B", "one"] in s4d["scan_fwd"]["sizes"]
    assert [o["name"] for o in s4d["scan_bwd"]["outputs"]][-2:] == ["grad_h0_re", "grad_h0_im"]
    assert s4d["vandermonde"]["params"] == ["length"] and ["len", "param", "length"] in s4d["vandermonde"]["sizes"]


def test_schemas_and_ctypes_come_from_the_tables(files):
    tables = load_scan_tables(files["s4d"]["operands.json"])
    assert tables["vandermonde"].schema() == ("(Tensor log_decay_re, Tensor log_decay_im, Tensor coeff_re, "
                                              "Tensor coeff_im, int length) -> Tensor")
    assert tables["scan_fwd"].schema() == (
        "(Tensor u, Tensor delta, Tensor? dt_bias, Tensor A_re, Tensor? A_im, Tensor B_re, Tensor? B_im, "
        "Tensor C_re, Tensor? C_im, Tensor? D, Tensor? z, Tensor? h0_re, Tensor? h0_im, int chunk) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor)")
    # the argtypes the C loader used to spell out by hand
    assert tables["scan_fwd"].c_argtypes() == [_I64] * 7 + [_PTR] * 18 + [_INT]
    assert tables["scan_bwd"].c_argtypes() == [_I64] * 7 + [_PTR] * 29 + [_INT]
    assert tables["vandermonde"].c_argtypes() == [_I64] * 3 + [_PTR] * 5 + [_INT]
    assert tables["vandermonde_bwd"].c_argtypes() == [_I64] * 3 + [_PTR] * 9 + [_INT]


def test_c_signatures_follow_the_tables(files):
    """Each C function's parameters are the table's c_sizes, inputs and outputs, then the threads."""
    source = files["s4d"]["kernels_c.c"] + files["s4d"]["step_c.c"]
    c_names = {"len": "length", "state": "n_state"}
    for name, table in load_scan_tables(files["s4d"]["operands.json"]).items():
        match = re.search(rf"int ssmc_{name}_float\(([^)]*)\)", source)
        params = [p.split()[-1].lstrip("*") for p in match.group(1).split(",")]
        expected = [c_names.get(n, n) for n in table.c_sizes] + list(table.input_names) + list(table.output_names)
        assert params == expected + ["num_threads"], name


def test_fake_kernel_shapes_from_the_table(files):
    table = load_scan_tables(files["mamba"]["operands.json"])["scan_fwd"]
    batch, dim, length, n = 2, 6, 10, 4
    meta = lambda *shape: torch.empty(shape, device="meta")  # noqa: E731
    args = [meta(batch, dim, length), meta(batch, dim, length), meta(dim), meta(dim, n), None,
            meta(batch, 3, n, length), None, meta(batch, 1, n, length), None, meta(dim), meta(batch, dim, length),
            None, None]
    out, state_re, state_im, ckpt_re, ckpt_im = table.fake(*args, 4)
    assert out.shape == (batch, dim, length) and state_re.shape == (batch, dim, n)
    assert ckpt_re.shape == (batch, dim, 3, n)                                        # ceil(10 / 4) chunks
    assert state_im.shape == ckpt_im.shape == (0,)                                    # real A: placeholders
    assert table.fake(*args, 0)[3].shape == (0,)                                      # no checkpoints asked


def test_wrong_shapes_are_refused_naming_operand_and_dimension(backend):
    backend("torch")
    module = _package(presets.mamba())
    x = {"u": torch.randn(2, 6, 10), "delta": torch.randn(2, 6, 10), "dt_bias": torch.randn(6),
         "A_re": -torch.rand(6, 16), "B_re": torch.randn(2, 1, 16, 10), "C_re": torch.randn(2, 1, 16, 10),
         "D": torch.randn(6), "z": torch.randn(2, 6, 10)}
    table = module.OPS.tables["scan_fwd"]
    call = lambda **o: module.OPS.scan(*[{**x, **o}.get(n) for n in table.input_names], 0)  # noqa: E731
    assert call()[0].shape == (2, 6, 10)
    with pytest.raises(ShapeError, match=r"dimension state is 16 in A_re but 8 in C_re"):
        call(C_re=torch.randn(2, 1, 8, 10))
    with pytest.raises(ShapeError, match=r"operand B_re must be \(batch, groups_B, state, len\)"):
        call(B_re=torch.randn(2, 16, 10))
    with pytest.raises(ShapeError, match=r"no operand A_im"):                          # a real layer
        call(A_im=torch.randn(6, 16))
    # the fake kernel checks the same way (torch.compile sees the error at trace time)
    with pytest.raises(ShapeError, match=r"dimension len is 10 in u but 12 in z"):
        table.fake(*[{**x, "z": torch.randn(2, 6, 12)}.get(n) for n in table.input_names], 0)


def test_registered_ops_and_launchers_use_the_table_names(backend):
    backend("torch")
    module = _package(presets.s4d())
    for name, table in module.OPS.tables.items():
        schema = str(module.OPS.ops[name].default._schema)
        assert schema.endswith(table.schema()), (name, schema)
        for backend_name in ("torch", "c", "triton"):
            if backend_name == "triton" and not _has_triton():
                continue
            launcher = getattr(module.KERNELS.get(backend_name), name)
            assert list(inspect.signature(launcher).parameters) == list(table.input_names) + list(table.params)
