"""A GPU-free performance proxy (issue 8 item 7): every generated Triton kernel compiled offline for
sm_90, with per config its registers, spills, shared memory and the SASS instructions of its main
loop, per time step and per (t, n) element.

    python benchmarks/sm90_report.py [--quick] [--all-configs] [--only NAME[,NAME...]]

How it works, without a GPU:
- each spec (Mamba-1, Mamba-2, GLA, S5 presets) is compiled to a package by ssmc; its Triton
  launchers (`kernels_triton.py` / `stages_triton.py`) are called with *meta* tensors (shapes and
  dtypes, no data) at a representative shape, while the module's kernel objects are replaced by a
  recorder: so the arguments, constexprs and grid are exactly those the launcher would pass;
- for an autotuned kernel every config kept by its own early_config_prune at that shape is
  compiled (`--quick`: the first one); for a plain kernel the one launch;
- the compile goes through triton's own binder (argument specialisation as at a real launch) and
  `triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`, with the ptxas bundled in
  the triton wheel;
- registers / stack come from `cuobjdump -res-usage`, shared memory from the kernel's metadata,
  and the SASS from `cuobjdump -sass`. Spills = local-memory instructions (LDL/STL) in the SASS.
- the main loop: every backward branch `BRA target` (target below the branch) delimits a loop
  [target, branch]; the innermost ones (containing no other loop) are summed: `loop` is the static
  count of SASS instructions executed per iteration by one thread (warp). A loop the compiler
  unrolled k times next to its one-iteration remainder loop is shown as `count/k` and counts
  count/k (the remainder loop is dropped); an unrolled loop whose remainder is not a loop is not
  recognised and counts in full. `per step` divides by
  the time steps an iteration covers; `per elem` is thread-instructions per (t, [channel,] n)
  element: loop × 32 · num_warps / (elements an iteration covers). Static counts: branches inside
  the loop (masks, `if`) are counted on both sides, so this is an upper bound of the issued
  instructions, a proxy and not a timing.

A kernel that fails to compile is a row with its error. TRITON_INTERPRET is removed from the
environment of this process before triton is imported (the generated modules pick one config under
the interpreter).
"""
import argparse
import datetime
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402

BF16 = torch.bfloat16
F32 = torch.float32

# the representative shapes: dims of the operand tables (operands.json) per package
MAMBA1_DIMS = dict(batch=8, dim=1536, len=2048, state=16, groups_B=1, groups_C=1)
MAMBA1_CHUNK = 64           # ssmc.runtime.ops.CHECKPOINT_CHUNK: the training forward's checkpoints
MAMBA2_DIMS = dict(batch=8, len=2048, heads=24, u_heads=24, headdim=64, state=128, b_heads=1, c_heads=1,
                   chunk=256, chunks=8)
GLA_DIMS = dict(batch=8, len=2048, heads=8, headdim=128, state=128, chunk=64, chunks=32)
S5_DIMS = dict(batch=8, len=2048, H=512, state=256, parts=2, dbatch=8, dlen=2048)


def _tools():
    """Paths of the ptxas / cuobjdump bundled with triton (None where absent)."""
    base = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    found = {}
    for name in ("ptxas", "cuobjdump", "nvdisasm"):
        path = os.path.join(base, name)
        found[name] = path if os.access(path, os.X_OK) else None
    return found


# ---------------------------------------------------------------- recording a launcher's kernel calls

class _Recorder:
    """Stands for a kernel object in a generated module: `kernel[grid](*args, **kwargs)` records."""

    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append((self.name, grid, args, kwargs))
        return launch


def _is_kernel(obj):
    from triton.runtime.autotuner import Autotuner, Heuristics
    from triton.runtime.jit import JITFunction
    return isinstance(obj, (Autotuner, Heuristics, JITFunction))


def record(module, launcher, *args, **kwargs):
    """[(kernel name, kernel object, grid, args, kwargs)] of the launches `launcher(*args, **kwargs)` makes."""
    calls = []
    originals = {name: obj for name, obj in vars(module).items() if _is_kernel(obj) and name.endswith("_kernel")}
    try:
        for name in originals:
            setattr(module, name, _Recorder(name, calls))
        launcher(*args, **kwargs)
    finally:
        for name, obj in originals.items():
            setattr(module, name, obj)
    return [(name, originals[name], grid, a, k) for name, grid, a, k in calls]


