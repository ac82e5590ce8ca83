"""`ssmc bench SPEC.py`: time each spec's compiled layer against the references at hand.

For every `ssmc.SSM` of the spec file, the compiled package's functional `apply` is timed forward and
forward+backward (and its decoding `step`, per token, where the package has one) on the device at
hand (CUDA if available, else the CPU), beside:

- `torch loop`: the plain PyTorch sequential loop of the same recurrence (below, one per family,
  written for clarity; computed in the benchmark dtype);
- mamba_ssm's / flash-linear-attention's kernels when those packages are importable and can run on
  the device (a note says why one is not timed).

Every row's outputs (and for forward+backward, every input's gradient) are compared with a float64
reference: ssmc/reference.py (SISO), reference_ssd.py (Mamba-2), reference_s5.py (S5) for the
forward, the torch loop run in float64 with autograd for gradients (and for the forward of gated
specs, which have no reference module) — so a wrong kernel cannot look fast.

Achieved GB/s = (bytes of each input read once + each output written once) / time; `floor` is the
fraction of the memory-bandwidth floor reached: (those bytes / peak bandwidth) / time, the peak
measured at start by a large tensor copy on the device.
"""
from __future__ import annotations

import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field

import sympy
import torch
import torch.nn.functional as F

from .cli import load_specs, parse_shape
from .errors import SSMCError

DTYPE = torch.float32
STEP_TOKENS = 32            # decoding: tokens stepped per timing (ms reported per token)
TORCH_FUNCTIONS = {"exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt, "tanh": torch.tanh,
                   "expm1": torch.expm1, "log1p": torch.log1p, "sin": torch.sin, "cos": torch.cos,
                   "abs": torch.abs, "Abs": torch.abs, "sigmoid": torch.sigmoid}
# per family: default shape (CPU), and the --shape names it reads
DEFAULTS = {
    "siso": dict(batch=2, len=256, dim=64),
    "multihead": dict(batch=2, len=256, heads=4),
    "gated": dict(batch=2, len=256, heads=4),
    "mimo": dict(batch=2, len=256, dim=64),
}
CUDA_DEFAULTS = dict(batch=4, len=1024)      # on a GPU: longer sequences (the torch loop stays affordable)
FIXED_BY_SPEC = {"siso": ("state",), "multihead": ("state", "headdim"), "gated": ("state", "headdim"),
                 "mimo": ("state",)}


def add_parser(sub, debug_help: str) -> None:
    """Registers `ssmc bench` on the `ssmc` command's subparsers."""
    import argparse
    p = sub.add_parser("bench", help="time the compiled layers against the references at hand")
    p.add_argument("spec", metavar="SPEC.py")
    p.add_argument("--shape", default="", help="e.g. batch=2,len=1024,dim=64 (names: batch, len, dim, heads; "
                                               "state and headdim are the spec's)")
    p.add_argument("--repeat", type=int, default=5, help="timed runs after a warm-up; the median is reported "
                                                         "(default 5)")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="also time the forward at a few lengths and draw time against length (needs matplotlib)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    p.set_defaults(run=cmd_bench)


# ---- timing and bandwidth -------------------------------------------------------------------------

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device, repeat: int, budget_s: float = 2.0) -> float:
    """Median milliseconds of up to `repeat` runs of fn() after one warm-up run; a slow fn (a
    Python loop) gets fewer runs, about `budget_s` seconds in all, and a warm-up over that is the
    only sample."""
    start = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - start
    if first > budget_s:
        return first * 1e3
    times = []
    for _ in range(max(1, min(repeat, int(budget_s / max(first, 1e-9))))):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_bandwidth(device) -> float:
    """Bytes per second of a large tensor copy (read + write) on the device, best of 5."""
    n = (1 << 28 if device.type == "cuda" else 1 << 25)     # 1 GiB / 128 MiB of float32
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    best = time_ms(lambda: dst.copy_(src), device, 5)
    return 2 * src.numel() * src.element_size() / (best * 1e-3)


def _nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def rel_error(out, ref) -> float:
    out, ref = out.detach().to(torch.complex128 if out.is_complex() else torch.float64), ref.detach()
    ref = ref.to(out.dtype)
    if not torch.isfinite(torch.view_as_real(out) if out.is_complex() else out).all():
        return math.inf
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


