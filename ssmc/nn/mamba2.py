"""The Mamba-2 block (Dao & Gu 2024, "Transformers are SSMs", Section 7 and Figure 6) with ssmc's
compiled SSD (`ssmc.ops.mamba_chunk_scan_combined` and the generated decoding step) as its SSM.

On (batch, len, d_model), d_inner = expand·d_model in heads of `headdim`:

    z, xBC, dt = in_proj(hidden)                    widths d_inner, d_inner + 2·ngroups·d_state, nheads
    xBC        = silu(causal depthwise conv1d(xBC))  kernel d_conv (ssmc.ops.causal_conv1d_fn)
    x, B, C    = xBC                                 widths d_inner, ngroups·d_state, ngroups·d_state
    y          = SSD(x, dt, A = -exp(A_log), B, C, D, dt_bias, softplus, dt_limit)
    out        = out_proj(RMSNorm_group(y · silu(z)) · norm.weight)      (rmsnorm, norm_before_gate=False)
               = out_proj(RMSNorm_group(y) · norm.weight · silu(z))      (rmsnorm, norm_before_gate=True)
               = out_proj(SSD(..., z))                                   (rmsnorm=False: the gate in the SSD)

Parameter names and shapes (in_proj, conv1d, dt_bias, A_log, D, norm.weight, out_proj) and the
initialisation are those of the reference implementation's Mamba2 module, so that its checkpoints
load without renaming. The whole-sequence path and the step path share one SSD package: stepping
token by token from `allocate_inference_cache` gives the forward's outputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..errors import ShapeError, SpecError
from ..runtime.calls import check_dt_range, check_int, check_layer_input, check_number
from .mamba import last_inputs


def gated_rms_norm(y, z, weight, groups, eps=1e-5, norm_before_gate=False):
    """RMSNorm over each of `groups` equal slices of the last axis, times `weight`, gated by silu(z):
    of y·silu(z) (norm_before_gate=False, Mamba-2's default), or of y, then times silu(z) (True) — the
    reference's RMSNormGated."""
    gated = y.float() if norm_before_gate else (y * F.silu(z)).float()
    grouped = gated.unflatten(-1, (groups, -1))
    normed = (grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + eps)).flatten(-2) * weight.float()
    if norm_before_gate:
        normed = normed * F.silu(z.float())
    return normed.to(y.dtype)


@dataclass
class InferenceCache:
    """Decoding state of a model's layers, duck-compatible with mamba_ssm's InferenceParams: each
    layer keeps its (conv_state, ssm_state) in `key_value_memory_dict[layer_idx]`; `seqlen_offset`
    is how many tokens the cache holds (0: the next forward is the prompt)."""

    max_seqlen: int
    max_batch_size: int
    seqlen_offset: int = 0
    key_value_memory_dict: dict = field(default_factory=dict)


