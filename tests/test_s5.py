"""S5 (MIMO layers): `ssmc.ops.s5_scan`, the generated package and the preset, against the float64
reference `ssmc.reference_s5.s5_ref` (the plain sequential recurrence).

Every test draws fresh random inputs; the stage kernels' outputs start as NaN (SSMC_POISON_OUTPUTS,
set by conftest) and rel_error asserts finiteness, so an element a kernel never writes fails. Each
backend is forced with SSMC_BACKEND: c and torch at every option, triton under its interpreter
(conftest sets TRITON_INTERPRET=1) on CPU tensors at small shapes. The stage kernels themselves are
compared backend against backend in tests/test_mimo_stages.py.

Options: a complex layer with conjugate symmetry (y = 2·Re(C x)), a complex one without (Re(C x)),
a real one (real Lambda, B, C); ZOH and bilinear; one direction or two; a step per state (P,) or per
input step (batch, len, P); with and without D; the pipelines "associative", "fused" and None (the
cost model's choice).
"""
import math

import pytest
import torch

import ssmc
from conftest import rel_error
from ssmc.compiler import compile_package
from ssmc.ops import s5_key, s5_scan
from ssmc.reference_s5 import discretize_ref, s5_ref

# name -> (complex Lambda, conj_sym)
KINDS = {"conj_sym": (True, True), "complex": (True, False), "real": (False, False)}
PIPELINES = ["associative", "fused", None]
TOL64, TOL32 = 1e-12, 1e-5