# ---- the references: one plain sequential loop per family ------------------------------------------

def _lambdify(symbols, expr):
    return sympy.lambdify(symbols, expr, modules=[TORCH_FUNCTIONS])


def _discretization(spec):
    """(decay(dt, A), input_scale(dt, A)) of the spec's discretization, as torch functions."""
    from .spec import A_SYM, DT
    decay, scale = spec.discretization.formulas()
    return _lambdify((DT, A_SYM), decay), _lambdify((DT, A_SYM), scale)


def _expand_bc(x, batch, dim, length):
    """(dim, N) or (batch, groups, N, len) -> (batch, dim, N, len)."""
    if x.dim() == 2:
        return x[None, :, :, None].expand(batch, dim, x.shape[1], length)
    return x.repeat_interleave(dim // x.shape[1], dim=1)


def siso_loop(disc, softplus, u, delta, A, B, C, D=None, z=None, delta_bias=None):
    """h_t = decay(dt_t, A) h_{t-1} + scale(dt_t, A) B_t u_t, y_t = C_t h_t (2 Re for complex A) + D u_t,
    times silu(z_t); u, delta, z (batch, dim, len), A (dim, N), B/C (dim, N) or (batch, groups, N, len)."""
    decay_fn, scale_fn = disc
    batch, dim, length = u.shape
    if delta.dim() == 1:
        delta = delta[None, :, None].expand(batch, dim, length)
    if delta_bias is not None:
        delta = delta + delta_bias[None, :, None]
    if softplus:
        delta = F.softplus(delta)
    B, C = _expand_bc(B, batch, dim, length), _expand_bc(C, batch, dim, length)
    h = torch.zeros(batch, dim, A.shape[1], dtype=A.dtype if A.is_complex() else u.dtype, device=u.device)
    ys = []
    for t in range(length):
        dt = delta[:, :, t, None]
        h = decay_fn(dt, A) * h + scale_fn(dt, A) * B[..., t] * u[:, :, t, None]
        y = (C[..., t] * h).sum(-1)
        ys.append(2 * y.real if A.is_complex() else y)
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D[None, :, None] * u
    return y * F.silu(z) if z is not None else y


def multihead_loop(disc, softplus, x, dt, A, B, C, D=None, z=None, dt_bias=None):
    """Mamba-2: h_t = decay(dt_t, A) h_{t-1} + scale(dt_t, A) x_t ⊗ B_t per (batch, head),
    y_t = h_t C_t + D x_t, times silu(z_t); x (batch, len, heads, P), B/C (batch, len, groups, N)."""
    decay_fn, scale_fn = disc
    batch, length, heads, P = x.shape
    if dt_bias is not None:
        dt = dt + dt_bias
    if softplus:
        dt = F.softplus(dt)
    B, C = (t.repeat_interleave(heads // t.shape[2], dim=2) for t in (B, C))
    h = x.new_zeros(batch, heads, P, B.shape[-1])
    ys = []
    for t in range(length):
        a, s = decay_fn(dt[:, t], A), scale_fn(dt[:, t], A)                  # (batch, heads)
        h = a[..., None, None] * h + (s[..., None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", h, C[:, t]))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + x * (D[:, None] if D.dim() == 1 else D)
    return y * F.silu(z) if z is not None else y


def gated_loop(log_decay, per_state, q, k, v, decays, u=None, scale=None):
    """GLA / simple GLA / RWKV-6: S_t = exp(log_decay_t) ⊙ S_{t-1} + k_t ⊗ v_t, o_t = scale q_t S_t
    (RWKV-6: o_t = scale r_t (S_{t-1} + diag(u) k_t ⊗ v_t)); q, k (batch, len, heads, K)."""
    batch, length, heads, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    g = log_decay(*decays)
    S = q.new_zeros(batch, heads, K, v.shape[-1])
    outs = []
    for t in range(length):
        a = torch.exp(g[:, t])
        a = a[..., None] if per_state else a[..., None, None]
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]
        read = S + u[None, :, :, None] * kv if u is not None else None
        S = a * S + kv
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S if u is None else read))
    return torch.stack(outs, dim=1)


def mimo_loop(disc, conj_sym, bidirectional, u, Lambda, B, C, D=None, step=None):
    """S5: x_t = decay(Δ, Λ) ⊙ x_{t-1} + scale(Δ, Λ) ⊙ (B u_t), y_t = 2·Re(C x_t) (Re/plain without
    conjugate symmetry) + D ⊙ u_t; u (batch, len, H), B (P, H), C (H, P) or (2, H, P)."""
    decay, scale = disc[0](step, Lambda), disc[1](step, Lambda)
    Bu = u.to(B.dtype) @ B.transpose(0, 1)                                      # (batch, len, P)
    length = u.shape[1]

    def scan(order):
        x = Bu.new_zeros(Bu.shape[0], Bu.shape[2])
        states = [None] * length
        for t in order:
            a = decay[:, t] if decay.dim() == 3 else decay
            s = scale[:, t] if scale.dim() == 3 else scale
            x = a * x + s * Bu[:, t]
            states[t] = x
        return torch.stack(states, dim=1)

    k = 2.0 if conj_sym else 1.0

    def read(X, Cm):
        y = X @ Cm.transpose(0, 1)
        return k * (y.real if y.is_complex() else y)

    y = read(scan(range(length)), C[0] if bidirectional else C)
    if bidirectional:
        y = y + read(scan(range(length - 1, -1, -1)), C[1])
    return y + u * D if D is not None else y


# ---- one benchmark case per spec --------------------------------------------------------------------

@dataclass
class Case:
    """Inputs of one spec at one shape and the ways to compute its output."""
    family: str
    inputs: dict                    # name -> tensor (benchmark dtype, on the device)
    grads: tuple                    # names of the inputs differentiated in forward+backward
    ssmc: object                    # inputs -> output tensor (the compiled package's apply)
    loop: object                    # inputs -> output tensor (the plain torch loop, any dtype)
    truth: object = None            # inputs -> float64 forward output (a reference module), or None: loop
    extra: dict = field(default_factory=dict)       # name -> inputs -> output (mamba_ssm, fla)
    notes: list = field(default_factory=list)
    step: object = None             # (inputs, tokens) -> (step outputs stacked on the time axis, bytes/token)
    step_loop: object = None
    time_axis: int = 1


def _generator_randn(gen, device):
    if device.type == "meta":      # footprint(): shapes and dtypes only, no memory, no random numbers
        def empty(*shape, dtype=DTYPE):
            return torch.empty(*shape, dtype=dtype, device=device)
        return empty, empty

    def randn(*shape, dtype=DTYPE):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)

    def rand(*shape, dtype=DTYPE):
        return torch.rand(*shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    return randn, rand


def _complex(randn, *shape):
    return torch.complex(randn(*shape), randn(*shape)) / math.sqrt(2)


def resolve_shape(spec, family: str, given: dict) -> tuple:
    """(shape, notes): the family's defaults updated with the --shape values it reads."""
    shape = dict(DEFAULTS[family])
    if torch.cuda.is_available():
        shape.update(CUDA_DEFAULTS)
    notes = []
    for name, value in given.items():
        if name in shape:
            shape[name] = value
        elif name in FIXED_BY_SPEC[family]:
            notes.append(f"--shape {name}={value} ignored: fixed by the spec")
        else:
            notes.append(f"--shape {name}={value} ignored: not a dimension of a {family} spec "
                         f"(names: {', '.join(shape)})")
    return shape, notes


def _gigabytes(n: int) -> str:
    return f"{n / 1e9:.3g} GB"


def available_bytes(device) -> int | None:
    """Free memory where the workload's tensors go: the GPU's, else the host's (MemAvailable); None if
    the system does not say."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def footprint(spec, package, shape: dict) -> int:
    """A lower bound on the bytes a run at `shape` takes: its inputs (built on the meta device, so nothing is
    allocated), once more for their gradients, and the float64 draw the largest is made from."""
    case = build_case(spec, package, shape, torch.device("meta"))
    sizes = [t.numel() * t.element_size() for t in case.inputs.values() if isinstance(t, torch.Tensor)]
    return 2 * sum(sizes) + 2 * max(sizes, default=0)


def check_fits(spec, package, shape: dict, device) -> None:
    """Refuse, naming the sizes, a shape whose inputs alone cannot fit in the device's free memory, before
    anything is allocated: a run past it fails deep in an allocator, or the kernel kills the process."""
    sizes = ", ".join(f"{name}={value}" for name, value in shape.items())
    try:
        need = footprint(spec, package, shape)
    except (RuntimeError, TypeError) as error:      # a size past int64, or a storage size that overflows it
        if "overflow" not in str(error).lower():
            raise
        raise SSMCError(f"--shape {sizes}: spec '{spec.name}' cannot hold tensors of these sizes") from None
    free = available_bytes(device)
    if free is not None and need > free:
        raise SSMCError(f"--shape {sizes}: spec '{spec.name}' needs at least {_gigabytes(need)} for its inputs and "
                        f"their gradients, more than the {_gigabytes(free)} free on the {device.type}; "
                        f"use smaller sizes")


def build_case(spec, package, shape: dict, device) -> Case:
    family = spec.family
    gen = torch.Generator().manual_seed(0)
    randn, rand = _generator_randn(gen, device)
    return {"siso": _siso, "multihead": _multihead, "gated": _gated, "mimo": _mimo}[family](
        spec, package, shape, device, randn, rand)


def _siso(spec, package, shape, device, randn, rand):
    from .reference import selective_scan_ref
    b, d, L, N = shape["batch"], shape["dim"], shape["len"], spec.d_state
    cx, G = spec.is_complex, getattr(spec, "groups", 1) or 1
    sel = set(spec.selective)
    x = dict(u=randn(b, d, L))
    x["delta"] = 0.5 * randn(b, d, L) if "dt" in sel else 0.01 + 0.1 * rand(d)
    a_re = -0.1 - rand(d, N)
    x["A"] = torch.complex(a_re, 3 * randn(d, N)) if cx else a_re
    for name in ("B", "C"):
        full = (b, G, N, L) if name in sel else (d, N)
        x[name] = _complex(randn, *full) if cx else randn(*full)
    if spec.skip_D:
        x["D"] = randn(d)
    if spec.gate:
        x["z"] = randn(b, d, L)
    if spec.dt_bias:
        x["delta_bias"] = 0.1 * randn(d)
    disc = _discretization(spec)
    options = [k for k in ("D", "z", "delta_bias") if k in x]

    def ssmc_apply(t):
        return package.apply(t["u"], t["delta"], t["A"], t["B"], t["C"], **{k: t[k] for k in options})

    def loop(t):
        return siso_loop(disc, spec.dt_softplus, t["u"], t["delta"], t["A"], t["B"], t["C"],
                         **{k: t[k] for k in options})

    def truth(t):
        return selective_scan_ref(t["u"], t["delta"], t["A"], t["B"], t["C"], delta_softplus=spec.dt_softplus,
                                  discretization=disc, **{k: t[k] for k in options})

    def at(name, t, i):
        return t[name][..., i] if name in ("u", "z") or (name == "delta" and "dt" in sel) or \
            (name in ("B", "C") and name in sel) else t[name]

    def make_step(step_fn):
        def run(t, tokens):
            state = torch.zeros(b, d, N, dtype=torch.complex64 if cx else DTYPE, device=device)
            ys = [step_fn(*(at(n, t, i) for n in ("u", "delta", "A", "B", "C")), state,
                          **{k: at(k, t, i) for k in options}) for i in range(tokens)]
            per_token = _nbytes(*(at(n, t, 0) for n in ("u", "delta", "A", "B", "C")),
                                *(at(k, t, 0) for k in options)) + 2 * _nbytes(state) + _nbytes(ys[0])
            return torch.stack(ys, dim=-1), per_token
        return run

    decay_fn, scale_fn = disc

    def loop_step(u, delta, A, B, C, state, D=None, z=None, delta_bias=None):
        if delta.dim() == 1:
            delta = delta.expand(u.shape)
        if delta_bias is not None:
            delta = delta + delta_bias
        if spec.dt_softplus:
            delta = F.softplus(delta)
        dt = delta[..., None]
        B = B[None] if B.dim() == 2 else B.repeat_interleave(d // B.shape[1], dim=1)
        C = C[None] if C.dim() == 2 else C.repeat_interleave(d // C.shape[1], dim=1)
        state.copy_(decay_fn(dt, A) * state + scale_fn(dt, A) * B * u[..., None])
        y = (C * state).sum(-1)
        y = 2 * y.real if cx else y
        if D is not None:
            y = y + D * u
        return y * F.silu(z) if z is not None else y

    case = Case("siso", x, tuple(x), ssmc_apply, loop, truth, time_axis=-1,
                step=make_step(package.step) if hasattr(package, "step") else None, step_loop=make_step(loop_step))
    _siso_extras(case, spec, device, options)
    return case


def _transformers_note(case, mixer: str) -> None:
    import importlib.util
    if importlib.util.find_spec("transformers") is not None:
        case.notes.append(f"transformers: its torch fallback ({mixer}) is a whole block (projections, conv, "
                          f"scan) with no separable scan; not timed")


def _siso_extras(case, spec, device, options):
    if type(spec.discretization).__name__ == "MambaZOH" and not spec.is_complex:
        _transformers_note(case, "MambaMixer.slow_forward")
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn, selective_scan_ref
    except ImportError:
        case.notes.append("mamba_ssm: not installed (pip install mamba-ssm)")
        return
    if type(spec.discretization).__name__ != "MambaZOH":
        case.notes.append("mamba_ssm: computes MambaZOH only; not timed for this discretization")
        return

    def call(fn):
        return lambda t: fn(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t.get("D"), z=t.get("z"),
                            delta_bias=t.get("delta_bias"), delta_softplus=spec.dt_softplus)
    if device.type == "cuda":
        case.extra["mamba_ssm selective_scan_fn"] = call(selective_scan_fn)
    else:
        case.notes.append("mamba_ssm: selective_scan_fn needs CUDA; timing its torch selective_scan_ref")
    case.extra["mamba_ssm selective_scan_ref"] = call(selective_scan_ref)


def _multihead(spec, package, shape, device, randn, rand):
    from .reference_ssd import ssd_sequential_ref
    b, L, H = shape["batch"], shape["len"], shape["heads"]
    P, N, G = spec.heads.headdim, spec.d_state, spec.heads.groups
    if H % G:
        raise SSMCError(f"--shape: heads={H} must be a multiple of spec '{spec.name}''s groups={G}")
    x = dict(x=randn(b, L, H, P), dt=randn(b, L, H) - 1, A=-0.5 - rand(H), B=randn(b, L, G, N),
             C=randn(b, L, G, N))
    if spec.skip_D:
        x["D"] = randn(H)
    if spec.gate:
        x["z"] = randn(b, L, H, P)
    if spec.dt_bias:
        x["dt_bias"] = 0.5 * randn(H)
    disc = _discretization(spec)
    options = [k for k in ("D", "z", "dt_bias") if k in x]
    mamba_zoh = type(spec.discretization).__name__ == "MambaZOH"

    def ssmc_apply(t):
        return package.apply(t["x"], t["dt"], t["A"], t["B"], t["C"], dt_softplus=spec.dt_softplus,
                             **{k: t[k] for k in options})

    def loop(t):
        return multihead_loop(disc, spec.dt_softplus, t["x"], t["dt"], t["A"], t["B"], t["C"],
                              **{k: t[k] for k in options})

    def truth(t):
        return ssd_sequential_ref(t["x"], t["dt"], t["A"], t["B"], t["C"], dt_softplus=spec.dt_softplus,
                                  **{k: t[k] for k in options})

    def at(name, t, i):
        return t[name][:, i] if name in ("x", "dt", "B", "C", "z") else t[name]

    def make_step(step_fn, **fixed):
        def run(t, tokens):
            state = torch.zeros(b, H, P, N, dtype=DTYPE, device=device)
            ys = [step_fn(*(at(n, t, i) for n in ("x", "dt", "A", "B", "C")), state,
                          **{k: at(k, t, i) for k in options}, **fixed) for i in range(tokens)]
            per_token = _nbytes(*(at(n, t, 0) for n in ("x", "dt", "A", "B", "C")),
                                *(at(k, t, 0) for k in options)) + 2 * _nbytes(state) + _nbytes(ys[0])
            return torch.stack(ys, dim=1), per_token
        return run

    def loop_step(x_t, dt_t, A, B_t, C_t, state, D=None, z=None, dt_bias=None):
        if dt_bias is not None:
            dt_t = dt_t + dt_bias
        if spec.dt_softplus:
            dt_t = F.softplus(dt_t)
        B_t, C_t = (m.repeat_interleave(H // G, dim=1) for m in (B_t, C_t))
        a, s = disc[0](dt_t, A), disc[1](dt_t, A)
        state.copy_(a[..., None, None] * state + (s[..., None] * x_t)[..., None] * B_t[:, :, None, :])
        y = torch.einsum("bhpn,bhn->bhp", state, C_t)
        if D is not None:
            y = y + x_t * (D[:, None] if D.dim() == 1 else D)
        return y * F.silu(z) if z is not None else y

    case = Case("multihead", x, tuple(x), ssmc_apply, loop, truth if mamba_zoh else None,
                step=make_step(package.step, dt_softplus=spec.dt_softplus) if hasattr(package, "step") else None,
                step_loop=make_step(loop_step))
    _transformers_note(case, "Mamba2Mixer.torch_forward")
    if not mamba_zoh:
        case.notes.append("forward checked against the torch loop in float64 (reference_ssd computes MambaZOH only)")
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError:
        case.notes.append("mamba_ssm: not installed (pip install mamba-ssm)")
        return case
    if device.type != "cuda" or not mamba_zoh:
        case.notes.append("mamba_ssm: mamba_chunk_scan_combined needs CUDA and MambaZOH; not timed")
    else:
        case.extra["mamba_ssm chunk_scan_combined"] = lambda t: mamba_chunk_scan_combined(
            t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size=256, D=t.get("D"), z=t.get("z"),
            dt_bias=t.get("dt_bias"), dt_softplus=spec.dt_softplus)
    return case


def _gated(spec, package, shape, device, randn, rand):
    b, L, H = shape["batch"], shape["len"], shape["heads"]
    K, V = spec.d_state, spec.heads.headdim
    per_state = spec.A.per == "state"
    names = spec.A.inputs
    symbols = sorted(spec.A.log_decay.free_symbols, key=lambda s: names.index(s.name))
    by_symbol = _lambdify(symbols, spec.A.log_decay)
    positions = [names.index(s.name) for s in symbols]

    def log_decay(*decays):
        return by_symbol(*(decays[i] for i in positions))

    decay_shape = (b, L, H, K) if per_state else (b, L, H)
    # -(0.05 .. 0.55): a log-decay as given (g) and, through -exp(w), one of about (-0.95, -0.58)
    x = dict(q=randn(b, L, H, K), k=randn(b, L, H, K), v=randn(b, L, H, V))
    for name in names:
        x[name] = -(0.05 + 0.5 * rand(*decay_shape))
    if spec.bonus:
        x["u"] = randn(H, K)

    def ssmc_apply(t):
        o, _ = package.apply(t["q"], t["k"], t["v"], *(t[n] for n in names), **({"u": t["u"]} if spec.bonus else {}))
        return o

    def loop(t):
        return gated_loop(log_decay, per_state, t["q"], t["k"], t["v"], [t[n] for n in names], u=t.get("u"))

    case = Case("gated", x, tuple(x), ssmc_apply, loop, None)
    case.notes.append("forward checked against the torch loop in float64 (as tests/test_gla.py's gla_ref)")
    try:
        import fla.ops as fla_ops
    except ImportError:
        case.notes.append("flash-linear-attention: not installed (pip install flash-linear-attention)")
        return case
    if device.type != "cuda":
        case.notes.append("flash-linear-attention: its kernels need a GPU; not timed")
        return case
    text = str(spec.A.log_decay)
    if spec.bonus and text == f"-exp({names[0]})":
        case.extra["fla chunk_rwkv6"] = lambda t: fla_ops.rwkv6.chunk_rwkv6(t["q"], t["k"], t["v"], t[names[0]],
                                                                             t["u"])[0]
    elif not spec.bonus and text == names[0]:
        fn = fla_ops.gla.chunk_gla if per_state else fla_ops.simple_gla.chunk_simple_gla
        case.extra[f"fla {fn.__name__}"] = lambda t: fn(t["q"], t["k"], t["v"], t[names[0]])[0]
    else:
        case.notes.append(f"flash-linear-attention: no kernel for log_decay={text}; not timed")
    return case


def _mimo(spec, package, shape, device, randn, rand):
    from .reference_s5 import s5_ref
    b, L, Hd, P = shape["batch"], shape["len"], shape["dim"], spec.d_state
    cx, conj, bidir, varying = package.IS_COMPLEX, package.CONJ_SYM, package.BIDIRECTIONAL, package.VARYING_STEP
    matrix = (lambda *s: _complex(randn, *s)) if cx else randn
    re = -(0.2 + rand(P))
    x = dict(u=randn(b, L, Hd), Lambda=torch.complex(re, 3 * randn(P)) if cx else re,
             B=matrix(P, Hd) / math.sqrt(Hd), C=matrix(*((2,) if bidir else ()), Hd, P) / math.sqrt(P),
             D=randn(Hd), step=0.05 + 0.5 * rand(*((b, L, P) if varying else (P,))))
    disc = _discretization(spec)
    name = {"ZOH": "zoh", "Bilinear": "bilinear"}.get(type(spec.discretization).__name__)

    def ssmc_apply(t):
        return package.apply(t["u"], t["Lambda"], t["B"], t["C"], D=t["D"], step=t["step"])

    def loop(t):
        return mimo_loop(disc, conj, bidir, t["u"], t["Lambda"], t["B"], t["C"], D=t["D"], step=t["step"])

    def truth(t):
        return s5_ref(t["u"], t["Lambda"], t["B"], t["C"], t["D"], t["step"], discretization=name,
                      conj_sym=conj, bidirectional=bidir)

    case = Case("mimo", x, tuple(x), ssmc_apply, loop, truth if name else None)
    if name is None:
        case.notes.append("forward checked against the torch loop in float64")
    return case


# ---- measuring a case ------------------------------------------------------------------------------

def _to64(t):
    return t.to(torch.complex128 if t.is_complex() else torch.float64)


def _leaves(inputs, names, dtype_of=lambda t: t):
    out = {}
    for k, t in inputs.items():
        t = dtype_of(t).detach().clone()
        out[k] = t.requires_grad_(k in names)
    return out


def _with_grads(fn, inputs, names, gy):
    leaves = _leaves(inputs, names)
    y = fn(leaves)
    y.backward(gy)
    return y.detach(), {k: leaves[k].grad for k in names}


def measure(case: Case, impls: dict, repeat: int, device, peak: float, with_step=True) -> list:
    """Rows (impl, mode, ms, GB/s, floor fraction, rel error) of every implementation and mode."""
    x = case.inputs
    with torch.no_grad():
        # the reference modules allocate their state on the CPU: computed there
        truth64 = case.truth({k: _to64(t).cpu() for k, t in x.items()}).to(device) if case.truth else None
    x64 = _leaves(x, case.grads, _to64)
    y64 = case.loop(x64)
    gy = torch.randn(y64.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device)
    y64.backward(gy)
    grads64 = {k: x64[k].grad for k in case.grads}
    if truth64 is None:
        truth64 = y64.detach()
    gy = gy.to(DTYPE)
    rows = []
    for name, fn in impls.items():
        with torch.no_grad():
            y = fn(x)
        bytes_fwd = _nbytes(*x.values()) + _nbytes(y)
        with torch.no_grad():
            ms = time_ms(lambda: fn(x), device, repeat)
        rows.append(_row(name, "forward", ms, bytes_fwd, peak, rel_error(y, truth64)))
        try:
            y, grads = _with_grads(fn, x, case.grads, gy)
        except Exception as error:       # noqa: BLE001 -- an implementation without a backward: say so
            rows.append((name, "fwd+bwd", None, None, None, None, f"failed: {type(error).__name__}: {error}"[:80]))
            continue
        errors = {"output": rel_error(y, truth64), **{f"d{k}": rel_error(grads[k], grads64[k]) for k in case.grads}}
        worst = max(errors, key=errors.get)
        bytes_bwd = bytes_fwd + _nbytes(gy) + sum(_nbytes(g) for g in grads.values())
        ms = time_ms(lambda: _with_grads(fn, x, case.grads, gy), device, repeat)
        rows.append(_row(name, "fwd+bwd", ms, bytes_bwd, peak, errors[worst], worst))
    if with_step and case.step is not None:
        tokens = min(STEP_TOKENS, x[next(iter(x))].shape[case.time_axis])
        ref = truth64.narrow(case.time_axis, 0, tokens)
        for name, run in (("ssmc", case.step), ("torch loop", case.step_loop)):
            with torch.no_grad():
                ys, per_token = run(x, tokens)
                ms = time_ms(lambda: run(x, tokens), device, repeat) / tokens
            rows.append(_row(name, "step/token", ms, per_token, peak, rel_error(ys, ref)))
    return rows


def _row(name, mode, ms, nbytes, peak, err, worst=""):
    gbps = nbytes / (ms * 1e-3) / 1e9
    floor_ms = nbytes / peak * 1e3
    return (name, mode, ms, gbps, floor_ms / ms, err, worst)


def _format(rows) -> list:
    header = ("implementation", "mode", "ms", "GB/s", "of floor", "rel err", "largest in")
    lines = [header]
    for name, mode, ms, gbps, frac, err, note in rows:
        if ms is None:
            lines.append((name, mode, "-", "-", "-", "-", note))
        else:
            lines.append((name, mode, f"{ms:.4g}", f"{gbps:.3g}", f"{frac:.3g}", f"{err:.1e}", note))
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    out = ["  " + "  ".join(c.ljust(w) if i in (0, 1, 6) else c.rjust(w)
                            for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in lines]
    out.insert(1, "  " + "-" * (sum(widths) + 2 * (len(widths) - 1)))
    return out


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise SSMCError("--plot: needs matplotlib, which is not installed (pip install matplotlib)") from error
    return plt


def cmd_bench(args) -> int:
    from .compiler import compile_package
    given = parse_shape(args.shape or "")
    if args.repeat < 1:
        raise SSMCError(f"--repeat: expected a positive int, got {args.repeat}")
    plt = _pyplot() if args.plot else None
    specs = load_specs(args.spec)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = peak_bandwidth(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}; dtype float32; peak bandwidth (tensor copy) "
          f"{peak / 1e9:.3g} GB/s; median of {args.repeat} after a warm-up "
          f"(fewer where runs are slow: about 2 s per row)")
    print("GB/s: (bytes of each input read once + each output written once) / time; of floor: that at the peak "
          "bandwidth / time; rel err: against float64 (the output, and for fwd+bwd every input's gradient too; "
          "largest in: which)\n")
    curves = {}
    for variable, spec in specs.items():
        family = spec.family
        shape, notes = resolve_shape(spec, family, given)
        package = compile_package(spec)
        check_fits(spec, package, shape, device)
        case = build_case(spec, package, shape, device)
        impls = {"ssmc": case.ssmc, "torch loop": case.loop, **case.extra}
        rows = measure(case, impls, args.repeat, device, peak)
        sizes = ", ".join(f"{k}={v}" for k, v in shape.items()) + f", state={spec.d_state}"
        sizes += f", headdim={spec.heads.headdim}" if family in ("multihead", "gated") else ""
        print(f"#### {variable}: spec '{spec.name}' ({family}) at {sizes}")
        print("\n".join(_format(rows)))
        for note in notes + case.notes:
            print(f"  note: {note}")
        print()
        sys.stdout.flush()
        if plt is not None:
            curves[variable] = _lengths_curve(spec, package, family, shape, device, args.repeat, impls)
    if plt is not None:
        _plot(plt, curves, args.plot)
        print(f"plot: {args.plot}")
    return 0


def _lengths_curve(spec, package, family, shape, device, repeat, impls) -> dict:
    """{impl: [(len, forward ms)]} at a quarter, half and the full length."""
    lengths = sorted({max(1, shape["len"] // 4), max(1, shape["len"] // 2), shape["len"]})
    curve = {}
    for length in lengths:
        case = build_case(spec, package, dict(shape, len=length), device)
        for name in impls:
            fn = {"ssmc": case.ssmc, "torch loop": case.loop, **case.extra}[name]
            with torch.no_grad():
                curve.setdefault(name, []).append((length, time_ms(lambda: fn(case.inputs), device, repeat)))
    return curve


def _plot(plt, curves: dict, path: str) -> None:
    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4), squeeze=False)
    for ax, (variable, curve) in zip(axes[0], curves.items()):
        for name, points in curve.items():
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        ax.set_title(f"{variable}: forward")
        ax.set_xlabel("length")
        ax.set_ylabel("ms")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
