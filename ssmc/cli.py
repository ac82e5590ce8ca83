"""The `ssmc` command line: compile spec files to importable packages, explain the lowering."""
from __future__ import annotations

import argparse
import ast
import contextlib
import runpy
import sys
import traceback
from pathlib import Path

from . import __version__
from .errors import ScheduleError, SSMCError
from .ir.schedule import SCHEDULES
from .spec import SSM

SCHEDULE_HELP = ("scan (alias sequential), conv (time-invariant specs), chunked (MultiHead specs), or auto: "
                 "the cost model chooses per call (default: auto)")
SHAPE_ALIASES = {"batch": "batch", "b": "batch", "len": "len", "l": "len", "length": "len",
                 "dim": "dim", "d": "dim", "h": "dim", "channels": "dim", "state": "state", "n": "state",
                 "heads": "heads", "headdim": "headdim", "p": "headdim"}


def load_specs(path: str) -> dict:
    """The module-level `ssmc.SSM` objects of a spec file, by variable name.

    Anything the file raises (a SpecError, a syntax error, a NameError...) becomes an SSMCError
    located at the file's line and, where the line assigns one, the variable: a user fixing a spec
    needs that, not a traceback through runpy (`--debug` shows it)."""
    file = Path(path)
    if not file.is_file():
        raise SSMCError(f"SPEC: no such file {path!r}")
    try:
        namespace = runpy.run_path(str(file), run_name=f"ssmc_spec_{file.stem}")
    except SyntaxError as error:
        where = path if Path(error.filename or "").resolve() == file.resolve() else error.filename
        raise SSMCError(f"{where}:{error.lineno}: syntax error: {error.msg}") from error
    except Exception as error:      # noqa: BLE001 -- whatever the user's file raises, located
        raise SSMCError(_located(path, error)) from error
    specs = {name: value for name, value in namespace.items() if isinstance(value, SSM)}
    if not specs:
        raise SSMCError(f"SPEC: {path} defines no ssmc.SSM object at module level")
    return specs


def _located(path: str, error: BaseException) -> str:
    """`path:line (variable v): message`, from the innermost traceback frame in the spec file."""
    target = Path(path).resolve()
    frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename).resolve() == target]
    message = str(error) if isinstance(error, SSMCError) else f"{type(error).__name__}: {error}"
    if not frames:
        return f"{path}: {message}"
    line = frames[-1].lineno
    variable = _assigned_variable(target, line)
    return f"{path}:{line}" + (f" (variable {variable})" if variable else "") + f": {message}"


def _assigned_variable(file: Path, line: int) -> str | None:
    """The name a top-level `name = ...` statement spanning `line` assigns, if any."""
    try:
        tree = ast.parse(file.read_bytes())       # bytes: the file's own coding (PEP 263, else UTF-8)
    except (SyntaxError, ValueError, OSError):
        return None
    for statement in tree.body:
        if statement.lineno <= line <= (statement.end_lineno or statement.lineno):
            targets = statement.targets if isinstance(statement, ast.Assign) else \
                [statement.target] if isinstance(statement, ast.AnnAssign) else []
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            return names[0] if names else None
    return None


def parse_shape(text: str) -> dict:
    shape = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        canonical = SHAPE_ALIASES.get(key.strip().lower())
        value = value.strip()
        # ASCII digits only: '²'.isdigit() is True, and int('²') fails
        if not sep or canonical is None or not (value.isascii() and value.isdigit()) or int(value) <= 0:
            raise SSMCError(f"--shape: expected name=positive int with names in batch, len, dim, state, heads, headdim, "
                            f"got {item!r}")
        shape[canonical] = int(value)
    return shape


@contextlib.contextmanager
def _naming(variable: str, name: str):
    """A ScheduleError (say, --schedule conv on a selective spec) names the spec it is about: a spec
    file may hold several."""
    try:
        yield
    except ScheduleError as error:
        raise ScheduleError(f"{variable} (spec '{name}'): {error}") from error


def cmd_compile(args) -> int:
    """Write OUT/<spec name>/ per spec. Everything is checked (unique names, replaceable targets)
    and rendered before anything is written, so a refusal leaves OUT as it was."""
    from .compiler import check_output, render_files, write_package
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise SSMCError(f"--output: {out} exists and is not a directory")
    by_name = {}
    for variable, spec in load_specs(args.spec).items():
        by_name.setdefault(spec.name, []).append((variable, spec))
    for name, entries in by_name.items():
        if len({spec.content_hash() for _, spec in entries}) > 1:
            raise SSMCError(f"SPEC: {', '.join(variable for variable, _ in entries)} are different specs with the "
                            f"same name {name!r}, and each would be written to {out / name}; rename one (nothing "
                            f"was written)")
        check_output(out / name, force=args.force)
    rendered = {}
    for name, entries in by_name.items():
        with _naming(entries[0][0], name):
            rendered[name] = render_files(entries[0][1], args.schedule)
    for name, entries in by_name.items():
        directory = write_package(entries[0][1], out / name, args.schedule, force=args.force, files=rendered[name])
        files = ", ".join(sorted(p.name for p in directory.iterdir() if not p.name.startswith(".")))
        variables = " = ".join(variable for variable, _ in entries)
        print(f"{variables}: spec '{name}' -> {directory}/ ({files})")
    print(f"import with: sys.path.insert(0, {str(out)!r}); import <spec name>")
    return 0


