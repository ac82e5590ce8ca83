"""benchmarks/sm90_report.py, the GPU-free performance proxy (issue 8 item 7): one small stage kernel
compiled offline for sm_90 and read back (registers, SASS loop), in a subprocess without
TRITON_INTERPRET (conftest sets it for this process; the report needs the real decorators).

The ptxas / cuobjdump it uses ship in the plain `pip install triton` wheel
(triton/backends/nvidia/bin/), which is what CI installs: there their absence is a failure,
elsewhere a skip."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import sm90_report as report
import ssmc.presets
dims = dict(batch=2, len=64, heads=4, u_heads=4, headdim=16, state=16, b_heads=1, c_heads=1, chunk=16, chunks=4)
launches = report.stage_launches(ssmc.presets.mamba2(d_state=16, headdim=16), dims, report.F32, label="t")
rows = []
for label, module, launcher, kwargs in launches:
    if label.endswith("state_passing"):
        rows += report.report_launch(label, module, launcher, kwargs, quick=True)
print(json.dumps(rows, default=str))
"""


def _bundled_tools():
    import importlib.util
    spec = importlib.util.find_spec("triton")
    if spec is None or not spec.origin:
        return {}
    base = Path(spec.origin).parent / "backends" / "nvidia" / "bin"
    return {name: base / name for name in ("ptxas", "cuobjdump") if os.access(base / name, os.X_OK)}


def _report_rows(script, tmp_path, timeout):
    """The rows a report `script` prints, run in a subprocess without TRITON_INTERPRET. Without the
    bundled tools: a failure under CI (its triton wheel ships them), a skip elsewhere."""
    if len(_bundled_tools()) < 2:
        reason = "triton's bundled ptxas/cuobjdump (triton/backends/nvidia/bin) are not installed"
        if os.environ.get("CI"):
            pytest.fail(reason + "; the plain triton wheel that CI installs ships them")
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    result = subprocess.run([sys.executable, "-c", script, str(ROOT / "benchmarks")], capture_output=True,
                            text=True, env=env, cwd=str(ROOT), timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_state_passing_compiles_for_sm90(tmp_path):
    rows = _report_rows(SCRIPT, tmp_path, timeout=120)
    assert len(rows) == 1, rows
    row = rows[0]
    assert "error" not in row, row
    assert row["kernel"] == "_state_passing_kernel"
    assert row["registers"] > 0
    assert row["spills"] == 0
    assert row["sass"] > 0
    assert row["loops"], row                  # the loop over chunks was found in the SASS
    assert row["loop"] > 0 and row["per_step"] > 0 and row["per_elem"] > 0


STEP_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import sm90_report as report
rows = []
for label, module, launcher, kwargs in report.mamba1_launches(report.F32):
    if "scan_step" in label:
        rows += report.report_launch(label, module, launcher, kwargs, quick=True)
print(json.dumps(rows, default=str))
"""


def test_the_decoding_step_compiles_for_sm90_and_counts_as_one_step(tmp_path):
    """The Mamba-1 decoding step (no loop over time): its whole kernel is counted as the one step."""
    rows = _report_rows(STEP_SCRIPT, tmp_path, timeout=180)
    assert len(rows) == 1 and "error" not in rows[0], rows
    row = rows[0]
    assert row["kernel"] == "_scan_step_kernel" and row["spills"] == 0
    assert row["loop"] == row["sass"] and row["per_step"] == row["sass"] and row["per_elem"] > 0


CONFIGS_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import sm90_report as report
import ssmc.presets
dims = dict(batch=2, len=64, heads=4, u_heads=4, headdim=16, state=16, b_heads=1, c_heads=1, chunk=16, chunks=4)
counts = {}
for label, module, launcher, kwargs in report.stage_launches(ssmc.presets.mamba2(d_state=16, headdim=16), dims,
                                                             report.F32, label="t"):
    if label.endswith("chunk_state"):
        (name, kernel, grid, args, kw), = report.record(module, launcher, **kwargs)
        counts = {str(unpruned): [dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
                                  for c in report._configs(kernel, args, kw, False, unpruned)[1]]
                  for unpruned in (False, True)}
        counts["planned"] = module.CHUNK_STATE_CONFIGS
        counts["kept"] = module.stage_candidates("chunk_state", dims)
print(json.dumps(counts, default=str))
"""


def test_all_configs_reports_every_planned_config_and_the_default_the_kept_ones():
    """`--all-configs` (to check the resource model against ptxas) takes every planned config of an
    autotuned kernel; without it, those its pruning keeps at the shape. Nothing is compiled here."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", CONFIGS_SCRIPT, str(ROOT / "benchmarks")], capture_output=True,
                            text=True, env=env, cwd=str(ROOT), timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert counts["True"] == counts["planned"]
    assert counts["False"] == counts["kept"] and 0 < len(counts["kept"]) < len(counts["planned"])


def test_loop_parsing():
    """The loop finder on hand-written SASS: innermost loops only, an unrolled loop next to its
    remainder loop counted per iteration, a branch to itself ignored."""
    import importlib
    interpret = os.environ.get("TRITON_INTERPRET")     # the report's import removes it: put it back
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        report = importlib.import_module("sm90_report")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
        if interpret is not None:
            os.environ["TRITON_INTERPRET"] = interpret
    lines = [(0x00, "MOV R1, c[0x0][0x28]"),
             # remainder loop: one iteration, 1 load
             (0x10, "LDG.E R2, desc[UR4][R4.64]"), (0x20, "FFMA R3, R3, R2, R5"), (0x30, "@P0 BRA 0x10"),
             # the same body unrolled 4 times
             (0x40, "LDG.E R2, desc[UR4][R4.64]"), (0x50, "LDG.E R6, desc[UR4][R4.64]"),
             (0x60, "LDG.E R7, desc[UR4][R4.64]"), (0x70, "LDG.E R8, desc[UR4][R4.64]"),
             (0x80, "FFMA R3, R3, R2, R5"), (0x90, "FFMA R3, R3, R6, R5"), (0xa0, "FFMA R3, R3, R7, R5"),
             (0xb0, "FFMA R3, R3, R8, R5"), (0xc0, "@P1 BRA 0x40"),
             (0xd0, "EXIT"), (0xe0, "BRA 0xe0")]
    assert report.loops(lines) == [(0x40, 0xc0, 9, 4)]
    # an outer loop around an inner one: only the inner one
    nested = [(0x00, "LDG.E R2, desc[UR4][R4.64]"), (0x10, "FADD R3, R3, R2"), (0x20, "@P0 BRA 0x10"),
              (0x30, "STG.E desc[UR4][R4.64], R3"), (0x40, "@P1 BRA 0x0"), (0x50, "EXIT")]
    assert report.loops(nested) == [(0x10, 0x20, 2, 1)]
