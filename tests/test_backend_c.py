"""The generated C kernels (OpenMP + vector math, via ctypes) against the float64 reference, on
fresh random inputs; the C build cache (content hash, atomic writes, concurrent compiles).

Outputs are poisoned: the C loader allocates them full of NaN, so an element the kernel failed to
write fails `rel_error`'s finiteness check. Shapes are chosen off the kernel's grid: channel
counts that are not multiples of the 16-channel blocks, lengths that end in a partial 64-step
chunk, and state sizes other than the spec's (the generic, non-specialised path).
"""
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import ssmc
from ssmc.compiler import compile_package
from ssmc.errors import CompileError
from ssmc.reference import selective_scan_ref
from ssmc.runtime import cbuild
from ssmc.runtime.backend import c_compiler

from conftest import rel_error, scan_inputs

# Without a C compiler the runtime falls back to the PyTorch backend, so the C tests have nothing to
# run; CI has gcc, and there a missing compiler is a failure, never a skip.
pytestmark = pytest.mark.skipif(c_compiler() is None and not os.environ.get("CI"), reason="no C compiler")

TOL = 1e-4


def _run(spec, inputs, backend, schedule="auto", **extra):
    backend("c")
    kwargs = {k: inputs[k] for k in ("D", "z", "delta_bias")
              if {"D": spec.skip_D, "z": spec.gate, "delta_bias": spec.dt_bias}[k]}
    kwargs.update(extra)
    return compile_package(spec, schedule).apply(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
                                                 **kwargs)


def _check(spec, inputs, backend, discretization="mamba", tol=TOL, schedule="auto"):
    y, state = _run(spec, inputs, backend, schedule, return_last_state=True)
    kwargs = {k: inputs[k] for k in ("D", "z", "delta_bias")
              if {"D": spec.skip_D, "z": spec.gate, "delta_bias": spec.dt_bias}[k]}
    y_ref, state_ref = selective_scan_ref(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
                                          delta_softplus=spec.dt_softplus, return_last_state=True,
                                          discretization=discretization, **kwargs)
    assert y.shape == y_ref.shape and y.dtype == inputs["u"].dtype
    assert state.shape == state_ref.shape
    assert rel_error(y, y_ref) < tol
    assert rel_error(state, state_ref) < tol


@pytest.mark.parametrize("gate", [True, False], ids=["gate", "nogate"])
@pytest.mark.parametrize("groups", [1, 2], ids=["G1", "G2"])
def test_mamba(backend, gate, groups):
    spec = ssmc.presets.mamba(d_state=8, gate=gate, groups=groups)
    # 2 x 19 channels: blocks of 16 + 3 (G1) or per group 16 + 3 (G2: 38 channels, 19 per group)
    _check(spec, scan_inputs(batch=2, dim=19 * groups, length=70, n_state=8, groups=groups), backend)


def test_mamba_benchmark_preset_many_blocks(backend):
    spec = ssmc.presets.mamba(d_state=16, gate=False)
    _check(spec, scan_inputs(batch=3, dim=40, length=130, n_state=16), backend)


def test_state_size_other_than_the_specs(backend):
    """The generic path (run-time N, heap scratch) beside the spec's specialised one."""
    spec = ssmc.presets.mamba(d_state=8, gate=True)
    _check(spec, scan_inputs(batch=2, dim=7, length=33, n_state=5), backend)
    _check(spec, scan_inputs(batch=1, dim=3, length=9, n_state=37), backend)


@pytest.mark.parametrize("length", [1, 64, 65])
def test_lengths_at_chunk_edges(backend, length):
    spec = ssmc.presets.mamba(d_state=4, gate=True)
    _check(spec, scan_inputs(batch=1, dim=17, length=length, n_state=4), backend)


def test_complex_selective(backend):
    spec = ssmc.SSM("cx", 4, A=ssmc.Diagonal(real=False), discretization=ssmc.MambaZOH(),
                    selective=("dt", "B", "C"), dt_softplus=True)
    _check(spec, scan_inputs(batch=2, dim=21, length=80, n_state=4, complex_state=True), backend)


