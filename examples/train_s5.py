"""Train a small S5 model (Smith et al. 2023) on sequential pixel classification of synthetic shapes.

Each example is an `--image` × `--image` picture of one of ten shapes (horizontal, vertical and the two
diagonal bars, a hollow square, a plus, an X, an L corner, a T and a ring) at a random position and
size, with random stroke intensity, stray dots and Gaussian noise. The model reads it one pixel at a
time in raster order (a sequence of image² = 1024 steps at the default 32), like sequential MNIST /
CIFAR in the S5 paper; `--permute` applies one fixed random permutation of the pixels (psMNIST-style).
Telling a horizontal bar from a vertical one of the same length takes memory across rows: their pixels
are 1 step apart in one and `--image` steps apart in the other, the amount of ink is the same, and the
model pools over time only at the end. The data is generated here (no download); accuracy is measured
on held-out images from a separate random stream.

    python examples/train_s5.py             # 500 steps: ~95 s on 2 quiet CPU cores, ~99% held-out accuracy
    python examples/train_s5.py --permute   # much harder: ~20% after the same 500 steps
    python examples/train_s5.py --quick     # ~2 s: the settings the test uses

For scale: the same model with the S5 layers replaced by a per-step Linear (no mixing over time)
reaches ~19% at the default settings; the chance level is 10%. On a machine shared with other
jobs, `--threads 1` avoids the OpenMP threads' waiting on a busy core (several times slower).

The model: a Linear encoder of each pixel, `--layers` S5 blocks (pre-norm LayerNorm, the compiled
S5 layer `ssmc.compile(ssmc.presets.s5(...))`, GELU, a sigmoid-gated projection, residual), a mean
over time and a Linear decoder. As in the S5 paper, the SSM parameters (Λ, B and the step Δ) are
trained with a smaller learning rate and no weight decay; C and the dense weights with AdamW's
weight decay; D, biases and norms with neither.
"""
from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from example_common import backend_name, progress   # beside this script

SHAPES = ("hbar", "vbar", "diag", "antidiag", "square", "plus", "x", "corner", "tee", "ring")
N_CLASSES = len(SHAPES)

# the settings of --quick (and of the test): about 2 s on 2 quiet cores; the loss falls from 2.4 to
# about 1 and the held-out accuracy reaches 50-80% (chance: 10%)
QUICK = dict(steps=200, image=12, d_model=32, d_state=32, n_layers=2, batch_size=32, lr=2e-2, warmup=10,
             eval_batches=2)


# -- data ------------------------------------------------------------------------------------------

def shapes_batch(batch, image=32, noise=0.15, generator=None, permutation=None, device="cpu"):
    """One batch of the synthetic shapes task.

    Returns (pixels, labels): pixels (batch, image², 1) float, the images in raster order (then
    permuted by `permutation`, a (image²,) index tensor, if given); labels (batch,) long in
    0 .. N_CLASSES - 1 (the index in SHAPES). A shape has half-size r uniform in [image/8, image/3],
    a centre that keeps it inside the picture, a stroke 1 or 2 pixels wide and intensity in
    [0.6, 1]; the background holds stray dots (2% of the pixels) and N(0, noise²) noise everywhere.
    """
    if image < 8:
        raise ValueError(f"image: expected at least 8 pixels a side, got {image}")
    g = generator
    rand = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    labels = torch.randint(0, N_CLASSES, (batch,), generator=g)
    r_min, r_max = max(2.0, image / 8), image / 3
    r = (r_min + (r_max - r_min) * rand(batch)).round()
    margin = r + 1
    cx = (margin + (image - 1 - 2 * margin) * rand(batch)).round()
    cy = (margin + (image - 1 - 2 * margin) * rand(batch)).round()
    width = 1 + rand(batch).round()                          # stroke width: 1 or 2 pixels
    coords = torch.arange(image, dtype=torch.float32)
    dy = coords.view(1, image, 1) - cy.view(batch, 1, 1)    # rows: y; columns: x
    dx = coords.view(1, 1, image) - cx.view(batch, 1, 1)
    r_, w_ = r.view(batch, 1, 1), width.view(batch, 1, 1)
    on = lambda d: (d >= 0) & (d < w_)  # noqa: E731  (a stroke of `width` pixels from d = 0)
    inside = (dx.abs() <= r_) & (dy.abs() <= r_)
    hbar = on(dy) & (dx.abs() <= r_)
    vbar = on(dx) & (dy.abs() <= r_)
    diag = on(dx - dy) & inside
    anti = on(dx + dy) & inside
    square = inside & ((dx.abs() > r_ - w_) | (dy.abs() > r_ - w_))
    corner = inside & (on(dx + r_) | on(r_ - dy))
    tee = inside & (on(dy + r_) | on(dx))
    ring = on((dx.square() + dy.square()).sqrt() - r_ + w_ / 2)
    masks = torch.stack([hbar, vbar, diag, anti, square, hbar | vbar, diag | anti, corner, tee, ring], dim=1)
    mask = masks[torch.arange(batch), labels].float()
    intensity = (0.6 + 0.4 * rand(batch)).view(batch, 1, 1)
    dots = (rand(batch, image, image) < 0.02).float()
    pixels = torch.maximum(mask * intensity, dots * 0.8) + noise * torch.randn(batch, image, image, generator=g)
    pixels = pixels.reshape(batch, image * image)
    if permutation is not None:
        pixels = pixels[:, permutation]
    return pixels.unsqueeze(-1).to(device), labels.to(device)


