"""A small causal language model of Mamba or Mamba-2 blocks, in the style of mamba_ssm's
MambaLMHeadModel, with cached decoding (`generate`).

    logits = lm_head(norm_f(layer_{n-1}(... layer_0(embedding(input_ids)))))
    layer_i(h) = h + mixer_i(norm_i(h))          mixer: ssmc.nn.Mamba or ssmc.nn.Mamba2 (layer_idx=i)

Parameter names (this model's state dict):

    backbone.embedding.weight            (vocab, d_model)   vocab padded to pad_vocab_size_multiple
    backbone.layers.{i}.norm.weight      (d_model,)         RMSNorm before the mixer
    backbone.layers.{i}.mixer.*          the block's own names (in_proj, conv1d, ..., out_proj)
    backbone.norm_f.weight               (d_model,)
    lm_head.weight                       (vocab, d_model)   the embedding itself when tied

`load_transformers_state_dict(model, state_dict)` loads the state dict of transformers'
MambaForCausalLM / Mamba2ForCausalLM: its names are the same except `backbone.embeddings.weight`
(ours: `backbone.embedding.weight`); its `lm_head.weight`, when the embeddings are tied, must be the
embedding (it is then not loaded separately). The loading is strict: a key it does not know, a
key of ours the state dict lacks, or a tensor of the wrong shape raises an error naming them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ShapeError, SpecError
from .mamba import Mamba
from .mamba2 import InferenceCache, Mamba2

SSM_LAYERS = ("Mamba1", "Mamba2")


@dataclass
class MambaConfig:
    """The language model's shape. `d_state` None: the block's default (16 for Mamba1, 128 for
    Mamba2); `headdim` is used by Mamba2 only; `ssm_cfg`: further keyword arguments of the block."""

    d_model: int = 768
    n_layer: int = 24
    vocab_size: int = 50277
    ssm_layer: str = "Mamba1"
    d_state: int | None = None
    expand: int = 2
    headdim: int = 64
    d_conv: int = 4
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True
    norm_epsilon: float = 1e-5
    ssm_cfg: dict = field(default_factory=dict)

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return self.vocab_size if m <= 1 else m * math.ceil(self.vocab_size / m)


class Block(nn.Module):
    """Pre-norm residual block: h + mixer(norm(h))."""

    def __init__(self, config: MambaConfig, layer_idx: int, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_epsilon, **factory)
        kwargs = dict(d_conv=config.d_conv, expand=config.expand, layer_idx=layer_idx, **factory)
        if config.d_state is not None:
            kwargs["d_state"] = config.d_state
        if config.ssm_layer == "Mamba2":
            kwargs["headdim"] = config.headdim
        kwargs.update(config.ssm_cfg)
        self.mixer = (Mamba2 if config.ssm_layer == "Mamba2" else Mamba)(config.d_model, **kwargs)

    def forward(self, hidden, inference_params=None):
        return hidden + self.mixer(self.norm(hidden), inference_params=inference_params)


class MixerModel(nn.Module):
    def __init__(self, config: MambaConfig, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model, **factory)
        self.layers = nn.ModuleList(Block(config, i, **factory) for i in range(config.n_layer))
        self.norm_f = nn.RMSNorm(config.d_model, eps=config.norm_epsilon, **factory)

    def forward(self, input_ids, inference_params=None):
        hidden = self.embedding(input_ids)
        for layer in self.layers:
            hidden = layer(hidden, inference_params=inference_params)
        return self.norm_f(hidden)


class MambaLMHeadModel(nn.Module):
    """Causal LM: input_ids (batch, len) -> logits (batch, len, padded vocab)."""

    def __init__(self, config: MambaConfig, device=None, dtype=None):
        super().__init__()
        if config.ssm_layer not in SSM_LAYERS:
            raise SpecError(f"ssm_layer: expected one of {SSM_LAYERS}, got {config.ssm_layer!r}")
        for name in ("d_model", "n_layer", "vocab_size", "pad_vocab_size_multiple"):
            value = getattr(config, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "n_layer" else 1):
                raise SpecError(f"{name}: expected a positive integer, got {value!r}")
        self.config = config
        self.backbone = MixerModel(config, device=device, dtype=dtype)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False, device=device, dtype=dtype)
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight
        # mamba_ssm's initialisation of the whole model: embedding N(0, 0.02²); each block's output
        # projection scaled by 1/sqrt(n_layer), so that the residual stream's variance stays O(1)
        with torch.no_grad():
            nn.init.normal_(self.backbone.embedding.weight, std=0.02)
            for layer in self.backbone.layers:
                layer.mixer.out_proj.weight /= math.sqrt(max(config.n_layer, 1))

    def allocate_inference_cache(self, batch_size, max_seqlen, dtype=None):
        """An empty InferenceCache with every layer's (conv_state, ssm_state) allocated."""
        cache = InferenceCache(max_seqlen=max_seqlen, max_batch_size=batch_size)
        for i, layer in enumerate(self.backbone.layers):
            cache.key_value_memory_dict[i] = layer.mixer.allocate_inference_cache(batch_size, max_seqlen, dtype=dtype)
        return cache

    def forward(self, input_ids, inference_params=None, num_last_tokens=0):
        """input_ids (batch, len) int -> logits (batch, len, padded_vocab_size); num_last_tokens > 0:
        the logits of the last `num_last_tokens` positions only. `inference_params`
        (InferenceCache or mamba_ssm's InferenceParams): cached decoding, as in mamba_ssm (the
        caller advances its seqlen_offset)."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
            got = (f"{input_ids.dtype} tensor of shape {tuple(input_ids.shape)}" if isinstance(input_ids, torch.Tensor)
                   else type(input_ids).__name__)
            raise ShapeError(f"input_ids: expected an integer tensor (batch, len), got {got}")
        hidden = self.backbone(input_ids, inference_params=inference_params)
        if num_last_tokens > 0:
            hidden = hidden[:, -num_last_tokens:]
        return self.lm_head(hidden)

    # ---- generation ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, input_ids, max_length, temperature=1.0, top_k=0, top_p=0.0, cache=True, generator=None,
                 eos_token_id=None):
        """Continue `input_ids` (batch, prompt) up to `max_length` tokens in all; returns the
        sequences (batch, max_length) (shorter if every sequence has emitted `eos_token_id`).

        Greedy when temperature == 0 or top_k == 1; otherwise samples from softmax(logits /
        temperature) restricted to the top_k tokens (top_k > 0) and to the smallest set whose
        probability reaches top_p (0 < top_p < 1). `generator`: a torch.Generator for the sampling.
        cache=True: the prompt runs once, filling an InferenceCache, then one token per step
        through the blocks' `step`; cache=False: the whole sequence is rerun at every step (slow;
        a reference)."""
        if input_ids.dim() != 2 or input_ids.shape[1] < 1:
            raise ShapeError(f"input_ids: expected (batch, prompt length >= 1), got {tuple(input_ids.shape)}")
        batch, prompt = input_ids.shape
        if max_length <= prompt:
            return input_ids[:, :max_length]
        vocab = self.config.vocab_size
        params = InferenceCache(max_seqlen=max_length, max_batch_size=batch) if cache else None
        sequences = input_ids
        finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
        logits = self(input_ids, inference_params=params, num_last_tokens=1)[:, -1, :vocab]
        if params is not None:
            params.seqlen_offset += prompt
        while True:
            token = sample(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            if eos_token_id is not None:
                token = torch.where(finished, torch.full_like(token, eos_token_id), token)
                finished |= token == eos_token_id
            sequences = torch.cat([sequences, token[:, None]], dim=1)
            if sequences.shape[1] >= max_length or bool(finished.all()):
                return sequences
            if params is not None:
                logits = self(token[:, None], inference_params=params, num_last_tokens=1)[:, -1, :vocab]
                params.seqlen_offset += 1
            else:
                logits = self(sequences, num_last_tokens=1)[:, -1, :vocab]


def sample(logits, temperature=1.0, top_k=0, top_p=0.0, generator=None):
    """One token per row of logits (batch, vocab): greedy when temperature == 0 or top_k == 1,
    else sampled from the top_k / top_p restricted softmax(logits / temperature)."""
    if temperature == 0 or top_k == 1:
        return logits.argmax(dim=-1)
    if temperature < 0:
        raise SpecError(f"temperature: expected >= 0, got {temperature!r}")
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        # drop the least likely tokens whose total probability stays within 1 - top_p (the most
        # likely token always survives)
        ascending, order = torch.sort(logits, dim=-1)
        drop = torch.softmax(ascending, dim=-1).cumsum(dim=-1) <= 1.0 - top_p
        drop[..., -1] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


# ---- transformers' checkpoints -----------------------------------------------------------------------

def _rename_transformers_key(key):
    if key == "backbone.embeddings.weight":
        return "backbone.embedding.weight"
    return key


def load_transformers_state_dict(model: MambaLMHeadModel, state_dict) -> MambaLMHeadModel:
    """Load the state dict of transformers' MambaForCausalLM / Mamba2ForCausalLM into `model`
    (names: the module docstring). Strict: unknown keys, missing keys and shape mismatches raise
    SpecError / ShapeError naming them. Returns the model."""
    ours = model.state_dict()
    tied = model.config.tie_embeddings
    renamed, unknown = {}, []
    for key, value in state_dict.items():
        name = _rename_transformers_key(key)
        if name == "backbone.embedding.weight" and key != "backbone.embeddings.weight":
            unknown.append(key)      # our own name is not a transformers name
        elif name == "lm_head.weight" and tied:
            continue                 # checked against the embedding below
        elif name not in ours:
            unknown.append(key)
        else:
            renamed[name] = value
    expected = [k for k in ours if not (tied and k == "lm_head.weight")]
    missing = [k.replace("backbone.embedding.", "backbone.embeddings.") for k in expected if k not in renamed]
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown keys (not in this {model.config.ssm_layer} model): {', '.join(sorted(unknown))}")
        if missing:
            parts.append(f"missing keys: {', '.join(sorted(missing))}")
        raise SpecError("load_transformers_state_dict: " + "; ".join(parts))
    wrong = [f"{k}: expected {tuple(ours[k].shape)}, got {tuple(v.shape)}" for k, v in renamed.items()
             if tuple(v.shape) != tuple(ours[k].shape)]
    if wrong:
        raise ShapeError("load_transformers_state_dict: shape mismatch (vocab_size / pad_vocab_size_multiple, "
                         "d_state, expand, headdim must match the checkpoint's config): " + "; ".join(wrong))
    if tied and "lm_head.weight" in state_dict:
        head, embedding = state_dict["lm_head.weight"], renamed["backbone.embedding.weight"]
        if head.shape != embedding.shape or not torch.equal(head.to(embedding.dtype), embedding):
            raise SpecError("load_transformers_state_dict: lm_head.weight differs from backbone.embeddings.weight, "
                            "but the model ties them (build it with tie_embeddings=False)")
    if tied:
        renamed["lm_head.weight"] = renamed["backbone.embedding.weight"]
    model.load_state_dict(renamed, strict=True)
    return model