# ---------------------------------------------------------------- compiling one launch for sm_90

def _configs(kernel, args, kwargs, quick, unpruned=False):
    """(the JITFunction, [config kwargs]) of a recorded launch: the autotuner's configs kept by its
    pruner at these arguments (all of them, or the first with quick; unpruned: every config it was
    given, to check the pruning against what ptxas does), or one empty config."""
    from triton.runtime.autotuner import Autotuner, Heuristics
    configs, heuristics = [None], []
    obj = kernel
    while not hasattr(obj, "arg_names") or isinstance(obj, (Autotuner, Heuristics)):
        if isinstance(obj, Autotuner):
            nargs = dict(zip(obj.arg_names, args))
            kept = obj.configs
            if obj.early_config_prune and not unpruned:
                kept = obj.early_config_prune(obj.configs, nargs, **kwargs)
            configs = kept[:1] if quick else kept
        elif isinstance(obj, Heuristics):
            heuristics.append(obj)
        obj = obj.fn
    return obj, configs, heuristics


def compile_launch(kernel, args, kwargs, config=None, heuristics=()):
    """Compile one launch for sm_90: (CompiledKernel, the full kwargs with the config's)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    fn = kernel
    kwargs = dict(kwargs)
    if config is not None:
        kwargs.update(config.all_kwargs())
    for h in heuristics:
        nargs = dict(zip(h.arg_names, args), **kwargs)
        for name, rule in h.values.items():
            kwargs[name] = rule(nargs)
    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    kwargs.setdefault("debug", False)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound_args, specialization, options)
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
    return compiled, kwargs


# ---------------------------------------------------------------- reading the cubin

_SASS_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", re.IGNORECASE)


def _cuobjdump(cubin, *flags):
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        result = subprocess.run([_tools()["cuobjdump"], *flags, path], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"cuobjdump {' '.join(flags)}: {result.stderr.strip()[:200]}")
        return result.stdout
    finally:
        os.unlink(path)


def resources(cubin):
    """{'registers', 'stack', 'local', 'shared_static'} from cuobjdump -res-usage."""
    text = _cuobjdump(cubin, "-res-usage")
    found = {}
    for key, name in (("REG", "registers"), ("STACK", "stack"), ("LOCAL", "local"), ("SHARED", "shared_static")):
        match = re.search(rf"\b{key}:(\d+)", text)
        found[name] = int(match.group(1)) if match else None
    return found


def sass_instructions(cubin):
    """[(address, text)] of the SASS of the cubin's (one) kernel, NOPs dropped."""
    text = _cuobjdump(cubin, "-sass")
    rows = []
    for line in text.splitlines():
        match = _SASS_LINE.match(line)
        if match:
            rows.append((int(match.group(1), 16), match.group(2).strip()))
    return [(a, t) for a, t in rows if not re.match(r"^NOP\b", t)]


def _opcode(text):
    """The base opcode of a SASS instruction ('@!P0 LDG.E.128 R4, ...' -> 'LDG')."""
    text = re.sub(r"^@!?U?P\w+\s+", "", text)
    return text.split()[0].split(".")[0] if text.split() else ""


_MEMORY = {"LDG", "STG", "RED", "ATOMG", "ATOM", "LDGSTS"}


def _back_edges(instructions):
    """Sorted (target, address) of the backward branches: each spans a loop."""
    intervals = set()
    for address, text in instructions:
        match = re.search(r"\bBRA\b[^;]*?0x([0-9a-f]+)", text, re.IGNORECASE)
        if match and int(match.group(1), 16) < address:
            intervals.add((int(match.group(1), 16), address))
    return sorted(intervals)


