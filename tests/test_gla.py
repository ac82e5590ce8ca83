"""Gated linear attention (GLA, simple GLA / RetNet, RWKV-6) from specs with input-given decays, through
flash-linear-attention's ops (ssmc.ops.chunk_gla, fused_recurrent_gla, chunk_simple_gla, chunk_rwkv6)
and the compiled spec, on every backend, against a float64 sequential reference.

Every stage kernel's outputs start as NaN (SSMC_POISON_OUTPUTS, conftest); inputs are fresh random
tensors per test; the reference below is the plain per-step recurrence of the GLA paper:
    S_t = (exp(gk_t) ⊗ exp(gv_t)) ⊙ S_{t-1} + k_t ⊗ v_t,    o_t = scale · q_t · S_t
(RWKV-6: o_t = scale · r_t · (S_{t-1} + diag(u) k_t ⊗ v_t)). Triton runs under its interpreter on
CPU tensors, at small shapes.
"""
import pytest
import torch

import ssmc
import ssmc.ops as ops
from conftest import rel_error
from ssmc.compiler import compile_package, render_files
from ssmc.errors import ShapeError, SpecError
from ssmc.linear_attention import gated_key

BACKENDS = ["c", "torch", "triton"]
TOLERANCE = {torch.float64: 1e-10, torch.float32: 3e-5}


def gla_ref(q, k, v, gk=None, gv=None, scale=None, h0=None, bonus=None, reverse=False):
    """(o (batch, len, heads, V), final (batch, heads, K, V)) in float64, one step at a time."""
    q, k, v = q.double(), k.double(), v.double()
    batch, length, heads, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    S = h0.double().clone() if h0 is not None else torch.zeros(batch, heads, K, V, dtype=torch.float64)
    o = torch.zeros(batch, length, heads, V, dtype=torch.float64)
    for t in (range(length - 1, -1, -1) if reverse else range(length)):
        decay = torch.ones(batch, heads, K, V, dtype=torch.float64)
        if gk is not None:
            decay = decay * torch.exp(gk[:, t].double())[..., None]
        if gv is not None:
            decay = decay * torch.exp(gv[:, t].double())[..., None, :]
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]
        read = S + bonus.double()[None, :, :, None] * kv if bonus is not None else None
        S = decay * S + kv
        o[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t] * scale, S if bonus is None else read)
    return o, S


