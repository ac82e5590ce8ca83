"""Functional ops with the de-facto conventions of mamba_ssm and the S4 repository.

Each call derives the spec its arguments describe (complex or real A, which of B/C vary over time,
which optional terms are present), compiles it once per process (cached by the spec's hash) and
runs the generated kernels: CUDA tensors on Triton, CPU tensors on C (`SSMC_BACKEND` forces one).
"""
from __future__ import annotations

import operator
import threading

import torch

from .errors import ShapeError, SpecError
from .runtime.calls import compute_dtype
from .spec import MIMO, SSM, Diagonal, MambaZOH, MultiHead, Scalar, discretization_from_name

_PACKAGES = {}
_LOCK = threading.Lock()


def _spec_of(key: tuple) -> tuple:
    """(spec, schedule) a call signature stands for (the key holds Python constants only). The
    schedule is a compile option beside the spec; a selective spec has only the scan ("auto")."""
    if key[0] == "gla":
        from .linear_attention import gated_spec
        return gated_spec(key)
    if key[0] == "chunk_scan":
        _, n_state, headdim, groups, has_D, has_z, schedule = key
        return SSM(name="chunk_scan", d_state=n_state, A=Scalar(), discretization=MambaZOH(),
                   selective=("dt", "B", "C"), heads=MultiHead(headdim=headdim, groups=groups), skip_D=has_D,
                   gate=has_z, dt_softplus=True, dt_bias=True), schedule
    if key[0] == "s5":
        _, n_state, is_complex, discretization, conj_sym, bidirectional, varying, has_D, schedule = key
        return SSM(name="s5_scan", d_state=n_state, A=Diagonal(real=not is_complex),
                   discretization=discretization_from_name(discretization), selective=("dt",) if varying else (),
                   heads=MIMO(conj_sym=conj_sym, bidirectional=bidirectional), skip_D=has_D), schedule
    if key[0] == "selective_scan":
        _, n_state, is_complex, selective, has_D, has_z, softplus, has_bias = key
        return SSM(name="selective_scan", d_state=n_state, A=Diagonal(real=not is_complex),
                   discretization=MambaZOH(), selective=selective, skip_D=has_D, gate=has_z,
                   dt_softplus=softplus, dt_bias=has_bias), "auto"
    _, n_state, is_complex, discretization, has_D, schedule = key
    return SSM(name="lti_ssm", d_state=n_state, A=Diagonal(real=not is_complex),
               discretization=discretization_from_name(discretization), skip_D=has_D), schedule


@torch.compiler.assume_constant_result
def _compiled(key: tuple) -> tuple:
    """Compiles the package of `key` on first use and returns the key.

    torch.compile runs this function as plain Python while it traces (its result is a constant),
    so building the spec and compiling never enter the trace: a model compiles with
    fullgraph=True on its first call, warm-up or not. The lock makes the first use from several
    threads compile once."""
    if key not in _PACKAGES:
        with _LOCK:
            if key not in _PACKAGES:
                from .compiler import compile_package
                _PACKAGES[key] = compile_package(*_spec_of(key))
    return key


def _package(key: tuple):
    return _PACKAGES[_compiled(key)]


def _state_size(A) -> int:
    if not isinstance(A, torch.Tensor) or A.dim() != 2:
        shape = tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__
        raise ShapeError(f"A: expected a tensor of shape (dim, N), got {shape}")
    # operator.index makes torch.compile specialise a dynamic size to the int the spec needs
    return operator.index(A.shape[1])


def _varies_over_time(name, x) -> bool:
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{name}: expected a tensor, got {type(x).__name__}")
    return x.dim() >= 3


def selective_scan_key(d_state, complex_A=False, variable_B=True, variable_C=True, has_D=True, has_z=True,
                       delta_softplus=True, has_delta_bias=True) -> tuple:
    """The signature under which `selective_scan_fn` caches the package of such a call."""
    selective = ("dt",) + (("B",) if variable_B else ()) + (("C",) if variable_C else ())
    return ("selective_scan", d_state, bool(complex_A), selective, bool(has_D), bool(has_z), bool(delta_softplus),
            bool(has_delta_bias))


def lti_ssm_key(d_state, complex_A=True, discretization="zoh", has_D=True, schedule="auto") -> tuple:
    """The signature under which `lti_ssm` caches the package of such a call."""
    return ("lti_ssm", d_state, bool(complex_A), discretization, bool(has_D), schedule)