# -- model -----------------------------------------------------------------------------------------

def s5_layer_class(d_state):
    """The compiled S5 layer (a `Layer(H)` nn.Module): complex diagonal state of `d_state` entries
    counting both members of each conjugate pair (the paper's P; the layer stores P/2), ZOH."""
    import ssmc
    return ssmc.compile(ssmc.presets.s5(d_state=d_state, conj_sym=True, name="train_s5"))


class S5Block(nn.Module):
    """x + g ⊙ sigmoid(W g), g = GELU(S5(LayerNorm(x))): the S5 paper's block ("half GLU", pre-norm),
    dropout before the residual."""

    def __init__(self, d_model, layer_class, dropout=0.0):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.s5 = layer_class(d_model)
        self.gate = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        y = F.gelu(self.s5(self.norm(x)))
        return x + self.dropout(y * torch.sigmoid(self.gate(y)))


class S5Classifier(nn.Module):
    """encoder (Linear per step) -> n_layers S5 blocks -> LayerNorm -> mean over time -> decoder."""

    def __init__(self, d_input=1, d_model=64, d_state=64, n_layers=4, n_classes=N_CLASSES, dropout=0.0):
        super().__init__()
        layer_class = s5_layer_class(d_state)
        self.encoder = nn.Linear(d_input, d_model)
        self.blocks = nn.ModuleList(S5Block(d_model, layer_class, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.decoder = nn.Linear(d_model, n_classes)

    def forward(self, x):
        x = self.encoder(x)
        for block in self.blocks:
            x = block(x)
        return self.decoder(self.norm(x).mean(dim=1))


SSM_PARAMETERS = ("Lambda_log_re", "Lambda_im", "log_step", "B")


def optimizer_for(model, lr, ssm_lr, weight_decay=0.05):
    """The S5 paper's split: Λ, B and the step Δ with `ssm_lr` and no weight decay; D, norms and
    biases with `lr` and no weight decay; the rest (C, the dense weights) with both."""
    ssm, no_decay, decay = [], [], []
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if ".s5." in f".{name}" and leaf in SSM_PARAMETERS:
            ssm.append(p)
        elif p.dim() < 2 or ".norm" in f".{name}":
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": ssm, "lr": ssm_lr, "weight_decay": 0.0, "name": "ssm"},
              {"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": "no_decay"},
              {"params": decay, "lr": lr, "weight_decay": weight_decay, "name": "decay"}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98))


