"""A whole block on the CPU: ssmc.nn.Mamba2 against transformers' Mamba2Mixer (its torch path), or
ssmc.nn.Mamba against transformers' MambaMixer (its slow path: no CUDA kernels on a CPU), with the
same weights, forward and forward+backward, and ssmc's decoding step per token.

    pip install transformers      # benchmark-only dependency
    python benchmarks/bench_block_cpu.py --block mamba2|mamba [--d-model 768] [--len 2048]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def timed(function, repeat):
    function()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def mamba2_pair(d_model):
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    from ssmc.nn import Mamba2
    ours = Mamba2(d_model, d_state=128, headdim=64, chunk_size=None)
    config = Mamba2Config(hidden_size=d_model, state_size=128, head_dim=64, num_heads=ours.nheads, n_groups=1,
                          expand=2, conv_kernel=4, chunk_size=256, use_bias=False, use_conv_bias=True)
    return ours, Mamba2Mixer(config, layer_idx=0), f"Mamba-2 block, d_model {d_model} ({ours.nheads} heads of 64, N 128)"


def mamba_pair(d_model):
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer

    from ssmc.nn import Mamba
    ours = Mamba(d_model, d_state=16, d_conv=4, expand=2)
    config = MambaConfig(hidden_size=d_model, state_size=16, conv_kernel=4, expand=2, time_step_rank=ours.dt_rank,
                         use_bias=False, use_conv_bias=True)
    return ours, MambaMixer(config, layer_idx=0), f"Mamba block, d_model {d_model} (d_inner {ours.d_inner}, N 16)"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--block", choices=("mamba2", "mamba"), default="mamba2")
    args = parser.parse_args()
    torch.manual_seed(0)
    ours, theirs, title = (mamba2_pair if args.block == "mamba2" else mamba_pair)(args.d_model)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    hidden = torch.randn(args.batch, args.len, args.d_model)
    with torch.no_grad():
        error = ((ours(hidden) - theirs(hidden)).norm() / theirs(hidden).norm()).item()
    print(f"# {title}, batch {args.batch}, len {args.len}, float32, {torch.get_num_threads()} threads; outputs agree "
          f"to {error:.1e}\n")
    print("| block | mode | ms | vs transformers |\n|---|---|---:|---:|")
    results = {}
    theirs_name, ours_name = f"transformers {type(theirs).__name__}", f"ssmc.nn.{type(ours).__name__}"
    for name, block in ((theirs_name, theirs), (ours_name, ours)):
        with torch.no_grad():
            results[name, "fwd"] = timed(lambda: block(hidden), args.repeat)

        def train():
            block.zero_grad()
            block(hidden).sum().backward()
        results[name, "fwd+bwd"] = timed(train, args.repeat)
    for (name, mode), ms in results.items():
        print(f"| {name} | {mode} | {ms:.1f} | {results[theirs_name, mode] / ms:.1f}× |")
    conv_state, ssm_state = ours.allocate_inference_cache(args.batch)
    token = hidden[:, :1]
    with torch.no_grad():
        ms = timed(lambda: ours.step(token, conv_state, ssm_state), 50)
    print(f"| {ours_name} step | 1 token | {ms:.3f} | |")


if __name__ == "__main__":
    main()
