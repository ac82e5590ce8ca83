"""torch.library.opcheck on every custom op ssmc registers, with the arguments real layers pass.

The ops are found by running the layers (forward, backward and decoding) under a dispatch mode that
records each `ssmc_gen` call once per op, so a new op is covered as soon as a layer uses it. opcheck
checks what torch.compile relies on and an eager run never shows: the schema's mutation and aliasing
claims (no output is an input or another output), the fake kernel's shapes and strides against the
real kernel's, and that autograd is registered for ops that take gradients.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ssmc.nn import S4D, Mamba, Mamba2


class RecordOps(TorchDispatchMode):
    """The first call of every ssmc_gen op: (op, args, kwargs), arguments cloned as they came in."""

    def __init__(self):
        super().__init__()
        self.calls = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "ssmc_gen" and func not in self.calls:
            clone = lambda x: x.detach().clone() if isinstance(x, torch.Tensor) else x  # noqa: E731
            self.calls[func] = (tuple(clone(a) for a in args), {k: clone(v) for k, v in kwargs.items()})
        return func(*args, **kwargs)


def _exercise_layers():
    torch.manual_seed(0)
    x = torch.randn(2, 12, 16, requires_grad=True)
    mamba = Mamba(16, d_state=4, d_conv=4, expand=2, layer_idx=0)
    mamba2 = Mamba2(16, d_state=8, headdim=8, expand=2, chunk_size=8, layer_idx=0)
    s4d = S4D(16, d_state=8, transposed=False)
    loss = mamba(x).square().sum() + mamba2(x).square().sum() + s4d(x)[0].square().sum()
    loss.backward()
    with torch.no_grad():
        for layer in (mamba, mamba2):
            conv_state, ssm_state = layer.allocate_inference_cache(2, 1)
            layer.step(x[:, :1].detach(), conv_state, ssm_state)
        state = s4d.default_state(2)
        s4d.step(x[:, 0].detach(), state)


@pytest.fixture(scope="module")
def recorded_calls():
    with RecordOps() as recorder:
        _exercise_layers()
    return recorder.calls


def test_layers_use_the_expected_ops(recorded_calls):
    """The recorder sees the ops (else the opchecks below would pass on nothing)."""
    names = {op.name().split("::")[1] for op in recorded_calls}
    for stage in ("scan_fwd", "scan_bwd", "scan_step", "vandermonde", "vandermonde_bwd", "ssd_core", "ssd_step",
                  "conv1d_fwd", "conv1d_bwd", "conv1d_update"):
        assert any(n.endswith(stage) for n in names), (stage, sorted(names))


def test_opcheck_every_recorded_op(recorded_calls):
    failures = []
    for op, (args, kwargs) in recorded_calls.items():
        # the generated kernels are not deterministic-bitwise under a different thread split: compare
        # fake against real and the schema's claims, not repeated runs
        result = torch.library.opcheck(op, args, kwargs, raise_exception=False,
                                       test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
        bad = {k: v for k, v in result.items() if v != "SUCCESS"}
        if bad:
            failures.append((op.name(), bad))
    assert not failures, failures
