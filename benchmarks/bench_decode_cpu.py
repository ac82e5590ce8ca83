"""CPU decoding, batch 1: tokens per second of ssmc.nn.MambaLMHeadModel.generate for a 130M-shaped
Mamba (d_model 768, 24 layers, vocab 50280, N 16) and the same-shaped Mamba-2 (heads of 64, N 128),
against transformers' MambaForCausalLM / Mamba2ForCausalLM (their torch paths) with the same random
weights: transformers' model is built from a small random config, and its state dict is loaded into
ours through ssmc.nn.load_transformers_state_dict. Greedy decoding; tokens/s = new tokens / wall time
of the whole generate call (prompt included), the median of --repeat runs.

    pip install transformers      # optional: without it, the transformers rows are skipped
    python benchmarks/bench_decode_cpu.py [--prompt 16] [--new-tokens 32] [--threads N]
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import torch

from ssmc import ops
from ssmc.nn import MambaConfig, MambaLMHeadModel, load_transformers_state_dict

SHAPES = {
    "Mamba1": dict(d_model=768, n_layer=24, vocab_size=50280, ssm_layer="Mamba1", d_state=16, expand=2),
    "Mamba2": dict(d_model=768, n_layer=24, vocab_size=50280, ssm_layer="Mamba2", d_state=128, expand=2, headdim=64),
}


def transformers_model(kind, shape):
    import transformers
    transformers.logging.set_verbosity_error()          # its "falling back to PyTorch" notes
    common = dict(vocab_size=shape["vocab_size"], hidden_size=shape["d_model"], num_hidden_layers=shape["n_layer"],
                  state_size=shape["d_state"], expand=shape["expand"], conv_kernel=4, tie_word_embeddings=True,
                  use_bias=False, use_conv_bias=True, layer_norm_epsilon=1e-5)
    if kind == "Mamba1":
        return transformers.MambaForCausalLM(transformers.MambaConfig(**common)).eval()
    nheads = shape["expand"] * shape["d_model"] // shape["headdim"]
    config = transformers.Mamba2Config(**common, head_dim=shape["headdim"], num_heads=nheads, n_groups=1,
                                       chunk_size=256)
    return transformers.Mamba2ForCausalLM(config).eval()


def timed(function, repeat):
    function()                                          # warm-up (kernels compiled and loaded)
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def step_kernels_ms(model, repeat=50):
    """The SSM step kernels alone, every layer's, per token (ms)."""
    mixer = model.backbone.layers[0].mixer
    _, ssm_state = mixer.allocate_inference_cache(1)
    if model.config.ssm_layer == "Mamba2":
        package = ops._package(mixer._ssd_key)
        B, C = (torch.randn(1, mixer.ngroups, mixer.d_state) for _ in range(2))
        call = lambda: package.step(torch.randn(1, mixer.nheads, mixer.headdim), torch.randn(1, mixer.nheads),  # noqa: E731
                                    -torch.exp(mixer.A_log.float()), B, C, ssm_state, D=mixer.D,
                                    dt_bias=mixer.dt_bias, dt_softplus=True)
    else:
        package = ops._package(ops.selective_scan_key(mixer.d_state))
        B, C = (torch.randn(1, mixer.d_state) for _ in range(2))
        x = torch.randn(1, mixer.d_inner)
        call = lambda: package.step(x, torch.randn(1, mixer.d_inner), -torch.exp(mixer.A_log.float()), B, C,  # noqa: E731
                                    ssm_state, D=mixer.D.float(), z=x, delta_bias=mixer.dt_proj.bias.float())
    with torch.inference_mode():
        seconds, _ = timed(lambda: [call() for _ in range(repeat)], 3)
    return seconds / repeat * 1e3 * len(model.backbone.layers)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompt", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--models", default="Mamba1,Mamba2")
    parser.add_argument("--no-uncached", action="store_true", help="skip ssmc without the cache")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import transformers
        have_transformers = True
    except ImportError:
        have_transformers = False
    print(f"# CPU decoding, batch 1, prompt {args.prompt}, {args.new_tokens} new tokens, greedy, float32; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch "
          f"threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), torch {torch.__version__}, "
          f"transformers {transformers.__version__ if have_transformers else 'not installed'}, "
          f"{datetime.date.today()}")
    if not have_transformers:
        print("# transformers is not installed: its rows are skipped, ssmc's model keeps random weights")
    print("\n| model | implementation | tokens/s | vs transformers | same tokens |\n|---|---|---:|---:|---|")
    max_length = args.prompt + args.new_tokens
    notes = []
    for kind in args.models.split(","):
        shape = SHAPES[kind]
        torch.manual_seed(0)
        ours = MambaLMHeadModel(MambaConfig(**shape)).eval()
        theirs = None
        if have_transformers:
            theirs = transformers_model(kind, shape)
            load_transformers_state_dict(ours, theirs.state_dict())
        prompt = torch.randint(0, shape["vocab_size"], (1, args.prompt), generator=torch.Generator().manual_seed(1))
        rows = []
        reference = None
        if theirs is not None:
            def hf_generate():
                with torch.inference_mode():
                    return theirs.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                           do_sample=False, use_cache=True, pad_token_id=0)
            seconds, reference = timed(hf_generate, args.repeat)
            rows.append((f"transformers {type(theirs).__name__}", args.new_tokens / seconds, reference))
        seconds, tokens = timed(lambda: ours.generate(prompt, max_length, temperature=0), args.repeat)
        rows.append(("ssmc MambaLMHeadModel, cache", args.new_tokens / seconds, tokens))
        if not args.no_uncached:
            seconds, tokens = timed(lambda: ours.generate(prompt, max_length, temperature=0, cache=False), 1)
            rows.append(("ssmc MambaLMHeadModel, no cache", args.new_tokens / seconds, tokens))
        base = rows[0][1] if theirs is not None else None
        label = f"{kind} 130M-shaped"
        for name, tps, out in rows:
            speedup = f"{tps / base:.2f}×" if base else ""
            same = "" if reference is None or out is reference else ("yes" if torch.equal(out, reference) else "NO")
            print(f"| {label} | {name} | {tps:.1f} | {speedup} | {same} |")
        notes.append(f"{kind}: SSM step kernels alone {step_kernels_ms(ours):.2f} ms per token (24 layers)")
        del ours, theirs
    print()
    for note in notes:
        print("# " + note)


if __name__ == "__main__":
    main()