def prepare(key: tuple) -> None:
    """Compile ahead of the first call (layers do it in __init__: spec errors surface at
    construction, and the first forward, eager or traced, does not wait for the compiler)."""
    _compiled(key)


def _interleaved_to_complex(name, x, length, compute):
    """mamba_ssm's real layout of a time-varying B/C for complex A: (batch, [groups,] N, 2·len), the
    real and imaginary parts of step l at positions 2l and 2l + 1 of the last axis."""
    if x.shape[-1] != 2 * length:
        raise ShapeError(f"{name}: with complex A, a real time-varying {name} must be mamba_ssm's interleaved "
                         f"(batch, [groups,] N, 2·len) = (..., {2 * length}), got {tuple(x.shape)}")
    return torch.view_as_complex(x.to(compute).unflatten(-1, (length, 2)).contiguous())


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                      return_last_state=False, initial_state=None):
    """Mamba's selective scan.

    u, delta, z: (batch, dim, len); A: (dim, N), real or complex; B, C: (dim, N), (batch, N, len) or
    (batch, groups, N, len), complex when A is complex (or, time-varying, mamba_ssm's real
    interleaved (batch, [groups,] N, 2·len)); D, delta_bias: (dim,); initial_state (batch, dim, N),
    an extension of mamba_ssm's signature: the state before the first step (zero if None).
        dt = softplus(delta + delta_bias) (softplus if delta_softplus)
        h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,   y_t = C_t h_t (2·Re for complex A) + D u_t
        out = y · silu(z)
    Returns out (batch, dim, len) in u's dtype, and with return_last_state also h_L (batch, dim, N).
    Differentiable in every tensor, initial_state included.
    """
    n_state = _state_size(A)
    variable = {name: _varies_over_time(name, x) for name, x in (("B", B), ("C", C))}
    if A.is_complex() and isinstance(u, torch.Tensor) and u.dim() == 3:
        compute = compute_dtype(u)
        if variable["B"] and not B.is_complex():
            B = _interleaved_to_complex("B", B, u.shape[2], compute)
        if variable["C"] and not C.is_complex():
            C = _interleaved_to_complex("C", C, u.shape[2], compute)
    key = selective_scan_key(n_state, A.is_complex(), variable["B"], variable["C"], D is not None, z is not None,
                             delta_softplus, delta_bias is not None)
    return _package(key).apply(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                               return_last_state=return_last_state, initial_state=initial_state)


def lti_ssm(u, dt, A, B, C, D=None, discretization="zoh", schedule="auto"):
    """A linear time-invariant diagonal SSM (S4D, DSS).

    u: (batch, H, len); dt: (H,); A, B, C: (H, N) — complex A holds one member of each conjugate
    pair, so y = 2·Re(C h) + D u (S4D's convention); real A gives y = C h + D u.
    `schedule`: "conv" (Vandermonde kernel + FFT), "scan" (the recurrence), or "auto" (the cost
    model decides per call). Returns (batch, H, len) in u's dtype.
    """
    for name, x in (("B", B), ("C", C)):
        if isinstance(x, torch.Tensor) and x.dim() != 2:
            raise ShapeError(f"{name}: expected (H, N) for a time-invariant SSM, got {tuple(x.shape)}")
    key = lti_ssm_key(_state_size(A), A.is_complex(), discretization, D is not None, schedule)
    return _package(key).apply(u, dt, A, B, C, D=D)