@torch.no_grad()
def evaluate(model, image, batches=8, batch_size=128, seed=12345, permutation=None, device="cpu"):
    """Classification accuracy on fresh images (a generator separate from training's)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    correct = total = 0
    for _ in range(batches):
        pixels, labels = shapes_batch(batch_size, image, generator=gen, permutation=permutation, device=device)
        correct += (model(pixels).argmax(-1) == labels).sum().item()
        total += labels.numel()
    model.train()
    return correct / total


# -- training --------------------------------------------------------------------------------------

def train(steps=500, image=32, permute=False, d_model=64, d_state=64, n_layers=4, batch_size=32, lr=1e-2,
          ssm_lr_factor=0.25, warmup=20, weight_decay=0.05, dropout=0.0, seed=0, device="cpu", eval_batches=8,
          eval_every=0, show_progress=True, log=print):
    """Train a fresh model; returns a dict with the model, the loss and train-accuracy history, the
    held-out accuracy and the wall times."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(image * image, generator=torch.Generator().manual_seed(seed + 1)) if permute else None
    model = S5Classifier(1, d_model, d_state, n_layers, N_CLASSES, dropout).to(device)
    opt = optimizer_for(model, lr, lr * ssm_lr_factor, weight_decay)

    def lr_at(step):  # linear warm-up, cosine decay to 0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"S5: {n_params:,} parameters, d_model={d_model}, P={d_state} ({d_state // 2} complex states stored), "
        f"layers={n_layers}; {'permuted ' if permute else ''}{image}x{image} shapes (sequences of {image * image}), "
        f"batch {batch_size}, {steps} steps, lr {lr} (SSM {lr * ssm_lr_factor:g})")
    bar = progress(steps, "s5", show_progress)
    losses, train_acc, running = [], [], None
    start = time.perf_counter()
    for step in range(steps):
        pixels, labels = shapes_batch(batch_size, image, generator=gen, permutation=permutation, device=device)
        logits = model(pixels)
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        train_acc.append((logits.argmax(-1) == labels).float().mean().item())
        running = losses[-1] if running is None else 0.9 * running + 0.1 * losses[-1]
        if bar is not None:
            bar.set_postfix_str(f"loss {running:.3f} acc {sum(train_acc[-10:]) / len(train_acc[-10:]):.2f}")
            bar.update(1)
        if eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
            acc = evaluate(model, image, batches=2, seed=seed + 20_000, permutation=permutation, device=device)
            message = f"step {step + 1}: loss {running:.4f}, held-out accuracy {100 * acc:.1f}%"
            (bar.write if bar is not None else log)(message)
    if bar is not None:
        bar.close()
    train_time = time.perf_counter() - start
    start = time.perf_counter()
    accuracy = evaluate(model, image, batches=eval_batches, seed=seed + 10_000, permutation=permutation,
                        device=device)
    eval_time = time.perf_counter() - start
    return dict(model=model, losses=losses, train_accuracy=train_acc, accuracy=accuracy, train_time=train_time,
                eval_time=eval_time)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=500, help="training steps")
    p.add_argument("--image", type=int, default=32, help="image side: sequences of image² pixels")
    p.add_argument("--permute", action="store_true", help="a fixed random permutation of the pixels")
    p.add_argument("--d-model", type=int, default=64, help="model width H")
    p.add_argument("--d-state", type=int, default=64,
                   help="S5's P, counting both members of each conjugate pair (P/2 complex states are stored)")
    p.add_argument("--layers", type=int, default=4, help="S5 blocks")
    p.add_argument("--batch", type=int, default=32, help="training batch size")
    p.add_argument("--lr", type=float, default=1e-2, help="AdamW peak learning rate (warm-up, cosine decay)")
    p.add_argument("--ssm-lr-factor", type=float, default=0.25, help="learning rate of Λ, B, Δ relative to --lr")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (not on Λ, B, Δ, norms)")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0, help="seed of the model, the training data and the permutation")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--eval-batches", type=int, default=8, help="held-out batches of 128 images")
    p.add_argument("--eval-every", type=int, default=100, help="print held-out accuracy every N steps (0: never)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of torch and the C kernels (default: torch's choice)")
    p.add_argument("--quick", action="store_true",
                   help="tiny settings (12x12 images, 2 blocks, 200 steps): seconds; overrides the size flags")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = dict(steps=args.steps, image=args.image, d_model=args.d_model, d_state=args.d_state,
                    n_layers=args.layers, batch_size=args.batch, lr=args.lr, warmup=20, eval_batches=args.eval_batches)
    if args.quick:
        settings.update(QUICK)
    print(f"ssmc backend: {backend_name(args.device)}; torch threads: {torch.get_num_threads()}")
    result = train(permute=args.permute, ssm_lr_factor=args.ssm_lr_factor, weight_decay=args.weight_decay,
                   dropout=args.dropout, seed=args.seed, device=args.device, show_progress=not args.no_progress,
                   eval_every=0 if args.quick else args.eval_every, **settings)
    tail = result["losses"][-20:]
    print(f"S5: trained {settings['steps']} steps in {result['train_time']:.1f}s; final train loss "
          f"{sum(tail) / len(tail):.4f} (first steps {sum(result['losses'][:5]) / 5:.4f})")
    print(f"S5: held-out accuracy {100 * result['accuracy']:.2f}% ({settings['eval_batches'] * 128} images; "
          f"chance {100 / N_CLASSES:.1f}%)")
    return result


if __name__ == "__main__":
    main()
