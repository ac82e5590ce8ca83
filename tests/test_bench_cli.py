"""`ssmc bench SPEC.py`: the table of the compiled layer against the torch loop, one spec per family
(SISO Mamba, Mamba-2, GLA, S5) at tiny shapes; a wrong kernel must show in the error column."""
import re
import sys

import pytest

from ssmc.cli import main

SPECS = """
import ssmc
mamba = ssmc.presets.mamba(d_state=4, name="bench_mamba")
mamba2 = ssmc.presets.mamba2(d_state=8, headdim=4, name="bench_mamba2")
gla = ssmc.presets.gla(key_dim=4, value_dim=4, name="bench_gla")
s5 = ssmc.presets.s5(d_state=8, name="bench_s5")
"""
ROW = re.compile(r"^  (ssmc|torch loop)\s+(forward|fwd\+bwd|step/token)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)"
                 r"(?:\s+(\w+))?$")


@pytest.fixture
def spec_file(tmp_path):
    path = tmp_path / "specs.py"
    path.write_text(SPECS)
    return str(path)


def _tables(output: str) -> dict:
    """{spec variable: [(implementation, mode, ms, GB/s, fraction, error)]} from the printed tables."""
    tables, current = {}, None
    for line in output.splitlines():
        if line.startswith("#### "):
            current = tables.setdefault(line[5:].split(":")[0], [])
        elif current is not None and (match := ROW.match(line)):
            current.append((match[1], match[2], *map(float, match.groups()[2:6])))
    return tables


def test_bench_prints_a_checked_table_per_spec(spec_file, capsys):
    assert main(["bench", spec_file, "--shape", "batch=1,len=12,dim=8,heads=2", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"peak bandwidth \(tensor copy\) [\d.]+ GB/s", out)
    tables = _tables(out)
    assert set(tables) == {"mamba", "mamba2", "gla", "s5"}
    for variable, rows in tables.items():
        modes = {(impl, mode) for impl, mode, *_ in rows}
        expected = {(impl, mode) for impl in ("ssmc", "torch loop") for mode in ("forward", "fwd+bwd")}
        if variable in ("mamba", "mamba2"):          # packages with a decoding step
            expected |= {("ssmc", "step/token"), ("torch loop", "step/token")}
        assert modes == expected, (variable, modes)
        for impl, mode, ms, gbps, fraction, error in rows:
            assert ms > 0 and gbps > 0 and fraction > 0, (variable, impl, mode)
            assert error < 1e-4, (variable, impl, mode, error)
    # a dimension the family does not have is named, not silently used
    assert "--shape heads=2 ignored: not a dimension of a siso spec" in out


@pytest.mark.parametrize("shape,named", [("batch=2,lenght=8", "'lenght=8'"), ("len=0", "'len=0'"),
                                         ("len=x", "'len=x'")])
def test_a_bad_shape_is_refused_naming_it(spec_file, capsys, shape, named):
    assert main(["bench", spec_file, "--shape", shape, "--repeat", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssmc: error: --shape") and named in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["bench", "tune"])
def test_a_shape_past_memory_is_refused_before_anything_is_allocated(spec_file, capsys, monkeypatch, command):
    """Sizes whose inputs alone exceed the free memory (or int64) are refused naming them and what they
    need, before a tensor exists: a run past memory fails deep in an allocator or gets the process killed."""
    import torch

    import ssmc.cli_bench
    monkeypatch.setattr(ssmc.cli_bench, "available_bytes", lambda device: 10 ** 9)
    monkeypatch.setattr(torch, "randn", lambda *a, **k: pytest.fail("a tensor was drawn"))
    assert main([command, spec_file, "--shape", "batch=2,len=100000000", "--repeat" if command == "bench"
                 else "--repeats", "1"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"ssmc: error: --shape batch=2, len=100000000, dim=\d+: spec 'bench_mamba' needs at least "
                     r"[\d.e+]+ GB for its inputs and their gradients, more than the 1 GB free", err), err
    assert "Traceback" not in err
    assert main([command, spec_file, "--shape", "batch=99999999999999999999999"]) == 2
    err = capsys.readouterr().err
    assert "spec 'bench_mamba' cannot hold tensors of these sizes" in err and "Traceback" not in err


def test_the_footprint_is_the_inputs_twice_and_one_float64_draw(spec_file):
    """The lower bound check_fits compares: exact for a SISO spec's inputs at a small shape."""
    import ssmc
    from ssmc.cli_bench import footprint
    from ssmc.compiler import compile_package
    spec = ssmc.presets.mamba(d_state=4, name="bench_mamba")
    b, d, L, n = 2, 8, 16, 4
    inputs = 4 * (3 * b * d * L + 2 * b * n * L + d * n + 2 * d)      # u, delta, z; B, C; A; D, delta_bias
    assert footprint(spec, compile_package(spec), {"batch": b, "dim": d, "len": L}) == 2 * inputs + 2 * 4 * b * d * L


def test_an_allocator_failure_is_one_line_not_a_traceback(spec_file, capsys, monkeypatch):
    """Memory that runs out after the lower bound passed (the kernels' own buffers, the references'): one
    line naming the remedy."""
    import ssmc.cli_bench

    def allocate(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 40959999995904 bytes.")
    monkeypatch.setattr(ssmc.cli_bench, "measure", allocate)
    assert main(["bench", spec_file, "--repeat", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ssmc: error: out of memory ([enforce fail") and "use smaller --shape sizes" in err
    assert "Traceback" not in err
    monkeypatch.setattr(ssmc.cli_bench, "measure", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):     # any other error is a bug: its traceback stays
        main(["bench", spec_file, "--repeat", "1"])


def test_plot_without_matplotlib_is_a_clear_error(spec_file, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)        # `import matplotlib` raises ImportError
    assert main(["bench", spec_file, "--plot", "out.png", "--repeat", "1"]) == 2
    captured = capsys.readouterr()
    assert "ssmc: error: --plot: needs matplotlib" in captured.err and "Traceback" not in captured.err
    assert "####" not in captured.out        # refused before anything was timed


def test_a_wrong_kernel_shows_in_the_error_column(tmp_path, capsys, monkeypatch):
    """A package whose forward is off by 1% is reported with an error of about 1e-2 (it cannot look
    right however fast it is)."""
    import types

    import ssmc.compiler
    path = tmp_path / "one.py"
    path.write_text("import ssmc\nmamba = ssmc.presets.mamba(d_state=4, name='bench_mamba')\n")
    real = ssmc.compiler.compile_package

    def wrong(spec, schedule="auto"):
        package = real(spec, schedule)
        return types.SimpleNamespace(apply=lambda *args, **kwargs: package.apply(*args, **kwargs) * 1.01)
    monkeypatch.setattr(ssmc.compiler, "compile_package", wrong)
    assert main(["bench", str(path), "--shape", "batch=1,len=12,dim=8", "--repeat", "1"]) == 0
    rows = _tables(capsys.readouterr().out)["mamba"]
    errors = {(impl, mode): error for impl, mode, *_, error in rows}
    assert 5e-3 < errors["ssmc", "forward"] < 2e-2 and errors["torch loop", "forward"] < 1e-4
    assert ("ssmc", "step/token") not in errors         # this package has no step
