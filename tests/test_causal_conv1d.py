"""ssmc.ops.causal_conv1d_fn / causal_conv1d_update (the causal-conv1d package's ops) on the C,
Triton (interpreted) and torch backends, against a float64 reference written here with F.conv1d."""
import pytest
import torch
import torch.nn.functional as F

import ssmc
from ssmc.ops import causal_conv1d_fn, causal_conv1d_update

from conftest import rel_error

BACKENDS = ("c", "triton", "torch")


def reference(x, weight, bias=None, activation=None):
    x, weight = x.double(), weight.double()
    bias = bias.double() if bias is not None else None
    width = weight.shape[1]
    out = F.conv1d(F.pad(x, (width - 1, 0)), weight[:, None], bias, groups=x.shape[1])
    return F.silu(out) if activation in ("silu", "swish") else out


def inputs(batch=2, dim=5, length=13, width=4, bias=True, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, length, generator=gen, dtype=dtype)
    weight = torch.randn(dim, width, generator=gen, dtype=dtype)
    b = torch.randn(dim, generator=gen, dtype=dtype) if bias else None
    return x, weight, b


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("length", [1, 13])
def test_forward_matches_reference(backend, name, width, bias, activation, length):
    backend(name)
    x, weight, b = inputs(length=length, width=width, bias=bias, dtype=torch.float32)
    out = causal_conv1d_fn(x, weight, b, activation)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert rel_error(out, reference(x, weight, b, activation)) < 1e-5


@pytest.mark.parametrize("name", BACKENDS)
def test_forward_dtypes_and_swish(backend, name):
    backend(name)
    x, weight, b = inputs(dim=17, length=301, width=4)
    assert rel_error(causal_conv1d_fn(x, weight, b, "swish"), reference(x, weight, b, "silu")) < 1e-12
    out = causal_conv1d_fn(x.bfloat16(), weight.float(), b.half(), "silu")
    assert out.dtype == torch.bfloat16
    assert rel_error(out, reference(x.bfloat16(), weight, b.half(), "silu")) < 2e-2


@pytest.mark.parametrize("name", ["c", "torch"])
@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck(backend, name, width, activation, bias):
    backend(name)
    x, weight, b = inputs(batch=2, dim=3, length=7, width=width, bias=bias)
    args = [t.requires_grad_() for t in (x, weight, b) if t is not None]
    fn = (lambda x, w, b: causal_conv1d_fn(x, w, b, activation)) if bias else \
        (lambda x, w: causal_conv1d_fn(x, w, None, activation))
    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("width", [3, 4])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("length", [1, 37])
def test_gradients_match_reference(backend, name, width, activation, length):
    backend(name)
    x, weight, b = inputs(dim=6, length=length, width=width, dtype=torch.float32, seed=1)
    dout = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    leaves = [t.clone().requires_grad_() for t in (x, weight, b)]
    ref_leaves = [t.double().requires_grad_() for t in (x, weight, b)]
    grads = torch.autograd.grad(causal_conv1d_fn(*leaves, activation), leaves, dout)
    ref = torch.autograd.grad(reference(*ref_leaves, activation), ref_leaves, dout.double())
    for got, want, leaf in zip(grads, ref, leaves):
        assert got.dtype == leaf.dtype and got.shape == leaf.shape
        assert rel_error(got, want) < 1e-5


@pytest.mark.parametrize("name", ["c", "torch"])
def test_gradients_are_deterministic(backend, name):
    backend(name)
    x, weight, b = inputs(batch=3, dim=8, length=500, dtype=torch.float32)
    dout = torch.randn(x.shape)

    def grads():
        leaves = [t.clone().requires_grad_() for t in (x, weight, b)]
        return torch.autograd.grad(causal_conv1d_fn(*leaves, "silu"), leaves, dout)
    for first, second in zip(grads(), grads()):
        assert torch.equal(first, second)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("bias", [True, False])
