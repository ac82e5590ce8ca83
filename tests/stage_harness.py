"""Running rendered stage kernels in tests: write them as a package in a temporary directory, import
it, and call the stages through ssmc.runtime.stages (the same table-driven path as a compiled layer).
"""
import importlib.util
import itertools
import sys

import torch

from ssmc.ir.stages import MULTIHEAD_STAGES, operand_tables
from ssmc.runtime.stages import StageLibrary

_COUNTER = itertools.count()


def assert_threads_agree(library, calls: dict, params=None):
    """Each stage of `calls` ({stage: operands}) run with 1, 2 and 3 threads gives the same outputs, bit
    for bit; torch's thread count is restored afterwards."""
    threads = torch.get_num_threads()
    try:
        for name, operands in calls.items():
            results = []
            for count in (1, 2, 3):
                torch.set_num_threads(count)
                results.append(library.run(name, *([params] if params is not None else []), **operands))
            for outputs in results[1:]:
                for out, first in zip(outputs, results[0]):
                    assert torch.equal(out, first), name
    finally:
        torch.set_num_threads(threads)


def stage_library(tmp_path, files: dict, stages=None) -> StageLibrary:
    """A StageLibrary over `files` ({name: text}, e.g. render_c_stages(...)) in a fresh package."""
    stages = list(MULTIHEAD_STAGES.values()) if stages is None else stages
    name = f"ssmc_stage_test_{next(_COUNTER)}"
    directory = tmp_path / name
    directory.mkdir()
    (directory / "__init__.py").write_text("", encoding="utf-8")
    for file_name, text in files.items():
        (directory / file_name).write_text(text, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, directory / "__init__.py",
                                                  submodule_search_locations=[str(directory)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return StageLibrary(name, str(directory), operand_tables(stages))


def core_inputs(batch=2, length=37, heads=4, headdim=3, state=5, u_heads=2, b_heads=1, c_heads=4,
                h0=True, seq_idx=False, dtype=torch.float64, seed=0):
    """Fresh random operands of the core recurrence (ssmc.reference_ssd.ssd_core_ref)."""
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    operands = dict(u=randn(batch, length, u_heads, headdim),
                    log_decay=-torch.rand(batch, length, heads, generator=gen, dtype=dtype),
                    B=randn(batch, length, b_heads, state), C=randn(batch, length, c_heads, state),
                    h0=randn(batch, heads, headdim, state) if h0 else None, seq_idx=None)
    if seq_idx:
        cuts = sorted(torch.randint(0, length + 1, (batch, 3), generator=gen).tolist()[0])
        ids = torch.zeros(batch, length, dtype=torch.int64)
        for cut in cuts:
            ids[:, cut:] += 1
        ids[-1] += 1            # the last row starts in another sequence than id 0: h0 unused there
        operands["seq_idx"] = ids
    return operands


def run_chunked(library, ops, cum, carry, entering_ids):
    """(y, final) of the chunked pipeline: chunk_state -> state_passing -> chunk_scan."""
    states, = library.run("chunk_state", u=ops["u"], cum=cum, B=ops["B"], seq_idx=ops["seq_idx"])
    entering, final = library.run("state_passing", states=states, carry=carry, h0=ops["h0"])
    y, = library.run("chunk_scan", u=ops["u"], cum=cum, B=ops["B"], C=ops["C"], entering=entering,
                     seq_idx=ops["seq_idx"], entering_ids=entering_ids)
    return y, final
