"""The SISO families' decoding step (`scan_step`: one generated kernel per backend, from the same plan
as the scan): stepping token by token from a state equals the whole-sequence forward, outputs and
final state, with the state updated in place."""
import sys

import pytest
import torch

import ssmc
from ssmc import presets
from ssmc.errors import ShapeError

from conftest import rel_error, scan_inputs

BACKENDS = ["torch", "c", "triton"]
# name -> (spec, selective, groups, complex A)
SPECS = {
    "mamba": (presets.mamba(d_state=4, groups=2), ("dt", "B", "C"), 2, False),
    "s4d": (presets.s4d(d_state=8), (), 1, True),          # d_state counts conjugate pairs: 4 complex states
    "dss": (presets.dss(d_state=8), (), 1, True),
    "custom": (ssmc.SSM(name="custom_step", d_state=4, selective=("dt", "B", "C"), skip_D=True, gate=True,
                        dt_softplus=True, dt_bias=True,
                        discretization=ssmc.Custom(decay="(1 + dt*A/2)/(1 - dt*A/2)", input_scale="dt/(1 - dt*A/2)")),
               ("dt", "B", "C"), 1, False),
}


def _module(spec):
    return sys.modules[ssmc.compile(spec, schedule="scan").__module__]


def _kwargs(module, args):
    names = {"D": "has_D", "z": "has_z", "delta_bias": "has_dt_bias"}
    return {k: args[k] for k, flag in names.items() if getattr(module.SIGNATURE, flag)}


def _step_all(module, args, sel, state):
    ys = []
    for t in range(args["u"].shape[-1]):
        at = lambda name, x: x[..., t] if name in sel else x  # noqa: E731
        kw = {k: (v[..., t] if k == "z" else v) for k, v in _kwargs(module, args).items()}
        ys.append(module.step(args["u"][..., t], at("dt", args["delta"]), args["A"], at("B", args["B"]),
                              at("C", args["C"]), state, **kw))
    return torch.stack(ys, -1)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("name", list(SPECS))
def test_stepping_equals_the_whole_sequence(backend, backend_name, name):
    backend(backend_name)
    spec, sel, groups, cx = SPECS[name]
    module = _module(spec)
    args = scan_inputs(batch=2, dim=4, length=6, n_state=4, groups=groups, complex_state=cx, selective=sel, seed=1)
    h0 = torch.randn(2, 4, 4, dtype=torch.cfloat if cx else torch.float32, generator=torch.Generator().manual_seed(2))
    y, last = module.apply(args["u"], args["delta"], args["A"], args["B"], args["C"], initial_state=h0,
                           return_last_state=True, **_kwargs(module, args))
    state = h0.clone()
    pointer = state.data_ptr()
    ys = _step_all(module, args, sel, state)
    assert state.data_ptr() == pointer
    assert rel_error(ys, y) < 1e-5
    assert rel_error(state, last) < 1e-5


def test_state_layout_is_checked(backend):
    backend("c")
    spec, sel, groups, cx = SPECS["mamba"]
    module = _module(spec)
    args = scan_inputs(batch=2, dim=4, length=1, n_state=4, groups=groups, selective=sel, seed=3)
    call = lambda state: module.step(args["u"][..., 0], args["delta"][..., 0], args["A"], args["B"][..., 0],  # noqa: E731
                                     args["C"][..., 0], state, D=args["D"], z=args["z"][..., 0],
                                     delta_bias=args["delta_bias"])
    with pytest.raises(ShapeError, match="h_re is updated in place and must be contiguous"):
        call(torch.zeros(2, 4, 4).transpose(1, 2).contiguous().transpose(1, 2))
    with pytest.raises(ShapeError, match="must be torch.float32"):
        call(torch.zeros(2, 4, 4, dtype=torch.float64))
    with pytest.raises(ShapeError, match="state"):
        call(torch.zeros(2, 4, 5))
    cx_module = _module(SPECS["s4d"][0])
    cx_args = scan_inputs(batch=2, dim=4, length=1, n_state=4, complex_state=True, selective=(), seed=3)
    with pytest.raises(ShapeError, match="contiguous"):
        cx_module.step(cx_args["u"][..., 0], cx_args["delta"], cx_args["A"], cx_args["B"], cx_args["C"],
                       torch.zeros(2, 4, 4, dtype=torch.cfloat).transpose(1, 2).contiguous().transpose(1, 2),
                       D=cx_args["D"])
    table = module.OPS.tables["scan_step"]
    assert "Tensor(a!) h_re" in table.schema() and "Tensor(b!)? h_im" in table.schema()


def test_torch_compile_of_a_stepping_loop(backend):
    backend("c")
    spec, sel, groups, cx = SPECS["mamba"]
    module = _module(spec)
    args = scan_inputs(batch=2, dim=4, length=4, n_state=4, groups=groups, selective=sel, seed=4)
    kw = _kwargs(module, args)

    def loop(u, delta, B, C, z, state):
        ys = []
        for t in range(u.shape[-1]):
            ys.append(module.step(u[..., t], delta[..., t], args["A"], B[..., t], C[..., t], state, D=kw["D"],
                                  z=z[..., t], delta_bias=kw["delta_bias"]))
        return torch.stack(ys, -1)

    compiled = torch.compile(loop, fullgraph=True, backend="eager")
    state, state_ref = torch.zeros(2, 4, 4), torch.zeros(2, 4, 4)
    y = compiled(args["u"], args["delta"], args["B"], args["C"], args["z"], state)
    y_ref = loop(args["u"], args["delta"], args["B"], args["C"], args["z"], state_ref)
    assert rel_error(y, y_ref) < 1e-6 and rel_error(state, state_ref) < 1e-6 and state.abs().sum() > 0


def test_layer_step(backend):
    backend("c")
    torch.manual_seed(0)
    layer = ssmc.compile(SPECS["dss"][0], schedule="scan")(d_model=6)
    x = torch.randn(2, 5, 6)
    with torch.no_grad():
        whole = layer(x)
        state = layer.allocate_inference_cache(2)
        assert state.shape == (2, 6, 4) and state.dtype == torch.complex64
        stepped = torch.stack([layer.step(x[:, t], state) for t in range(5)], 1)
    assert rel_error(stepped, whole) < 1e-5


# ---- the Mamba block ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backend_name", ["torch", "c"])
def test_mamba_block_step_and_inference_params(backend, backend_name):
    backend(backend_name)
    torch.manual_seed(0)
    block = ssmc.nn.Mamba(d_model=8, d_state=4, d_conv=3, expand=2, use_fast_path=True, layer_idx=0)
    hidden = torch.randn(2, 7, 8)
    with torch.no_grad():
        whole = block(hidden)
        conv_state, ssm_state = block.allocate_inference_cache(2, 7)
        assert conv_state.shape == (2, 16, 3) and ssm_state.shape == (2, 16, 4)
        outs = []
        for t in range(7):
            out, c, s = block.step(hidden[:, t:t + 1], conv_state, ssm_state)
            assert c is conv_state and s is ssm_state
            outs.append(out)
        assert rel_error(torch.cat(outs, 1), whole) < 1e-5
        cache = ssmc.nn.InferenceCache(max_seqlen=7, max_batch_size=2)
        prompt = block(hidden[:, :4], inference_params=cache)
        cache.seqlen_offset = 4
        tokens = []
        for t in range(4, 7):
            tokens.append(block(hidden[:, t:t + 1], inference_params=cache))
            cache.seqlen_offset += 1
    assert rel_error(torch.cat([prompt] + tokens, 1), whole) < 1e-5
