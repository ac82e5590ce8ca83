"""Checking and normalising the arguments of a compiled op before any kernel sees them.

Every malformed tensor is refused here with a message naming the argument and the expected shape,
so that nothing fails deep inside a kernel. Normalising means: contiguous float32 operands, B and C
as (batch, groups, N, len) when they vary over time, and complex operands split into real pairs.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from ..errors import ShapeError, SpecError

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


@dataclass(frozen=True)
class ScanSignature:
    """What a compiled layer's kernel expects; the generated package writes one as a literal."""

    complex: bool
    selective_dt: bool
    selective_B: bool
    selective_C: bool
    has_dt_bias: bool
    has_D: bool
    has_z: bool


def _fail(name, expected, tensor):
    got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
    raise ShapeError(f"{name}: expected {expected}, got {got}")


def _tensor(name, x, ndim, expected):
    if not isinstance(x, torch.Tensor):
        _fail(name, f"a tensor of shape {expected}", x)
    if x.dim() != ndim:
        _fail(name, f"shape {expected}", x)
    return x


def _real(name, x):
    if x.is_complex() or x.dtype not in FLOAT_DTYPES:
        raise ShapeError(f"{name}: expected a real floating tensor (float32/float16/bfloat16/float64), got {x.dtype}")
    return x


def _complex_or_real(name, x, want_complex):
    if want_complex and not x.is_complex():
        raise ShapeError(f"{name}: expected a complex tensor (A is complex), got {x.dtype}")
    if not want_complex:
        _real(name, x)
    return x


