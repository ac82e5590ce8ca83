"""ssmc.compile: in-process compilation to a module class, cached by content hash."""
import torch
import pytest

import ssmc


def test_compile_returns_a_cached_module_class(backend):
    backend("torch")
    spec = ssmc.presets.mamba(d_state=4, name="tiny")
    Layer = ssmc.compile(spec)
    assert Layer is ssmc.compile(spec.replace())
    assert issubclass(Layer, torch.nn.Module)
    layer = Layer(d_model=8)
    y = layer(torch.randn(2, 5, 8), torch.randn(2, 5, 8))
    assert y.shape == (2, 5, 8) and torch.isfinite(y).all()


def test_lti_module_on_both_schedules_agrees(backend):
    backend("torch")
    torch.manual_seed(0)
    conv = ssmc.compile(ssmc.presets.s4d(8, name="s4d_c", schedule="conv"))(d_model=4)
    scan = ssmc.compile(ssmc.presets.s4d(8, name="s4d_s", schedule="scan"))(d_model=4)
    scan.load_state_dict(conv.state_dict())
    x = torch.randn(2, 40, 4)
    with torch.no_grad():
        a, b = conv(x), scan(x)
    assert ((a - b).norm() / b.norm()).item() < 1e-5


def test_compile_refuses_non_specs():
    with pytest.raises(ssmc.SpecError, match="compile expects an ssmc.SSM spec"):
        ssmc.compile({"d_state": 4})