@pytest.mark.parametrize("selective", [("B",), ("dt",), ("C",)], ids=lambda s: "+".join(s))
@pytest.mark.parametrize("complex_state", [True, False], ids=["complex", "real"])
def test_partly_selective(backend, selective, complex_state):
    """Every mix of per-step and per-channel operands (per-channel ones are held as lane tiles)."""
    spec = ssmc.SSM("part", 3, A=ssmc.Diagonal(real=not complex_state), discretization=ssmc.ZOH(),
                    selective=selective, dt_bias="dt" in selective, dt_softplus="dt" in selective)
    inputs = scan_inputs(batch=2, dim=5, length=40, n_state=3, complex_state=complex_state, selective=selective)
    _check(spec, inputs, backend, discretization="zoh")


@pytest.mark.parametrize("disc", ["zoh", "bilinear", "euler"])
@pytest.mark.parametrize("complex_state", [True, False], ids=["complex", "real"])
def test_lti_scan_and_conv(backend, disc, complex_state):
    cls = {"zoh": ssmc.ZOH, "bilinear": ssmc.Bilinear, "euler": ssmc.Euler}[disc]
    inputs = scan_inputs(batch=2, dim=5, length=90, n_state=5, complex_state=complex_state, selective=())
    ref = selective_scan_ref(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
                             D=inputs["D"], discretization=disc)
    spec = ssmc.SSM("s4d", 5, A=ssmc.Diagonal(real=not complex_state), discretization=cls())
    for schedule in ("scan", "conv"):
        y = _run(spec, inputs, backend, schedule)
        assert rel_error(y, ref) < TOL, schedule
    _check(spec, inputs, backend, discretization=disc, schedule="scan")


def test_custom_discretization(backend):
    spec = ssmc.SSM("cu", 3, discretization=ssmc.Custom(decay="(1 + dt*A/2)/(1 - dt*A/2)", input_scale="dt"),
                    selective=("dt", "B", "C"), dt_softplus=True, skip_D=False)
    fns = (lambda dt, A: (1 + dt * A / 2) / (1 - dt * A / 2), lambda dt, A: dt + 0 * A)
    _check(spec, scan_inputs(batch=2, dim=4, length=30, n_state=3), backend, discretization=fns)


def test_other_input_dtypes(backend):
    spec = ssmc.presets.mamba(d_state=4)
    for dtype, tol in ((torch.float64, TOL), (torch.bfloat16, 1e-2)):
        inputs = scan_inputs(batch=2, dim=6, length=50, n_state=4, dtype=dtype)
        y = _run(spec, inputs, backend)
        assert y.dtype == dtype
        ref = selective_scan_ref(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], D=inputs["D"],
                                 z=inputs["z"], delta_bias=inputs["delta_bias"], delta_softplus=True)
        assert rel_error(y, ref.double()) < tol


def test_non_contiguous_inputs(backend):
    spec = ssmc.presets.mamba(d_state=8, gate=True)
    inputs = scan_inputs(batch=2, dim=9, length=31, n_state=8)
    # B and C as the module makes them: a permuted view of (batch, len, groups, N)
    for name in ("B", "C"):
        inputs[name] = inputs[name].permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)
        assert not inputs[name].is_contiguous()
    inputs["u"] = inputs["u"].transpose(1, 2).contiguous().transpose(1, 2)
    _check(spec, inputs, backend)


def test_vandermonde_matches_torch_backend(backend):
    spec = ssmc.SSM("s4d", 6, A=ssmc.Diagonal(real=False), discretization=ssmc.ZOH())
    package = compile_package(spec, "conv")
    gen = torch.Generator().manual_seed(1)
    dim, n_state, length = 7, 6, 1500
    log_decay = torch.complex(-0.05 * torch.rand(dim, n_state, generator=gen),
                              0.5 * torch.randn(dim, n_state, generator=gen))
    coeff = torch.randn(dim, n_state, dtype=torch.complex64, generator=gen)
    args = (log_decay.real.contiguous(), log_decay.imag.contiguous(), coeff.real.contiguous(),
            coeff.imag.contiguous(), length)
    kernel = package.KERNELS.get("c").vandermonde(*args)
    assert kernel.shape == (dim, length) and kernel.dtype == torch.float32
    positions = torch.arange(length, dtype=torch.float64)
    exact = (coeff.to(torch.complex128)[:, :, None]
             * torch.exp(log_decay.to(torch.complex128)[:, :, None] * positions)).real.sum(1)
    assert rel_error(kernel, exact) < TOL
    assert rel_error(kernel, package.KERNELS.get("torch").vandermonde(*args)) < TOL


