"""ssmc.compile: in-process compilation to a module class, cached by content hash and schedule."""
import json
import re
from pathlib import Path

import torch
import pytest

import ssmc
from ssmc.ir.pass_manager import lower


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
    """One spec, two schedules: two different packages (not one cache entry serving both), the same
    numbers."""
    backend("torch")
    torch.manual_seed(0)
    spec = ssmc.presets.s4d(8)
    Conv, Scan = ssmc.compile(spec, schedule="conv"), ssmc.compile(spec, schedule="scan")
    assert Conv is not Scan
    conv, scan = Conv(d_model=4), Scan(d_model=4)
    scan.load_state_dict(conv.state_dict())
    x = torch.randn(2, 40, 4)
    with torch.no_grad():
        a, b = conv(x), scan(x)
    assert ((a - b).norm() / b.norm()).item() < 1e-5


def test_compile_refuses_non_specs():
    with pytest.raises(ssmc.SpecError, match="compile expects an ssmc.SSM spec"):
        ssmc.compile({"d_state": 4})


def _package_files(spec, schedule):
    from ssmc.compiler import MARKER, compile_package
    directory = Path(compile_package(spec, schedule).__file__).parent
    return directory, {name: (directory / name).read_text() for name in ("spec.json", "schedule.json", MARKER)}


def test_the_schedule_is_a_compile_option_outside_the_spec_hash():
    """The spec's content hash (and spec.json) is what the layer is, the same under every schedule;
    the schedule names and marks the package (its cache key, schedule.json, the marker)."""
    spec = ssmc.presets.s4d(8, name="s4d_hash")
    assert "schedule" not in spec.to_json()
    packages = {schedule: _package_files(spec, schedule) for schedule in ("auto", "scan", "conv")}
    assert len({directory for directory, _ in packages.values()}) == 3
    for schedule, (directory, files) in packages.items():
        assert f"_{spec.content_hash()}_{schedule}_" in directory.name
        assert files["spec.json"] == packages["auto"][1]["spec.json"]
        assert json.loads(files["spec.json"]) == spec.to_json()
        marker = json.loads(files[".ssmc-package"])
        assert marker["spec_hash"] == spec.content_hash() and marker["schedule"] == schedule
    algorithms = {schedule: [d["algorithm"] for d in json.loads(files["schedule.json"])["decisions"]]
                  for schedule, (_, files) in packages.items()}
    assert algorithms == {"auto": ["by-shape"], "scan": ["scan"], "conv": ["conv"]}


def test_conv_on_a_selective_spec_names_the_precondition():
    with pytest.raises(ssmc.ScheduleError, match=r"schedule='conv': the spec's selective=\('dt', 'B', 'C'\) makes "
                                                 r"the decay, .* vary over time, and an FFT convolution needs a "
                                                 r"time-invariant layer \(selective=\(\)\); use schedule='scan' or 'auto'"):
        ssmc.compile(ssmc.presets.mamba(d_state=4, name="mamba_conv"), schedule="conv")


@pytest.mark.parametrize("schedule", ["fast", "Conv", None, 1])
def test_an_unknown_schedule_is_refused_with_the_choices(schedule):
    message = re.escape(f"schedule must be one of 'auto', 'scan', 'conv', 'sequential', 'chunked', 'associative', 'fused' "
                        f"(auto: the cost model chooses per "
                        f"call), got {schedule!r}")
    spec = ssmc.presets.s4d(8, name="s4d_unknown")
    with pytest.raises(ssmc.ScheduleError, match=message):
        ssmc.compile(spec, schedule=schedule)
    with pytest.raises(ssmc.ScheduleError, match=message):
        lower(spec, schedule)
    u, dt, A, B, C = torch.randn(1, 2, 5), torch.rand(2), torch.randn(2, 3, dtype=torch.complex64), \
        torch.randn(2, 3, dtype=torch.complex64), torch.randn(2, 3, dtype=torch.complex64)
    with pytest.raises(ssmc.ScheduleError, match=message):
        ssmc.ops.lti_ssm(u, dt, A, B, C, schedule=schedule)