def lti_kernel(dt, A, B, C, length, discretization="zoh"):
    """The convolution kernel K (H, length) of `lti_ssm`: K[h, l] = Σ_n (2·Re for complex A)
    C_hn B_bar_hn A_bar_hn^l, so that lti_ssm(u) = causal_conv(K, u) + D u. dt (H,); A, B, C (H, N).
    Differentiable; the S4 repository's S4DKernel(L) for ZOH and B = 1."""
    if not isinstance(dt, torch.Tensor) or dt.dim() != 1:
        got = tuple(dt.shape) if isinstance(dt, torch.Tensor) else type(dt).__name__
        raise ShapeError(f"dt: expected a tensor of shape (H,), got {got}")
    n_state = _state_size(A)
    for name, x in (("A", A), ("B", B), ("C", C)):
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != (dt.shape[0], n_state):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ShapeError(f"{name}: expected ({dt.shape[0]}, {n_state}) = (H, N), got {got}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ShapeError(f"length: expected an int >= 0, got {length!r}")
    key = lti_ssm_key(n_state, A.is_complex(), discretization, True, "auto")
    return _package(key).conv_kernel(dt, A, B, C, length)


def chunk_scan_key(d_state, headdim, groups=1, has_D=True, has_z=True, schedule="auto") -> tuple:
    """The signature under which `mamba_chunk_scan_combined` caches the package of such a call (dt
    bias and softplus are per-call options of the package, not part of its key)."""
    return ("chunk_scan", d_state, headdim, groups, bool(has_D), bool(has_z), schedule)


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size=None, D=None, z=None, dt_bias=None, initial_states=None,
                              seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, float("inf")),
                              return_final_states=False):
    """Mamba-2's SSD, mamba_ssm's `mamba_chunk_scan_combined` (same layouts and semantics):

    x, z (batch, len, heads, headdim); dt (batch, len, heads); A, dt_bias (heads,); B, C (batch, len,
    groups, N); D (heads,) or (heads, headdim); initial_states (batch, heads, headdim, N); seq_idx
    (batch, len) int ids, or cu_seqlens (num_sequences + 1,) offsets of a packed batch of 1: the state
    resets where the sequence changes and the initial state belongs to sequence 0.
        dt = clamp(softplus(dt + dt_bias), *dt_limit)     (softplus if dt_softplus)
        h_t = exp(dt_t·A)·h_{t-1} + dt_t·x_t ⊗ B_t,   y_t = (h_t·C_t + D·x_t)·silu(z_t)
    `chunk_size`: the chunked pipeline with that chunk; None lets ssmc's cost model choose the
    pipeline (sequential or chunked) and the chunk per call shape. Returns y in x's dtype and, with
    return_final_states, the final state (batch, heads, headdim, N) — with cu_seqlens one per
    sequence (num_sequences, heads, headdim, N). Differentiable in every tensor.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ShapeError(f"x: expected a tensor of shape (batch, len, heads, headdim), got {got}")
    if not isinstance(B, torch.Tensor) or B.dim() != 4:
        got = tuple(B.shape) if isinstance(B, torch.Tensor) else type(B).__name__
        raise ShapeError(f"B: expected a tensor of shape (batch, len, groups, N), got {got}")
    for name, size, what in (("x", x.shape[3], "headdim"), ("B", B.shape[2], "groups"), ("B", B.shape[3], "N")):
        if size < 1:
            raise ShapeError(f"{name}: {what} must be at least 1, got shape {tuple((x if name == 'x' else B).shape)}")
    key = chunk_scan_key(operator.index(B.shape[3]), operator.index(x.shape[3]), operator.index(B.shape[2]),
                         D is not None, z is not None)
    return _package(key).apply(x, dt, A, B, C, chunk_size=chunk_size, D=D, z=z, dt_bias=dt_bias,
                               initial_states=initial_states, seq_idx=seq_idx, cu_seqlens=cu_seqlens,
                               dt_softplus=dt_softplus, dt_limit=dt_limit, return_final_states=return_final_states)


# ---- the causal depthwise conv1d (the causal-conv1d package's op) ----------------------------------

_CONV1D = {}


def _conv1d_package_directory():
    """The conv1d package's cache entry, `<cache>/packages/causal_conv1d_<compiler hash>[.N]`: its
    kernels depend on no spec (width, bias and activation are kernel arguments), so there is one
    package per compiler, published like a spec's package (ssmc.compiler.publish)."""
    from . import compiler
    from .backends.conv1d import render_conv1d_files
    key = f"causal_conv1d_{compiler.compiler_fingerprint()}"
    return compiler.publish(key, {"spec": "causal_conv1d"}, render_conv1d_files, "the causal conv1d package"), key


@torch.compiler.assume_constant_result
def _conv1d_compiled() -> str:
    """Builds the conv1d ops on first use (once per process) and returns their key; a constant to
    torch.compile, like `_compiled`, so that tracing never enters the build."""
    if "ops" not in _CONV1D:
        with _LOCK:
            if "ops" not in _CONV1D:
                import json

                from .compiler import import_package
                from .runtime.conv1d import Conv1dOps
                from .runtime.stages import StageLibrary
                directory, key = _conv1d_package_directory()
                module_name = f"ssmc_gen_{key}"
                import_package(directory, module_name)
                tables = json.loads((directory / "operands.json").read_text(encoding="utf-8"))
                _CONV1D["ops"] = Conv1dOps(key, StageLibrary(module_name, str(directory), tables))
    return "ops"


def _conv1d_silu(activation) -> int:
    if activation in (None, "silu", "swish"):
        return int(activation is not None)
    raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")


