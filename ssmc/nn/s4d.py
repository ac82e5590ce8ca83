"""S4D as a drop-in layer: the parameter names, shapes and forward semantics of the standalone S4D
layer of the S4 repository (models/s4/s4d.py), so that its checkpoints load without renaming.

The convolution kernel and the FFT convolution are ssmc's generated kernels (`ssmc.ops.lti_ssm`);
the rest (GELU, dropout, the GLU output projection) is plain PyTorch, as in the original.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..errors import ScheduleError, SpecError
from ..presets import conjugate_pairs
from ..runtime import init as initializers
from ..runtime.calls import check_choice, check_dt_range, check_int, check_layer_input, check_number
from ..spec import SCHEDULES


class _S4DKernel(nn.Module):
    """Holds the SSM parameters under the names of the original kernel module, and like it
    materialises the convolution kernel: `kernel(L)` is K (H, L)."""

    def __init__(self, d_model, N=64, dt_min=0.001, dt_max=0.1, lr=None, init="lin"):
        super().__init__()
        H = check_int("d_model", d_model)
        self.n_state = conjugate_pairs(N)
        check_dt_range(dt_min, dt_max)
        check_choice("init", init, tuple(initializers.S4D_INITS))
        if lr is not None:
            check_number("lr", lr, inclusive=True)
        log_a_real, a_imag = initializers.S4D_INITS[init](H, self.n_state)
        self.C = nn.Parameter(torch.view_as_real(torch.randn(H, self.n_state, dtype=torch.cfloat)))
        self.register("log_dt", initializers.log_uniform_dt(H, dt_min, dt_max), lr)
        self.register("log_A_real", log_a_real, lr)
        self.register("A_imag", a_imag, lr)

    def register(self, name, tensor, lr=None):
        """A buffer when lr == 0 (frozen), else a parameter with an optional per-parameter lr."""
        if lr == 0.0:
            self.register_buffer(name, tensor)
        else:
            self.register_parameter(name, nn.Parameter(tensor))
            if lr is not None:
                getattr(self, name)._optim = {"weight_decay": 0.0, "lr": lr}

    def ssm(self):
        """(dt, A, B, C) of the lti_ssm op: B is folded into C, as in S4D."""
        A = torch.complex(-torch.exp(self.log_A_real), self.A_imag)
        C = torch.view_as_complex(self.C)
        return torch.exp(self.log_dt), A, torch.ones_like(C), C

    def forward(self, L):
        """The convolution kernel K[h, l] = 2·Re Σ_n C_n (exp(dt A_n) − 1) / A_n · exp(dt A_n)^l,
        (H, L), by ssmc's generated Vandermonde kernel (the S4 repository's S4DKernel(L))."""
        return ops.lti_kernel(*self.ssm(), check_int("L", L, minimum=0), discretization="zoh")


class _TiedDropout(nn.Module):
    """Dropout with one mask per (batch, channel), shared over the sequence (the S4 repo's default)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        mask = torch.rand(x.shape[:2] + (1,) * (x.dim() - 2), device=x.device) >= self.p
        return x * mask / (1 - self.p)


class S4D(nn.Module):
    """S4D layer: input (batch, H, len) when transposed (else (batch, len, H)); returns (y, None).
    `layer.kernel(L=...)` is the convolution kernel (H, L), as in the original."""

    def __init__(self, d_model, d_state=64, dropout=0.0, transposed=True, schedule="auto", **kernel_args):
        super().__init__()
        check_number("dropout", dropout, inclusive=True)
        if dropout >= 1:
            raise SpecError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        check_choice("schedule", schedule, SCHEDULES, error=ScheduleError)     # as ssmc.compile does
        self.h = check_int("d_model", d_model)
        self.n = d_state
        self.d_output = self.h
        self.transposed = bool(transposed)
        self.schedule = schedule
        self.D = nn.Parameter(torch.randn(self.h))
        self.kernel = _S4DKernel(d_model, N=d_state, **kernel_args)   # checks d_state and the rest
        self.activation = nn.GELU()
        self.dropout = _TiedDropout(dropout) if dropout > 0.0 else nn.Identity()
        self.output_linear = nn.Sequential(nn.Conv1d(self.h, 2 * self.h, kernel_size=1), nn.GLU(dim=-2))
        # compiled now, so that the first forward (eager or under torch.compile) finds it
        ops.prepare(ops.lti_ssm_key(self.kernel.n_state, True, "zoh", True, schedule))

    def forward(self, u, **kwargs):
        layout = ("batch", "d_model", "len") if self.transposed else ("batch", "len", "d_model")
        check_layer_input("u", u, layout, {"d_model": self.h})
        if not self.transposed:
            u = u.transpose(-1, -2)
        dt, A, B, C = self.kernel.ssm()
        y = ops.lti_ssm(u, dt, A, B, C, D=self.D, discretization="zoh", schedule=self.schedule)
        y = self.dropout(self.activation(y))
        y = self.output_linear(y) if y.shape[-1] > 0 else self._empty_output_linear(y)
        if not self.transposed:
            y = y.transpose(-1, -2)
        return y, None

    # ---- decoding (the recurrent form of the same layer) ---------------------------------------------
    def default_state(self, *batch_shape, device=None):
        """The zero state (*batch_shape, H, N) of `step`, complex64 (the S4 repository's name)."""
        device = device or self.D.device
        return torch.zeros(*batch_shape, self.h, self.kernel.n_state, dtype=torch.complex64, device=device)

    def step(self, u, state):
        """One step of the discretized diagonal recurrence: u (batch, H) -> (y (batch, H), state),
        the state (batch, H, N) updated in place and returned, as the S4 repository's step returns
        the next state. Stepping a sequence equals `forward` on it (in eval mode: dropout masks are
        per sequence). Whatever this layer's schedule, the step runs the scan's step kernel (a
        convolution has no recurrent form to step), compiled on first use."""
        check_layer_input("u", u, ("batch", "d_model"), {"d_model": self.h})
        dt, A, B, C = self.kernel.ssm()
        package = ops._package(ops.lti_ssm_key(self.kernel.n_state, True, "zoh", True, "scan"))
        y = package.step(u, dt, A, B, C, state, D=self.D)
        y = self.dropout(self.activation(y))
        conv, _ = self.output_linear            # a 1x1 convolution then GLU over channels: linear, then GLU
        return F.glu(F.linear(y, conv.weight[..., 0], conv.bias), dim=-1), state

    def _empty_output_linear(self, y):
        """output_linear of an empty sequence, which Conv1d refuses: a 1x1 convolution is a linear
        map of the channels."""
        conv, glu = self.output_linear
        return glu(F.linear(y.transpose(-1, -2), conv.weight[..., 0], conv.bias).transpose(-1, -2))
