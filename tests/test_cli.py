"""The command line round trip: compile a spec file, import the package in a fresh process."""
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
    assert "cost[conv] = " in out and "h: conv (chosen per call by the cost model" in out
    out = run("-m", "ssmc.cli", "explain", "examples/s4d.py", "--shape", "batch=1,len=64,dim=256").stdout
    assert "h: scan (chosen per call" in out


@pytest.mark.parametrize("args, message", [
    (("compile", "nope.py"), "SPEC: no such file"),
    (("explain", "examples/s4d.py", "--shape", "batch=two"), "--shape: expected name=positive int"),
])
def test_cli_errors_are_clear(args, message):
    result = run("-m", "ssmc.cli", *args, check=False)
    assert result.returncode == 2 and message in result.stderr