def test_update_steps_equal_the_forward(backend, name, width, activation, bias):
    backend(name)
    x, weight, b = inputs(dim=5, length=9, width=width, bias=bias, dtype=torch.float32)
    state = torch.zeros(x.shape[0], x.shape[1], width)
    steps = [causal_conv1d_update(x[:, :, t], state, weight, b, activation) for t in range(x.shape[2])]
    assert rel_error(torch.stack(steps, dim=-1), reference(x, weight, b, activation)) < 1e-5
    assert torch.equal(state, F.pad(x, (width, 0))[:, :, -width:])


@pytest.mark.parametrize("name", BACKENDS)
def test_update_low_precision_state(backend, name):
    backend(name)
    x, weight, b = inputs(dim=5, length=6, width=4, dtype=torch.float32)
    state = torch.zeros(2, 5, 4, dtype=torch.bfloat16)
    steps = [causal_conv1d_update(x[:, :, t], state, weight, b, "silu") for t in range(6)]
    assert rel_error(torch.stack(steps, dim=-1), reference(x, weight, b, "silu")) < 2e-2
    assert torch.equal(state, x[:, :, -4:].bfloat16())


@pytest.mark.parametrize("name", BACKENDS)
def test_update_refuses_a_non_contiguous_state(backend, name):
    backend(name)
    state = torch.zeros(2, 4, 5).transpose(1, 2)      # (2, 5, 4), not contiguous
    with pytest.raises(ssmc.ShapeError, match="conv_state"):
        causal_conv1d_update(torch.randn(2, 5), state, torch.randn(5, 4))


@pytest.mark.parametrize("name", BACKENDS)
def test_wrong_shapes_are_refused(backend, name):
    backend(name)
    x, weight, b = inputs(dtype=torch.float32)
    with pytest.raises(ssmc.ShapeError, match="weight"):
        causal_conv1d_fn(x, weight[:4], b)
    with pytest.raises(ssmc.ShapeError, match="bias"):
        causal_conv1d_fn(x, weight, b[:3])
    with pytest.raises(ssmc.ShapeError, match="x"):
        causal_conv1d_fn(x[0], weight, b)
    with pytest.raises(ssmc.ShapeError, match="weight"):
        causal_conv1d_fn(x, weight[:, :0], b)
    with pytest.raises(ssmc.ShapeError, match="x"):
        causal_conv1d_fn(x.long(), weight, b)
    state = torch.zeros(2, 5, 4)
    with pytest.raises(ssmc.ShapeError, match="conv_state"):
        causal_conv1d_update(x[:, :, 0], state[:, :, :3], weight, b)
    with pytest.raises(ssmc.ShapeError, match="x"):
        causal_conv1d_update(x[:1, :, 0], state, weight, b)
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d_fn(x, weight, b, "relu")


@pytest.mark.parametrize("name", ["c", "torch"])
def test_empty_sequence(backend, name):
    backend(name)
    x, weight, b = inputs(length=0, dtype=torch.float32)
    assert causal_conv1d_fn(x, weight, b, "silu").shape == x.shape


def test_torch_compile_fullgraph(backend):
    backend("c")
    x, weight, b = inputs(dim=6, length=11, width=4, dtype=torch.float32)
    state = torch.zeros(2, 6, 4)

    def step(x, state, weight, b):
        out = causal_conv1d_fn(x, weight, b, "silu")
        return out, causal_conv1d_update(x[:, :, -1] * 1.0, state, weight, b, "silu")

    compiled = torch.compile(step, fullgraph=True, backend="eager")
    eager_state = state.clone()
    out, last = compiled(x, state, weight, b)
    want_out, want_last = step(x, eager_state, weight, b)
    assert torch.allclose(out, want_out) and torch.allclose(last, want_last)
    assert torch.equal(state, eager_state)          # the in-place update happened under compile too
    assert rel_error(out, reference(x, weight, b, "silu")) < 1e-5
