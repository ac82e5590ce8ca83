"""The Mamba-2 block on the CPU: ssmc.nn.Mamba2 against transformers' Mamba2Mixer (its torch path)
with the same weights, forward and forward+backward, and ssmc's decoding step per token.

    pip install transformers      # benchmark-only dependency
    python benchmarks/bench_mamba2_block_cpu.py [--d-model 768] [--len 2048]
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    from ssmc.nn import Mamba2
    torch.manual_seed(0)
    ours = Mamba2(args.d_model, d_state=128, headdim=64, chunk_size=None)
    config = Mamba2Config(hidden_size=args.d_model, state_size=128, head_dim=64, num_heads=ours.nheads, n_groups=1,
                          expand=2, conv_kernel=4, chunk_size=256, use_bias=False, use_conv_bias=True)
    theirs = Mamba2Mixer(config, layer_idx=0)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    hidden = torch.randn(args.batch, args.len, args.d_model)
    with torch.no_grad():
        error = ((ours(hidden) - theirs(hidden)).norm() / theirs(hidden).norm()).item()
    print(f"# Mamba-2 block, d_model {args.d_model} ({ours.nheads} heads of 64, N 128), batch {args.batch}, len "
          f"{args.len}, float32, {torch.get_num_threads()} threads; outputs agree to {error:.1e}\n")
    print("| block | mode | ms | vs transformers |\n|---|---|---:|---:|")
    results = {}
    for name, block in (("transformers Mamba2Mixer", theirs), ("ssmc.nn.Mamba2", ours)):
        with torch.no_grad():
            results[name, "fwd"] = timed(lambda: block(hidden), args.repeat)

        def train():
            block.zero_grad()
            block(hidden).sum().backward()
        results[name, "fwd+bwd"] = timed(train, args.repeat)
    for (name, mode), ms in results.items():
        print(f"| {name} | {mode} | {ms:.1f} | {results['transformers Mamba2Mixer', mode] / ms:.1f}× |")
    conv_state, ssm_state = ours.allocate_inference_cache(args.batch)
    token = hidden[:, :1]
    with torch.no_grad():
        ms = timed(lambda: ours.step(token, conv_state, ssm_state), 50)
    print(f"| ssmc.nn.Mamba2 step | 1 token | {ms:.3f} | |")


if __name__ == "__main__":
    main()
