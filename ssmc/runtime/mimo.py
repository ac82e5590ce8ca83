"""The MIMO recurrence (S5) as differentiable custom ops over its stage kernels (ssmc.ir.mimo_stages),
with a backward derived from the forward, and the checks of an `s5_scan` call.

Two ops per package, their schemas derived from the operand tables (ssmc.runtime.stages):
- `scan(b, decay, reverse) -> x`: x_t = decay_t ⊙ x_{t-1} + b_t over (batch, len, state), every state
  written (the associative pipeline's stage; the module's projections are torch matrix products,
  differentiated by torch);
- `fused(u, Bt, scale, decay, C, reverse) -> y`: y_t = Re(C x_t) with b_t = scale_t ⊙ (Bᵀ u_t), the
  states kept inside the kernel's time tiles.

Complex numbers travel as real tensors with a trailing (re, im) axis (torch's view_as_real), and the
gradients of those real tensors are torch's: for a complex z = re + i·im, grad = ∂L/∂re + i·∂L/∂im
(the conjugate Wirtinger derivative, times 2). Backward, from the forward alone:
- the adjoint of x_t = λ_t ⊙ x_{t-1} + b_t is the same scan backward in time with conjugated decays
  shifted one step: G_t = g_t + conj(λ_{t+1}) ⊙ G_{t+1} (the `reverse` stage), so db_t = G_t and
  dλ_t = G_t ⊙ conj(x_{t-1}) (x_{-1} = 0); a reversed scan's adjoint runs forward, shifted the other way;
- the fused op recomputes its states with the scan stage (they were never stored), reads the output
  gradient back through C (gx = dy·W, W = C with conj), scans it backward, and forms du, dBᵀ, dscale
  and dC as matrix products over the interleaved (re, im) axis. So both pipelines share one adjoint.
A decay or scale of one row (time-invariant, `dlen` = 1) gets its gradient summed over batch and
time, in float64 (a sum of batch·len terms).
"""
from __future__ import annotations

import numbers

import torch

from ..errors import ShapeError
from .stages import StageLibrary, StageTable

NAMESPACE = "ssmc_gen"


def sign_of(parts: int, like: torch.Tensor) -> torch.Tensor:
    """(1, -1) for complex pairs (multiplying by it conjugates), (1,) for a real recurrence."""
    return like.new_tensor([1.0, -1.0] if parts == 2 else [1.0])


def as_complex(x: torch.Tensor) -> torch.Tensor:
    """The complex view of an interleaved (..., 2) tensor; a (..., 1) real one without its last axis."""
    return torch.view_as_complex(x) if x.shape[-1] == 2 else x[..., 0]