def compute_dtype(u) -> torch.dtype:
    """float64 stays float64 (gradcheck); every other input computes in float32."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _pair(x, want_complex, compute):
    """(re, im) in the compute dtype, contiguous; im is None for a real operand."""
    if want_complex:
        return x.real.to(compute).contiguous(), x.imag.to(compute).contiguous()
    return x.to(compute).contiguous(), None


def normalize_scan_args(sig: ScanSignature, u, delta, A, B, C, D=None, z=None, delta_bias=None,
                        keep_strides: bool = False) -> dict:
    """The checked operands as the kernels take them. With keep_strides (the Triton backend, whose scan
    kernels read u, delta and z through their strides, in any float dtype) those three are neither
    copied into a contiguous layout nor cast (a bf16 layer's per-step delta stays bf16); a (dim,)
    delta is still cast to the compute dtype."""
    u = _real("u", _tensor("u", u, 3, "(batch, dim, len)"))
    batch, dim, length = u.shape
    device = u.device
    if sig.selective_dt:
        delta = _real("delta", _tensor("delta", delta, 3, "(batch, dim, len)"))
        if delta.shape != u.shape:
            _fail("delta", f"the shape of u {tuple(u.shape)}", delta)
    else:
        delta = _real("dt", _tensor("dt", delta, 1, f"({dim},) = (dim,)"))
        if delta.shape[0] != dim:
            _fail("dt", f"({dim},) = (dim,)", delta)
    A = _complex_or_real("A", _tensor("A", A, 2, "(dim, N)"), sig.complex)
    if A.shape[0] != dim:
        _fail("A", f"({dim}, N): one row per channel of u", A)
    state = A.shape[1]
    compute = compute_dtype(u)
    if not (keep_strides and sig.selective_dt):      # a Triton kernel reads a per-step delta in any float dtype
        delta = delta.to(compute)
    out = {"u": u, "delta": delta} if keep_strides else {"u": u.contiguous(), "delta": delta.contiguous()}
    out["A_re"], out["A_im"] = _pair(A, sig.complex, compute)
    for name, selective in (("B", sig.selective_B), ("C", sig.selective_C)):
        x = B if name == "B" else C
        if selective:
            if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4):
                _fail(name, f"({batch}, N, len) or ({batch}, groups, N, len)", x)
            if x.dim() == 3:
                x = x.unsqueeze(1)
            groups = x.shape[1]
            if x.shape[0] != batch or x.shape[2] != state or x.shape[3] != length or groups < 1 or dim % groups:
                _fail(name, f"({batch}, groups, {state}, {length}) with groups dividing dim={dim} (groups >= 1)", x)
        else:
            x = _tensor(name, x, 2, f"({dim}, {state}) = (dim, N)")
            if tuple(x.shape) != (dim, state):
                _fail(name, f"({dim}, {state}) = (dim, N)", x)
        _complex_or_real(name, x, sig.complex)
        out[f"{name}_re"], out[f"{name}_im"] = _pair(x, sig.complex, compute)
    for name, x, wanted in (("D", D, sig.has_D), ("delta_bias", delta_bias, sig.has_dt_bias)):
        if wanted and x is None:
            raise ShapeError(f"{name}: this layer was compiled with it, but None was passed")
        if x is not None:
            if not wanted:
                raise ShapeError(f"{name}: this layer was compiled without it, expected None")
            _real(name, _tensor(name, x, 1, f"({dim},) = (dim,)"))
            if x.shape[0] != dim:
                _fail(name, f"({dim},) = (dim,)", x)
            x = x.to(compute).contiguous()
        out["D" if name == "D" else "dt_bias"] = x
    if sig.has_z:
        if z is None:
            raise ShapeError("z: this layer was compiled with a gate, but z is None")
        z = _real("z", _tensor("z", z, 3, "(batch, dim, len)"))
        if z.shape != u.shape:
            _fail("z", f"the shape of u {tuple(u.shape)}", z)
        z = z if keep_strides else z.contiguous()
    elif z is not None:
        raise ShapeError("z: this layer was compiled without a gate, expected None")
    out["z"] = z
    for name, x in out.items():
        if isinstance(x, torch.Tensor) and x.device != device:
            raise ShapeError(f"{name}: expected a tensor on {device} (the device of u), got {x.device}")
    return out


def normalize_initial_state(sig: ScanSignature, state, u, A):
    """(re, im) of the state before the first step, (batch, dim, N) in the compute dtype; None if none."""
    if state is None:
        return None
    batch, dim, _ = u.shape
    expected = (batch, dim, A.shape[1])
    if not isinstance(state, torch.Tensor) or tuple(state.shape) != expected:
        _fail("initial_state", f"{expected} = (batch, dim, N)", state)
    _complex_or_real("initial_state", state, sig.complex)
    if state.device != u.device:
        raise ShapeError(f"initial_state: expected a tensor on {u.device} (the device of u), got {state.device}")
    return _pair(state, sig.complex, compute_dtype(u))


# -- constructor arguments and inputs of the layers (ssmc.nn and generated `Layer`s) ---------------
def check_int(name, value, minimum=1):
    """A size argument: an integer (Python, numpy; not a bool) of at least `minimum`, as an int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise SpecError(f"{name}: expected an int >= {minimum}, got {value!r}")
    return int(value)


def check_number(name, value, minimum=0, inclusive=False):
    """A real number above `minimum` (or at least it, when `inclusive`)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value
    if not ok or value < minimum or (value == minimum and not inclusive):
        relation = ">=" if inclusive else ">"
        raise SpecError(f"{name}: expected a number {relation} {minimum}, got {value!r}")
    return float(value)


def check_choice(name, value, choices, error=SpecError):
    if not isinstance(value, str) or value not in choices:
        raise error(f"{name}: expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def check_dt_range(dt_min, dt_max):
    """The range the step sizes are initialised in: 0 < dt_min <= dt_max."""
    check_number("dt_min", dt_min)
    check_number("dt_max", dt_max)
    if dt_min > dt_max:
        raise SpecError(f"dt_min, dt_max: expected dt_min <= dt_max, got dt_min={dt_min!r} > dt_max={dt_max!r}")


def dt_rank_of(dt_rank, d_model):
    """Mamba's rank of the dt projection: ceil(d_model / 16) for "auto", else a positive int."""
    if dt_rank == "auto":
        return -(-d_model // 16)
    return check_int("dt_rank", dt_rank)


def _layout_text(layout, sizes):
    return "(" + ", ".join(f"{axis}={sizes[axis]}" if axis in sizes else axis for axis in layout) + ")"


def check_layer_input(name, x, layout, sizes, real=True):
    """A layer's input in the caller's layout: `layout` names the axes, e.g. ("batch", "len",
    "d_model"), and `sizes` maps the axes whose size is fixed to it. Messages speak that layout,
    never the (batch, dim, len) one of the kernels. `real=False` leaves the dtype to the op."""
    if not isinstance(x, torch.Tensor):
        _fail(name, f"a tensor of shape {_layout_text(layout, sizes)}", x)
    if x.dim() != len(layout) or any(x.shape[layout.index(axis)] != size for axis, size in sizes.items()):
        _fail(name, f"shape {_layout_text(layout, sizes)}", x)
    if real:
        _real(name, x)
    return x


def check_layer_gate(z, gated, layout, sizes):
    """The gate of a layer: required by a gated layer, refused by one without a gate."""
    if gated and z is None:
        raise ShapeError(f"z: this layer is gated, expected a tensor of shape {_layout_text(layout, sizes)}, got None")
    if not gated and z is not None:
        raise ShapeError("z: this layer has no gate, expected None")
    if gated:
        check_layer_input("z", z, layout, sizes)