def loops(instructions):
    """[(start, end, count, unroll)] of the main loops: the loops delimited by backward branches,
    innermost only (an interval containing no other), `count` the instructions in [start, end].
    A loop of one instruction (the `BRA` to itself after EXIT) is no loop. A loop that the compiler
    unrolled k times next to a remainder loop (one iteration: the same opcodes, 1/k of the global
    memory instructions) is reported once, with unroll = k, and the remainder loop is dropped."""
    intervals = _back_edges(instructions)
    inner = [(s, e) for s, e in intervals
             if not any((s2, e2) != (s, e) and s <= s2 and e2 <= e for s2, e2 in intervals)]
    found = []
    for s, e in inner:
        body = [t for a, t in instructions if s <= a <= e]
        ops = [_opcode(t) for t in body]
        found.append(dict(start=s, end=e, count=len(body), ops=set(ops),
                          memory=sum(1 for o in ops if o in _MEMORY)))
    unroll = {id(x): 1 for x in found}
    dropped = set()
    for big in found:
        for small in found:
            if small is big or not small["memory"] or big["memory"] % small["memory"]:
                continue
            k = big["memory"] // small["memory"]
            if k >= 2 and small["ops"] <= big["ops"] and 0.5 * k <= big["count"] / small["count"] <= 1.5 * k:
                unroll[id(big)] = max(unroll[id(big)], k)
                dropped.add(id(small))
    return [(x["start"], x["end"], x["count"], unroll[id(x)]) for x in found if id(x) not in dropped]


def outside_innermost(instructions, inner):
    """Instructions of the smallest loop enclosing the innermost one `inner` (start, end), less the innermost's:
    a tile loop's work done once per tile around its loop over the states."""
    start, end = inner
    enclosing = [(s, e) for s, e in _back_edges(instructions) if s <= start and end <= e and (s, e) != inner]
    if not enclosing:
        return None
    s, e = min(enclosing, key=lambda x: x[1] - x[0])
    return sum(1 for a, _ in instructions if s <= a <= e) - sum(1 for a, _ in instructions if start <= a <= end)


# ---------------------------------------------------------------- the work of one loop iteration
# kernels whose innermost loop is over the states inside a tile loop: the tile's own work is reported too,
# per (t, n) element (`outside`), the tile's N_PAD states sharing it
PER_STATE_LOOPS = ("_scan_bwd_tiled_kernel",)

def loop_work(kernel_name, consts):
    """(time steps, elements) one iteration of the kernel's innermost loop(s) covers, and how the
    elements were counted (the tile: channels/headdim x state, times steps for chunked kernels)."""
    c = consts
    if kernel_name in ("_scan_fwd_kernel", "_scan_bwd_kernel", "_scan_step_kernel"):
        return 1, c["BLOCK_D"] * c["N_PAD"], "BLOCK_D·N_PAD"
    if kernel_name == "_scan_fwd_tiled_kernel":     # a tile's loop covers one block of states
        states = min(c["N_PAD"], c.get("STATE_BLOCK", c["N_PAD"]))
        return c["BLOCK_T"], c["BLOCK_D"] * states * c["BLOCK_T"], "BLOCK_D·STATE_BLOCK·BLOCK_T"
    if kernel_name in PER_STATE_LOOPS:              # its innermost loop runs one state of the tile
        return c["BLOCK_T"], c["BLOCK_D"] * c["BLOCK_T"], "BLOCK_D·BLOCK_T, a state"
    if kernel_name in ("_ssd_scan_kernel", "_gla_scan_kernel"):
        return 1, c["BLOCK_P"] * c["BLOCK_N"], "BLOCK_P·BLOCK_N"
    if kernel_name in ("_state_passing_kernel",):
        return 1, c["BLOCK"], "BLOCK (per chunk)"
    if kernel_name in ("_chunk_state_kernel", "_gla_chunk_state_kernel"):
        return c["BLOCK_L"], c["BLOCK_L"] * c["BLOCK_P"] * c["BLOCK_N"], "BLOCK_L·BLOCK_P·BLOCK_N"
    if kernel_name == "_chunk_scan_kernel":
        return c["BLOCK_M"], c["BLOCK_M"] * c["BLOCK_M"] * (c["BLOCK_N"] + c["BLOCK_P"]), "BLOCK_M²·(N+P) MACs"
    if kernel_name == "_mimo_scan_kernel":
        return c["BLOCK_T"], c["BLOCK_T"] * c["BLOCK_P"], "BLOCK_T·BLOCK_P"
    blocks = {k: v for k, v in c.items() if isinstance(v, int) and not isinstance(v, bool)
              and (k.startswith("BLOCK") or k in ("SUB", "N_PAD"))}
    steps = next((blocks[k] for k in ("BLOCK_T", "BLOCK_L", "SUB", "BLOCK_M") if k in blocks), 1)
    elems = 1
    for v in blocks.values():
        elems *= v
    return steps, elems, "·".join(blocks) or "1"