def test_generated_source(backend):
    from ssmc.backends import c
    from ssmc.ir.pass_manager import lower
    files = c.render_sources(lower(ssmc.presets.mamba(d_state=16, gate=False)))
    # the loader reads the tables; the decoding step is its own source (templates/c/step.c.jinja)
    assert set(files) == {"kernels_c.c", "kernels_c.py", "operands.json", "step_c.c"}
    assert "int ssmc_scan_step_float(" in files["step_c.c"]
    source = files["kernels_c.c"]
    assert source.startswith("// Generated by ssmc (c backend)")
    assert "static inline float ssmc_softplus(float x)" in source and "ssmc_silu" in source
    assert "#pragma omp simd" in source and "#pragma omp parallel" in source
    loader = files["kernels_c.py"]
    imports = {line.split()[1].split(".")[0] for line in loader.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"ctypes", "os", "sys", "torch", "ssmc"}
    assert all(line.startswith(("import ctypes", "import os", "import sys", "import torch", "from ssmc.runtime"))
               for line in loader.splitlines() if line.startswith(("import ", "from ")))


def test_generated_source_is_plain_c_over_the_plans_flags(backend):
    """The plan's flags are C constants the kernels test with `if`s (templates/c/siso/: one stage per
    file, no Jinja branch on a flag); one recurrence serves the forward, the backward's recomputation
    of states and the decoding step; the plan's blocks are small functions in the pairs' names."""
    from pathlib import Path

    from ssmc.backends import c
    from ssmc.ir.pass_manager import lower
    folder = Path(c.__file__).parent.parent / "templates" / "c" / "siso"
    for template in [*folder.glob("*.jinja"), folder.parent / "step.c.jinja"]:
        text = template.read_text()
        assert len(text.splitlines()) < 260, template.name
        assert "{% if" not in text and not re.search(r"{[{%][^}]*\bscan\.", text), template.name
    real = c.render_sources(lower(ssmc.presets.mamba(d_state=16, gate=False)))
    source = real["kernels_c.c"]
    assert "SSMC_COMPLEX = 0," in source and "SSMC_SELECTIVE_B = 1," in source and "SSMC_HAS_Z = 0," in source
    assert "if (SSMC_HAS_Z)" in source and "{{" not in source and "{%" not in source
    for precision in ("float", "double"):
        assert source.count(f"SSMC_INLINE pair_{precision} recurrence_{precision}(") == 1
        assert source.count(f"recurrence_{precision}(") == 2          # defined, called by scan_step
        forward, backward = source.split(f"void scan_fwd_block_{precision}(")[1].split("#endif")[0], \
            source.split(f"void scan_bwd_block_{precision}(")[1].split("#endif")[0]
        assert f"scan_step_{precision}(" in forward and f"scan_step_{precision}(" in backward
    # a real layer's A is A_re, its imaginary parts the literal zeros that fold away
    assert "const float decay_re = ssmc_exp(A_re*dt);" in source and "const float decay_im = 0.0f;" in source
    assert "recurrence_float(" in real["step_c.c"] and "discretize_float(" in real["step_c.c"]
    complex_ = c.render_sources(lower(ssmc.presets.s4d(d_state=8)))["kernels_c.c"]
    assert "SSMC_COMPLEX = 1," in complex_ and "SSMC_SELECTIVE_DT = 0," in complex_
    assert "int ssmc_vandermonde_float(" in complex_


