"""ssmc's blocks and language model against transformers' implementations with the same weights:
MambaMixer (slow path) and Mamba2Mixer (torch path), forward and every gradient, and the logits of
MambaForCausalLM / Mamba2ForCausalLM loaded through `load_transformers_state_dict`.

transformers is not a dependency of ssmc (it is large, and the rest of the suite checks the same
blocks against their float64 equations): this module runs where it is installed (`pip install
transformers`) and is reported as skipped elsewhere, never silently passed.
"""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from ssmc.nn import Mamba, Mamba2, MambaConfig, MambaLMHeadModel, load_transformers_state_dict  # noqa: E402


def rel(out, ref):
    out, ref = out.detach().double(), ref.detach().double()
    assert torch.isfinite(out).all()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-12)).item()


def _compare_blocks(ours, theirs, d_model, length=19, tol=1e-4):
    theirs.load_state_dict(ours.state_dict(), strict=True)
    hidden = torch.randn(2, length, d_model)
    ours_in, theirs_in = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    out, ref = ours(ours_in), theirs(theirs_in)
    assert rel(out, ref) < 1e-5
    weight = torch.randn_like(ref)
    (out * weight).sum().backward()
    (ref * weight).sum().backward()
    assert rel(ours_in.grad, theirs_in.grad) < tol
    theirs_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        assert rel(p.grad, theirs_params[name].grad) < tol, name


@pytest.mark.parametrize("backend_name", ["c", "torch"])
def test_mamba_block_equals_mamba_mixer(backend, backend_name):
    backend(backend_name)
    from transformers.models.mamba.modeling_mamba import MambaMixer
    torch.manual_seed(0)
    ours = Mamba(32, d_state=8, d_conv=4, expand=2)
    with torch.no_grad():
        ours.D.uniform_(-1, 1)
    config = transformers.MambaConfig(hidden_size=32, state_size=8, conv_kernel=4, expand=2,
                                      time_step_rank=ours.dt_rank, use_bias=False, use_conv_bias=True)
    _compare_blocks(ours, MambaMixer(config, layer_idx=0), 32)


@pytest.mark.parametrize("backend_name", ["c", "torch"])
def test_mamba2_block_equals_mamba2_mixer(backend, backend_name):
    backend(backend_name)
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer
    torch.manual_seed(1)
    ours = Mamba2(32, d_state=16, headdim=16, ngroups=2, chunk_size=8)
    with torch.no_grad():
        ours.D.uniform_(-1, 1)
        ours.norm.weight.uniform_(0.5, 1.5)
    config = transformers.Mamba2Config(hidden_size=32, state_size=16, head_dim=16, num_heads=ours.nheads, n_groups=2,
                                       expand=2, conv_kernel=4, chunk_size=8, use_bias=False, use_conv_bias=True)
    _compare_blocks(ours, Mamba2Mixer(config, layer_idx=0), 32)


@pytest.mark.parametrize("kind", ["Mamba1", "Mamba2"])
def test_language_model_logits_equal_transformers(backend, kind):
    backend("c")
    torch.manual_seed(2)
    common = dict(vocab_size=101, hidden_size=32, num_hidden_layers=2, state_size=16, expand=2, conv_kernel=4,
                  tie_word_embeddings=True, use_bias=False, use_conv_bias=True, layer_norm_epsilon=1e-5)
    if kind == "Mamba1":
        theirs = transformers.MambaForCausalLM(transformers.MambaConfig(**common)).eval()
        config = MambaConfig(d_model=32, n_layer=2, vocab_size=101, ssm_layer="Mamba1", d_state=16, expand=2,
                             pad_vocab_size_multiple=1)
    else:
        theirs = transformers.Mamba2ForCausalLM(transformers.Mamba2Config(
            **common, head_dim=16, num_heads=4, n_groups=1, chunk_size=8)).eval()
        config = MambaConfig(d_model=32, n_layer=2, vocab_size=101, ssm_layer="Mamba2", d_state=16, expand=2,
                             headdim=16, pad_vocab_size_multiple=1)
    ours = load_transformers_state_dict(MambaLMHeadModel(config), theirs.state_dict()).eval()
    ids = torch.randint(0, 101, (2, 13))
    with torch.no_grad():
        assert rel(ours(ids), theirs(ids).logits) < 1e-5     # ours returns the logits tensor
