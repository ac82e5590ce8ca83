"""Train a small model of ssmc layers on the selective-copying task (Gu & Dao 2023, Section 4.1.1).

Each example is a context of `--seq-len` tokens: `--tokens` K data tokens at random positions among
blank (noise) tokens. Then come K marker tokens: the first is the delimiter and each is an output
slot, where the model (causal, no teacher forcing) must emit the K data tokens in their order.
Loss and accuracy count only those K slots. Because the positions vary from example to example, no
fixed (time-invariant) convolution kernel solves it: an LTI model such as S4D has to approximate it
through the nonlinearities between its layers, and learns it far more slowly. A selective SSM
solves it directly by making dt depend on the token (hold the state over blanks, write on data).

    python examples/train_selective_copy.py --model mamba
    python examples/train_selective_copy.py --model s4d
    python examples/train_selective_copy.py --model mamba2

The data is generated here (no download); accuracy is measured on fresh held-out batches drawn
from a separate random stream.
"""
from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from example_common import backend_name, progress   # beside this script

BLANK, MARKER, FIRST_DATA = 0, 1, 2


# -- data ------------------------------------------------------------------------------------------

def selective_copy_batch(batch, seq_len, n_tokens, n_data=16, generator=None, device="cpu"):
    """One batch of the selective-copying task.

    Returns (inputs, targets, positions): inputs (batch, seq_len + n_tokens) long — blanks (0) with
    the data tokens (values FIRST_DATA .. FIRST_DATA + n_data - 1) at `positions` (batch, n_tokens),
    sorted and distinct, all < seq_len, followed by n_tokens markers (1); targets (batch, n_tokens):
    the data tokens in order of position, to be predicted at positions seq_len .. seq_len + n_tokens - 1.
    """
    if not 0 < n_tokens <= seq_len:
        raise ValueError(f"n_tokens must be in 1..seq_len, got {n_tokens} with seq_len={seq_len}")
    positions = torch.rand(batch, seq_len, generator=generator).argsort(dim=1)[:, :n_tokens].sort(dim=1).values
    targets = torch.randint(FIRST_DATA, FIRST_DATA + n_data, (batch, n_tokens), generator=generator)
    inputs = torch.full((batch, seq_len + n_tokens), BLANK, dtype=torch.long)
    inputs.scatter_(1, positions, targets)
    inputs[:, seq_len:] = MARKER
    return inputs.to(device), targets.to(device), positions.to(device)


# -- model -----------------------------------------------------------------------------------------

class S4DMixer(nn.Module):
    """ssmc's S4D layer on (batch, len, d_model), returning only its output."""

    def __init__(self, d_model, d_state=64):
        super().__init__()
        from ssmc.nn import S4D
        self.s4d = S4D(d_model, d_state=d_state, transposed=False)

    def forward(self, x):
        return self.s4d(x)[0]


def mamba2_mixer(d_model, d_state=16, headdim=16):
    """The compiled layer of ssmc's mamba2 preset (dt, B, C projected from the input; heads of
    `headdim` channels), its A_log and D kept out of weight decay as Mamba's are."""
    import ssmc
    layer = ssmc.compile(ssmc.presets.mamba2(d_state=d_state, headdim=headdim, gate=False,
                                             name="selective_copy_mamba2"))(d_model)
    for p in (layer.A_log, layer.D, layer.dt_bias):
        p._no_weight_decay = True
    return layer


class Block(nn.Module):
    """Pre-norm residual block: x + mixer(norm(x))."""

    def __init__(self, d_model, mixer):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.mixer = mixer

    def forward(self, x):
        return x + self.mixer(self.norm(x))


class SequenceModel(nn.Module):
    """embedding -> n_layers pre-norm residual blocks -> norm -> linear head (logits per position)."""

    def __init__(self, vocab, d_model, n_layers, kind="mamba", d_state=None):
        super().__init__()
        if kind == "mamba":
            from ssmc.nn.mamba import Mamba
            make = lambda: Mamba(d_model, d_state=d_state or 16)  # noqa: E731
        elif kind == "s4d":
            make = lambda: S4DMixer(d_model, d_state=d_state or 64)  # noqa: E731
        elif kind == "mamba2":
            make = lambda: mamba2_mixer(d_model, d_state=d_state or 16)  # noqa: E731
        else:
            raise ValueError(f"model: expected 'mamba', 'mamba2' or 's4d', got {kind!r}")
        self.embedding = nn.Embedding(vocab, d_model)
        self.layers = nn.ModuleList(Block(d_model, make()) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens):
        x = self.embedding(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))


def build_model(kind, n_data=16, d_model=64, n_layers=2, d_state=None):
    return SequenceModel(FIRST_DATA + n_data, d_model, n_layers, kind, d_state)