def causal_conv1d_fn(x, weight, bias=None, activation=None):
    """The causal depthwise conv1d, causal-conv1d's `causal_conv1d_fn`: x (batch, dim, len), weight
    (dim, width), bias (dim,) or None, activation None or "silu"/"swish":
        out[b, d, t] = act(bias[d] + Σ_k weight[d, k]·x[b, d, t - (width - 1) + k])   (x = 0 before t = 0)
    Returns out (batch, dim, len) in x's dtype (computed in float32, float64 for float64 x);
    differentiable in x, weight and bias (deterministic gradients). CPU tensors run the generated C,
    CUDA tensors Triton (`SSMC_BACKEND` forces one)."""
    silu = _conv1d_silu(activation)
    return _CONV1D[_conv1d_compiled()].fwd(x, weight, bias, silu)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    """One decoding step, causal-conv1d's `causal_conv1d_update`: x (batch, dim), conv_state (batch,
    dim, width), contiguous, updated in place (shifted left by one step, x appended); returns
    act(bias + Σ_k weight[:, k]·conv_state[:, :, k]) (batch, dim) in x's dtype. Stepping a sequence
    from a zero state gives `causal_conv1d_fn`'s outputs."""
    silu = _conv1d_silu(activation)
    return _CONV1D[_conv1d_compiled()].update(x, conv_state, weight, bias, silu)


# ---- gated linear attention (flash-linear-attention's ops): ssmc/linear_attention.py ---------------------
from .linear_attention import chunk_gla, chunk_rwkv6, chunk_simple_gla, fused_recurrent_gla  # noqa: E402,F401


# ---- S5: the MIMO recurrence -------------------------------------------------------------------------

def s5_key(state, complex_state=True, discretization="zoh", conj_sym=True, bidirectional=False,
           varying_step=False, has_D=True, schedule="auto") -> tuple:
    """The signature under which `s5_scan` caches the package of such a call."""
    return ("s5", state, bool(complex_state), discretization, bool(conj_sym), bool(bidirectional), bool(varying_step),
            bool(has_D), schedule)


def s5_scan(u, Lambda, B, C, D, step, discretization="zoh", conj_sym=True, bidirectional=False, cu_seqlens=None,
            pipeline=None):
    """S5's layer recurrence (Smith et al. 2023) in the paper's conventions:

    u (batch, len, H) real; Lambda (P,) complex (real for a real layer with conj_sym=False); B (P, H)
    and C (H, P) — (2, H, P) when bidirectional — like Lambda; D (H,) or None; step the positive Δ,
    (P,) per state, or (batch, len, P) per input step.
        Λ̄ = zoh/bilinear(Δ, Λ),  x_t = Λ̄ ⊙ x_{t-1} + B̄ u_t,   y_t = 2·Re(C x_t) + D ⊙ u_t
    (Re(C x_t) without conj_sym: Lambda then holds every state, not one per conjugate pair).
    Bidirectional adds a scan backward in time read out by C[1]. cu_seqlens: (num_sequences + 1,) int
    offsets of a packed batch of 1; the state restarts at each sequence. `pipeline`: "associative"
    or "fused" (None: the cost model's choice per call). Returns y (batch, len, H) in u's dtype,
    differentiable in u, Lambda, B, C, D and step.
    """
    if not isinstance(Lambda, torch.Tensor) or Lambda.dim() != 1:
        got = tuple(Lambda.shape) if isinstance(Lambda, torch.Tensor) else type(Lambda).__name__
        raise ShapeError(f"Lambda: expected a tensor of shape (P,), got {got}")
    if Lambda.numel() == 0:
        raise ShapeError("Lambda: expected at least one state (P >= 1), got shape (0,)")
    if not Lambda.is_complex() and conj_sym:
        raise ShapeError(f"Lambda: conj_sym=True keeps one member of each conjugate pair, so Lambda must be complex, "
                         f"got {Lambda.dtype}")
    if discretization not in ("zoh", "bilinear"):
        raise SpecError(f"discretization: expected 'zoh' or 'bilinear', got {discretization!r}")
    varying = isinstance(step, torch.Tensor) and step.dim() == 3
    key = s5_key(operator.index(Lambda.shape[0]), Lambda.is_complex(), discretization, conj_sym, bidirectional,
                 varying, D is not None)
    return _package(key).apply(u, Lambda, B, C, D=D, step=step, cu_seqlens=cu_seqlens, pipeline=pipeline)