# ---------------------------------------------------------------- the packages and their launches

def _meta(dims, names, dtype):
    return torch.empty([dims[n] for n in names], dtype=dtype, device="meta")


def _package(spec):
    from ssmc.compiler import compile_package
    package = compile_package(spec)
    return os.path.dirname(package.__file__), package.__name__


def _module(directory, package_name, file):
    return importlib.import_module(f"{package_name}.{file}")


def mamba1_launches(dtype):
    """[(label, module, launcher, kwargs)] of the Mamba-1 forward (training: with checkpoints) and
    backward at MAMBA1_DIMS as ssmc.runtime's normalize_scan_args leaves the operands of a `dtype`
    layer: u and z (and grad_out) in `dtype`, delta / A / B / C / D / dt_bias in the compute dtype
    (float32 unless float64)."""
    import ssmc.presets
    directory, name = _package(ssmc.presets.mamba(d_state=16))
    module = _module(directory, name, "kernels_triton")
    dims = dict(MAMBA1_DIMS, chunks=-(-MAMBA1_DIMS["len"] // MAMBA1_CHUNK))
    b, d, L, n = dims["batch"], dims["dim"], dims["len"], dims["state"]
    act = dict(u=_meta(dims, ("batch", "dim", "len"), dtype), delta=_meta(dims, ("batch", "dim", "len"), F32),
               dt_bias=torch.empty(d, device="meta"), A_re=torch.empty(d, n, device="meta"), A_im=None,
               B_re=_meta(dims, ("batch", "groups_B", "state", "len"), F32), B_im=None,
               C_re=_meta(dims, ("batch", "groups_C", "state", "len"), F32), C_im=None,
               D=torch.empty(d, device="meta"), z=_meta(dims, ("batch", "dim", "len"), dtype))
    fwd = dict(act, chunk=MAMBA1_CHUNK)
    bwd = dict(act, grad_out=_meta(dims, ("batch", "dim", "len"), dtype), grad_state_re=None, grad_state_im=None,
               ckpt_re=torch.empty(b, d, dims["chunks"], n, device="meta"), ckpt_im=None, chunk=MAMBA1_CHUNK)
    step = dict(u=torch.empty(b, d, device="meta", dtype=dtype), delta=torch.empty(b, d, device="meta"),
                dt_bias=act["dt_bias"], A_re=act["A_re"], A_im=None, B_re=torch.empty(b, 1, n, device="meta"),
                B_im=None, C_re=torch.empty(b, 1, n, device="meta"), C_im=None, D=act["D"],
                z=torch.empty(b, d, device="meta", dtype=dtype), h_re=torch.empty(b, d, n, device="meta"), h_im=None)
    shape = f"({b}, {d}, {L}, {n})"
    return [(f"mamba scan_fwd {schedule} {shape}", module, getattr(module, f"scan_fwd_{schedule}"), fwd)
            for schedule in module.SCHEDULES] + [
            (f"mamba scan_bwd {schedule} {shape}", module, getattr(module, f"scan_bwd_{schedule}"), bwd)
            for schedule in module.SCHEDULES] + [
            (f"mamba scan_step ({b}, {d}, {n})", module, module.scan_step_launch, step)]


def stage_launches(spec, dims, dtype, present=(), params=None, label=""):
    """[(label, module, launcher, kwargs)] of every stage of a stage package (operands.json 'stages'),
    operands as meta tensors at `dims`; optional operands absent unless named in `present`."""
    directory, name = _package(spec)
    module = _module(directory, name, "stages_triton")
    with open(os.path.join(directory, "operands.json"), encoding="utf-8") as f:
        tables = json.load(f)["stages"]
    launches = []
    for stage, table in tables.items():
        kwargs = {}
        try:
            for operand in table["inputs"] + table["outputs"]:
                if operand.get("optional") and operand["name"] not in present:
                    kwargs[operand["name"]] = None
                    continue
                kind = torch.int64 if operand["dtype"] == "int64" else dtype
                kwargs[operand["name"]] = _meta(dims, operand["dims"], kind)
            for param in table.get("params", []):
                kwargs[param] = (params or {}).get(param, False)
            launcher = getattr(module, stage)
            accepted = inspect.signature(launcher).parameters
            kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        except Exception as error:      # noqa: BLE001: a row, not a crash
            launcher, kwargs = error, {}
        launches.append((f"{label} {stage}", module, launcher, kwargs))
    return launches


def all_launches(dtype_names):
    import ssmc.presets
    dtypes = {"bf16": BF16, "fp32": F32}
    out = []
    for dname in dtype_names:
        dtype = dtypes[dname]
        groups = [lambda: mamba1_launches(dtype)]
        if dtype == F32:
            # the stage kernels take float32 or float64 operands only (ssmc.runtime.stages checks it):
            # a bf16 layer runs them in float32, so they are reported once, in float32
            groups += [
                lambda: stage_launches(ssmc.presets.mamba2(d_state=128, headdim=64), MAMBA2_DIMS, F32,
                                       label="mamba2"),
                lambda: stage_launches(ssmc.presets.gla(128, 128), GLA_DIMS, F32, present=("g_state",), label="gla"),
                lambda: stage_launches(ssmc.presets.s5(256), S5_DIMS, F32, label="s5"),
            ]
        for make in groups:
            try:
                for label, module, launcher, kwargs in make():
                    out.append((dname, label, module, launcher, kwargs))
            except Exception as error:      # noqa: BLE001
                out.append((dname, f"(package) {type(error).__name__}", None, error, {}))
    return out


# ---------------------------------------------------------------- the report

def report_kernel(kernel_name, kernel, args, kwargs, quick=False, unpruned=False):
    """Rows (dicts) of one recorded launch, one per config."""
    rows = []
    try:
        fn, configs, heuristics = _configs(kernel, args, kwargs, quick, unpruned)
    except Exception as error:          # noqa: BLE001
        return [dict(kernel=kernel_name, config="?", error=f"{type(error).__name__}: {error}")]
    for config in configs:
        row = dict(kernel=kernel_name)
        try:
            compiled, full = compile_launch(fn, args, kwargs, config, heuristics)
            consts = {k: v for k, v in full.items() if k not in ("debug",)}
            shown = {k: v for k, v in consts.items()
                     if k.startswith("BLOCK") or k in ("N_PAD", "SUB", "num_warps", "num_stages")}
            num_warps = compiled.metadata.num_warps
            shown["num_warps"] = num_warps
            row["config"] = ",".join(f"{k}={v}" for k, v in sorted(shown.items()))
            cubin = compiled.asm["cubin"]
            res = resources(cubin)
            sass = sass_instructions(cubin)
            spill_insts = sum(1 for _, t in sass if re.match(r"^(@!?U?P\w+\s+)?(LDL|STL)\b", t))
            inner = loops(sass)
            loop_insts = sum(c / k for _, _, c, k in inner)
            if not inner and kernel_name == "_scan_step_kernel":     # one step, no loop: the whole kernel
                inner, loop_insts = [(0, 0, len(sass), 1)], len(sass)
            row.update(registers=res["registers"], stack=res["stack"], spills=spill_insts,
                       shared=compiled.metadata.shared, sass=len(sass),
                       loops=[f"{c}/{k}" if k > 1 else str(c) for _, _, c, k in inner],
                       loop=loop_insts)
            if inner:
                steps, elems, how = loop_work(kernel_name, consts)
                row.update(per_step=loop_insts / steps, per_elem=loop_insts * 32 * num_warps / elems, tile=how)
            if len(inner) == 1 and kernel_name in PER_STATE_LOOPS:
                outside = outside_innermost(sass, inner[0][:2])
                if outside is not None:
                    row["per_elem_outside"] = outside * 32 * num_warps / (elems * consts["N_PAD"])
        except Exception as error:      # noqa: BLE001: a row, not a crash
            row.setdefault("config", str(config.all_kwargs()) if config is not None else "-")
            message = str(error).strip()
            row["error"] = f"{type(error).__name__}: {message.splitlines()[-1][:160] if message else ''}"
        rows.append(row)
    return rows


def report_launch(label, module, launcher, kwargs, quick=False, unpruned=False):
    if isinstance(launcher, Exception):
        return [dict(stage=label, kernel="-", config="-", error=f"{type(launcher).__name__}: {launcher}")]
    try:
        calls = record(module, launcher, **kwargs)
    except Exception as error:          # noqa: BLE001
        return [dict(stage=label, kernel="-", config="-", error=f"launcher: {type(error).__name__}: {error}")]
    rows = []
    for kernel_name, kernel, grid, args, kw in calls:
        for row in report_kernel(kernel_name, kernel, args, kw, quick, unpruned):
            rows.append(dict(stage=label, **row))
    return rows


def _fmt(value, digits=1):
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(rows):
    head = ("| dtype | stage | kernel | config | regs | stack | spill insts | shared B | SASS | innermost loops "
            "| loop insts | per step | per elem (tile) |")
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r.get('dtype', '')} | {r['stage']} | {r['kernel']} | {r.get('config', '-')} "
                         f"| error: {r['error'].replace('|', '/')} |||||||||")
            continue
        per_elem = f"{_fmt(r.get('per_elem'))} ({r['tile']})" if r.get("tile") else "–"
        if r.get("per_elem_outside") is not None:
            per_elem += f" + {_fmt(r['per_elem_outside'])} per tile"
        lines.append(f"| {r.get('dtype', '')} | {r['stage']} | {r['kernel']} | {r['config']} | {r['registers']} "
                     f"| {r['stack']} | {r['spills']} | {r['shared']} | {r['sass']} "
                     f"| {' + '.join(r['loops']) or '–'} | {_fmt(r['loop']) if r['loops'] else '–'} "
                     f"| {_fmt(r.get('per_step'))} | {per_elem} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one config per kernel (the first kept)")
    parser.add_argument("--only", default="", help="comma-separated substrings of stage labels to keep")
    parser.add_argument("--dtypes", default="bf16,fp32", help="bf16,fp32")
    parser.add_argument("--json", default="", help="also write the rows to this file")
    parser.add_argument("--all-configs", action="store_true",
                        help="every planned config of an autotuned kernel, not only those its pruning keeps at the "
                             "shape (to check the resource model: what it prunes, what spills)")
    options = parser.parse_args(argv)
    tools = _tools()
    missing = [k for k in ("ptxas", "cuobjdump") if tools[k] is None]
    if missing:
        print(f"sm90_report: triton's bundled {', '.join(missing)} not found; nothing to report", file=sys.stderr)
        return 2
    print(f"sm_90 offline report · {datetime.date.today()} · triton {triton.__version__} · "
          f"torch {torch.__version__}")
    rows = []
    only = [s for s in options.only.split(",") if s]
    for dname, label, module, launcher, kwargs in all_launches(options.dtypes.split(",")):
        if only and not any(s in label for s in only):
            continue
        for row in report_launch(label, module, launcher, kwargs, options.quick, options.all_configs):
            rows.append(dict(dtype=dname, **row))
            print(f"  {dname} {label} {row.get('kernel')} {row.get('config')}: "
                  + (f"error {row['error']}" if "error" in row else
                     f"{row['registers']} regs, {row['spills']} spill insts, loop {row['loop']}, "
                     f"per elem {_fmt(row.get('per_elem'))}"), file=sys.stderr, flush=True)
    print(markdown(rows))
    if options.json:
        with open(options.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
