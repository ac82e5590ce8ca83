"""The command line round trip: compile a spec file, import the package in a fresh process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, env=None, check=True):
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed:\n{result.stdout}\n{result.stderr}")
    return result


def test_compile_then_import_runs_without_the_compiler(tmp_path):
    run("-m", "ssmc.cli", "compile", "examples/mamba.py", "-o", str(tmp_path))
    package = tmp_path / "mamba"
    for name in ("__init__.py", "kernels_torch.py", "ir.txt", "schedule.json"):
        assert (package / name).is_file(), name
    assert "== IR after fuse ==" in (package / "ir.txt").read_text()
    script = (
        "import sys, torch; sys.path.insert(0, sys.argv[1]); import mamba\n"
        "layer = mamba.Layer(d_model=16); x = torch.randn(2, 9, 16)\n"
        "y = layer(x, torch.randn(2, 9, 16)); assert y.shape == (2, 9, 16) and torch.isfinite(y).all()\n"
        "compiler = ('ssmc.spec', 'ssmc.ir', 'ssmc.backends', 'ssmc.compiler', 'networkx', 'jinja2')\n"
        "heavy = [m for m in compiler if m in sys.modules]\n"
        "assert not heavy, f'importing a compiled module loaded {heavy}'\n"
        "print('ok')\n")
    result = run("-c", script, str(tmp_path), env={"SSMC_BACKEND": "torch"})
    assert result.stdout.strip() == "ok"


def test_explain_prints_passes_and_cost_numbers():
    out = run("-m", "ssmc.cli", "explain", "examples/s4d.py", "--shape", "batch=8,len=4096,dim=256").stdout
    assert "== IR after choose_schedule ==" in out and "== IR after fuse ==" in out
    assert "cost[conv] = " in out and "recurrence: conv (chosen per call by the cost model" in out
    assert "grad_discretize_block of %scan_kernel:" in out.split("== IR after derive_backward ==")[1]
    out = run("-m", "ssmc.cli", "explain", "examples/s4d.py", "--shape", "batch=1,len=64,dim=256").stdout
    assert "recurrence: scan (chosen per call" in out


def test_compile_schedule_option_writes_that_schedule(tmp_path):
    """--schedule is a compile option: the package says which (schedule.json, the marker, the module
    docstring), spec.json does not, and the package runs in a fresh process."""
    run("-m", "ssmc", "compile", "examples/s4d.py", "--schedule", "conv", "-o", str(tmp_path))
    package = tmp_path / "s4d"
    decisions = json.loads((package / "schedule.json").read_text())["decisions"]
    assert [(d["algorithm"], d["reason"]) for d in decisions] == [("conv", "requested: schedule='conv'")]
    assert json.loads((package / ".ssmc-package").read_text())["schedule"] == "conv"
    assert "schedule" not in json.loads((package / "spec.json").read_text())
    assert "Schedule: recurrence by conv" in (package / "__init__.py").read_text()
    script = ("import sys, torch; sys.path.insert(0, sys.argv[1]); import s4d\n"
              "layer = s4d.Layer(d_model=4); y = layer(torch.randn(2, 9, 4))\n"
              "assert y.shape == (2, 9, 4) and torch.isfinite(y).all(); print('ok')\n")
    assert run("-c", script, str(tmp_path), env={"SSMC_BACKEND": "torch"}).stdout.strip() == "ok"


def test_explain_schedule_option_fixes_the_choice():
    out = run("-m", "ssmc", "explain", "examples/s4d.py", "--schedule", "scan").stdout
    assert "spec 's4d' (" in out and "), schedule scan" in out
    assert "recurrence: scan (fixed; requested: schedule='scan')" in out
    assert "vandermonde" not in out.split("== IR after fuse ==")[1]      # no convolution form kept


def test_schedule_option_help_and_refusals(tmp_path):
    for command in ("compile", "explain"):
        help_text = " ".join(run("-m", "ssmc", command, "--help").stdout.split())     # argparse wraps lines
        assert "chunked (MultiHead specs), or auto: the cost model chooses per call" in help_text
        result = run("-m", "ssmc", command, "examples/s4d.py", "--schedule", "fast", check=False)
        assert result.returncode == 2 and "invalid choice: 'fast'" in result.stderr
    result = run("-m", "ssmc", "compile", "examples/mamba.py", "--schedule", "conv", "-o", str(tmp_path / "out"),
                 check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "ssmc: error: mamba (spec 'mamba'): schedule='conv'" in result.stderr
    assert "an FFT convolution needs a time-invariant" in result.stderr
    assert not (tmp_path / "out" / "mamba").exists()


@pytest.mark.parametrize("args, message", [
    (("compile", "nope.py"), "SPEC: no such file"),
    (("explain", "examples/s4d.py", "--shape", "batch=two"), "--shape: expected name=positive int"),
    (("explain", "examples/s4d.py", "--shape", "batch=\u00b2"), "--shape: expected name=positive int"),
    (("explain", "examples/s4d.py", "--shape", "len=\u0661\u0662"), "--shape: expected name=positive int"),
])
def test_cli_errors_are_clear(args, message):
    result = run("-m", "ssmc.cli", *args, check=False)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


SPEC_FILES = {
    "typo.py": ("import ssmc\n\nok = ssmc.SSM('ok', 4)\nlayer = ssmc.SSM(\n    name='x',\n    d_sate=8,\n)\n",
                "typo.py:4 (variable layer): SSM: unknown field 'd_sate'; did you mean 'd_state'?"),
    "formula.py": ("import ssmc\nbad = ssmc.SSM('b', 4, discretization=ssmc.Custom('gamma(dt)', 'dt'))\n",
                   "formula.py:2 (variable bad): Custom.decay: the function gamma(...)"),
    "syntax.py": ("import ssmc\nx = ssmc.SSM('x', 4\n", "syntax.py:2: syntax error: "),
    "other.py": ("import ssmc\n\nssmc.SSM('x', 4).d_state / 0\n", "other.py:3: ZeroDivisionError: division by zero"),
}


def test_spec_file_errors_name_file_line_and_variable_without_traceback(tmp_path):
    out = tmp_path / "out"
    cases = [("explain", name) for name in SPEC_FILES] + [("compile", "typo.py"), ("compile", "syntax.py")]
    for command, name in cases:
        source, message = SPEC_FILES[name]
        (tmp_path / name).write_text(source)
        extra = ("-o", str(out)) if command == "compile" else ()
        result = run("-m", "ssmc", command, str(tmp_path / name), *extra, check=False)
        assert result.returncode == 2, (command, name, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, (command, name, result.stderr)
    assert not out.exists()


def test_debug_keeps_the_traceback(tmp_path):
    (tmp_path / "typo.py").write_text(SPEC_FILES["typo.py"][0])
    for args in (("--debug", "explain", str(tmp_path / "typo.py")), ("explain", str(tmp_path / "typo.py"), "--debug")):
        result = run("-m", "ssmc", *args, check=False)
        assert result.returncode == 2 and "Traceback" in result.stderr and "d_sate" in result.stderr


def test_version_and_python_dash_m():
    import ssmc
    for module in ("ssmc", "ssmc.cli"):
        result = run("-m", module, "--version")
        assert result.stdout.strip() == f"ssmc {ssmc.__version__}"
    assert "usage: ssmc" in run("-m", "ssmc", "--help").stdout
    import tomllib
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] == ssmc.__version__