def gla_inputs(batch=2, length=23, heads=3, K=5, V=4, dtype=torch.float64, strength=1.0, seed=None):
    gen = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item()))
    randn = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    decay = lambda *s: -strength * torch.rand(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    args = dict(q=randn(batch, length, heads, K), k=randn(batch, length, heads, K), v=randn(batch, length, heads, V),
                g=decay(batch, length, heads, K), gv=decay(batch, length, heads, V), g_head=decay(batch, length, heads),
                h0=randn(batch, heads, K, V), u=randn(heads, K))
    return {name: x.to(dtype) for name, x in args.items()}


def check(out, ref, dtype):
    assert out.dtype == dtype
    assert rel_error(out, ref) < TOLERANCE[dtype], rel_error(out, ref)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunk_gla_matches_the_sequential_reference(backend, backend_name, dtype):
    backend(backend_name)
    x = gla_inputs(dtype=dtype, length=37 if backend_name != "triton" else 19)
    o, final = ops.chunk_gla(x["q"], x["k"], x["v"], x["g"], initial_state=x["h0"], output_final_state=True)
    ref_o, ref_final = gla_ref(x["q"], x["k"], x["v"], gk=x["g"], h0=x["h0"])
    check(o, ref_o, dtype)
    assert final.shape == ref_final.shape
    assert rel_error(final, ref_final) < TOLERANCE[dtype]


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("decays", ["gk", "gv", "both", "none"])
def test_fused_recurrent_gla_every_decay(backend, backend_name, decays):
    backend(backend_name)
    x = gla_inputs(length=17)
    gk = x["g"] if decays in ("gk", "both") else None
    gv = x["gv"] if decays in ("gv", "both") else None
    o, final = ops.fused_recurrent_gla(x["q"], x["k"], x["v"], gk=gk, gv=gv, scale=0.3, initial_state=x["h0"],
                                       output_final_state=True)
    ref_o, ref_final = gla_ref(x["q"], x["k"], x["v"], gk=gk, gv=gv, scale=0.3, h0=x["h0"])
    check(o, ref_o, torch.float64)
    assert rel_error(final, ref_final) < TOLERANCE[torch.float64]


@pytest.mark.parametrize("backend_name", ["c", "torch"])
def test_reverse_runs_from_the_last_step(backend, backend_name):
    backend(backend_name)
    x = gla_inputs(length=21)
    o, final = ops.fused_recurrent_gla(x["q"], x["k"], x["v"], gk=x["g"], gv=x["gv"], initial_state=x["h0"],
                                       output_final_state=True, reverse=True)
    ref_o, ref_final = gla_ref(x["q"], x["k"], x["v"], gk=x["g"], gv=x["gv"], h0=x["h0"], reverse=True)
    check(o, ref_o, torch.float64)
    assert rel_error(final, ref_final) < TOLERANCE[torch.float64]


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_simple_gla_one_decay_per_head(backend, backend_name):
    backend(backend_name)
    x = gla_inputs(length=29 if backend_name != "triton" else 13)
    o, final = ops.chunk_simple_gla(x["q"], x["k"], x["v"], x["g_head"], initial_state=x["h0"],
                                    output_final_state=True)
    gk = x["g_head"][..., None].expand_as(x["q"])
    ref_o, ref_final = gla_ref(x["q"], x["k"], x["v"], gk=gk, h0=x["h0"])
    check(o, ref_o, torch.float64)
    assert rel_error(final, ref_final) < TOLERANCE[torch.float64]


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_rwkv6_bonus_reads_the_current_token(backend, backend_name):
    backend(backend_name)
    x = gla_inputs(length=31 if backend_name != "triton" else 11)
    o, final = ops.chunk_rwkv6(x["q"], x["k"], x["v"], x["g"], x["u"], initial_state=x["h0"], output_final_state=True)
    ref_o, ref_final = gla_ref(x["q"], x["k"], x["v"], gk=x["g"], h0=x["h0"], bonus=x["u"])
    check(o, ref_o, torch.float64)
    assert rel_error(final, ref_final) < TOLERANCE[torch.float64]


@pytest.mark.parametrize("backend_name", ["c", "torch"])
def test_chunked_equals_sequential_at_every_chunk(backend, backend_name):
    backend(backend_name)
    x = gla_inputs(length=101, K=6, V=7)
    package = ops._package(gated_key(6, 7, "state", "chunked"))
    outputs = [package.apply_gated(x["q"], x["k"], x["v"], x["g"], None, None, x["h0"], True, None,
                                   chunk_size=chunk) for chunk in (16, 32, 64)]
    seq, seq_final = ops.fused_recurrent_gla(x["q"], x["k"], x["v"], gk=x["g"], initial_state=x["h0"],
                                             output_final_state=True)
    for o, final in outputs:
        assert rel_error(o, seq) < 1e-12 and rel_error(final, seq_final) < 1e-12


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("strength", [20.0, 1e-6], ids=["decay-exp(-20)", "decay-near-1"])
def test_strong_and_weak_decays(backend, backend_name, strength):
    """Per-step decays down to exp(-20) (a chunk of 64 spans exp(-1280): any positive exponent in a
    chunked formulation overflows) and decays within 1e-6 of 1 (states grow linearly)."""
    backend(backend_name)
    x = gla_inputs(length=70 if backend_name != "triton" else 20, dtype=torch.float32)
    g = -strength * (0.5 + 0.5 * torch.rand_like(x["g"]))       # every step in [-strength, -strength / 2]
    o, final = ops.chunk_gla(x["q"], x["k"], x["v"], g, initial_state=x["h0"], output_final_state=True)
    ref_o, ref_final = gla_ref(x["q"], x["k"], x["v"], gk=g, h0=x["h0"])
    check(o, ref_o, torch.float32)
    assert rel_error(final, ref_final) < TOLERANCE[torch.float32]


@pytest.mark.parametrize("backend_name", ["c", "torch"])
@pytest.mark.parametrize("op", ["chunk", "fused", "rwkv6"])
def test_varlen_sequences_carry_their_own_states(backend, backend_name, op):
    backend(backend_name)
    offsets = [0, 5, 6, 20, 31]
    x = gla_inputs(batch=1, length=offsets[-1])
    h0 = torch.randn(len(offsets) - 1, 3, 5, 4, dtype=torch.float64)
    cu = torch.tensor(offsets)
    if op == "chunk":
        o, final = ops.chunk_gla(x["q"], x["k"], x["v"], x["g"], initial_state=h0, output_final_state=True,
                                 cu_seqlens=cu)
    elif op == "fused":
        o, final = ops.fused_recurrent_gla(x["q"], x["k"], x["v"], gk=x["g"], gv=x["gv"], initial_state=h0,
                                           output_final_state=True, cu_seqlens=cu)
    else:
        o, final = ops.chunk_rwkv6(x["q"], x["k"], x["v"], x["g"], x["u"], initial_state=h0, output_final_state=True,
                                   cu_seqlens=cu)
    assert final.shape == h0.shape
    for i, (start, end) in enumerate(zip(offsets[:-1], offsets[1:])):
        part = {name: x[name][:, start:end] for name in ("q", "k", "v", "g", "gv")}
        ref_o, ref_final = gla_ref(part["q"], part["k"], part["v"], gk=part["g"],
                                   gv=part["gv"] if op == "fused" else None, h0=h0[i:i + 1],
                                   bonus=x["u"] if op == "rwkv6" else None)
        assert rel_error(o[:, start:end], ref_o) < 1e-10
        assert rel_error(final[i:i + 1], ref_final) < 1e-10


@pytest.mark.parametrize("backend_name", ["c", "torch"])
def test_no_final_state_unless_asked(backend, backend_name):
    backend(backend_name)
    x = gla_inputs(length=9)
    o, final = ops.chunk_gla(x["q"], x["k"], x["v"], x["g"])
    assert final is None
    check(o, gla_ref(x["q"], x["k"], x["v"], gk=x["g"])[0], torch.float64)


@pytest.mark.parametrize("backend_name", ["c", "torch"])
def test_gradients_of_every_input(backend, backend_name):
    backend(backend_name)
    x = gla_inputs(batch=1, length=7, heads=2, K=3, V=2)
    leaf = {name: t.clone().requires_grad_() for name, t in x.items()}
    q, k, v, g, gv, h0, u, g_head = (leaf[n] for n in ("q", "k", "v", "g", "gv", "h0", "u", "g_head"))
    assert torch.autograd.gradcheck(
        lambda *a: ops.chunk_gla(*a[:4], initial_state=a[4], output_final_state=True), (q, k, v, g, h0))
    assert torch.autograd.gradcheck(
        lambda *a: ops.fused_recurrent_gla(*a[:3], gk=a[3], gv=a[4], initial_state=a[5], output_final_state=True,
                                           reverse=True), (q, k, v, g, gv, h0))
    assert torch.autograd.gradcheck(
        lambda *a: ops.chunk_rwkv6(*a[:4], u=a[4], initial_state=a[5], output_final_state=True), (q, k, v, g, u, h0))
    assert torch.autograd.gradcheck(
        lambda *a: ops.chunk_simple_gla(*a[:4], initial_state=a[4], output_final_state=True), (q, k, v, g_head, h0))


def test_gradients_through_triton_kernels(backend):
    backend("triton")
    x = gla_inputs(batch=1, length=5, heads=1, K=2, V=2)
    leaf = [x[n].clone().requires_grad_() for n in ("q", "k", "v", "g", "h0")]
    assert torch.autograd.gradcheck(
        lambda *a: ops.chunk_gla(*a[:4], initial_state=a[4], output_final_state=True), leaf)


def test_gradients_match_the_reference_in_float32(backend):
    backend("c")
    x = gla_inputs(length=40, dtype=torch.float32)
    leaf = {n: x[n].clone().requires_grad_() for n in ("q", "k", "v", "g", "h0")}
    ref_leaf = {n: x[n].double().clone().requires_grad_() for n in leaf}
    weights = torch.randn(2, 40, 3, 4, dtype=torch.float64)
    o, final = ops.chunk_gla(leaf["q"], leaf["k"], leaf["v"], leaf["g"], initial_state=leaf["h0"],
                             output_final_state=True)
    ((o.double() * weights).sum() + final.double().sum()).backward()
    ref_o, ref_final = gla_ref(ref_leaf["q"], ref_leaf["k"], ref_leaf["v"], gk=ref_leaf["g"], h0=ref_leaf["h0"])
    ((ref_o * weights).sum() + ref_final.sum()).backward()
    for name in leaf:
        assert rel_error(leaf[name].grad, ref_leaf[name].grad) < 1e-4, name


# ---- hostile inputs --------------------------------------------------------------------------------
def test_wrong_shapes_name_the_argument(backend):
    backend("c")
    x = gla_inputs(length=6)
    q, k, v, g = x["q"], x["k"], x["v"], x["g"]
    cases = [
        (lambda: ops.chunk_gla(q, k[:, :5], v, g), "k"),
        (lambda: ops.chunk_gla(q, k, v, g[..., :4]), "g"),
        (lambda: ops.chunk_gla(q, k, v[:, :, :2], g), "v"),
        (lambda: ops.chunk_gla(q, k, v, g, initial_state=torch.zeros(2, 3, 4, 5, dtype=torch.float64)),
         "initial_state"),
        (lambda: ops.chunk_gla(q[0], k, v, g), "q"),
        (lambda: ops.chunk_rwkv6(q, k, v, g, None), "u"),
        (lambda: ops.chunk_rwkv6(q, k, v, g, torch.zeros(3, 4, dtype=torch.float64)), "u"),
        (lambda: ops.chunk_simple_gla(q, k, v, g), "g"),
        (lambda: ops.chunk_gla(q, k, v, g, scale=float("nan")), "scale"),
    ]
    for call, name in cases:
        with pytest.raises(ShapeError, match=name):
            call()


def test_an_empty_sequence_returns_its_initial_state(backend):
    backend("c")
    x = gla_inputs(length=4)
    o, final = ops.chunk_gla(x["q"][:, :0], x["k"][:, :0], x["v"][:, :0], x["g"][:, :0], initial_state=x["h0"],
                             output_final_state=True)
    assert o.shape == (2, 0, 3, 4) and torch.equal(final, x["h0"])


def test_bad_offsets_are_refused(backend):
    backend("c")
    x = gla_inputs(batch=1, length=6)
    for cu in (torch.tensor([0, 4, 3, 6]), torch.tensor([0, 5]), torch.tensor([1, 6]), torch.tensor([0.0, 6.0]),
               [0, 6]):
        with pytest.raises(ShapeError, match="cu_seqlens"):
            ops.chunk_gla(x["q"], x["k"], x["v"], x["g"], cu_seqlens=cu)
    y = gla_inputs(batch=2, length=6)
    with pytest.raises(ShapeError, match="cu_seqlens"):
        ops.chunk_gla(y["q"], y["k"], y["v"], y["g"], cu_seqlens=torch.tensor([0, 6]))


def test_nan_decays_propagate_instead_of_vanishing(backend):
    backend("c")
    x = gla_inputs(length=8)
    g = x["g"].clone()
    g[0, 3, 0, 0] = float("nan")
    o, _ = ops.chunk_gla(x["q"], x["k"], x["v"], g)
    assert torch.isnan(o[0, 3:]).any() and torch.isfinite(o[1]).all()


# ---- specs, presets, the compiled package ---------------------------------------------------------
def test_presets_compile_and_run_forward_and_backward(backend):
    backend("c")
    for spec, inputs in ((ssmc.presets.gla(key_dim=4, value_dim=3, name="gla_t"), ("g",)),
                         (ssmc.presets.rwkv6(key_dim=4, value_dim=3, name="rwkv_t"), ("w",)),
                         (ssmc.presets.simple_gla(key_dim=4, value_dim=3, name="sgla_t"), ("g",))):
        assert spec.is_gated and spec.A.inputs == inputs
        files = render_files(spec)
        assert "stages_c.c" in files and "operands.json" in files
        package = compile_package(spec)
        assert ("sequential", 0) in package.CANDIDATES and any(name == "chunked" for name, _ in package.CANDIDATES)


def test_rwkv6_spec_formula_reads_its_declared_input(backend):
    """The compiled rwkv6 spec computes its decay as -exp(w) from the input it declares."""
    backend("c")
    package = compile_package(ssmc.presets.rwkv6(key_dim=4, value_dim=3, name="rwkv_formula"))
    x = gla_inputs(length=12, K=4, V=3)
    w = torch.randn_like(x["q"]) * 0.5
    o, final = package.apply(x["q"], x["k"], x["v"], w=w, u=x["u"][:, :4], initial_state=x["h0"],
                             output_final_state=True)
    ref_o, ref_final = gla_ref(x["q"], x["k"], x["v"], gk=-torch.exp(w), h0=x["h0"], bonus=x["u"][:, :4])
    check(o, ref_o, torch.float64)
    assert rel_error(final, ref_final) < 1e-10


def test_input_decay_validation():
    with pytest.raises(SpecError, match="per"):
        ssmc.InputDecay(per="channel", log_decay="g", inputs=("g",))
    with pytest.raises(SpecError, match="log_decay"):
        ssmc.InputDecay(per="state", log_decay="h", inputs=("g",))
    with pytest.raises(SpecError, match="log_decay"):
        ssmc.InputDecay(per="state", log_decay="__import__('os')", inputs=("g",))
    with pytest.raises(SpecError, match="inputs"):
        ssmc.InputDecay(per="state", log_decay="g", inputs=("dt",))
    with pytest.raises(SpecError, match="inputs"):
        ssmc.InputDecay(per="state", log_decay="g", inputs=("é",))
    with pytest.raises(SpecError, match="bonus"):
        ssmc.SSM(name="bad", d_state=4, bonus=True)
    with pytest.raises(SpecError, match="Given"):
        ssmc.SSM(name="bad", d_state=4, A=ssmc.InputDecay(per="state", log_decay="g", inputs=("g",)),
                 discretization=ssmc.ZOH(), selective=("B", "C"), heads=ssmc.MultiHead(headdim=2))


def test_gated_specs_hash_apart_and_keep_old_hashes():
    gla = ssmc.presets.gla(key_dim=4, value_dim=4)
    rwkv = ssmc.presets.rwkv6(key_dim=4, value_dim=4, name="gla")
    simple = ssmc.presets.simple_gla(key_dim=4, value_dim=4, name="gla")
    assert len({gla.content_hash(), rwkv.content_hash(), simple.content_hash()}) == 3
    assert gla.to_json()["A"]["inputs"] == ["g"] and "bonus" not in ssmc.presets.mamba(d_state=4).to_json()


def test_explain_shows_the_candidates(tmp_path, capsys):
    from ssmc.cli import main
    path = tmp_path / "layers.py"
    path.write_text("import ssmc\nlayer = ssmc.presets.gla(key_dim=64, value_dim=64, name='gla_explain')\n",
                    encoding="utf-8")
    assert main(["explain", str(path), "--shape", "len=4096"]) == 0
    out = capsys.readouterr().out
    assert "gla_scan" in out and "sequential" in out and "chunked" in out and "winner" in out


@pytest.mark.parametrize("preset", ["gla", "rwkv6", "simple_gla"])
def test_layer_equals_the_reference_and_resumes_from_its_state(backend, preset):
    """ssmc.compile(spec) gives a Layer whose output is the reference recurrence on its projections,
    and 20 + 10 steps from the returned state equal 30 steps."""
    backend("c")
    spec = getattr(ssmc.presets, preset)(8, 4, name=f"{preset}_layer")
    layer = ssmc.compile(spec)(12).double()
    x = torch.randn(2, 30, 12, dtype=torch.float64)
    y, final = layer(x, output_final_state=True)
    with torch.no_grad():
        split = lambda t, width: t.reshape(2, 30, 3, width)  # noqa: E731
        q, k, v = split(layer.q_proj(x), 8), split(layer.k_proj(x), 8), split(layer.v_proj(x), 4)
        raw = next(iter(layer.decay_proj.values()))(x)
        if preset == "gla":
            gk = split(torch.nn.functional.logsigmoid(raw) / 16, 8)
        elif preset == "rwkv6":
            gk = -torch.exp(split(raw, 8))
        else:
            gk = (torch.nn.functional.logsigmoid(raw) / 16)[..., None].expand(2, 30, 3, 8)
        o, ref_final = gla_ref(q, k, v, gk=gk, bonus=layer.u if preset == "rwkv6" else None)
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + layer.eps) * layer.norm_weight
        ref = layer.o_proj(o.reshape(2, 30, 12) * torch.nn.functional.silu(layer.gate_proj(x)))
    assert rel_error(y, ref) < 1e-10 and rel_error(final, ref_final) < 1e-10
    y1, state = layer(x[:, :20], output_final_state=True)
    y2, _ = layer(x[:, 20:], initial_state=state)
    assert rel_error(torch.cat([y1, y2], 1), y) < 1e-12
    y.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
    with pytest.raises(ShapeError, match="hidden"):
        layer(x[..., :5])