def cmd_explain(args) -> int:
    from .ir import cost
    from .ir.pass_manager import lower
    shape = parse_shape(args.shape or "")
    for variable, spec in load_specs(args.spec).items():
        with _naming(variable, spec.name):
            lowered = lower(spec, args.schedule)
        print(f"#### {variable}: spec '{spec.name}' ({spec.content_hash()}), schedule {args.schedule}\n")
        print(lowered.dump())
        if spec.is_multihead:
            defaults = {"batch": 1, "len": 2048, "heads": 8, "headdim": spec.heads.headdim, "state": spec.d_state}
            _explain_pipelines(lowered, {**defaults, **{k: v for k, v in shape.items() if k in defaults}})
            continue
        if spec.is_mimo:        # the layer's H is given as dim
            defaults = {"batch": 1, "len": 2048, "H": shape.get("dim", 256), "state": spec.d_state}
            _explain_pipelines(lowered, {**defaults, **{k: v for k, v in shape.items() if k in defaults}})
            continue
        bound = {"batch": 1, "len": 1024, "dim": 1, "state": spec.d_state}
        bound.update(shape)
        print(f"\n== cost model at {', '.join(f'{k}={v}' for k, v in bound.items())} ==")
        for decision in lowered.schedule.decisions:
            evaluated = {alg: cost.evaluate(text, bound) for alg, text in decision.costs.items()}
            for alg, value in evaluated.items():
                print(f"  {decision.subject}: cost[{alg}] = {value:.4g}")
            winner = min(evaluated, key=evaluated.get)
            how = {"by-shape": "chosen per call by the cost model", "scan": "fixed", "conv": "fixed"}[decision.algorithm]
            fixed = decision.algorithm if decision.algorithm != "by-shape" else winner
            print(f"  {decision.subject}: {fixed} ({how}; {decision.reason})")
        print()
    return 0


def _explain_pipelines(lowered, bound: dict) -> None:
    """Every candidate pipeline's cost at one call shape (`bound`, by the schedule's dimension
    names), and the one the generated module would run."""
    from .ir.pipelines import TARGETS
    schedule = lowered.schedule
    print(f"\n== cost model at {', '.join(f'{k}={v}' for k, v in bound.items())} ==")
    for target in TARGETS:
        values = {}
        for record in schedule.candidates:
            values[record] = float(schedule.cost(record, target).subs({schedule.dims[k]: v for k, v in bound.items()}))
            print(f"  {target}: {record.text:<12} cost = {values[record]:.4g}")
        winner = min(schedule.candidates, key=values.get)
        print(f"  {target}: winner {winner.text} (record {winner.to_json()}; replay with "
              f"ssmc.compile(spec, schedule=...))")
    print()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ssmc", description="A compiler for State Space Model kernels.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compile", help="write an importable package per spec in SPEC.py")
    p.add_argument("spec", metavar="SPEC.py")
    p.add_argument("-o", "--output", default="build", help="output directory (default: build)")
    p.add_argument("--schedule", choices=SCHEDULES, default="auto", help=SCHEDULE_HELP)
    p.add_argument("--force", action="store_true",
                   help="replace OUT/<name> even if ssmc did not write it (never a symbolic link)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    p.set_defaults(run=cmd_compile)
    p = sub.add_parser("explain", help="print the IR after each pass and the schedule decisions")
    p.add_argument("spec", metavar="SPEC.py")
    p.add_argument("--shape", default="", help="e.g. batch=2,len=4096,dim=1536 (names: batch, len, dim, state)")
    p.add_argument("--schedule", choices=SCHEDULES, default="auto", help=SCHEDULE_HELP)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    p.set_defaults(run=cmd_explain)
    from .cli_bench import add_parser as add_bench_parser
    add_bench_parser(sub, "show the traceback of an error")
    from .cli_tune import add_parser as add_tune_parser
    add_tune_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except SSMCError as error:
        if args.debug:
            traceback.print_exc()
        print(f"ssmc: error: {error}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as error:
        if not _out_of_memory(error):
            raise
        if args.debug:
            traceback.print_exc()
        print(f"ssmc: error: out of memory ({_first_line(error)}); use smaller --shape sizes", file=sys.stderr)
        return 2


def _out_of_memory(error: BaseException) -> bool:
    """An allocator's failure (torch's CPU allocator raises a plain RuntimeError, CUDA's an OutOfMemoryError,
    itself a RuntimeError): a workload past the memory at hand, not a bug to show a traceback for."""
    text = str(error).lower()
    return isinstance(error, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