def test_plan_blocks_reading_unknown_names_are_refused():
    """A plan block reading a name its C function does not take is a CompileError naming it (never
    C that fails to build)."""
    import dataclasses

    import sympy

    from ssmc.backends import c
    from ssmc.ir.pass_manager import lower
    lowered = lower(ssmc.presets.mamba(d_state=4, gate=False))
    plan = c.fused_plans(lowered)["scan"]
    odd = dataclasses.replace(plan, epilogue_block=(("out", sympy.Symbol("y") + sympy.Symbol("w")),))
    with pytest.raises(CompileError, match="epilogue formulas read w"):
        c._precision_context(odd, None, "float")
    missing = dataclasses.replace(plan, epilogue_block=(("result", sympy.Symbol("y")),))
    with pytest.raises(CompileError, match="epilogue formulas compute no out"):
        c._precision_context(missing, None, "float")


@pytest.mark.skipif(not (sys.platform.startswith("linux") and os.uname().machine == "x86_64"
                         and shutil.which("objdump")), reason="checks glibc libmvec on x86-64 Linux")
def test_inner_loops_call_vector_math(backend):
    """dt's softplus and the Vandermonde loop call libmvec's vector variants (_ZGV...), and the
    recurrence's exp is inlined (no scalar expf call per element)."""
    for spec, schedule, wanted in ((ssmc.presets.mamba(d_state=16, gate=False), "auto", ("expf", "log1pf")),
                                   (ssmc.SSM("v", 4, A=ssmc.Diagonal(real=False)), "conv", ("expf", "sinf", "cosf"))):
        package = compile_package(spec, schedule)
        source = os.path.join(os.path.dirname(package.__file__), "kernels_c.c")
        with open(source) as f:
            # the float forward library as the loader builds it
            library = cbuild.compile_library(f.read(), "kernels_c", defines=("SSMC_FLOAT", "SSMC_FORWARD"),
                                             flags=("-O2",))
        disassembly = subprocess.run(["objdump", "-d", str(library)], capture_output=True, text=True).stdout
        for name in wanted:
            assert f"v_{name}" in disassembly, f"{name} is not vectorised in {spec.name}"


def test_compile_error_carries_compiler_output():
    with pytest.raises(CompileError, match="error"):
        cbuild.compile_library("int main(void) { return undefined_symbol_here; }\n", "broken")


def test_cache_reuses_and_keys_on_flags(monkeypatch, tmp_path):
    monkeypatch.setenv("SSMC_CACHE_DIR", str(tmp_path))
    source = "int ssmc_answer(void) { return 42; }\n"
    first = cbuild.compile_library(source, "answer")
    assert first.parent == tmp_path / "c" and first.exists()
    stamp = first.stat().st_mtime_ns
    assert cbuild.compile_library(source, "answer") == first and first.stat().st_mtime_ns == stamp
    monkeypatch.setenv("SSMC_CFLAGS", "-DSSMC_UNUSED=1")
    assert cbuild.compile_library(source, "answer") != first
    assert not [p for p in (tmp_path / "c").iterdir() if p.name.startswith(".")], "temporary files left behind"


CHILD = r"""
import json, os, sys, time
import torch
import ssmc
from ssmc.compiler import compile_package
go = sys.argv[1]
while not os.path.exists(go):            # start compiling together
    time.sleep(0.01)
torch.set_num_threads(1)
gen = torch.Generator().manual_seed(3)
u, delta, z = (torch.randn(1, 5, 20, generator=gen) for _ in range(3))
A = -torch.rand(5, 6, generator=gen) - 0.1
B, C = (torch.randn(1, 6, 20, generator=gen) for _ in range(2))
D, bias = torch.randn(5, generator=gen), torch.randn(5, generator=gen)
package = compile_package(ssmc.presets.mamba(d_state=6, name="concurrent"))
y = package.apply(u, delta, A, B, C, D=D, z=z, delta_bias=bias)
print(json.dumps(y.flatten().tolist()))
"""


def test_two_processes_compile_the_same_fresh_kernel(tmp_path):
    """Two processes compile the same package and C kernel into one fresh cache at the same time:
    both succeed (atomic renames), with the same result, and leave one library and no temp files."""
    cache = tmp_path / "fresh-cache"
    go = tmp_path / "go"
    env = dict(os.environ, SSMC_CACHE_DIR=str(cache), SSMC_BACKEND="c")
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(go)], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(2)]
    go.touch()
    outputs = [child.communicate(timeout=180) for child in children]
    for child, (out, err) in zip(children, outputs):
        assert child.returncode == 0, err
    assert outputs[0][0] == outputs[1][0]
    assert len(list((cache / "c").glob("*.so"))) == 1
    assert not list((cache / "c").glob(".*")), "temporary files left behind"


