"""Time the C selective scan of two ssmc source trees against each other, in one run.

    git worktree add /tmp/before <commit>
    python benchmarks/bench_compare_trees.py /tmp/before . --rounds 3

Each tree runs in its own fresh process (so that each imports its own ssmc, IR and templates),
alternating, for `--rounds` rounds: slow drifts of a shared machine hit both sides alike. Prints the
median of each tree's per-round medians for the forward and the forward + backward of the mamba
preset (no gate) at the given shape, float32, on the C backend.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, os, statistics, sys, time
tree, b, d, l, n = sys.argv[1], *map(int, sys.argv[2:6])
sys.path.insert(0, tree)
os.environ["SSMC_BACKEND"] = "c"
import torch
import ssmc
ssmc.__path__.append(tree)          # ssmc.ir, ssmc.backends, ssmc.templates from the same tree
import ssmc.ir, ssmc.backends
assert all(m.__file__.startswith(os.path.abspath(tree)) for m in (ssmc, ssmc.ir, ssmc.backends)), ssmc.ir.__file__
from ssmc.compiler import compile_package
torch.manual_seed(0)
pkg = compile_package(ssmc.presets.mamba(d_state=n, gate=False))
u, delta = torch.randn(b, d, l), 0.5 * torch.randn(b, d, l)
A, D, bias = -torch.rand(d, n) - 0.1, torch.randn(d), 0.1 * torch.randn(d)
B, C = torch.randn(b, 1, n, l), torch.randn(b, 1, n, l)
leaves = [t.clone().requires_grad_() for t in (u, delta, A, B, C, D, bias)]

def forward():
    with torch.no_grad():
        pkg.apply(u, delta, A, B, C, D=D, delta_bias=bias)

def train():
    pkg.apply(*leaves[:5], D=leaves[5], delta_bias=leaves[6]).sum().backward()

def median_ms(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)

print(json.dumps({"forward": median_ms(forward, 15), "train": median_ms(train, 7)}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs=2, help="two ssmc checkouts (repository roots)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shape", default="2,1536,2048,16", help="batch,dim,len,state")
    args = parser.parse_args()
    shape = args.shape.split(",")
    results = {tree: [] for tree in args.trees}
    env = {**os.environ, "SSMC_CACHE_DIR": tempfile.mkdtemp(prefix="ssmc-compare-")}
    for _ in range(args.rounds):
        for tree in args.trees:
            out = subprocess.run([sys.executable, "-c", CHILD, os.path.abspath(tree), *shape], env=env,
                                 capture_output=True, text=True, check=True).stdout
            results[tree].append(json.loads(out.strip().splitlines()[-1]))
    print(f"C selective scan, (batch, dim, len, N) = ({args.shape}), float32, {args.rounds} rounds, "
          f"load average {os.getloadavg()[0]:.2f}")
    for tree, runs in results.items():
        print(f"{tree:40s} forward {statistics.median(r['forward'] for r in runs):7.1f} ms   "
              f"forward+backward {statistics.median(r['train'] for r in runs):7.1f} ms")


if __name__ == "__main__":
    main()
