"""benchmarks/gpu.py, the one command that refreshes the GPU record: without a GPU it refuses with exit
status 2; with `--device cpu` it runs its whole path (generated Triton kernels under the interpreter,
which conftest.py turns on, at tiny shapes), every family's check passes, a wrong kernel fails, and
the marked section of the record is written without touching the rest of the file."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu():
    spec = importlib.util.spec_from_file_location("benchmarks_gpu", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # its dataclasses look their module up while they are made
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_without_cuda_it_says_so_and_exits_2(gpu, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "R.md"
    assert gpu.main(["--quick", "--out", str(out)]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not out.exists()


def test_cpu_run_checks_every_family_and_writes_the_section(gpu, capsys, tmp_path):
    out = tmp_path / "R.md"
    assert gpu.main(["--device", "cpu", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith("| ") and "| ssmc |" in line]
    titles = ("Mamba-1 selective_scan_fn", "Mamba-2 mamba_chunk_scan_combined", "GLA chunk_gla", "S5 s5_scan")
    assert len(rows) == len(titles)
    for title, row in zip(titles, rows):
        assert row.startswith(f"| {title} |") and "| PASS |" in row, row
    assert "FAIL" not in printed
    variant = [line for line in printed.splitlines() if "| ssmc (time-parallel scan) |" in line]
    assert len(variant) == 1 and variant[0].startswith("| Mamba-1") and "| PASS |" in variant[0]
    text = out.read_text()
    assert text.count(gpu.BEGIN) == 1 and text.count(gpu.END) == 1
    assert text.index(gpu.BEGIN) < text.index(gpu.END)
    section = text[text.index(gpu.BEGIN):]
    assert all(title in section for title in titles) and "torch " + torch.__version__ in section


def test_a_wrong_kernel_fails_its_check(gpu, monkeypatch, capsys, tmp_path):
    build = gpu.BUILDERS["s5"]

    def off_by_a_percent(*args):
        family = build(*args)
        right = family.ours
        family.ours = lambda t: right(t) * 1.01
        return family

    monkeypatch.setitem(gpu.BUILDERS, "s5", off_by_a_percent)
    assert gpu.main(["--device", "cpu", "--only", "s5", "--no-write"]) == 1
    assert "| FAIL |" in capsys.readouterr().out


def test_other_content_is_kept_and_the_section_replaced(gpu, tmp_path):
    out = tmp_path / "R.md"
    out.write_text("# Benchmark results\n\nEarlier tables.\n")
    assert gpu.main(["--device", "cpu", "--only", "s5", "--out", str(out)]) == 0
    first = out.read_text()
    assert first.startswith("# Benchmark results\n\nEarlier tables.\n\n" + gpu.BEGIN)
    assert first.rstrip().endswith(gpu.END)
    out.write_text(first + "\n## Later\n\nA later table.\n")
    assert gpu.main(["--device", "cpu", "--only", "s5", "--out", str(out)]) == 0
    second = out.read_text()
    assert second.count(gpu.BEGIN) == 1 and second.count(gpu.END) == 1
    assert second.startswith("# Benchmark results\n\nEarlier tables.\n\n" + gpu.BEGIN)
    assert second.endswith(gpu.END + "\n\n## Later\n\nA later table.\n")
    assert "S5 s5_scan" in second
