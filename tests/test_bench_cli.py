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
