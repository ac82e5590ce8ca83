"""The Mamba block (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State
Spaces", Section 3.4 and Figure 3) with ssmc's selective scan as its SSM.

On (batch, len, d_model):

    x, z   = in_proj(hidden)                        two branches of width d_inner = expand·d_model
    x      = silu(causal depthwise conv1d(x))       kernel d_conv, left padding d_conv - 1
    dt_low, B, C = x_proj(x)                        widths dt_rank, d_state, d_state
    delta  = dt_proj.weight @ dt_low                (dt_proj.bias is applied inside the scan)
    dt     = softplus(delta + dt_proj.bias)
    h_t    = exp(dt_t A) h_{t-1} + dt_t B_t x_t,    y_t = C_t h_t + D x_t     (A = -exp(A_log))
    out    = out_proj(y · silu(z))

The parameter names and shapes (in_proj, conv1d, x_proj, dt_proj, A_log, D, out_proj) are those
of the reference implementation's Mamba module, so that its checkpoints load without renaming.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..errors import ShapeError, SpecError
from ..runtime import init as initializers
from ..runtime.calls import check_choice, check_dt_range, check_int, check_layer_input, check_number, dt_rank_of


def last_inputs(x, before, keep):
    """The last `keep` inputs of the convolution over [before, x] along time (zeros before the
    sequence when `before` is None): x (batch, dim, len), before (batch, dim, width) or None. Only
    the window is copied, never x."""
    tail = x[..., max(0, x.shape[-1] - keep):]
    if tail.shape[-1] < keep and before is not None:
        tail = torch.cat([before.to(x.dtype), tail], dim=-1)[..., -keep:]
    if tail.shape[-1] < keep:
        tail = F.pad(tail, (keep - tail.shape[-1], 0))
    return tail


class Mamba(nn.Module):
    """Mamba block: (batch, len, d_model) -> (batch, len, d_model)."""

    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", dt_min=1e-3, dt_max=1e-1,
                 dt_init="random", dt_scale=1.0, dt_init_floor=1e-4, conv_bias=True, bias=False,
                 use_fast_path=True, layer_idx=None, device=None, dtype=None):
        super().__init__()
        # use_fast_path: accepted for the reference's signature (ssmc always runs its fused kernel)
        self.use_fast_path = use_fast_path
        self.layer_idx = layer_idx
        factory = {"device": device, "dtype": dtype}
        self.d_model = check_int("d_model", d_model)
        self.d_state = check_int("d_state", d_state)
        self.d_conv = check_int("d_conv", d_conv)
        self.expand = expand
        check_number("expand", expand)
        self.d_inner = int(expand * self.d_model)
        if self.d_inner < 1:
            raise SpecError(f"expand: expected expand * d_model >= 1, got {expand!r} * {d_model} = {self.d_inner}")
        self.dt_rank = dt_rank_of(dt_rank, self.d_model)
        check_dt_range(dt_min, dt_max)
        check_choice("dt_init", dt_init, ("constant", "random"))
        check_number("dt_scale", dt_scale)
        check_number("dt_init_floor", dt_init_floor, inclusive=True)
        # compiled now, so that the first forward (eager or under torch.compile) finds it
        ops.prepare(ops.selective_scan_key(self.d_state))

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

        # dt_proj: weight with std ~ dt_rank^-1/2 (so that dt_proj(dt_low) starts O(1)), bias so that
        # softplus(bias) is log-uniform in [dt_min, dt_max].
        std = self.dt_rank ** -0.5 * dt_scale
        with torch.no_grad():
            if dt_init == "constant":
                nn.init.constant_(self.dt_proj.weight, std)
            else:
                nn.init.uniform_(self.dt_proj.weight, -std, std)
            self.dt_proj.bias.copy_(initializers.mamba_dt_bias(self.d_inner, dt_min, dt_max, dt_init_floor))
        self.dt_proj.bias._no_reinit = True

        # S4D-Real: A = -(1, 2, ..., N) per channel, kept in float32 as its log.
        self.A_log = nn.Parameter(initializers.s4d_real(self.d_inner, d_state).to(device=device))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner, device=device))
        self.D._no_weight_decay = True

    def ssm_inputs(self, hidden, conv_state=None):
        """The selective scan's operands (u, delta, A, B, C, D, z, delta_bias) for `hidden`
        (batch, len, d_model): u, delta, z (batch, d_inner, len); B, C (batch, d_state, len).
        `conv_state` (batch, d_inner, d_conv - 1): the convolution's inputs before the first step
        (zero padding if None)."""
        return self._ssm_inputs(hidden, conv_state)[0]

    def _ssm_inputs(self, hidden, conv_state, keep=None):
        """(the scan's operands, the convolution's last `keep` inputs (default d_conv - 1): the window
        a later call resumes from; the decoding cache keeps d_conv)."""
        batch, length, _ = hidden.shape
        xz = self.in_proj(hidden).transpose(1, 2)                       # (batch, 2·d_inner, len)
        x, z = xz.chunk(2, dim=1)
        window = last_inputs(x, conv_state, self.d_conv - 1 if keep is None else keep)
        if conv_state is None:
            # the generated causal depthwise conv1d with the SiLU fused (forward and backward kernels)
            x = ops.causal_conv1d_fn(x, self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu")
        else:
            # resuming a sequence: the convolution over [the window before, x]
            if length > 0:                                              # conv1d refuses inputs shorter than its kernel
                x = F.conv1d(torch.cat([conv_state.to(x.dtype), x], dim=-1), self.conv1d.weight, self.conv1d.bias,
                             groups=self.d_inner)
            x = F.silu(x)
        dt_low, B, C = torch.split(self.x_proj(x.transpose(1, 2)), [self.dt_rank, self.d_state, self.d_state],
                                   dim=-1)
        delta = (dt_low @ self.dt_proj.weight.t()).transpose(1, 2)      # bias goes to the scan
        A = -torch.exp(self.A_log.float())
        inputs = dict(u=x, delta=delta, A=A, B=B.transpose(1, 2), C=C.transpose(1, 2), D=self.D.float(), z=z,
                      delta_bias=self.dt_proj.bias.float())
        return inputs, window

    def forward(self, hidden, initial_state=None, return_last_state=False, inference_params=None):
        """hidden: (batch, len, d_model). Returns (batch, len, d_model), and with return_last_state
        also the block's state after the last step: the pair (ssm_state, conv_state), ssm_state
        (batch, d_inner, d_state) the SSM's state and conv_state (batch, d_inner, d_conv - 1) the last
        inputs of the causal convolution.

        initial_state: the state before the first step. Pass the pair a previous call returned to
        resume a sequence (two calls on 6 + 6 steps give what one call on 12 gives); a single tensor
        is the SSM state alone, with the convolution starting from zero padding; None: zero state."""
        check_layer_input("hidden", hidden, ("batch", "len", "d_model"), {"d_model": self.d_model})
        batch = hidden.shape[0]
        if inference_params is not None:
            return self._forward_cached(hidden, inference_params)
        ssm_state, conv_state = initial_state, None
        if isinstance(initial_state, (tuple, list)):
            if len(initial_state) != 2:
                raise ShapeError(f"initial_state: expected a tensor (the SSM state) or the pair (ssm_state, "
                                 f"conv_state) that return_last_state gave, got a sequence of {len(initial_state)}")
            ssm_state, conv_state = initial_state
            check_layer_input("initial_state[1] (conv_state)", conv_state, ("batch", "d_inner", "d_conv - 1"),
                              {"batch": batch, "d_inner": self.d_inner, "d_conv - 1": self.d_conv - 1})
        if ssm_state is not None:
            check_layer_input("initial_state", ssm_state, ("batch", "d_inner", "d_state"),
                              {"batch": batch, "d_inner": self.d_inner, "d_state": self.d_state})
        return self._forward(hidden, ssm_state, conv_state, return_last_state)

    def _forward(self, hidden, ssm_state, conv_state, return_last_state, keep=None):
        s, last_window = self._ssm_inputs(hidden, conv_state, keep)
        out = ops.selective_scan_fn(s["u"], s["delta"], s["A"], s["B"], s["C"], s["D"], z=s["z"],
                                    delta_bias=s["delta_bias"], delta_softplus=True, initial_state=ssm_state,
                                    return_last_state=return_last_state)
        y, last = out if return_last_state else (out, None)
        y = self.out_proj(y.transpose(1, 2))
        return (y, (last, last_window)) if return_last_state else y

    # ---- decoding (mamba_ssm's protocol: allocate_inference_cache, step, inference_params) -------------
    def _forward_cached(self, hidden, inference_params):
        """With seqlen_offset 0 the prompt runs whole and leaves this layer's states in the cache;
        after that, each call is one token through `step`."""
        if self.layer_idx is None:
            raise SpecError("inference_params: this Mamba block has no layer_idx, so it cannot find its cache entry; "
                            "construct it with layer_idx=...")
        batch = hidden.shape[0]
        cache = inference_params.key_value_memory_dict
        if self.layer_idx not in cache:
            cache[self.layer_idx] = self.allocate_inference_cache(inference_params.max_batch_size)
        conv_state, ssm_state = (x[:batch] for x in cache[self.layer_idx])
        if inference_params.seqlen_offset > 0:
            return self.step(hidden, conv_state, ssm_state)[0]
        # the prompt whole; the cache keeps the convolution's last d_conv inputs (the step shifts them)
        out, (last, window) = self._forward(hidden, None, None, True, keep=self.d_conv)
        ssm_state.copy_(last)
        conv_state.copy_(window)
        return out

    def allocate_inference_cache(self, batch_size, max_seqlen=None, dtype=None):
        """(conv_state (batch, d_inner, d_conv), ssm_state (batch, d_inner, d_state) float32), zero:
        the reference's cache layout."""
        device = self.A_log.device
        conv_state = torch.zeros(batch_size, self.d_inner, self.d_conv, device=device,
                                 dtype=dtype or self.conv1d.weight.dtype)
        ssm_state = torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=torch.float32)
        return conv_state, ssm_state

    def step(self, hidden_states, conv_state, ssm_state):
        """One token: hidden_states (batch, 1, d_model) -> ((batch, 1, d_model), conv_state,
        ssm_state); both states are updated in place (the SSM state by the compiled step kernel)."""
        check_layer_input("hidden_states", hidden_states, ("batch", "len", "d_model"),
                          {"len": 1, "d_model": self.d_model})
        batch = hidden_states.shape[0]
        for name, state, shape in (("conv_state", conv_state, (batch, self.d_inner, self.d_conv)),
                                   ("ssm_state", ssm_state, (batch, self.d_inner, self.d_state))):
            if not isinstance(state, torch.Tensor) or tuple(state.shape) != shape:
                got = tuple(state.shape) if isinstance(state, torch.Tensor) else type(state).__name__
                raise ShapeError(f"{name}: expected shape {shape} (allocate_inference_cache makes it), got {got}")
        x, z = self.in_proj(hidden_states[:, 0]).chunk(2, dim=-1)          # (batch, d_inner) each
        x = ops.causal_conv1d_update(x, conv_state, self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu")
        x = x.to(hidden_states.dtype)
        dt_low, B, C = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = dt_low @ self.dt_proj.weight.t()
        package = ops._package(ops.selective_scan_key(self.d_state))
        y = package.step(x, delta, -torch.exp(self.A_log.float()), B, C, ssm_state, D=self.D.float(), z=z,
                         delta_bias=self.dt_proj.bias.float())
        return self.out_proj(y)[:, None], conv_state, ssm_state