def optimizer_for(model, lr, weight_decay=0.1):
    """AdamW; no weight decay on biases and norms, on parameters marked `_no_weight_decay` (Mamba's
    A_log and D) or on S4D's kernel parameters (its A, dt, C)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.dim() < 2 or getattr(p, "_no_weight_decay", False) or ".kernel." in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))


def slot_logits(model, inputs, n_tokens):
    return model(inputs)[:, -n_tokens:]


@torch.no_grad()
def evaluate(model, seq_len, n_tokens, n_data, batches=8, batch_size=128, seed=12345, device="cpu"):
    """Token accuracy over the output slots on fresh batches (a generator separate from training's)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    correct = total = 0
    for _ in range(batches):
        inputs, targets, _ = selective_copy_batch(batch_size, seq_len, n_tokens, n_data, gen, device)
        predictions = slot_logits(model, inputs, n_tokens).argmax(-1)
        correct += (predictions == targets).sum().item()
        total += targets.numel()
    model.train()
    return correct / total


# -- training --------------------------------------------------------------------------------------

def train(model_kind="mamba", steps=2000, seq_len=64, n_tokens=8, n_data=16, d_model=64, n_layers=2,
          d_state=None, batch_size=32, lr=1e-2, warmup=50, weight_decay=0.1, seed=0, device="cpu",
          eval_batches=8, eval_every=0, show_progress=True, log=print):
    """Train a fresh model; returns a dict with the model, the loss history, the held-out accuracy
    and the wall times."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_model(model_kind, n_data, d_model, n_layers, d_state).to(device)
    opt = optimizer_for(model, lr, weight_decay)

    def lr_at(step):  # linear warmup, cosine decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{model_kind}: {n_params:,} parameters, d_model={d_model}, layers={n_layers}, "
        f"context {seq_len} + {n_tokens} slots, {n_data} data tokens, batch {batch_size}, {steps} steps, lr {lr}")
    bar = progress(steps, model_kind, show_progress)
    losses, running = [], None
    start = time.perf_counter()
    for step in range(steps):
        inputs, targets, _ = selective_copy_batch(batch_size, seq_len, n_tokens, n_data, gen, device)
        logits = slot_logits(model, inputs, n_tokens)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        running = losses[-1] if running is None else 0.95 * running + 0.05 * losses[-1]
        if bar is not None:
            if step % 10 == 0 or step == steps - 1:
                acc = (logits.argmax(-1) == targets).float().mean().item()
                bar.set_postfix_str(f"loss {running:.3f} acc {acc:.2f}")
            bar.update(1)
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            acc = evaluate(model, seq_len, n_tokens, n_data, batches=2, seed=seed + 20_000, device=device)
            message = f"step {step + 1}: loss {running:.4f}, held-out accuracy {100 * acc:.1f}%"
            (bar.write if bar is not None else log)(message)
    if bar is not None:
        bar.close()
    train_time = time.perf_counter() - start
    start = time.perf_counter()
    accuracy = evaluate(model, seq_len, n_tokens, n_data, batches=eval_batches, seed=seed + 10_000, device=device)
    eval_time = time.perf_counter() - start
    return dict(model=model, losses=losses, accuracy=accuracy, train_time=train_time, eval_time=eval_time)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", choices=("mamba", "mamba2", "s4d"), default="mamba", help="the sequence-mixing layer")
    p.add_argument("--steps", type=int, default=2000, help="training steps")
    p.add_argument("--seq-len", type=int, default=64, help="context length holding the data tokens")
    p.add_argument("--tokens", type=int, default=8, help="number of data tokens to copy (K)")
    p.add_argument("--vocab", type=int, default=16, help="number of distinct data tokens")
    p.add_argument("--d-model", type=int, default=64, help="model width")
    p.add_argument("--layers", type=int, default=2, help="residual blocks")
    p.add_argument("--d-state", type=int, default=None, help="default: 16 for mamba, 64 for s4d")
    p.add_argument("--batch", type=int, default=32, help="training batch size")
    p.add_argument("--lr", type=float, default=1e-2, help="AdamW peak learning rate (warmup, cosine decay)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model and training data")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--eval-batches", type=int, default=8, help="held-out batches of 128 examples")
    p.add_argument("--eval-every", type=int, default=500, help="print held-out accuracy every N steps (0: never)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of torch and the C kernels (default: torch's choice; "
                        "1 is faster on a busy machine)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"ssmc backend: {backend_name(args.device)}; torch threads: {torch.get_num_threads()}")
    result = train(args.model, steps=args.steps, seq_len=args.seq_len, n_tokens=args.tokens, n_data=args.vocab,
                   d_model=args.d_model, n_layers=args.layers, d_state=args.d_state, batch_size=args.batch,
                   lr=args.lr, seed=args.seed, device=args.device, eval_batches=args.eval_batches,
                   eval_every=args.eval_every, show_progress=not args.no_progress)
    print(f"{args.model}: trained {args.steps} steps in {result['train_time']:.1f}s; final train loss "
          f"{sum(result['losses'][-20:]) / len(result['losses'][-20:]):.4f}")
    print(f"{args.model}: held-out token accuracy {100 * result['accuracy']:.2f}% "
          f"({args.eval_batches * 128} sequences x {args.tokens} tokens; chance {100 / args.vocab:.1f}%)")
    return result


if __name__ == "__main__":
    main()