def as_pairs(z: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(z) if z.is_complex() else z[..., None]


def reduce_to(grad: torch.Tensor, shape) -> torch.Tensor:
    """A gradient summed over the axes an operand of `shape` was broadcast along (in float64)."""
    dims = [d for d, (g, s) in enumerate(zip(grad.shape, shape)) if s == 1 and g != 1]
    if not dims:
        return grad
    return grad.double().sum(dims, keepdim=True).to(grad.dtype)


def shifted(decay: torch.Tensor, length: int, reverse: int) -> torch.Tensor:
    """The conjugated decays of the adjoint scan: step t carries conj(λ_{t+1}) (forward scans) or
    conj(λ_{t-1}) (reversed ones); the step with no neighbour carries 0 (nothing flows in there)."""
    conj = decay * sign_of(decay.shape[-1], decay)
    if decay.shape[1] == 1:           # the same decay at every step: no shift
        return conj.contiguous()
    zero = torch.zeros_like(conj[:, :1])
    return torch.cat([conj[:, 1:], zero] if not reverse else [zero, conj[:, :-1]], dim=1).contiguous()


def previous_states(x: torch.Tensor, reverse: int) -> torch.Tensor:
    """x_{t-1} (x_{t+1} for a reversed scan), zero before the first step."""
    zero = torch.zeros_like(x[:, :1])
    return torch.cat([zero, x[:, :-1]] if not reverse else [x[:, 1:], zero], dim=1)


def times_conj(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a ⊙ conj(b) on interleaved pairs (a plain product for real ones)."""
    return as_pairs(as_complex(a) * as_complex(b).conj())


def check_broadcast(name: str, x: torch.Tensor, batch: int, length: int) -> None:
    if x.shape[0] not in (1, batch) or x.shape[1] not in (1, length):
        raise ShapeError(f"{name}: expected (1 or batch={batch}, 1 or len={length}, state, parts), got {tuple(x.shape)}")


class MIMOOps:
    """The `scan` and `fused` custom ops of one package (names `ssmc_gen::<key>_mimo_*`)."""

    def __init__(self, key: str, library: StageLibrary):
        self.library = library
        self.scan_op = self._define(key, "mimo_scan", self._scan_forward, self._scan_backward, ("b", "decay"))
        # a package compiled for the associative pipeline alone has no fused stage (None: never called)
        self.fused_op = self._define(key, "mimo_fused", self._fused_forward, self._fused_backward,
                                     ("u", "Bt", "scale", "decay", "C")) if "mimo_fused" in library.tables else None

    def _define(self, key, stage, forward, backward, saved):
        table: StageTable = self.library.tables[stage]
        qualname = f"{NAMESPACE}::{key}_{stage}"
        torch.library.define(qualname, table.schema())
        names = [o.name for o in table.inputs]

        def fake(*args):
            operands = dict(zip(names, args))
            sizes = table.bind(operands)
            shape, = table.output_shapes(sizes)
            return args[0].new_empty(shape)

        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(*inputs[:len(names)], output)
            ctx.reverse = inputs[-1]

        torch.library.impl(qualname, "default")(forward)
        torch.library.register_fake(qualname)(fake)
        torch.library.register_autograd(qualname, backward, setup_context=setup_context)
        return getattr(getattr(torch.ops, NAMESPACE), f"{key}_{stage}")

    # ---- forward ------------------------------------------------------------------------------------
    def _scan_forward(self, b, decay, reverse):
        check_broadcast("decay", decay, b.shape[0], b.shape[1])
        if b.numel() == 0:
            return b.new_zeros(b.shape)
        x, = self.library.run("mimo_scan", {"reverse": int(reverse)}, b=b, decay=decay)
        return x

    def _fused_forward(self, u, Bt, scale, decay, C, reverse):
        for name, x in (("decay", decay), ("scale", scale)):
            if x is not None:
                check_broadcast(name, x, u.shape[0], u.shape[1])
        if u.numel() == 0 or C.shape[0] == 0:
            return u.new_zeros(u.shape[0], u.shape[1], C.shape[0])
        if Bt.shape[1] == 0:
            return u.new_zeros(u.shape)
        y, = self.library.run("mimo_fused", {"reverse": int(reverse)}, u=u, Bt=Bt, scale=scale, decay=decay, C=C)
        return y

    # ---- the derived backward ---------------------------------------------------------------------
    def _adjoint(self, g, decay, x, reverse):
        """(db, ddecay) of x = scan(b, decay, reverse) from the states x and their gradient g."""
        G = self.scan_op(g.contiguous(), shifted(decay, x.shape[1], reverse), 1 - reverse)
        ddecay = reduce_to(times_conj(G, previous_states(x, reverse)), decay.shape)
        return G, ddecay

    def _scan_backward(self, ctx, dx):
        b, decay, x = ctx.saved_tensors
        if dx is None or b.numel() == 0:
            return torch.zeros_like(b), torch.zeros_like(decay), None
        db, ddecay = self._adjoint(dx, decay, x, ctx.reverse)
        return db, ddecay, None

    def _fused_backward(self, ctx, dy):
        u, Bt, scale, decay, C, _ = ctx.saved_tensors
        batch, length, H = u.shape
        P, parts = Bt.shape[1], Bt.shape[2]
        zeros = [torch.zeros_like(t) if t is not None else None for t in (u, Bt, scale, decay, C)]
        if dy is None or u.numel() == 0 or P == 0 or H == 0:
            return (*zeros, None)
        flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731
        v = (flat(u) @ Bt.reshape(H, P * parts)).reshape(batch, length, P, parts)   # Bᵀu, interleaved
        b = times_conj(v, scale * sign_of(parts, scale)) if scale is not None else v    # scale ⊙ v
        x = self.scan_op(b.contiguous(), decay, ctx.reverse)
        W = (C * sign_of(parts, C)).reshape(H, P * parts)                # y = x·Wᵀ over interleaved pairs
        gx = (flat(dy) @ W).reshape(batch, length, P, parts)
        G, ddecay = self._adjoint(gx, decay, x, ctx.reverse)
        if scale is not None:
            dscale = reduce_to(times_conj(G, v), scale.shape)
            dv = times_conj(G, scale)                                    # conj(scale) ⊙ G
        else:
            dscale, dv = None, G
        du = (dv.reshape(batch * length, P * parts) @ Bt.reshape(H, P * parts).t()).reshape(u.shape)
        dBt = (flat(u).t() @ flat(dv.reshape(batch, length, P * parts))).reshape(Bt.shape)
        dW = flat(dy).t() @ flat(x.reshape(batch, length, P * parts))
        dC = dW.reshape(C.shape) * sign_of(parts, C)
        return du, dBt, dscale, ddecay, dC, None


# ---- the checks of an s5_scan call -------------------------------------------------------------------
def _shape_text(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _check(name, x, shape, what, complex_=None):
    if not isinstance(x, torch.Tensor) or tuple(x.shape) != tuple(shape):
        raise ShapeError(f"{name}: expected a tensor of shape {what} = {tuple(shape)}, got {_shape_text(x)}")
    if complex_ is True and not x.is_complex():
        raise ShapeError(f"{name}: expected a complex tensor {what}, got {x.dtype}")
    if complex_ is False and (x.is_complex() or not x.is_floating_point()):
        raise ShapeError(f"{name}: expected a real floating tensor {what}, got {x.dtype}")


def check_call(u, Lambda, B, C, D, step, cu_seqlens, state: int, is_complex: bool, bidirectional: bool,
               varying_step: bool) -> dict:
    """Shapes and dtypes of an S5 call (the S5 paper's layouts), checked; the sizes."""
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        raise ShapeError(f"u: expected a real tensor of shape (batch, len, H), got {_shape_text(u)}")
    batch, length, H = u.shape
    _check("u", u, (batch, length, H), "(batch, len, H)", complex_=False)
    if length == 0:
        raise ShapeError("u: the sequence is empty (len = 0); expected at least one step")
    _check("Lambda", Lambda, (state,), "(P,)", complex_=is_complex)
    _check("B", B, (state, H), "(P, H)", complex_=is_complex)
    _check("C", C, (2, H, state) if bidirectional else (H, state),
           "(2, H, P) (bidirectional)" if bidirectional else "(H, P)", complex_=is_complex)
    if D is not None:
        _check("D", D, (H,), "(H,)", complex_=False)
    if not isinstance(step, torch.Tensor):
        raise ShapeError(f"step: expected a positive tensor (P,) or (batch, len, P), got {type(step).__name__}")
    allowed = {(state,)} | ({(batch, length, state)} if varying_step else set())
    if tuple(step.shape) not in allowed:
        varying = f" or (batch, len, P) = {(batch, length, state)}" if varying_step else ""
        raise ShapeError(f"step: expected shape (P,) = ({state},){varying}, got {tuple(step.shape)}")
    _check("step", step, step.shape, "(P,) or (batch, len, P)", complex_=False)
    if not torch.compiler.is_compiling() and step.numel() and not bool((step.detach() > 0).all()):
        raise ShapeError("step: every Δ must be positive (> 0)")
    for name, x in (("Lambda", Lambda), ("B", B), ("C", C), ("D", D), ("step", step)):
        if x is not None and x.device != u.device:
            raise ShapeError(f"{name}: is on {x.device}, u on {u.device}")
    sequences = check_cu_seqlens(cu_seqlens, batch, length) if cu_seqlens is not None else None
    return dict(batch=batch, len=length, H=H, state=state, sequences=sequences)


def check_cu_seqlens(cu_seqlens, batch: int, length: int) -> list:
    """The (start, end) of each sequence of a packed batch of 1."""
    if batch != 1:
        raise ShapeError(f"cu_seqlens: a packed batch has batch = 1, got u of batch {batch}")
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 \
            or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ShapeError(f"cu_seqlens: expected int offsets (num_sequences + 1,), got {_shape_text(cu_seqlens)}"
                         f"{'' if not isinstance(cu_seqlens, torch.Tensor) else ' ' + str(cu_seqlens.dtype)}")
    offsets = [int(v) for v in cu_seqlens.tolist()]
    if offsets[0] != 0 or offsets[-1] != length or any(b <= a for a, b in zip(offsets, offsets[1:])):
        raise ShapeError(f"cu_seqlens: expected strictly increasing offsets from 0 to len={length}, got {offsets}")
    return list(zip(offsets[:-1], offsets[1:]))


def pack_sequences(x: torch.Tensor, sequences: list) -> torch.Tensor:
    """(1, len, ...) packed -> (num_sequences, longest, ...), zero after each sequence's end (padded
    steps come after the real ones, so they cannot reach them)."""
    longest = max(end - start for start, end in sequences)
    rows = [torch.nn.functional.pad(x[0, start:end], (0, 0) * (x.dim() - 2) + (0, longest - (end - start)))
            for start, end in sequences]
    return torch.stack(rows)


def unpack_sequences(y: torch.Tensor, sequences: list) -> torch.Tensor:
    """The inverse of pack_sequences: (num_sequences, longest, ...) -> (1, len, ...)."""
    return torch.cat([y[i, :end - start] for i, (start, end) in enumerate(sequences)])[None]

