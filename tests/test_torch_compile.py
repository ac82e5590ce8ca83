"""torch.compile(fullgraph=True) of ssmc's layers and ops on their first call, and first use of an op
from several threads at once.

Each test runs in a fresh process with an empty SSMC_CACHE_DIR and no eager warm-up, so that the
first traced call is also the first time the spec is seen: compiling the package must happen outside
the trace (or before it), never as a graph break. The eager-backend test runs on the generated
PyTorch kernels and on the C kernels (the CPU default). Inductor compiles for tens of seconds on a
CPU: one inductor test only.
"""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ssmc.runtime.backend import c_compiler

ROOT = Path(__file__).resolve().parents[1]
needs_cc = pytest.mark.skipif(c_compiler() is None and not os.environ.get("CI"), reason="no C compiler")

PRELUDE = """
import os, sys, tempfile
os.environ["SSMC_CACHE_DIR"] = tempfile.mkdtemp(prefix="ssmc-fresh-")
import torch
from ssmc import ops
from ssmc.nn import Mamba, S4D

def check(name, compiled, eager, tol=1e-5):
    compiled, eager = compiled.detach().double(), eager.detach().double()
    assert compiled.shape == eager.shape, (name, compiled.shape, eager.shape)
    assert torch.isfinite(compiled).all(), name
    error = ((compiled - eager).norm() / eager.norm().clamp_min(1e-30)).item()
    assert error < tol, (name, error)
"""


def run_fresh(body: str, timeout=300, backend="torch"):
    script = PRELUDE + textwrap.dedent(body) + "\nprint('ok')\n"
    env = {**os.environ, "SSMC_BACKEND": backend}
    env.pop("SSMC_CACHE_DIR", None)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=timeout)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout + result.stderr


@pytest.mark.parametrize("backend", ["torch", pytest.param("c", marks=needs_cc)])
def test_eager_backend_first_call_layers_and_ops(backend):
    """On the generated PyTorch kernels and on the C kernels (the default on CPU), whose libraries are
    built on that first call too."""
    run_fresh("""
        torch.manual_seed(0)
        # ops first: their packages are not compiled by any constructor
        u, delta = torch.randn(2, 4, 9), torch.randn(2, 4, 9)
        A, B, C, D = -torch.rand(4, 3) - 0.1, torch.randn(2, 3, 9), torch.randn(2, 1, 3, 9), torch.randn(4)
        scan = torch.compile(ops.selective_scan_fn, fullgraph=True, backend="eager")
        out, last = scan(u, delta, A, B, C, D, delta_softplus=True, return_last_state=True)
        ref, ref_last = ops.selective_scan_fn(u, delta, A, B, C, D, delta_softplus=True, return_last_state=True)
        check("selective_scan_fn", out, ref)
        check("selective_scan_fn state", last, ref_last)

        H = 3
        dt = 0.01 + 0.1 * torch.rand(H)
        A = torch.complex(-torch.rand(H, 4) - 0.1, torch.randn(H, 4))
        B, C = torch.randn(H, 4, dtype=torch.cfloat), torch.randn(H, 4, dtype=torch.cfloat)
        lti = torch.compile(ops.lti_ssm, fullgraph=True, backend="eager")
        u, D = torch.randn(2, H, 16), torch.randn(H)
        check("lti_ssm", lti(u, dt, A, B, C, D=D), ops.lti_ssm(u, dt, A, B, C, D=D))

        mamba = Mamba(8, d_state=4)
        x = torch.randn(2, 10, 8, requires_grad=True)
        y = torch.compile(mamba, fullgraph=True, backend="eager")(x)
        y_eager = mamba(x)
        check("Mamba", y, y_eager)
        grad, = torch.autograd.grad(y.square().sum(), x)
        grad_eager, = torch.autograd.grad(y_eager.square().sum(), x)
        check("Mamba grad", grad, grad_eager)

        s4d = S4D(4, d_state=8, transposed=False)
        x = torch.randn(2, 16, 4)
        check("S4D", torch.compile(s4d, fullgraph=True, backend="eager")(x)[0], s4d(x)[0])
    """, backend=backend)


def test_inductor_first_call_mamba():
    run_fresh("""
        torch.manual_seed(1)
        mamba = Mamba(8, d_state=4)
        x = torch.randn(2, 10, 8)
        check("Mamba inductor", torch.compile(mamba, fullgraph=True, backend="inductor")(x), mamba(x))
    """, timeout=500)


def test_first_use_from_several_threads():
    run_fresh("""
        import threading
        from ssmc.reference import selective_scan_ref
        torch.manual_seed(2)
        u, delta = torch.randn(2, 4, 9), torch.randn(2, 4, 9)
        A, B, C = -torch.rand(4, 5) - 0.1, torch.randn(2, 5, 9), torch.randn(2, 5, 9)
        ref = selective_scan_ref(u, delta, A, B, C)
        results, errors, start = [None] * 4, [], threading.Barrier(4)

        def call(i):
            try:
                start.wait()
                results[i] = ops.selective_scan_fn(u, delta, A, B, C)
            except BaseException as e:
                errors.append(repr(e))

        threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for out in results:
            check("thread", out, ref)
    """)
