"""Generate from a Mamba / Mamba-2 language model with random weights (nothing is downloaded): the
same greedy tokens with the decoding cache (prompt once, then one token per step through the blocks'
compiled step kernels) and without it (the whole sequence rerun at every step), and the tokens per
second of each.

    python examples/generate.py                         # Mamba, 4 layers of d_model 256
    python examples/generate.py --ssm-layer Mamba2 --d-model 256 --n-layer 4 --new-tokens 64
"""
from __future__ import annotations

import argparse
import time

import torch

from ssmc import ops
from ssmc.nn import MambaConfig, MambaLMHeadModel


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ssm-layer", choices=("Mamba1", "Mamba2"), default="Mamba1")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--d-state", type=int, default=None, help="default: 16 (Mamba1), 128 (Mamba2)")
    parser.add_argument("--headdim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (both runs must agree)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def step_kernel_ms(model, batch, repeat=20):
    """Milliseconds per token of the SSM step kernels alone (every layer's, no projections)."""
    mixer = model.backbone.layers[0].mixer
    conv_state, ssm_state = mixer.allocate_inference_cache(batch)
    if model.config.ssm_layer == "Mamba2":
        package = ops._package(mixer._ssd_key)
        x = torch.randn(batch, mixer.nheads, mixer.headdim)
        B, C = (torch.randn(batch, mixer.ngroups, mixer.d_state) for _ in range(2))
        args = (x, torch.randn(batch, mixer.nheads), -torch.exp(mixer.A_log.float()), B, C, ssm_state)
        kwargs = dict(D=mixer.D, dt_bias=mixer.dt_bias, dt_softplus=True)
    else:
        package = ops._package(ops.selective_scan_key(mixer.d_state))
        x = torch.randn(batch, mixer.d_inner)
        B, C = (torch.randn(batch, mixer.d_state) for _ in range(2))
        args = (x, torch.randn(batch, mixer.d_inner), -torch.exp(mixer.A_log.float()), B, C, ssm_state)
        kwargs = dict(D=mixer.D.float(), z=torch.randn_like(x), delta_bias=mixer.dt_proj.bias.float())
    with torch.inference_mode():
        package.step(*args, **kwargs)
        start = time.perf_counter()
        for _ in range(repeat):
            package.step(*args, **kwargs)
    return (time.perf_counter() - start) / repeat * 1e3 * len(model.backbone.layers)


def run(args):
    torch.manual_seed(args.seed)
    config = MambaConfig(d_model=args.d_model, n_layer=args.n_layer, vocab_size=args.vocab_size,
                         ssm_layer=args.ssm_layer, d_state=args.d_state, headdim=args.headdim)
    model = MambaLMHeadModel(config).eval()
    prompt = torch.randint(0, args.vocab_size, (args.batch, args.prompt_len))
    max_length = args.prompt_len + args.new_tokens
    model.generate(prompt[:, :2], max_length=4, temperature=0)          # warm-up: kernels compiled, loaded
    results = {}
    for cache in (True, False):
        generator = torch.Generator().manual_seed(args.seed)
        start = time.perf_counter()
        tokens = model.generate(prompt, max_length=max_length, temperature=args.temperature, cache=cache,
                                generator=generator)
        seconds = time.perf_counter() - start
        results[cache] = (tokens, args.batch * (tokens.shape[1] - args.prompt_len) / seconds)
    same = torch.equal(results[True][0], results[False][0])
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{config.ssm_layer} LM: d_model {config.d_model}, {config.n_layer} layers, vocab {config.vocab_size}, "
          f"{n_params / 1e6:.1f}M parameters; batch {args.batch}, prompt {args.prompt_len}, "
          f"{args.new_tokens} new tokens, {torch.get_num_threads()} threads")
    print(f"generated: {results[True][0][0, args.prompt_len:].tolist()}")
    print(f"with the cache:    {results[True][1]:8.1f} tokens/s")
    print(f"without the cache: {results[False][1]:8.1f} tokens/s")
    print(f"same tokens: {same}")
    print(f"SSM step kernels alone: {step_kernel_ms(model, args.batch):.3f} ms per token (all layers)")
    return {"same": same, "tokens": results[True][0], "cached_tps": results[True][1],
            "uncached_tps": results[False][1]}


if __name__ == "__main__":
    run(parse_args())
