"""The language model (ssmc.nn.lm): cached generation equals rerunning the whole sequence, and the
state-dict mapping from transformers' MambaForCausalLM / Mamba2ForCausalLM (checked here with a
synthetic state dict in transformers' names; transformers itself is not needed)."""
import pytest
import torch

import ssmc
from ssmc.nn import MambaConfig, MambaLMHeadModel, load_transformers_state_dict
from ssmc.nn.lm import sample

from conftest import rel_error

CONFIGS = {
    "Mamba1": dict(d_model=16, n_layer=2, vocab_size=37, ssm_layer="Mamba1", d_state=4),
    "Mamba2": dict(d_model=16, n_layer=2, vocab_size=37, ssm_layer="Mamba2", d_state=8, headdim=8,
                   ssm_cfg=dict(chunk_size=8)),
}


def make(kind, seed=0, **overrides):
    torch.manual_seed(seed)
    model = MambaLMHeadModel(MambaConfig(**{**CONFIGS[kind], **overrides})).eval()
    with torch.no_grad():        # move everything off its initial value (D = 1, norms = 1, ...)
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def transformers_names(model):
    """Our state dict under transformers' names (what MambaForCausalLM.state_dict() holds)."""
    return {("backbone.embeddings.weight" if k == "backbone.embedding.weight" else k): v.clone()
            for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_shapes_and_padded_vocab(kind):
    model = make(kind)
    assert model.config.padded_vocab_size == 40
    assert model.lm_head.weight is model.backbone.embedding.weight
    ids = torch.randint(0, 37, (3, 5))
    with torch.no_grad():
        assert model(ids).shape == (3, 5, 40)
        assert rel_error(model(ids, num_last_tokens=2), model(ids)[:, -2:]) < 1e-6
    names = set(model.state_dict())
    assert {"backbone.embedding.weight", "backbone.layers.1.norm.weight", "backbone.norm_f.weight",
            "lm_head.weight", "backbone.layers.0.mixer.in_proj.weight"} <= names
    assert isinstance(model.backbone.layers[1].mixer, ssmc.nn.Mamba2 if kind == "Mamba2" else ssmc.nn.Mamba)
    assert model.backbone.layers[1].mixer.layer_idx == 1


@pytest.mark.parametrize("backend_name", ["c", "torch"])
@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_greedy_generation_with_and_without_cache_agree(backend, kind, backend_name):
    backend(backend_name)
    model = make(kind, seed=1)
    prompt = torch.randint(0, 37, (2, 5), generator=torch.Generator().manual_seed(2))
    cached = model.generate(prompt, max_length=14, temperature=0)
    rerun = model.generate(prompt, max_length=14, top_k=1, cache=False)
    assert cached.shape == (2, 14) and torch.equal(cached[:, :5], prompt)
    assert torch.equal(cached, rerun)
    assert int(cached.max()) < 37          # never a padding token


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_cached_logits_equal_the_whole_sequence(kind):
    model = make(kind, seed=3)
    ids = torch.randint(0, 37, (2, 9))
    with torch.no_grad():
        whole = model(ids)
        cache = model.allocate_inference_cache(2, 9)
        steps = [model(ids[:, :4], inference_params=cache)]
        cache.seqlen_offset = 4
        for t in range(4, 9):
            steps.append(model(ids[:, t:t + 1], inference_params=cache))
            cache.seqlen_offset += 1
    assert rel_error(torch.cat(steps, 1), whole) < 1e-5


def test_sampling_with_and_without_cache_agree():
    model = make("Mamba1", seed=4)
    prompt = torch.randint(0, 37, (2, 3))
    runs = [model.generate(prompt, max_length=10, temperature=0.8, top_k=5, top_p=0.9, cache=cache,
                           generator=torch.Generator().manual_seed(7)) for cache in (True, False)]
    assert torch.equal(*runs)


def test_sample_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    draws = lambda **kw: {int(sample(logits, generator=gen, **kw)) for _ in range(200)}  # noqa: E731
    assert draws(top_k=2) == {0, 1}
    assert draws(top_p=0.7) == {0, 1}          # 0.5 alone is short of 0.7
    assert draws(top_p=0.4) == {0}
    assert draws(top_k=3, top_p=0.99) == {0, 1, 2}
    assert int(sample(logits, temperature=0)) == 0 and int(sample(logits, top_k=1)) == 0


def test_eos_stops_generation():
    model = make("Mamba1", seed=5)
    prompt = torch.randint(0, 37, (1, 3))
    greedy = model.generate(prompt, max_length=8, temperature=0)
    eos = int(greedy[0, 4])
    first = 3 + [int(t) for t in greedy[0, 3:]].index(eos)       # the first generated eos
    stopped = model.generate(prompt, max_length=8, temperature=0, eos_token_id=eos)
    assert torch.equal(stopped, greedy[:, :first + 1])


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_transformers_state_dict_loads(kind, tie):
    source = make(kind, seed=6, tie_embeddings=tie)
    target = make(kind, seed=7, tie_embeddings=tie)
    state = transformers_names(source)
    assert "backbone.embeddings.weight" in state and "lm_head.weight" in state
    assert load_transformers_state_dict(target, state) is target
    for name, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[name], value), name
    assert (target.lm_head.weight is target.backbone.embedding.weight) == tie
    ids = torch.randint(0, 37, (2, 6))
    with torch.no_grad():
        assert rel_error(target(ids), source(ids)) < 1e-6
    if tie:          # transformers' tied checkpoints may also leave lm_head out
        state.pop("lm_head.weight")
        load_transformers_state_dict(make(kind, seed=8), state)