class Mamba2(nn.Module):
    """Mamba-2 block: (batch, len, d_model) -> (batch, len, d_model)."""

    def __init__(self, d_model, d_state=128, d_conv=4, expand=2, headdim=64, ngroups=1, A_init_range=(1, 16),
                 dt_min=1e-3, dt_max=1e-1, dt_init_floor=1e-4, dt_limit=(0.0, float("inf")), chunk_size=256,
                 rmsnorm=True, norm_before_gate=False, conv_bias=True, bias=False, layer_idx=None, device=None,
                 dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.d_model = check_int("d_model", d_model)
        self.d_state = check_int("d_state", d_state)
        self.d_conv = check_int("d_conv", d_conv)
        self.headdim = check_int("headdim", headdim)
        self.ngroups = check_int("ngroups", ngroups)
        check_number("expand", expand)
        self.expand = expand
        self.d_inner = int(expand * self.d_model)
        if self.d_inner < 1 or self.d_inner % self.headdim:
            raise SpecError(f"expand * d_model = {self.d_inner} must be a positive multiple of headdim={headdim}")
        self.nheads = self.d_inner // self.headdim
        if self.nheads % self.ngroups:
            raise SpecError(f"ngroups={ngroups} must divide the number of heads {self.nheads}")
        for name, value in (("rmsnorm", rmsnorm), ("norm_before_gate", norm_before_gate)):
            if not isinstance(value, bool):
                raise SpecError(f"{name}: expected True or False, got {value!r}")
        self.rmsnorm, self.norm_before_gate = rmsnorm, norm_before_gate
        if not (isinstance(A_init_range, (tuple, list)) and len(A_init_range) == 2 and 0 < A_init_range[0]
                <= A_init_range[1]):
            raise SpecError(f"A_init_range: expected (low, high) with 0 < low <= high, got {A_init_range!r}")
        check_dt_range(dt_min, dt_max)
        check_number("dt_init_floor", dt_init_floor, inclusive=True)
        self.dt_limit = tuple(dt_limit)
        self.chunk_size = chunk_size
        self.layer_idx = layer_idx
        # without the norm, the gate silu(z) is the SSD's own epilogue (one pass over y)
        self._ssd_key = ops.chunk_scan_key(self.d_state, self.headdim, self.ngroups, has_D=True, has_z=not rmsnorm)
        ops.prepare(self._ssd_key)          # compiled now: the first forward finds it

        self.conv_dim = self.d_inner + 2 * self.ngroups * self.d_state
        self.in_proj = nn.Linear(self.d_model, self.d_inner + self.conv_dim + self.nheads, bias=bias, **factory)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, kernel_size=d_conv, groups=self.conv_dim,
                                padding=d_conv - 1, bias=conv_bias, **factory)
        # dt_bias: softplus(dt_bias) log-uniform in [dt_min, dt_max], floored (inverse softplus)
        dt = torch.exp(torch.rand(self.nheads, device=device) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.dt_bias._no_weight_decay = True
        A = torch.empty(self.nheads, device=device).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.nheads, device=device))
        self.D._no_weight_decay = True
        if rmsnorm:
            self.norm = nn.Module()
            self.norm.weight = nn.Parameter(torch.ones(self.d_inner, **factory))
        self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=bias, **factory)

    # ---- shared pieces ------------------------------------------------------------------------------
    def _split(self, projected):
        return torch.split(projected, [self.d_inner, self.conv_dim, self.nheads], dim=-1)

    def _split_xBC(self, xBC):
        x, B, C = torch.split(xBC, [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        return (x.unflatten(-1, (self.nheads, self.headdim)), B.unflatten(-1, (self.ngroups, self.d_state)),
                C.unflatten(-1, (self.ngroups, self.d_state)))

    def _ssd_gate(self, z):
        """z as the SSD's gate operand (batch, [len,] heads, headdim) when there is no norm, else None."""
        return None if self.rmsnorm else z.unflatten(-1, (self.nheads, self.headdim))

    def _output(self, y, z):
        y = y.flatten(-2)
        if not self.rmsnorm:             # already gated by the SSD
            return self.out_proj(y)
        return self.out_proj(gated_rms_norm(y, z, self.norm.weight, self.ngroups,
                                            norm_before_gate=self.norm_before_gate))

    # ---- whole sequences ------------------------------------------------------------------------------
    def forward(self, hidden_states, seq_idx=None, cu_seqlens=None, inference_params=None):
        """hidden_states (batch, len, d_model) -> (batch, len, d_model). `seq_idx` / `cu_seqlens`: a
        packed batch whose sequences must not see each other (the SSM state resets; the short
        convolution's window is not reset, as in the reference's non-varlen convolution).
        `inference_params` (InferenceCache or mamba_ssm's InferenceParams): with seqlen_offset 0
        the prompt runs whole and leaves this layer's states in the cache; after that, each call
        is one token through `step`."""
        check_layer_input("hidden_states", hidden_states, ("batch", "len", "d_model"), {"d_model": self.d_model})
        batch = hidden_states.shape[0]
        states = None
        if inference_params is not None:
            states = self._cached_states(inference_params, batch)
            if inference_params.seqlen_offset > 0:
                return self.step(hidden_states, *states)[0]
        z, xBC, dt = self._split(self.in_proj(hidden_states))
        if states is not None:           # the convolution's window after the prompt: its last d_conv inputs
            states[0].copy_(last_inputs(xBC.transpose(1, 2), None, self.d_conv))
        xBC = ops.causal_conv1d_fn(xBC.transpose(1, 2), self.conv1d.weight[:, 0], self.conv1d.bias,
                                   activation="silu").transpose(1, 2)
        x, B, C = self._split_xBC(xBC)
        y = ops.mamba_chunk_scan_combined(x, dt, -torch.exp(self.A_log.float()), B, C, self.chunk_size, D=self.D,
                                          z=self._ssd_gate(z), dt_bias=self.dt_bias, seq_idx=seq_idx, cu_seqlens=cu_seqlens,
                                          dt_softplus=True, dt_limit=self.dt_limit,
                                          return_final_states=states is not None)
        if states is not None:
            y, final = y
            states[1].copy_(final)
        return self._output(y, z)

    def _cached_states(self, inference_params, batch):
        """This layer's (conv_state, ssm_state) in the cache, allocated on first use."""
        if self.layer_idx is None:
            raise SpecError("inference_params: this Mamba2 block has no layer_idx, so it cannot find its cache entry; "
                            "construct it with layer_idx=...")
        cache = inference_params.key_value_memory_dict
        if self.layer_idx not in cache:
            cache[self.layer_idx] = self.allocate_inference_cache(inference_params.max_batch_size)
        conv_state, ssm_state = cache[self.layer_idx]
        return conv_state[:batch], ssm_state[:batch]

    # ---- decoding -------------------------------------------------------------------------------------
    def allocate_inference_cache(self, batch_size, max_seqlen=None, dtype=None):
        """(conv_state (batch, conv_dim, d_conv), ssm_state (batch, nheads, headdim, d_state) float32),
        zero: the reference's cache layout."""
        device = self.A_log.device
        conv_state = torch.zeros(batch_size, self.conv_dim, self.d_conv, device=device,
                                 dtype=dtype or self.conv1d.weight.dtype)
        ssm_state = torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device,
                                dtype=torch.float32)
        return conv_state, ssm_state

    def step(self, hidden_states, conv_state, ssm_state):
        """One token: hidden_states (batch, 1, d_model) -> ((batch, 1, d_model), conv_state,
        ssm_state); both states are updated in place, as the reference's step does."""
        check_layer_input("hidden_states", hidden_states, ("batch", "len", "d_model"), {"len": 1, "d_model": self.d_model})
        batch = hidden_states.shape[0]
        for name, state, shape in (("conv_state", conv_state, (batch, self.conv_dim, self.d_conv)),
                                   ("ssm_state", ssm_state, (batch, self.nheads, self.headdim, self.d_state))):
            if not isinstance(state, torch.Tensor) or tuple(state.shape) != shape:
                got = tuple(state.shape) if isinstance(state, torch.Tensor) else type(state).__name__
                raise ShapeError(f"{name}: expected shape {shape} (allocate_inference_cache makes it), got {got}")
        z, xBC, dt = self._split(self.in_proj(hidden_states[:, 0]))
        xBC = ops.causal_conv1d_update(xBC, conv_state, self.conv1d.weight[:, 0], self.conv1d.bias, activation="silu")
        x, B, C = self._split_xBC(xBC.to(hidden_states.dtype))
        package = ops._package(self._ssd_key)
        y = package.step(x, dt, -torch.exp(self.A_log.float()), B, C, ssm_state, D=self.D, z=self._ssd_gate(z),
                         dt_bias=self.dt_bias, dt_softplus=True, dt_limit=self.dt_limit)
        return self._output(y, z)[:, None], conv_state, ssm_state
