"""One command that refreshes the GPU record (issue 8 item 8): on a GPU, every family of generated
kernels is checked at real sizes against the float64 reference, then timed against mamba_ssm's and
flash-linear-attention's kernels where those are installed, and the result is written into
benchmarks/RESULTS.md (card, date, versions, table).

    python benchmarks/gpu.py                       # real sizes; writes benchmarks/RESULTS.md
    python benchmarks/gpu.py --quick --no-write    # tiny sizes, to see that the script runs
    python benchmarks/gpu.py --out FILE.md --only mamba2,gla

Families, real sizes and the reference each is checked against (float64, on the device; on the CPU
if it cannot run there):

    mamba1  selective_scan_fn          batch 8, dim 1536, len 2048, N 16   ssmc.reference.selective_scan_ref
    mamba2  mamba_chunk_scan_combined  batch 8, len 2048, 24 heads × 64, N 128   ssmc.reference_ssd.ssd_sequential_ref
    gla     chunk_gla                  batch 8, len 2048, 8 heads, K 128, V 128  ssmc.cli_bench.gated_loop
    s5      s5_scan                    batch 8, len 2048, H 512, P 256     ssmc.reference_s5.s5_ref (output),
                                                                            ssmc.cli_bench.mimo_loop (gradients)

Why the check uses a slice: a float64 sequential loop with autograd over the full batch would need
tens of GB and minutes. So ssmc runs at the full size, and the output gradient fed to its backward
is zero outside a slice (the last batch element; the last channels or heads); the reference runs on
that slice of the inputs only. Every gradient of the full-size run must then equal the reference's
on the slice and be zero elsewhere, so the whole gradient tensor is compared (a kernel that writes
outside its slice fails too); the output is compared on the slice. The table says which slice.

Errors are relative: ‖ours − reference‖ / ‖reference‖, for the output and every input's gradient;
the worst is reported, and FAIL above 1e-2 for a family with bfloat16 outputs, 1e-3 for float32.
Times are the median of `--repeat` runs after `--warmup` runs (CUDA events on a GPU), forward and
forward+backward; GB/s = (bytes of each input read once + each output written once) / time, with the
output gradient and the input gradients counted for forward+backward. Timings are reported, never
asserted.

The file named by --out keeps everything outside the markers `<!-- gpu.py begin -->` and
`<!-- gpu.py end -->`; the section between them is replaced (appended at the end when absent).

`--device cpu` exists so that the script itself can be tested without a GPU: the same code on CPU
tensors at the tiny sizes, with ssmc's Triton kernels run by Triton's interpreter
(TRITON_INTERPRET=1, SSMC_BACKEND=triton). Its times say nothing about a GPU.

Exit status: 0 when every ssmc check passes, 1 when one fails, 2 when there is no CUDA device.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BEGIN = "<!-- gpu.py begin -->"
END = "<!-- gpu.py end -->"
DEFAULT_OUT = Path(__file__).resolve().parent / "RESULTS.md"
FAMILIES = ("mamba1", "mamba2", "gla", "s5")

REAL = {
    "mamba1": dict(batch=8, dim=1536, len=2048, state=16),
    "mamba2": dict(batch=8, len=2048, heads=24, headdim=64, state=128),
    "gla": dict(batch=8, len=2048, heads=8, key=128, value=128),
    "s5": dict(batch=8, len=2048, H=512, P=256),
}
# tiny: seconds under the Triton interpreter; batch 2 and several channels/heads so that the
# checked slice is a strict part of each tensor, as at the real sizes
TINY = {
    "mamba1": dict(batch=2, dim=8, len=16, state=4),
    "mamba2": dict(batch=2, len=16, heads=2, headdim=4, state=4),
    "gla": dict(batch=2, len=16, heads=2, key=4, value=4),
    "s5": dict(batch=2, len=16, H=4, P=4),
}
TOLERANCE = {"bfloat16": 1e-2, "float16": 1e-2, "float32": 1e-3, "float64": 1e-6}


# ---- inputs ----------------------------------------------------------------------------------------

class Random:
    """Random tensors made directly on the device from one seeded generator, so that a run is
    reproducible without building gigabytes on the CPU first."""

    def __init__(self, device, seed):
        import torch
        self.torch, self.device = torch, device
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def normal(self, *shape, dtype=None):
        t = self.torch.randn(*shape, generator=self.gen, device=self.device)
        return t if dtype is None else t.to(dtype)

    def uniform(self, *shape, low=0.0, high=1.0):
        return low + (high - low) * self.torch.rand(*shape, generator=self.gen, device=self.device)

    def complex(self, *shape):
        return self.torch.complex(self.normal(*shape), self.normal(*shape)) / math.sqrt(2)

    def dt_bias(self, n):
        """Mamba's initialisation: softplus(bias) log-uniform in [1e-3, 1e-1] (long memories, the
        regime where a scan accumulates error over the whole length)."""
        dt = self.torch.exp(self.uniform(n, low=math.log(1e-3), high=math.log(1e-1)))
        return dt + self.torch.log(-self.torch.expm1(-dt))         # softplus⁻¹(dt)


# ---- families --------------------------------------------------------------------------------------

@dataclass
class Family:
    """One family at one shape: its inputs, ssmc's op, the competitor and the float64 reference.

    `ours` and `competitor` map an input dict to the output tensor. `reference` maps float64
    leaves of the checked slice (on the device it runs on) to the float64 output, differentiably;
    `forward_reference`, when given, is the output's reference instead (a module that detaches its
    inputs). `slices` gives each input's (and "out", the output's) index of the checked slice."""
    key: str
    title: str
    shape: str
    inputs: dict
    ours: object
    reference: object
    slices: dict
    slice_text: str
    forward_reference: object = None
    competitor: tuple = None            # (label, fn) or None
    notes: list = field(default_factory=list)
    variants: list = field(default_factory=list)    # (label, context manager factory): ssmc rerun under each


@contextlib.contextmanager
def preferring(schedule):
    """The SISO Triton kernels' schedule (`PREFERRED` of every generated kernels_triton module loaded)
    set to `schedule` for the block: a GPU run times both, which is what decides the shipped default."""
    modules = [m for name, m in list(sys.modules.items())
               if name.endswith(".kernels_triton") and hasattr(m, "PREFERRED")]
    saved = [m.PREFERRED for m in modules]
    for m in modules:
        m.PREFERRED = schedule
    try:
        yield
    finally:
        for m, value in zip(modules, saved):
            m.PREFERRED = value


def _last(n, keep):
    """The last `keep` of n indices: offsets at the end of an axis are where indexing bugs show."""
    return slice(n - keep, n)


def _range_text(s):
    """Index notation of a slice: `7` for one index, `1408:1536` for a range."""
    return f"{s.start}" if s.stop - s.start == 1 else f"{s.start}:{s.stop}"


def mamba1(shape, rng, device):
    """Mamba-1: bfloat16 u, delta, z and time-varying B, C (the input dtype: mamba_ssm's kernel
    requires time-varying B/C in u's dtype), float32 A, D, delta_bias; Mamba's A = -(1..N)."""
    import torch

    import ssmc
    from ssmc.reference import selective_scan_ref
    b, d, L, N = shape["batch"], shape["dim"], shape["len"], shape["state"]
    bf16 = torch.bfloat16
    x = dict(u=rng.normal(b, d, L, dtype=bf16), delta=(0.5 * rng.normal(b, d, L)).to(bf16),
             A=-torch.arange(1, N + 1, dtype=torch.float32, device=device).repeat(d, 1),
             B=rng.normal(b, N, L, dtype=bf16), C=rng.normal(b, N, L, dtype=bf16),
             D=rng.normal(d), z=rng.normal(b, d, L, dtype=bf16), delta_bias=rng.dt_bias(d))

    def call(fn):
        return lambda t: fn(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"],
                            delta_bias=t["delta_bias"], delta_softplus=True)

    bs, ds = _last(b, 1), _last(d, min(128, max(1, d // 2)))
    slices = dict(u=(bs, ds), delta=(bs, ds), z=(bs, ds), A=(ds,), D=(ds,), delta_bias=(ds,), B=(bs,), C=(bs,),
                  out=(bs, ds))
    family = Family("mamba1", "Mamba-1 selective_scan_fn", f"b{b} d{d} L{L} N{N}, bf16 u/δ/z/B/C", x,
                    call(ssmc.ops.selective_scan_fn), call(selective_scan_ref), slices,
                    f"batch [{_range_text(bs)}], dim [{_range_text(ds)}]")
    family.variants.append(("ssmc (time-parallel scan)", lambda: preferring("time_parallel")))
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        family.competitor = ("mamba_ssm selective_scan_fn", call(selective_scan_fn))
    except ImportError:
        family.notes.append("mamba_ssm: not installed (pip install mamba-ssm), not timed")
    return family


def mamba2(shape, rng, device):
    """Mamba-2's SSD in float32 with D and dt_bias, one group; ssmc chooses its pipeline and chunk
    (chunk_size=None), mamba_ssm runs its default chunk of 256."""
    import ssmc
    from ssmc.reference_ssd import ssd_sequential_ref
    b, L, H, P, N = shape["batch"], shape["len"], shape["heads"], shape["headdim"], shape["state"]
    x = dict(x=rng.normal(b, L, H, P), dt=0.5 * rng.normal(b, L, H), A=-rng.uniform(H, low=1.0, high=16.0),
             B=rng.normal(b, L, 1, N), C=rng.normal(b, L, 1, N), D=rng.normal(H), dt_bias=rng.dt_bias(H))

    def call(fn, chunk_size):
        return lambda t: fn(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size=chunk_size, D=t["D"],
                            dt_bias=t["dt_bias"], dt_softplus=True)

    def reference(t):
        return ssd_sequential_ref(t["x"], t["dt"], t["A"], t["B"], t["C"], D=t["D"], dt_bias=t["dt_bias"],
                                  dt_softplus=True)

    bs, hs = _last(b, 1), _last(H, min(2, max(1, H // 2)))
    slices = dict(x=(bs, slice(None), hs), dt=(bs, slice(None), hs), A=(hs,), D=(hs,), dt_bias=(hs,), B=(bs,), C=(bs,),
                  out=(bs, slice(None), hs))
    family = Family("mamba2", "Mamba-2 mamba_chunk_scan_combined", f"b{b} L{L} H{H} P{P} N{N}, fp32", x,
                    call(ssmc.ops.mamba_chunk_scan_combined, None), reference, slices,
                    f"batch [{_range_text(bs)}], heads [{_range_text(hs)}]")
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
        family.competitor = ("mamba_ssm mamba_chunk_scan_combined", call(mamba_chunk_scan_combined, 256))
    except ImportError:
        family.notes.append("mamba_ssm: not installed (pip install mamba-ssm), not timed")
    return family


def _fla_layout(fn):
    """fla's older releases take (batch, heads, len, dim) unless head_first=False; newer ones have
    only (batch, len, heads, dim), ssmc's layout."""
    import inspect
    try:
        has = "head_first" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        has = False
    return {"head_first": False} if has else {}


def gla(shape, rng, device):
    """GLA (flash-linear-attention's chunk_gla) in float32, log-decays in (-0.21, -0.01): memories of
    5 to 100 steps."""
    import ssmc
    from ssmc.cli_bench import gated_loop
    b, L, H, K, V = shape["batch"], shape["len"], shape["heads"], shape["key"], shape["value"]
    x = dict(q=rng.normal(b, L, H, K), k=rng.normal(b, L, H, K), v=rng.normal(b, L, H, V),
             g=-rng.uniform(b, L, H, K, low=0.01, high=0.21))

    def call(fn, **extra):
        return lambda t: fn(t["q"], t["k"], t["v"], t["g"], **extra)[0]

    def reference(t):
        return gated_loop(lambda g: g, True, t["q"], t["k"], t["v"], [t["g"]])

    bs, hs = _last(b, 1), _last(H, min(2, max(1, H // 2)))
    index = (bs, slice(None), hs)
    slices = dict(q=index, k=index, v=index, g=index, out=index)
    family = Family("gla", "GLA chunk_gla", f"b{b} L{L} H{H} K{K} V{V}, fp32", x, call(ssmc.ops.chunk_gla),
                    reference, slices, f"batch [{_range_text(bs)}], heads [{_range_text(hs)}]")
    try:
        from fla.ops.gla import chunk_gla
        family.competitor = ("fla chunk_gla", call(chunk_gla, **_fla_layout(chunk_gla)))
    except ImportError:
        family.notes.append("fla: not installed (pip install flash-linear-attention), not timed")
    return family


def s5(shape, rng, device):
    """S5 with complex Λ (conjugate symmetry), ZOH, one Δ per state; no competitor kernel exists.
    s5_ref detaches its inputs, so the gradients' reference is the plain float64 loop of ssmc bench."""
    import torch

    import ssmc
    from ssmc.cli_bench import mimo_loop
    from ssmc.reference import DISCRETIZATIONS
    from ssmc.reference_s5 import s5_ref
    b, L, H, P = shape["batch"], shape["len"], shape["H"], shape["P"]
    Lambda = torch.complex(-rng.uniform(P, low=0.1, high=0.6), math.pi * rng.uniform(P, high=P))
    x = dict(u=rng.normal(b, L, H), Lambda=Lambda, B=rng.complex(P, H) / math.sqrt(H),
             C=rng.complex(H, P) / math.sqrt(P), D=rng.normal(H),
             step=torch.exp(rng.uniform(P, low=math.log(1e-3), high=math.log(1e-1))))

    def ours(t):
        return ssmc.ops.s5_scan(t["u"], t["Lambda"], t["B"], t["C"], t["D"], t["step"])

    def reference(t):
        return mimo_loop(DISCRETIZATIONS["zoh"], True, False, t["u"], t["Lambda"], t["B"], t["C"], D=t["D"],
                         step=t["step"])

    def forward_reference(t):
        return s5_ref(t["u"], t["Lambda"], t["B"], t["C"], t["D"], t["step"])

    bs = _last(b, 1)
    family = Family("s5", "S5 s5_scan", f"b{b} L{L} H{H} P{P}, fp32 / complex64", x, ours, reference,
                    dict(u=(bs,), out=(bs,)), f"batch [{_range_text(bs)}]", forward_reference=forward_reference)
    family.notes.append("S5: no mamba_ssm / fla kernel to compare with")
    return family


BUILDERS = {"mamba1": mamba1, "mamba2": mamba2, "gla": gla, "s5": s5}


# ---- checking --------------------------------------------------------------------------------------

def rel_error(out, ref) -> float:
    """‖out − ref‖ / ‖ref‖ in float64 (complex128); inf when out has a NaN or inf."""
    import torch
    wide = torch.complex128 if (out.is_complex() or ref.is_complex()) else torch.float64
    out, ref = out.detach().to(device="cpu", dtype=wide), ref.detach().to(device="cpu", dtype=wide)
    if not torch.isfinite(torch.view_as_real(out) if out.is_complex() else out).all():
        return math.inf
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _leaves(inputs):
    """Fresh leaves of every input, each requiring its gradient."""
    return {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}


def _masked(gy, index):
    """gy zero outside `index`: the backward then computes the gradient of the slice's output."""
    out = gy.new_zeros(gy.shape)
    out[index] = gy[index]
    return out


def reference_run(family, gy, where):
    """(output, {input: gradient}) of the float64 reference on the checked slice, computed on `where`.

    The references allocate their states with plain factory calls (no device argument); inside
    `with torch.device(where)` those land on `where` too. On a GPU this matters: a sequential loop's
    backward over 2048 steps writes a full-size zero gradient per step when it indexes time, minutes
    on a CPU, a fraction of a second on the card."""
    import torch
    leaves = {}
    for name, t in family.inputs.items():
        part = t[family.slices[name]] if name in family.slices else t
        wide = torch.complex128 if t.is_complex() else torch.float64
        leaves[name] = part.detach().to(device=where, dtype=wide).requires_grad_(True)
    with torch.device(where):
        y = family.reference(leaves)
        grads = torch.autograd.grad(y, list(leaves.values()), gy[family.slices["out"]].detach().to(where, y.dtype))
        if family.forward_reference is not None:
            with torch.no_grad():
                y = family.forward_reference(leaves)
    return y.detach(), dict(zip(leaves, grads))


def reference_anywhere(family, gy, device):
    """The reference on the device, or on the CPU if it cannot run there (out of memory, say):
    slower, but the check still happens."""
    import torch
    if device.type == "cpu":
        return reference_run(family, gy, device)
    try:
        return reference_run(family, gy, device)
    except RuntimeError as error:
        torch.cuda.empty_cache()
        family.notes.append(f"{family.key}: float64 reference on the CPU ({type(error).__name__} on {device}: "
                            f"{str(error).splitlines()[0][:80]})")
        return reference_run(family, gy, torch.device("cpu"))


def check(family, fn, gy, ref_out, ref_grads) -> dict:
    """Errors of fn's output (on the slice) and of every full gradient against the reference's,
    placed in a zero tensor: {"output": e, "d<input>": e, ...}."""
    import torch
    leaves = _leaves(family.inputs)
    y = fn(leaves)
    grads = torch.autograd.grad(y, list(leaves.values()), _masked(gy, family.slices["out"]), allow_unused=True)
    errors = {"output": rel_error(y[family.slices["out"]], ref_out)}
    for name, grad in zip(leaves, grads):
        expected = ref_grads[name].new_zeros(leaves[name].shape)      # on the reference's device
        expected[family.slices.get(name, ())] = ref_grads[name]
        errors[f"d{name}"] = math.inf if grad is None else rel_error(grad, expected)
    return errors


# ---- timing ----------------------------------------------------------------------------------------

def median_ms(fn, device, warmup: int, repeat: int) -> float:
    """Median milliseconds of `repeat` runs after `warmup` runs: CUDA events around each run on a
    GPU (no host synchronisation inside the timed region), the wall clock on the CPU."""
    import torch
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        pairs = []
        for _ in range(repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) for s, e in pairs]
    else:
        for _ in range(repeat):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def timings(family, fn, gy, device, warmup, repeat) -> dict:
    """{"fwd": (ms, GB/s), "fwd+bwd": (ms, GB/s)}; the backward uses autograd.grad, so no gradient
    accumulates across runs."""
    import torch
    with torch.no_grad():
        y = fn(family.inputs)
        fwd_ms = median_ms(lambda: fn(family.inputs), device, warmup, repeat)
    moved = nbytes(*family.inputs.values()) + nbytes(y)
    leaves = _leaves(family.inputs)
    order = list(leaves.values())

    def forward_backward():
        return torch.autograd.grad(fn(leaves), order, gy, allow_unused=True)

    grads = forward_backward()
    bwd_ms = median_ms(forward_backward, device, warmup, repeat)
    moved_bwd = moved + nbytes(gy) + nbytes(*grads)
    return {"fwd": (fwd_ms, moved / fwd_ms / 1e6), "fwd+bwd": (bwd_ms, moved_bwd / bwd_ms / 1e6)}


# ---- one family ------------------------------------------------------------------------------------

def tolerance(output) -> float:
    """By the output's dtype: 1e-2 for bfloat16 (an 8-bit mantissa rounds at ~4e-3), 1e-3 float32."""
    return TOLERANCE.get(str(output.dtype).replace("torch.", ""), 1e-3)


def run_family(family, device, warmup, repeat, seed) -> list:
    """Rows for the table: ssmc's, then the competitor's (a failure to run is a row that says so)."""
    import torch
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    with torch.no_grad():
        y = family.ours(family.inputs)
    gy = torch.randn(y.shape, generator=gen, device=device).to(y.dtype)
    ref_out, ref_grads = reference_anywhere(family, gy, device)
    tol = tolerance(y)
    impls = ([("ssmc", family.ours, contextlib.nullcontext)]
             + [(label, family.ours, context) for label, context in family.variants]
             + ([(*family.competitor, contextlib.nullcontext)] if family.competitor else []))
    rows = []
    for label, fn, context in impls:
        row = dict(family=family, impl=label, tol=tol)
        try:
            with context():
                errors = check(family, fn, gy, ref_out, ref_grads)
                worst = max(errors, key=errors.get)
                row.update(error=errors[worst], worst=worst, ok=errors[worst] <= tol)
                row.update(timings(family, fn, gy, device, warmup, repeat))
        except Exception as error:          # noqa: BLE001 -- a competitor that cannot run: say why
            if label.startswith("ssmc"):
                raise
            row.update(failed=f"{type(error).__name__}: {error}".splitlines()[0][:100])
        rows.append(row)
        print(f"  {family.key}: {label} done", file=sys.stderr, flush=True)
    return rows


# ---- report ----------------------------------------------------------------------------------------

HEADER = ("| family | shape | implementation | fwd ms | fwd GB/s | fwd+bwd ms | fwd+bwd GB/s | "
          "max rel err (in) | tol | check | checked on |\n"
          "|---|---|---|---:|---:|---:|---:|---|---:|---|---|")


def table(rows) -> str:
    lines = [HEADER]
    for r in rows:
        f = r["family"]
        head = f"| {f.title} | {f.shape} | {r['impl']} |"
        if "failed" in r:
            lines.append(f"{head} – | – | – | – | failed: {r['failed']} | | | |")
            continue
        (fm, fg), (bm, bg) = r["fwd"], r["fwd+bwd"]
        lines.append(f"{head} {fm:.4g} | {fg:.3g} | {bm:.4g} | {bg:.3g} | {r['error']:.1e} ({r['worst']}) | "
                     f"{r['tol']:.0e} | {'PASS' if r['ok'] else 'FAIL'} | {f.slice_text} |")
    return "\n".join(lines)


def _version(module_name, distribution):
    try:
        from importlib import metadata
        return metadata.version(distribution)
    except Exception:                       # noqa: BLE001 -- not installed, or no metadata
        pass
    try:
        module = __import__(module_name)
        return getattr(module, "__version__", "installed")
    except ImportError:
        return None


def environment(device) -> dict:
    """Card and versions for the record's heading."""
    import torch

    import ssmc
    if device.type == "cuda":
        card = torch.cuda.get_device_name(device)
    else:
        card = f"CPU ({torch.get_num_threads()} threads), Triton interpreter: a test run, not a GPU record"
    versions = {"torch": torch.__version__, "triton": _version("triton", "triton"), "ssmc": ssmc.__version__,
                "mamba_ssm": _version("mamba_ssm", "mamba-ssm"), "fla": _version("fla", "flash-linear-attention")}
    if device.type == "cuda":
        versions["CUDA"] = torch.version.cuda
    return {"card": card, "versions": versions,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def section(env, rows, notes, command, warmup, repeat) -> str:
    versions = ", ".join(f"{k} {v or 'not installed'}" for k, v in env["versions"].items())
    return "\n".join([
        BEGIN,
        "## GPU kernels: correctness and timing (`benchmarks/gpu.py`)",
        "",
        f"{env['date']} · {env['card']} · {versions} · `{command}` · median of {repeat} runs after "
        f"{warmup} warm-up runs · errors against float64: the output on the checked slice, every "
        "input's full gradient for an output gradient zero outside it (benchmarks/gpu.py's docstring)",
        "",
        table(rows),
        "",
        *(f"- {note}" for note in notes),
        END,
    ])


def write_section(path: Path, text: str) -> None:
    """Replaces the marked section of `path`, or appends it; nothing else in the file changes."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    start, end = old.find(BEGIN), old.find(END)
    if start != -1 and end > start:
        new = old[:start] + text + old[end + len(END):]
    else:
        new = old + ("\n" if old and not old.endswith("\n") else "") + ("\n" if old else "") + text + "\n"
    path.write_text(new, encoding="utf-8")


# ---- command line ----------------------------------------------------------------------------------

def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny shapes (seconds), to see that the script runs")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="the markdown record to update (default %(default)s)")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (tests the script only)")
    p.add_argument("--only", default=",".join(FAMILIES), help="families, comma-separated (default: all)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 5; 1 quick; 0 on cpu)")
    p.add_argument("--repeat", type=int, default=None, help="timed runs (default 30; 5 quick; 1 on cpu)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    unknown = sorted(set(args.only.split(",")) - set(FAMILIES))
    if unknown:
        p.error(f"--only: unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    return args


def _use_interpreter() -> str | None:
    """--device cpu: ssmc's Triton kernels on CPU tensors. Returns the previous SSMC_BACKEND, to be
    restored (the process may go on, e.g. under pytest)."""
    os.environ.setdefault("TRITON_INTERPRET", "1")
    previous = os.environ.get("SSMC_BACKEND")
    os.environ["SSMC_BACKEND"] = "triton"
    return previous


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    import torch
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"benchmarks/gpu.py: no CUDA device (torch {torch.__version__}, built for CUDA "
              f"{torch.version.cuda}): this script checks and times the GPU kernels, run it on a GPU machine "
              f"(--device cpu runs it on tiny CPU tensors, only to test the script)", file=sys.stderr)
        return 2
    if device.type not in ("cuda", "cpu"):
        print(f"benchmarks/gpu.py: --device {args.device}: expected cuda, cuda:N or cpu", file=sys.stderr)
        return 2
    on_cpu = device.type == "cpu"
    previous = _use_interpreter() if on_cpu else None
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device.index)       # events and the current stream belong to it
    argv_text = shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        return run(args, device, on_cpu, f"python benchmarks/gpu.py {argv_text}".rstrip())
    finally:
        if on_cpu:
            if previous is None:
                os.environ.pop("SSMC_BACKEND", None)
            else:
                os.environ["SSMC_BACKEND"] = previous


def run(args, device, on_cpu, command) -> int:
    """Builds, checks and times each family, prints the table and writes the record."""
    shapes = TINY if (args.quick or on_cpu) else REAL
    warmup = args.warmup if args.warmup is not None else (0 if on_cpu else 1 if args.quick else 5)
    repeat = args.repeat if args.repeat is not None else (1 if on_cpu else 5 if args.quick else 30)
    rows, notes = [], []
    for key in args.only.split(","):
        rng = Random(device, args.seed)
        family = BUILDERS[key](shapes[key], rng, device)
        if on_cpu and family.competitor:
            family.notes.append(f"{family.competitor[0]}: needs CUDA, not timed on the CPU")
            family.competitor = None
        print(f"{family.title} at {family.shape} ...", file=sys.stderr, flush=True)
        rows += run_family(family, device, warmup, repeat, args.seed)
        notes += [note for note in family.notes if note not in notes]
    env = environment(device)
    text = table(rows)
    print(f"{env['card']} · {env['date']}\n\n{text}\n")
    for note in notes:
        print(f"- {note}")
    if not args.no_write:
        write_section(Path(args.out), section(env, rows, notes, command, warmup, repeat))
        print(f"\nwrote the section of {args.out}")
    failed = [r for r in rows if r["impl"].startswith("ssmc") and not r.get("ok", False)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