def s5_inputs(kind="conj_sym", batch=2, length=37, H=5, P=3, bidirectional=False, varying=False, has_D=True,
              dtype=torch.float64, seed=None, requires_grad=False):
    """(arguments of s5_scan, options): fresh random tensors, decays |exp(ΔΛ)| in about (0.5, 0.99)."""
    is_complex, conj_sym = KINDS[kind]
    gen = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item()))
    rand = lambda *s: torch.rand(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    randn = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731

    def matrix(*shape):
        return torch.complex(randn(*shape), randn(*shape)) / math.sqrt(2) if is_complex else randn(*shape)

    re = -(0.2 + rand(P))
    Lambda = torch.complex(re, 3 * randn(P)) if is_complex else re
    step = 0.05 + 0.5 * rand(*((batch, length, P) if varying else (P,)))
    args = dict(u=randn(batch, length, H), Lambda=Lambda, B=matrix(P, H) / math.sqrt(H),
                C=matrix(*((2,) if bidirectional else ()), H, P) / math.sqrt(P), D=randn(H) if has_D else None,
                step=step)
    complex_dtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    for name, x in args.items():
        if x is not None:
            x = x.to(complex_dtype if x.is_complex() else dtype)
            args[name] = x.requires_grad_(requires_grad) if requires_grad else x
    return args, dict(conj_sym=conj_sym, bidirectional=bidirectional)


def check_forward(args, options, tol, discretization="zoh", pipelines=PIPELINES, cu_seqlens=None):
    ref = s5_ref(**args, discretization=discretization, cu_seqlens=cu_seqlens, **options)
    outputs = {}
    for pipeline in pipelines:
        y = s5_scan(**args, discretization=discretization, cu_seqlens=cu_seqlens, pipeline=pipeline, **options)
        assert y.dtype == args["u"].dtype and y.shape == args["u"].shape, pipeline
        error = rel_error(y, ref)
        assert error < tol, (pipeline, error)
        outputs[pipeline] = y
    return outputs, ref


def s5_autograd_ref(u, Lambda, B, C, D, step, discretization="zoh", conj_sym=True, bidirectional=False):
    """The recurrence in float64 torch operations, differentiable (s5_ref detaches its inputs): the
    gradients every backend's backward is compared with."""
    complex_dtype = torch.complex128 if Lambda.is_complex() else torch.float64
    u = u.double()
    Lambda, B, C = Lambda.to(complex_dtype), B.to(complex_dtype), C.to(complex_dtype)
    decay, scale = discretize_ref(step.double(), Lambda, discretization)
    batch, length, _ = u.shape
    decay, scale = (x.expand(batch, length, -1) for x in (decay, scale))
    v = scale * (u.to(complex_dtype) @ B.t())

    def scan(reverse):
        x, states = torch.zeros_like(v[:, 0]), [None] * length
        for t in (range(length - 1, -1, -1) if reverse else range(length)):
            x = decay[:, t] * x + v[:, t]
            states[t] = x
        return torch.stack(states, dim=1)

    k = 2.0 if conj_sym else 1.0
    readouts = (C[0], C[1]) if bidirectional else (C,)
    y = sum(k * (scan(direction == 1) @ Cd.t()).real for direction, Cd in enumerate(readouts))
    return y + u * D.double() if D is not None else y


def gradients(y, args, weight):
    names = [n for n, x in args.items() if x is not None and x.requires_grad]
    grads = torch.autograd.grad((y * weight).sum(), [args[n] for n in names])
    return dict(zip(names, grads))


# ---- forward: every option, every backend ------------------------------------------------------------
@pytest.mark.parametrize("backend_name", ["c", "torch"])
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bidir"])
@pytest.mark.parametrize("varying", [False, True], ids=["lti_step", "varying_step"])
def test_every_option_matches_the_reference(backend, backend_name, kind, discretization, bidirectional, varying):
    backend(backend_name)
    has_D = bidirectional == varying            # with and without D at every kind and discretization
    args, options = s5_inputs(kind, bidirectional=bidirectional, varying=varying, has_D=has_D)
    check_forward(args, options, TOL64, discretization)


@pytest.mark.parametrize("backend_name", ["c", "torch"])
@pytest.mark.parametrize("shape", [dict(length=1, H=1, P=1), dict(length=1, H=7, P=5),
                                   dict(batch=3, length=150, H=9, P=7), dict(batch=1, length=65, H=3, P=70)],
                         ids=["L1-H1-P1", "L1-H7-P5", "L150-H9-P7", "L65-H3-P70"])
def test_odd_shapes(backend, backend_name, shape):
    """A single step, lengths past one (and two) time tiles of the fused stage (64), a state past one
    block of the C scan (64 entries)."""
    backend(backend_name)
    for kind in KINDS:
        args, options = s5_inputs(kind, bidirectional=True, varying=True, **shape)
        check_forward(args, options, TOL64, "bilinear")
        args, options = s5_inputs(kind, **shape)
        check_forward(args, options, TOL64)


TRITON_CASES = {
    "conj_sym-zoh": ("conj_sym", "zoh", dict(bidirectional=True, varying=True)),
    "complex-bilinear-noD": ("complex", "bilinear", dict(has_D=False)),
    "real-zoh": ("real", "zoh", dict(bidirectional=True, varying=True, has_D=False)),
    "real-bilinear": ("real", "bilinear", dict(varying=False)),
    "conj_sym-L1": ("conj_sym", "bilinear", dict(length=1, H=3, P=1, varying=True)),
    # past one block of H (32) and of the state (16) in the fused kernel, three time tiles (16)
    "blocks-L37-H40-P20": ("conj_sym", "zoh", dict(batch=1, length=37, H=40, P=20, varying=True)),
}


@pytest.mark.parametrize("case", list(TRITON_CASES))
def test_triton_matches_the_reference(backend, case):
    backend("triton")
    kind, discretization, shape = TRITON_CASES[case]
    args, options = s5_inputs(kind, **shape)
    check_forward(args, options, TOL64, discretization, pipelines=["associative", "fused"])


@pytest.mark.parametrize("backend_name", ["c", "torch", "triton"])
def test_pipelines_agree_with_each_other(backend, backend_name):
    """associative and fused compute the same numbers, beyond the reference's tolerance."""
    backend(backend_name)
    size = dict(batch=2, length=37, H=6, P=5) if backend_name == "triton" else dict(batch=3, length=130, H=11, P=9)
    for kind in (["conj_sym", "real"] if backend_name == "triton" else KINDS):
        args, options = s5_inputs(kind, bidirectional=True, varying=kind != "complex", **size)
        outputs, _ = check_forward(args, options, TOL64, pipelines=["associative", "fused"])
        assert rel_error(outputs["associative"], outputs["fused"]) < 1e-13


@pytest.mark.parametrize("backend_name", ["c", "torch", "triton"])
def test_float32(backend, backend_name):
    backend(backend_name)
    length = 21 if backend_name == "triton" else 150
    cases = (("conj_sym", True, True), ("real", False, False), ("complex", False, True))
    for kind, varying, bidirectional in (cases[:2] if backend_name == "triton" else cases):
        args, options = s5_inputs(kind, length=length, H=6, P=5, varying=varying, bidirectional=bidirectional,
                                  dtype=torch.float32)
        check_forward(args, options, TOL32, pipelines=["associative", "fused"])


def test_pipeline_none_follows_the_cost_model(backend):
    """pipeline=None runs the cheapest candidate of pipeline_costs (both win somewhere on torch)."""
    backend("torch")
    package = compile_package(*ssmc.ops._spec_of(s5_key(3)))
    assert package.CANDIDATES == ["associative", "fused"]
    winners = set()
    for shape in ((1, 8, 5, 3), (2, 4096, 64, 64), (8, 100, 3, 3), (1, 10**6, 1, 1)):
        costs = package.pipeline_costs(*shape, target="torch")
        assert all(c > 0 for c in costs)
        winner = package.choose_pipeline(*shape, target="torch")
        assert winner == package.CANDIDATES[costs.index(min(costs))]
        winners.add(winner)
    assert winners == {"associative", "fused"}
    with pytest.raises(ValueError, match="target"):
        package.pipeline_costs(1, 8, 5, 3, target="tpu")


@pytest.mark.parametrize("backend_name", ["c", "torch"])
def test_non_contiguous_inputs(backend, backend_name):
    """Transposed and strided views (u, B, C, step) give the results, and gradients, of their copies."""
    backend(backend_name)
    args, options = s5_inputs(length=23, bidirectional=True, varying=True, requires_grad=True)
    views = dict(u=args["u"].detach().transpose(0, 1).contiguous().transpose(0, 1),
                 B=args["B"].detach().t().contiguous().t(),
                 C=args["C"].detach().transpose(1, 2).contiguous().transpose(1, 2),
                 step=torch.stack([args["step"].detach()] * 2, -1)[..., 0],
                 Lambda=torch.stack([args["Lambda"].detach()] * 2, -1)[..., 1],
                 D=args["D"].detach())
    for x in views.values():
        x.requires_grad_(True)
    assert not any(views[n].is_contiguous() for n in ("u", "B", "C", "step", "Lambda"))
    weight = torch.randn(2, 23, 5, dtype=torch.float64)
    for pipeline in ("associative", "fused"):
        y = s5_scan(**views, pipeline=pipeline, **options)
        assert rel_error(y, s5_ref(**args, **options)) < TOL64
        expected = gradients(s5_scan(**args, pipeline=pipeline, **options), args, weight)
        for name, g in gradients(y, views, weight).items():
            assert rel_error(g, expected[name]) < TOL64, (pipeline, name)


# ---- packed sequences ------------------------------------------------------------------------------
@pytest.mark.parametrize("backend_name", ["c", "torch", "triton"])
def test_packed_sequences_equal_each_sequence_alone(backend, backend_name):
    backend(backend_name)
    cu_seqlens = torch.tensor([0, 4, 5, 17, 30], dtype=torch.int32)        # a length-1 sequence
    bounds = list(zip(cu_seqlens.tolist()[:-1], cu_seqlens.tolist()[1:]))
    kinds = ["conj_sym"] if backend_name == "triton" else list(KINDS)
    for kind in kinds:
        args, options = s5_inputs(kind, batch=1, length=30, bidirectional=True, varying=True)
        outputs, _ = check_forward(args, options, TOL64, pipelines=["associative", "fused"], cu_seqlens=cu_seqlens)
        for pipeline, y in outputs.items():
            for start, end in bounds:
                alone = dict(args, u=args["u"][:, start:end], step=args["step"][:, start:end])
                y_alone = s5_scan(**alone, pipeline=pipeline, **options)
                assert rel_error(y[:, start:end], y_alone) < TOL64
        # a time-invariant step, int64 offsets
        args, options = s5_inputs(kind, batch=1, length=30)
        check_forward(args, options, TOL64, pipelines=["associative", "fused"], cu_seqlens=cu_seqlens.long())


def test_packed_sequences_gradients(backend):
    """The gradients of a packed call are those of each sequence alone (shared tensors summed)."""
    backend("c")
    cu_seqlens = torch.tensor([0, 6, 7, 15])
    for pipeline in ("associative", "fused"):
        args, options = s5_inputs(batch=1, length=15, bidirectional=True, varying=True, requires_grad=True)
        weight = torch.randn(1, 15, 5, dtype=torch.float64)
        packed = gradients(s5_scan(**args, cu_seqlens=cu_seqlens, pipeline=pipeline, **options), args, weight)
        alone = {name: torch.zeros_like(g) for name, g in packed.items()}
        for start, end in ((0, 6), (6, 7), (7, 15)):
            y = s5_scan(**dict(args, u=args["u"][:, start:end], step=args["step"][:, start:end]), pipeline=pipeline,
                        **options)
            for name, g in gradients(y, args, weight[:, start:end]).items():
                alone[name] += g
        for name in packed:
            assert rel_error(packed[name], alone[name]) < TOL64, (pipeline, name)


# ---- gradients -------------------------------------------------------------------------------------
GRAD_CASES = {
    "conj_sym-bidir-varying-zoh": ("conj_sym", "zoh", dict(bidirectional=True, varying=True)),
    "complex-lti-bilinear": ("complex", "bilinear", dict()),
    "real-bidir-varying-bilinear": ("real", "bilinear", dict(bidirectional=True, varying=True)),
    "conj_sym-lti-noD-L1": ("conj_sym", "zoh", dict(has_D=False, length=1)),
}


@pytest.mark.parametrize("pipeline", ["associative", "fused"])
@pytest.mark.parametrize("case", list(GRAD_CASES))
def test_gradcheck(backend, case, pipeline):
    """torch.autograd.gradcheck in float64 in every input (u, Lambda, B, C, D, step)."""
    backend("c")
    kind, discretization, shape = GRAD_CASES[case]
    shape = dict(dict(batch=2, length=5, H=3, P=2), **shape)
    args, options = s5_inputs(kind, requires_grad=True, **shape)
    names = [n for n, x in args.items() if x is not None]

    def f(*tensors):
        return s5_scan(**dict(args, **dict(zip(names, tensors))), discretization=discretization, pipeline=pipeline,
                       **options)

    assert torch.autograd.gradcheck(f, [args[n] for n in names], eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("backend_name", ["c", "torch", "triton"])
def test_gradients_match_autograd_through_the_recurrence(backend, backend_name):
    """The derived backward against autograd through the float64 recurrence, every input, both
    pipelines (triton: the same backward over its stage kernels)."""
    backend(backend_name)
    cases = (("conj_sym", "zoh", True, True), ("real", "bilinear", False, True), ("complex", "zoh", True, False))
    length = 9 if backend_name == "triton" else 19
    for kind, discretization, bidirectional, varying in (cases[:2] if backend_name == "triton" else cases):
        args, options = s5_inputs(kind, length=length, H=4, P=3, bidirectional=bidirectional, varying=varying,
                                  requires_grad=True)
        weight = torch.randn(2, length, 4, dtype=torch.float64)
        expected = gradients(s5_autograd_ref(**args, discretization=discretization, **options), args, weight)
        for pipeline in ("associative", "fused"):
            got = gradients(s5_scan(**args, discretization=discretization, pipeline=pipeline, **options), args, weight)
            assert set(got) == {"u", "Lambda", "B", "C", "D", "step"}
            for name in got:
                assert got[name].dtype == args[name].dtype
                assert rel_error(got[name], expected[name]) < 1e-11, (kind, pipeline, name)


def test_float32_gradients(backend):
    backend("c")
    args, options = s5_inputs(length=40, varying=True, bidirectional=True, dtype=torch.float32, requires_grad=True)
    weight = torch.randn(2, 40, 5)
    expected = gradients(s5_autograd_ref(**args, **options), args, weight)
    for pipeline in ("associative", "fused"):
        got = gradients(s5_scan(**args, pipeline=pipeline, **options), args, weight)
        for name in got:
            assert got[name].dtype == args[name].dtype
            assert rel_error(got[name], expected[name]) < 2e-5, (pipeline, name)


# ---- decays near 0 and near 1 ----------------------------------------------------------------------
@pytest.mark.parametrize("backend_name, discretization", [("c", "zoh"), ("c", "bilinear"), ("torch", "zoh"),
                                                         ("torch", "bilinear"), ("triton", "zoh")])
def test_extreme_decays(backend, backend_name, discretization):
    """Re(Λ)·Δ ≈ -20 (the state forgets at once) and ≈ -1e-6 (it barely decays: ZOH's input scale
    expm1(ΔΛ)/Λ must not cancel), in one layer: finite and correct, forward and backward."""
    backend(backend_name)
    length = 17 if backend_name == "triton" else 60
    args, options = s5_inputs("conj_sym", batch=2, length=length, H=4, P=4, varying=True, bidirectional=True,
                              seed=3)
    step = 0.1 * (0.8 + 0.4 * torch.rand(2, length, 4, dtype=torch.float64))
    re = torch.tensor([-200.0, -1e-5, -200.0, -1e-5], dtype=torch.float64)      # Re(Λ)·Δ ≈ -20, -1e-6
    args.update(step=step, Lambda=torch.complex(re, torch.tensor([3.0, 1e-3, 0.0, 0.0], dtype=torch.float64)))
    outputs, ref = check_forward(args, options, 1e-10, discretization, pipelines=["associative", "fused"])
    # the slowly decaying states carry information over the whole sequence, the fast ones only a step
    assert ref.abs().max() > 1e-3
    for x in args.values():
        if x is not None:
            x.requires_grad_(True)
    weight = torch.randn(2, length, 4, dtype=torch.float64)
    expected = gradients(s5_autograd_ref(**args, discretization=discretization, **options), args, weight)
    for pipeline in ("associative", "fused"):
        got = gradients(s5_scan(**args, discretization=discretization, pipeline=pipeline, **options), args, weight)
        for name in got:
            assert rel_error(got[name], expected[name]) < 1e-9, (pipeline, name)
    # float32: the same layer in single precision
    args32 = {name: (x.detach().to(torch.complex64 if x.is_complex() else torch.float32) if x is not None else None)
              for name, x in args.items()}
    for pipeline in ("associative", "fused"):
        y = s5_scan(**args32, discretization=discretization, pipeline=pipeline, **options)
        assert rel_error(y, ref) < 1e-4, pipeline


# ---- bad inputs ------------------------------------------------------------------------------------
BAD_INPUTS = [
    (lambda a: dict(u=a["u"][0]), ssmc.ShapeError, r"^u: expected a real tensor of shape \(batch, len, H\)"),
    (lambda a: dict(u=a["u"].to(torch.complex128)), ssmc.ShapeError, r"^u: expected a real floating tensor"),
    (lambda a: dict(u=a["u"].long()), ssmc.ShapeError, r"^u: expected a real floating tensor"),
    (lambda a: dict(u=a["u"][:, :0]), ssmc.ShapeError, r"^u: the sequence is empty"),
    (lambda a: dict(Lambda=a["Lambda"][None]), ssmc.ShapeError, r"^Lambda: expected a tensor of shape \(P,\)"),
    (lambda a: dict(Lambda=a["Lambda"][:0]), ssmc.ShapeError, r"^Lambda: expected at least one state"),
    (lambda a: dict(Lambda=a["Lambda"].real), ssmc.ShapeError, r"^Lambda: conj_sym=True .* must be complex"),
    (lambda a: dict(B=a["B"][:, :4]), ssmc.ShapeError,
     r"^B: expected a tensor of shape \(P, H\) = \(3, 5\), got \(3, 4\)"),
    (lambda a: dict(B=a["B"].t()), ssmc.ShapeError, r"^B: expected a tensor of shape \(P, H\)"),
    (lambda a: dict(B=a["B"].real), ssmc.ShapeError, r"^B: expected a complex tensor"),
    (lambda a: dict(C=a["C"].t()), ssmc.ShapeError,
     r"^C: expected a tensor of shape \(H, P\) = \(5, 3\), got \(3, 5\)"),
    (lambda a: dict(C=a["C"][None].expand(2, 5, 3)), ssmc.ShapeError, r"^C: expected a tensor of shape \(H, P\)"),
    (lambda a: dict(C=a["C"].real), ssmc.ShapeError, r"^C: expected a complex tensor"),
    (lambda a: dict(D=a["D"][:4]), ssmc.ShapeError, r"^D: expected a tensor of shape \(H,\) = \(5,\), got \(4,\)"),
    (lambda a: dict(D=a["D"].to(torch.complex128)), ssmc.ShapeError, r"^D: expected a real floating tensor"),
    (lambda a: dict(step=a["step"][:2]), ssmc.ShapeError, r"^step: expected shape \(P,\) = \(3,\)"),
    (lambda a: dict(step=a["step"][None]), ssmc.ShapeError, r"^step: expected shape \(P,\)"),
    (lambda a: dict(step=torch.rand(2, 36, 3, dtype=torch.float64)), ssmc.ShapeError,
     r"^step: expected shape \(P,\) = \(3,\) or \(batch, len, P\) = \(2, 37, 3\), got \(2, 36, 3\)$"),
    (lambda a: dict(step=torch.rand(1, 37, 3, dtype=torch.float64)), ssmc.ShapeError, r"^step: expected shape"),
    (lambda a: dict(step=torch.ones(3, dtype=torch.int64)), ssmc.ShapeError, r"^step: expected a real floating"),
    (lambda a: dict(step=a["step"].to(torch.complex128)), ssmc.ShapeError, r"^step: expected a real floating"),
    (lambda a: dict(step=torch.tensor([0.1, 0.0, 0.2], dtype=torch.float64)), ssmc.ShapeError, r"^step: .*positive"),
    (lambda a: dict(step=torch.tensor([0.1, -0.1, 0.2], dtype=torch.float64)), ssmc.ShapeError, r"^step: .*positive"),
    (lambda a: dict(step=torch.tensor([0.1, float("nan"), 0.2], dtype=torch.float64)), ssmc.ShapeError,
     r"^step: .*positive"),
    (lambda a: dict(step=0.1), ssmc.ShapeError, r"^step: expected a positive tensor"),
]


@pytest.mark.parametrize("index", range(len(BAD_INPUTS)))
def test_bad_inputs_name_the_argument(backend, index):
    backend("c")
    change, error, message = BAD_INPUTS[index]
    args, options = s5_inputs(batch=2, length=37, H=5, P=3)
    with pytest.raises(error, match=message):
        s5_scan(**dict(args, **change(args)), **options)


def test_bad_options_name_the_argument(backend):
    backend("c")
    args, options = s5_inputs(batch=1, length=10, H=5, P=3)
    bidir_args, _ = s5_inputs(batch=1, length=10, H=5, P=3, bidirectional=True)
    with pytest.raises(ssmc.ShapeError, match=r"^C: expected a tensor of shape \(2, H, P\) \(bidirectional\)"):
        s5_scan(**args, conj_sym=True, bidirectional=True)
    with pytest.raises(ssmc.ShapeError, match=r"^C: expected a tensor of shape \(H, P\) = \(5, 3\), got \(2, 5, 3\)"):
        s5_scan(**bidir_args, conj_sym=True, bidirectional=False)
    with pytest.raises(ssmc.SpecError, match=r"^discretization: expected 'zoh' or 'bilinear', got 'euler'"):
        s5_scan(**args, discretization="euler", **options)
    with pytest.raises(ssmc.ScheduleError, match=r"pipeline='chunked'"):
        s5_scan(**args, pipeline="chunked", **options)
    real_args, real_options = s5_inputs("real", batch=1, length=10, H=5, P=3)
    with pytest.raises(ssmc.ShapeError, match=r"^Lambda: conj_sym=True"):
        s5_scan(**real_args, conj_sym=True)
    with pytest.raises(ssmc.ShapeError, match=r"^B: expected a real floating tensor"):
        s5_scan(**dict(real_args, B=real_args["B"].to(torch.complex128)), **real_options)
    for cu_seqlens, message in ((torch.tensor([0, 5, 5, 10]), "strictly increasing"),
                                (torch.tensor([0, 6, 3, 10]), "strictly increasing"),
                                (torch.tensor([0, 5, 9]), r"from 0 to len=10, got \[0, 5, 9\]"),
                                (torch.tensor([0, 5, 11]), "to len=10"),
                                (torch.tensor([1, 5, 10]), "from 0"),
                                (torch.tensor([0.0, 5.0, 10.0]), "int offsets"),
                                (torch.tensor([[0, 5, 10]]), "int offsets"),
                                (torch.tensor([0]), "int offsets"),
                                ([0, 5, 10], "int offsets")):
        with pytest.raises(ssmc.ShapeError, match="^cu_seqlens: .*" + message):
            s5_scan(**args, cu_seqlens=cu_seqlens, **options)
    batch2, _ = s5_inputs(batch=2, length=10, H=5, P=3)
    with pytest.raises(ssmc.ShapeError, match=r"^cu_seqlens: a packed batch has batch = 1, got u of batch 2"):
        s5_scan(**batch2, cu_seqlens=torch.tensor([0, 5, 10]), **options)


# ---- the preset, the compiled module and the package ------------------------------------------------
PRESETS = {
    "default": dict(),
    "no-conj_sym-bilinear": dict(conj_sym=False, discretization="bilinear"),
    "bidir-varying": dict(bidirectional=True, input_dependent_dt=True),
    "no-conj_sym-bidir-varying-bilinear": dict(conj_sym=False, bidirectional=True, input_dependent_dt=True,
                                               discretization="bilinear"),
}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_layer_forward_and_backward(backend, preset):
    """ssmc.compile(presets.s5(...)) is a module class; its Layer's output is s5_ref on its own
    parameters (parameters_as_s5), and its parameter gradients are autograd's through the recurrence."""
    backend("c")
    options = PRESETS[preset]
    spec = ssmc.presets.s5(d_state=6, name=f"s5_{preset.replace('-', '_')}", **options)
    conj_sym = options.get("conj_sym", True)
    assert spec.d_state == (3 if conj_sym else 6) and spec.is_mimo and spec.is_complex
    assert spec.heads == ssmc.MIMO(conj_sym=conj_sym, bidirectional=options.get("bidirectional", False))
    Layer = ssmc.compile(spec)
    assert isinstance(Layer, type) and issubclass(Layer, torch.nn.Module)
    torch.manual_seed(0)
    layer = Layer(H=5).double()
    u = torch.randn(2, 17, 5, dtype=torch.float64, requires_grad=True)
    y = layer(u)
    assert y.shape == u.shape and y.dtype == torch.float64
    Lambda, B, C, step = layer.parameters_as_s5(u)
    assert Lambda.shape == (spec.d_state,) and (Lambda.real < 0).all() and (step > 0).all()
    assert step.shape == ((2, 17, spec.d_state) if options.get("input_dependent_dt") else (spec.d_state,))
    reference = dict(Lambda=Lambda, B=B, C=C, D=layer.D, step=step,
                     discretization=options.get("discretization", "zoh"), conj_sym=conj_sym,
                     bidirectional=options.get("bidirectional", False))
    assert rel_error(y, s5_ref(u, **reference)) < TOL64
    weight = torch.randn_like(y)
    params = [u] + list(layer.parameters())
    got = torch.autograd.grad((y * weight).sum(), params)
    Lambda, B, C, step = layer.parameters_as_s5(u)
    y_ref = s5_autograd_ref(u, **dict(reference, Lambda=Lambda, B=B, C=C, step=step))
    expected = torch.autograd.grad((y_ref * weight).sum(), params)
    for (name, _), g, e in zip([("u", u)] + list(layer.named_parameters()), got, expected):
        assert g.abs().sum() > 0, name
        assert rel_error(g, e) < 1e-10, name
    # the module in float32 on float32 inputs, and packed sequences (one of length 1) through it
    layer32 = layer.float()
    u32 = u.detach().float()
    y32 = layer32(u32)
    assert y32.dtype == torch.float32 and rel_error(y32, y) < TOL32
    cu_seqlens = torch.tensor([0, 1, 10, 17])
    packed = layer32(u32[:1], cu_seqlens=cu_seqlens)
    Lambda, B, C, step = layer32.parameters_as_s5(u32[:1])
    ref_packed = s5_ref(u32[:1], **dict(reference, Lambda=Lambda, B=B, C=C, D=layer32.D, step=step),
                        cu_seqlens=cu_seqlens)
    assert rel_error(packed, ref_packed) < TOL32


def test_preset_layer_on_every_backend(backend):
    spec = ssmc.presets.s5(d_state=4, bidirectional=True, input_dependent_dt=True, name="s5_every_backend")
    torch.manual_seed(1)
    layer = ssmc.compile(spec)(H=3).double()
    u = torch.randn(1, 9, 3, dtype=torch.float64)
    outputs = {}
    for name in ("c", "torch", "triton"):
        backend(name)
        outputs[name] = layer(u)
    Lambda, B, C, step = layer.parameters_as_s5(u)
    ref = s5_ref(u, Lambda, B, C, layer.D, step, bidirectional=True)
    for name, y in outputs.items():
        assert rel_error(y, ref) < TOL64, name


@pytest.mark.parametrize("schedule", ["auto", "associative", "fused"])
def test_package_apply_matches_the_reference(backend, schedule):
    backend("c")
    spec = ssmc.presets.s5(d_state=6, bidirectional=True, input_dependent_dt=True, discretization="bilinear",
                           name="s5_package")
    package = compile_package(spec, schedule)
    assert package.CANDIDATES == (["associative", "fused"] if schedule == "auto" else [schedule])
    args, options = s5_inputs(P=3, bidirectional=True, varying=True)
    ref = s5_ref(**args, discretization="bilinear", **options)
    for pipeline in [None] + package.CANDIDATES:
        assert rel_error(package.apply(**args, pipeline=pipeline), ref) < TOL64
    for other in {"associative", "fused"} - set(package.CANDIDATES):
        with pytest.raises(ssmc.ScheduleError, match=f"pipeline='{other}': this package was compiled for"):
            package.apply(**args, pipeline=other)
    # a time-invariant step is accepted too by a package with an input-dependent one
    args["step"] = args["step"][0, 0]
    assert rel_error(package.apply(**args), s5_ref(**args, discretization="bilinear", **options)) < TOL64


def test_time_invariant_package_refuses_a_step_per_input_step(backend):
    backend("c")
    package = compile_package(ssmc.presets.s5(d_state=6, name="s5_lti_only"))
    args, _ = s5_inputs(P=3, varying=True)
    with pytest.raises(ssmc.ShapeError, match=r"^step: expected shape \(P,\) = \(3,\), got \(2, 37, 3\)$"):
        package.apply(**args)


def test_package_refuses_a_convolution_schedule():
    with pytest.raises(ssmc.ScheduleError, match="conv"):
        compile_package(ssmc.presets.s5(d_state=4, name="s5_conv"), "conv")


def test_spec_errors_name_the_field():
    with pytest.raises(ssmc.SpecError, match=r"MIMO\.conj_sym must be a bool, got 1"):
        ssmc.MIMO(conj_sym=1)
    with pytest.raises(ssmc.SpecError, match=r"MIMO\.bidirectional must be a bool, got 'yes'"):
        ssmc.MIMO(bidirectional="yes")
    with pytest.raises(ssmc.SpecError, match=r"MIMO\(conj_sym=True\).*A must be complex"):
        ssmc.SSM("s5r", 4, A=ssmc.Diagonal(real=True), heads=ssmc.MIMO(conj_sym=True))
    real = ssmc.SSM("s5r", 4, A=ssmc.Diagonal(real=True), heads=ssmc.MIMO(conj_sym=False))
    assert real.is_mimo and not real.is_complex
    with pytest.raises(ssmc.SpecError, match=r"A=Scalar\(\)"):
        ssmc.SSM("s5s", 4, A=ssmc.Scalar(), heads=ssmc.MIMO())
    with pytest.raises(ssmc.SpecError, match="input-dependent B"):
        ssmc.SSM("s5b", 4, A=ssmc.Diagonal(real=False), selective=("dt", "B"), heads=ssmc.MIMO())
    with pytest.raises(ssmc.SpecError, match="gate=True"):
        ssmc.SSM("s5g", 4, A=ssmc.Diagonal(real=False), gate=True, heads=ssmc.MIMO())
    with pytest.raises(ssmc.SpecError, match="^conj_sym: expected a bool, got 1"):
        ssmc.presets.s5(conj_sym=1)
    with pytest.raises(ssmc.SpecError, match=r"MIMO\.bidirectional must be a bool"):
        ssmc.presets.s5(bidirectional=1)
    with pytest.raises(ssmc.SpecError, match="^d_state: expected an even int"):
        ssmc.presets.s5(d_state=7)
    assert ssmc.presets.s5(d_state=7, conj_sym=False).d_state == 7
    with pytest.raises(ssmc.SpecError, match="discretization must be one of"):
        ssmc.presets.s5(discretization="rk4")
    with pytest.raises(ssmc.SpecError, match="d_sate"):
        ssmc.presets.s5(d_sate=8)


def test_real_mimo_spec_compiles_and_matches_the_reference(backend):
    """A real MIMO layer written with the DSL (the preset is complex): the package's apply."""
    backend("c")
    spec = ssmc.SSM("s5_real", 4, A=ssmc.Diagonal(real=True), discretization=ssmc.Bilinear(), selective=("dt",),
                    heads=ssmc.MIMO(conj_sym=False, bidirectional=True), skip_D=False)
    package = compile_package(spec)
    args, options = s5_inputs("real", P=4, bidirectional=True, varying=True, has_D=False)
    ref = s5_ref(**args, discretization="bilinear", **options)
    for pipeline in (None, "associative", "fused"):
        assert rel_error(package.apply(**args, pipeline=pipeline), ref) < TOL64
    layer = package.Layer(H=5).double()
    u = torch.randn(2, 11, 5, dtype=torch.float64)
    Lambda, B, C, step = layer.parameters_as_s5(u)
    assert not Lambda.is_complex() and (Lambda < 0).all()
    assert rel_error(layer(u), s5_ref(u, Lambda, B, C, None, step, "bilinear", conj_sym=False,
                                      bidirectional=True)) < TOL64


# ---- ssmc explain ----------------------------------------------------------------------------------
def test_explain_shows_the_pipelines_and_their_costs(tmp_path, capsys):
    from ssmc.cli import main
    (tmp_path / "s5spec.py").write_text("import ssmc\nlayer = ssmc.presets.s5(d_state=16, bidirectional=True)\n")
    assert main(["explain", str(tmp_path / "s5spec.py"), "--shape", "batch=2,len=4096,dim=64"]) == 0
    out = capsys.readouterr().out
    assert "MIMO(conj_sym=True, bidirectional=True)" in out and "mimo_scan" in out and "mimo_fused" in out
    assert "== cost model at batch=2, len=4096, H=64, state=8 ==" in out
    package = compile_package(ssmc.presets.s5(d_state=16, bidirectional=True))
    for target in ("c", "torch", "triton"):
        costs = package.pipeline_costs(2, 4096, 64, 8, target=target)
        for pipeline, cost in zip(package.CANDIDATES, costs):
            line = next(x for x in out.splitlines() if x.strip().startswith(f"{target}: {pipeline} "))
            assert math.isclose(float(line.split("cost = ")[1]), cost, rel_tol=1e-3), line
        assert f"{target}: winner {package.choose_pipeline(2, 4096, 64, 8, target=target)} " in out
    assert main(["explain", str(tmp_path / "s5spec.py"), "--schedule", "fused"]) == 0
    out = capsys.readouterr().out
    assert "c: winner fused" in out and "associative" not in out.split("== cost model")[1]
    assert main(["explain", str(tmp_path / "s5spec.py"), "--schedule", "conv"]) == 2
    assert "no convolution form for MIMO" in capsys.readouterr().err
