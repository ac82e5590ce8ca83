"""The `ssmc` command line: compile spec files to importable packages, explain the lowering."""
from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

from .errors import SSMCError
from .spec import SSM

SHAPE_ALIASES = {"batch": "batch", "b": "batch", "len": "len", "l": "len", "length": "len",
                 "dim": "dim", "d": "dim", "h": "dim", "channels": "dim", "state": "state", "n": "state"}


def load_specs(path: str) -> dict:
    """The module-level `ssmc.SSM` objects of a spec file, by variable name."""
    file = Path(path)
    if not file.is_file():
        raise SSMCError(f"SPEC: no such file {path!r}")
    namespace = runpy.run_path(str(file), run_name=f"ssmc_spec_{file.stem}")
    specs = {name: value for name, value in namespace.items() if isinstance(value, SSM)}
    if not specs:
        raise SSMCError(f"SPEC: {path} defines no ssmc.SSM object at module level")
    return specs


def parse_shape(text: str) -> dict:
    shape = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        canonical = SHAPE_ALIASES.get(key.strip().lower())
        if not sep or canonical is None or not value.strip().isdigit() or int(value) <= 0:
            raise SSMCError(f"--shape: expected name=positive int with names in batch, len, dim, state, "
                            f"got {item!r}")
        shape[canonical] = int(value)
    return shape


def cmd_compile(args) -> int:
    from .compiler import write_package
    out = Path(args.output)
    for variable, spec in load_specs(args.spec).items():
        directory = write_package(spec, out / spec.name, schedule=args.schedule)
        files = ", ".join(sorted(p.name for p in directory.iterdir()))
        print(f"{variable}: spec '{spec.name}' -> {directory}/ ({files})")
    print(f"import with: sys.path.insert(0, {str(out)!r}); import <spec name>")
    return 0


def cmd_explain(args) -> int:
    from .ir import cost
    from .ir.pass_manager import lower
    shape = parse_shape(args.shape or "")
    for variable, spec in load_specs(args.spec).items():
        lowered = lower(spec, args.schedule)
        print(f"#### {variable}: spec '{spec.name}' ({spec.content_hash()})\n")
        print(lowered.dump())
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ssmc", description="A compiler for State Space Model kernels.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compile", help="write an importable package per spec in SPEC.py")
    p.add_argument("spec", metavar="SPEC.py")
    p.add_argument("-o", "--output", default="build", help="output directory (default: build)")
    p.add_argument("--schedule", choices=("auto", "scan", "conv"), default=None,
                   help="override the specs' schedule")
    p.set_defaults(run=cmd_compile)
    p = sub.add_parser("explain", help="print the IR after each pass and the schedule decisions")
    p.add_argument("spec", metavar="SPEC.py")
    p.add_argument("--shape", default="", help="e.g. batch=2,len=4096,dim=1536 (names: batch, len, dim, state)")
    p.add_argument("--schedule", choices=("auto", "scan", "conv"), default=None)
    p.set_defaults(run=cmd_explain)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except SSMCError as error:
        print(f"ssmc: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