def test_reverse_direction(tmp_path, monkeypatch):
    """A plan with direction='reverse' (no preset makes one yet) scans from the last step back:
    the forward scan of the time-flipped inputs, flipped back."""
    import dataclasses
    import importlib.util

    from ssmc.backends import c
    from ssmc.ir.pass_manager import lower
    from ssmc.runtime.calls import ScanSignature, normalize_scan_args

    spec = ssmc.presets.mamba(d_state=4, gate=True)
    plans = c.fused_plans(lower(spec))
    reverse = {"scan": dataclasses.replace(plans["scan"], direction="reverse")}
    monkeypatch.setattr(c, "fused_plans", lambda lowered: reverse)
    for name, text in c.render_sources(lower(spec)).items():
        (tmp_path / name).write_text(text)
    module_spec = importlib.util.spec_from_file_location("reverse_kernels_c", tmp_path / "kernels_c.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)

    x = scan_inputs(batch=2, dim=18, length=70, n_state=4)
    signature = ScanSignature(complex=False, selective_dt=True, selective_B=True, selective_C=True,
                              has_dt_bias=True, has_D=True, has_z=True)
    args = normalize_scan_args(signature, x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"])
    y, state, state_im, ckpt_re, ckpt_im = module.scan_fwd(**args)
    assert state_im is None and ckpt_re is None and ckpt_im is None
    flip = {k: x[k].flip(-1) for k in ("u", "delta", "B", "C", "z")}
    y_ref, state_ref = selective_scan_ref(flip["u"], flip["delta"], x["A"], flip["B"], flip["C"], x["D"], flip["z"],
                                          x["delta_bias"], delta_softplus=True, return_last_state=True)
    assert rel_error(y, y_ref.flip(-1)) < TOL
    assert rel_error(state, state_ref) < TOL


def test_build_falls_back_without_openmp(monkeypatch, tmp_path):
    """Where -fopenmp fails the library is built with -fopenmp-simd (vectorised, one thread)."""
    monkeypatch.setenv("SSMC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cbuild, "OPENMP_FLAGS", ("-fopenmp", "--no-such-flag-for-ssmc"))
    library = cbuild.compile_library("int ssmc_answer(void) { return 42; }\n", "answer")
    import ctypes
    assert ctypes.CDLL(str(library)).ssmc_answer() == 42


@pytest.mark.parametrize("poison", ["0", "1"])
def test_outputs_are_nan_filled_only_under_the_tests_switch(backend, monkeypatch, poison):
    """The production path allocates the C kernels' outputs with torch.empty (a NaN fill is a full pass over
    out and the checkpoints); SSMC_POISON_OUTPUTS=1, which the tests set, NaN-fills them first, so an
    element a kernel failed to write cannot pass for a result. Either way the result is the reference's."""
    from ssmc.runtime.scan_tables import ScanTable
    backend("c")
    monkeypatch.setenv("SSMC_POISON_OUTPUTS", poison)
    seen = []
    original = ScanTable.new_outputs

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("poison"))
        return original(self, *args, **kwargs)
    monkeypatch.setattr(ScanTable, "new_outputs", spy)
    spec = ssmc.presets.mamba(d_state=4, name="poison_switch")
    inputs = scan_inputs(batch=2, dim=4, length=9, n_state=4, seed=3)
    out = compile_package(spec, "auto").apply(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
                                              D=inputs["D"], z=inputs["z"], delta_bias=inputs["delta_bias"])
    assert seen and set(seen) == {poison == "1"}
    ref = selective_scan_ref(*(inputs[k].double() for k in ("u", "delta", "A", "B", "C")), D=inputs["D"].double(),
                             z=inputs["z"].double(), delta_bias=inputs["delta_bias"].double(), delta_softplus=True)
    assert rel_error(out, ref) < 1e-5