def test_transformers_state_dict_is_strict():
    model = make("Mamba1")
    good = transformers_names(model)
    with pytest.raises(ssmc.SpecError, match=r"unknown keys.*backbone\.layers\.0\.mixer\.bogus"):
        load_transformers_state_dict(model, {**good, "backbone.layers.0.mixer.bogus": torch.zeros(1)})
    with pytest.raises(ssmc.SpecError, match=r"unknown keys.*backbone\.layers\.0\.mixer\.dt_bias"):
        load_transformers_state_dict(model, {**good, "backbone.layers.0.mixer.dt_bias": torch.zeros(1)})
    with pytest.raises(ssmc.SpecError, match=r"unknown keys.*backbone\.embedding\.weight"):
        load_transformers_state_dict(model, {**good, "backbone.embedding.weight": good["backbone.embeddings.weight"]})
    missing = dict(good)
    del missing["backbone.layers.1.mixer.x_proj.weight"], missing["backbone.embeddings.weight"]
    with pytest.raises(ssmc.SpecError, match=r"missing keys: backbone\.embeddings\.weight, "
                                             r"backbone\.layers\.1\.mixer\.x_proj\.weight"):
        load_transformers_state_dict(model, missing)
    with pytest.raises(ssmc.ShapeError, match=r"backbone\.norm_f\.weight: expected \(16,\), got \(17,\)"):
        load_transformers_state_dict(model, {**good, "backbone.norm_f.weight": torch.ones(17)})
    with pytest.raises(ssmc.SpecError, match="tie_embeddings=False"):
        load_transformers_state_dict(model, {**good, "lm_head.weight": torch.zeros_like(good["lm_head.weight"])})
    # nothing was loaded by the failed calls
    assert all(torch.equal(v, good[k if k != "backbone.embedding.weight" else "backbone.embeddings.weight"])
               for k, v in model.state_dict().items())
    mamba2 = make("Mamba2")
    with pytest.raises(ssmc.SpecError, match="unknown keys.*x_proj"):
        load_transformers_state_dict(mamba2, good)


def test_config_errors():
    with pytest.raises(ssmc.SpecError, match="ssm_layer"):
        MambaLMHeadModel(MambaConfig(d_model=8, n_layer=1, vocab_size=10, ssm_layer="Mamba3"))
    with pytest.raises(ssmc.SpecError, match="vocab_size"):
        MambaLMHeadModel(MambaConfig(d_model=8, n_layer=1, vocab_size=0))
    model = make("Mamba1")
    with pytest.raises(ssmc.ShapeError, match="input_ids"):
        model(torch.randn(2, 3))


def test_generate_example_runs(capsys):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "examples" / "generate.py"
    spec = importlib.util.spec_from_file_location("generate_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    for layer in ("Mamba1", "Mamba2"):
        result = example.run(example.parse_args(["--ssm-layer", layer, "--d-model", "16", "--n-layer", "2",
                                                  "--vocab-size", "50", "--d-state", "8", "--headdim", "8",
                                                  "--prompt-len", "4", "--new-tokens", "5"]))
        assert result["same"] and result["tokens"].shape == (1, 9)
    assert "tokens/s" in capsys.readouterr().out
