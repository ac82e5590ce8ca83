"""Formula safety (ssmc.formula): text is parsed without running code, and a spec accepts exactly the
formulas whose forward and derived backward every backend printer prints."""
import json
import os

import pytest
import sympy

import ssmc
from ssmc import formula
from ssmc.backends.package import render_package
from ssmc.backends.printers import CPrinter, DoubleCPrinter, TorchPrinter, TritonPrinter, UnsupportedExpression
from ssmc.ir.build import build_graph
from ssmc.ir.cost import evaluate
from ssmc.ir.graph import Graph
from ssmc.ir.pass_manager import lower

PRINTERS = [TritonPrinter(), TorchPrinter(), CPrinter(), DoubleCPrinter()]
DT, A = sympy.Symbol("dt", real=True), sympy.Symbol("A", real=True)


# --- parsing never runs code -------------------------------------------------------------------
def _payloads(marker):
    touch = f"__import__('os').system('touch {marker}')"
    return [
        f"{touch}+dt",
        f"exp({touch})",
        f"(lambda: {touch})()",
        "().__class__.__bases__[0].__subclasses__()",
        "exp.__globals__",
        f"[{touch}][0]",
        f"dt if {touch} else A",
        "exp(x=dt)", "exp(*[dt])", "exp(dt, A)", "log",
        "dt**99999999", "2**99999999", "(2**4)**99", "dt**(1/3)", "dt**A",
        "f'{dt}'", "dt == A", "dt and A", "'dt'", "1j*dt", "2^3", "dt; A", "(" * 500 + "dt" + ")" * 500,
        "((((dt*A + 1)**4 + 1)**4 + 1)**4 + 1)**4", "+".join(["exp(dt*A)"] * 80),   # would keep sympy busy
    ]


@pytest.mark.parametrize("where", ["decay", "input_scale"])
def test_hostile_formula_text_is_refused_and_runs_nothing(tmp_path, where):
    marker = tmp_path / "pwned"
    for text in _payloads(marker):
        kwargs = {"decay": "exp(dt*A)", "input_scale": "dt", where: text}
        with pytest.raises(ssmc.SpecError, match=f"Custom.{where}"):
            ssmc.Custom(**kwargs)
        assert not marker.exists(), text


def test_parsed_formula_is_the_sympy_expression():
    decay = ssmc.Custom(decay="(1 + dt*A/2)/(1 - dt*A/2)", input_scale="dt**0.5").decay
    dt, a = sympy.symbols("dt A")
    assert sympy.simplify(decay - (1 + dt * a / 2) / (1 - dt * a / 2)) == 0
    assert ssmc.Custom(decay="exp(dt*A)", input_scale="dt**0.5").input_scale == sympy.sqrt(dt)
    # a user's own symbol named dt (any assumptions) means the spec's dt
    positive_dt = sympy.Symbol("dt", positive=True)
    assert ssmc.Custom(decay=sympy.exp(positive_dt * a), input_scale=positive_dt).decay == sympy.exp(dt * a)


# --- refused at construction, naming the field and the construct -------------------------------
k = sympy.Symbol("k", integer=True)


@pytest.mark.parametrize("decay, construct", [
    ("gamma(dt)", "gamma"),
    ("Abs(A)", "Abs"),
    ("Sum(dt, A)", "Sum"),
    ("Integral(dt, A)", "Integral"),
    (sympy.gamma(sympy.Symbol("dt")), "gamma"),
    (sympy.Abs(sympy.Symbol("A")), "Abs"),
    (sympy.Sum(sympy.Symbol("A") ** k, (k, 0, 3)), "Sum"),
    (sympy.Integral(sympy.Symbol("A") * sympy.Symbol("dt"), (sympy.Symbol("dt"), 0, 1)), "Integral"),
    (sympy.Function("f")(sympy.Symbol("dt")), "f"),
    ("1/0", "zoo"),
    ("log(0)*dt", "zoo"),
    ("nan", "nan"),
    (sympy.nan * sympy.Symbol("dt"), "nan"),
    ("1e400", "1e400"),
    ("1e39*dt", "1e+39"),
    (sympy.Integer(10) ** 400 * sympy.Symbol("dt"), "not finite"),
    ("exp(1000)*dt", "exp(1000)"),
    ("dt**5", "dt**5"),
    (sympy.Symbol("dt") ** sympy.Rational(11, 2), "dt**(11/2)"),
    ("dt**(-9/2)*exp(dt*A)", "after differentiation with respect to dt"),   # dt**(-11/2) there
    ("sqrt(dt**2)", "Abs(...) (expected one of exp, log, sin, cos, sqrt) cannot be compiled; found in the formula "
                    "as sympy evaluated it (not written as such)"),
    (sympy.Symbol("dt") ** sympy.Rational(1, 3), "dt**(1/3)"),
])
def test_unprintable_formulas_are_refused_by_custom(decay, construct):
    with pytest.raises(ssmc.SpecError) as info:
        ssmc.Custom(decay=decay, input_scale="dt")
    message = str(info.value)
    assert message.startswith("Custom.decay") and construct in message, message
    with pytest.raises(ssmc.SpecError, match="Custom.input_scale"):
        ssmc.Custom(decay="exp(dt*A)", input_scale=decay)


@pytest.mark.parametrize("decay, complex_a, construct", [
    ("exp(dt*A) + I*dt", False, "imaginary unit I on a real-A spec"),
    ("log(A)*dt + 1", True, "arg"),                        # complex log: its imaginary part is arg(A)
    ("sqrt(A)*dt", True, "1/4"),                           # |A|^(1/2) in its parts
    ("exp(sqrt(dt)*A)", True, "Abs"),                      # dt may be negative: sqrt(dt) is complex
    ("(exp(dt*A) + exp(-dt*A))/2", False, "cosh"),         # what sympy's simplification makes of it
])
def test_formulas_needing_the_whole_spec_are_refused_by_ssm(decay, complex_a, construct):
    custom = ssmc.Custom(decay=decay, input_scale="dt")          # fine alone
    with pytest.raises(ssmc.SpecError) as info:
        ssmc.SSM("layer", 4, A=ssmc.Diagonal(real=not complex_a), discretization=custom)
    assert str(info.value).startswith("Custom.decay") and construct in str(info.value), str(info.value)


@pytest.mark.parametrize("levels", [4, 5, 7])
def test_deeply_nested_functions_are_refused_quickly(levels):
    """With a complex A each exp level roughly triples the re/im split (5 levels took 6.4 s, 7 took
    65 s, and were accepted): refused before any simplification, naming the field."""
    import time
    text = "exp(" * levels + "dt*A" + ")" * levels
    start = time.perf_counter()
    with pytest.raises(ssmc.SpecError, match=r"Custom.decay: the formula is too deeply nested to check"):
        ssmc.SSM("deep", 4, A=ssmc.Diagonal(real=False), discretization=ssmc.Custom(text, "dt"))
    with pytest.raises(ssmc.SpecError, match=r"Custom.input_scale: the formula is too deeply nested"):
        ssmc.Custom("exp(dt*A)", "sin(" * levels + "dt" + ")" * levels)
    with pytest.raises(ssmc.SpecError, match=r"Custom.decay: the formula is too deeply nested to check: 5 calls"):
        ssmc.SSM("wide", 4, A=ssmc.Diagonal(real=False),          # took 11 s, depth 3 only
                 discretization=ssmc.Custom("exp(" + "+".join(f"exp(exp({k}*dt*A))" for k in range(1, 5)) + ")", "dt"))
    assert time.perf_counter() - start < 3


def test_large_complex_parts_are_refused_before_simplification(monkeypatch):
    monkeypatch.setattr(formula, "MAX_PART_OPERATIONS", 10)
    with pytest.raises(ssmc.SpecError, match=r"Custom.decay: the formula is too large to check: its real part has"):
        ssmc.SSM("big", 4, A=ssmc.Diagonal(real=False),
                 discretization=ssmc.Custom("exp(exp(dt*A))*cos(dt*A) + 3", "dt"))


# --- the whitelist and the printers agree ------------------------------------------------------
ACCEPTED = [
    "exp(dt*A)", "sqrt(dt)*dt", "exp(dt*A)*sqrt(dt)", "dt**(7/2)*exp(dt*A)", "A*dt**(-7/2)", "(exp(dt*A) - 1)/A", "log(1 + dt)*A", "sin(dt*A) + cos(dt)", "sqrt(dt)",
    "exp(sqrt(dt)*A)", "(1 + dt*A/2)/(1 - dt*A/2)", "dt**3*A**2", "dt**-2 + A**-3", "1/(1 - dt*A)**3",
    "pi*dt/E", "0.5*dt + 2.5e-3", "dt**(1/2)*3/7", "sqrt(1 + dt**2)",
]


@pytest.mark.parametrize("text", ACCEPTED)
def test_every_printer_prints_each_accepted_formula_its_derivatives_and_their_parts(text):
    expr = ssmc.Custom(decay=text, input_scale="dt").decay.xreplace(
        {sympy.Symbol("dt"): DT, sympy.Symbol("A"): A})
    formula.check_discretization(expr, "Custom.decay", False)
    exprs = [expr, sympy.diff(expr, DT), sympy.diff(expr, A)]
    replacements, reduced = sympy.cse(exprs)           # as the compiler's blocks: shared parts alone
    pieces = exprs + [e for _, e in replacements] + reduced
    pieces += [node for e in exprs for node in sympy.preorder_traversal(e) if node.is_Pow or node.is_Function]
    for printer in PRINTERS:
        for piece in pieces:
            assert printer.doprint(piece), (type(printer).__name__, piece)


EXPONENTS = [sympy.Rational(k, 2) for k in range(-14, 15)]


def test_the_power_rule_is_one_rule_for_whitelist_and_printers():
    """Every exponent from -7 to 7 in halves: the spec check and every printer accept exactly the
    same ones (formula.exponent_allowed), and what they accept includes sqrt's derivatives."""
    allowed = [e for e in EXPONENTS if formula.exponent_allowed(e)]
    assert {sympy.Rational(1, 2), sympy.Rational(-3, 2), -4, 4} <= set(allowed) and 5 not in allowed
    for exponent in EXPONENTS:
        power = sympy.Pow(DT, exponent, evaluate=False) * sympy.exp(DT * A)
        if formula.exponent_allowed(exponent):
            formula.check_printable(power, "test")
            for printer in PRINTERS:
                assert printer.doprint(sympy.Pow(DT, exponent)), (type(printer).__name__, exponent)
        else:
            with pytest.raises(ssmc.SpecError, match="the power"):
                formula.check_printable(power, "test")
            for printer in PRINTERS:
                with pytest.raises(UnsupportedExpression, match="unsupported power"):
                    printer.doprint(sympy.Pow(DT, exponent))


@pytest.mark.parametrize("name", sorted(formula.FUNCTIONS))
def test_every_whitelisted_function_prints_with_its_derivatives(name):
    """The drift test's cases come from the whitelist itself: each function a formula may call, as
    written, composed, and differentiated twice, prints in every printer."""
    text = f"{name}(1 + dt*A) * {name}(dt)"
    expr = ssmc.Custom(decay=text, input_scale="dt").decay.xreplace({sympy.Symbol("dt"): DT, sympy.Symbol("A"): A})
    formula.check_discretization(expr, "Custom.decay", False)
    for piece in (expr, sympy.diff(expr, DT), sympy.diff(expr, A), sympy.diff(expr, DT, A)):
        for printer in PRINTERS:
            assert printer.doprint(piece), (type(printer).__name__, piece)


# --- accepted formulas compute what they say, on the torch and C backends ------------------------
@pytest.mark.parametrize("decay, scale, complex_a", [
    ("exp(sqrt(dt)*A)", "sqrt(dt)", False),
    ("exp(dt*A)", "2*sqrt(dt)/A", False),
    ("1/(1 - dt*A)**2", "dt/(1 - dt*A)", False),
    ("exp(dt*A)*cos(dt) + sin(dt*A)/4", "log(1 + dt**2)*pi/E", False),
    ("(1 + dt*A/2)/(1 - dt*A/2)", "dt/(1 - dt*A/2)", True),
    ("exp(dt*A)", "(exp(dt*A) - 1)/A", True),
])
def test_accepted_custom_specs_compile_and_run_like_the_reference(backend, decay, scale, complex_a):
    """Each accepted formula, selective and time-invariant, compiled for torch and C (a real C
    build) and run against the float64 reference computing the same formula (through sympy's lambdify, not
    ssmc's printers). The Triton package is rendered (its interpreter run
    costs seconds a case; test_properties runs Triton on Custom specs)."""
    import torch
    from conftest import rel_error, scan_inputs
    from ssmc.compiler import compile_package
    from ssmc.reference import selective_scan_ref
    from ssmc.runtime.backend import c_compiler

    custom = ssmc.Custom(decay=decay, input_scale=scale)
    # the reference evaluates the formulas with sympy's own lambdify, not ssmc's printers (the code
    # under test); `+ 0 * A` broadcasts a formula in dt alone to A's shape
    torch_functions = {name: (lambda f: lambda x: f(x if isinstance(x, torch.Tensor) else torch.tensor(float(x))))(
        getattr(torch, name)) for name in ("exp", "log", "sin", "cos", "sqrt")}     # exp(-1): not a tensor
    fns = tuple((lambda f: (lambda dt, A: f(dt, A) + 0 * A))(
        sympy.lambdify((sympy.Symbol("dt"), sympy.Symbol("A")), e, modules=[torch_functions, "math"]))
        for e in custom.formulas())
    # a missing C compiler fails on CI (as in test_backend_c), it is skipped only elsewhere
    backends = ["torch"] + (["c"] if c_compiler() is not None or os.environ.get("CI") else [])
    for selective in ((), ("dt",)):
        spec = ssmc.SSM("cu", 3, A=ssmc.Diagonal(real=not complex_a), selective=selective,
                        dt_softplus=bool(selective), discretization=custom)
        files = render_package(lower(spec))
        assert {"kernels_c.py", "kernels_torch.py", "kernels_triton.py"} <= set(files), sorted(files)
        inputs = scan_inputs(batch=1, dim=2, length=6, n_state=3, complex_state=complex_a, selective=selective)
        args = [inputs[n] for n in ("u", "delta", "A", "B", "C", "D")]
        reference = selective_scan_ref(*(a.to(torch.complex128 if a.is_complex() else torch.float64) for a in args),
                                       delta_softplus=bool(selective), discretization=fns)
        for name in backends:
            backend(name)
            y = compile_package(spec).apply(*args)
            assert rel_error(y, reference) < 1e-4, (name, selective)


# --- stored expressions are read without eval --------------------------------------------------
def test_graph_json_round_trips_and_tampered_expressions_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    data = build_graph(ssmc.presets.mamba(d_state=4)).to_json()
    assert Graph.from_json(json.loads(json.dumps(data))).dump() == Graph.from_json(data).dump()
    elementwise = next(op for op in data["ops"] if isinstance(op.get("expr"), dict))
    for payload in (f"__import__('os').system('touch {marker}')", "Symbol.__init__.__globals__",
                    "Pow(Integer(3), Integer(99999999999))", "Symbol(*['x'])", "Function('f')(Symbol('x'))"):
        elementwise["expr"] = {"sympy": payload}
        with pytest.raises(ssmc.CompileError, match="graph.json"):
            Graph.from_json(data)
    assert not marker.exists()


def test_stored_plan_blocks_are_read_without_eval(tmp_path):
    from ssmc.ir.plans import block_from_json
    marker = tmp_path / "pwned"
    plan = lower(ssmc.presets.mamba(d_state=4)).graph.of_kind(ssmc.ir.ops.Fused)[0].plan
    assert type(plan).from_json(json.loads(json.dumps(plan.to_json()))) == plan
    with pytest.raises(ssmc.SSMCError):
        block_from_json([["dt", f"__import__('os').system('touch {marker}')"]])
    assert not marker.exists()


def test_stored_cost_formulas_are_read_without_eval(tmp_path):
    marker = tmp_path / "pwned"
    shape = {"batch": 2, "dim": 3, "len": 64, "state": 4}
    decision = lower(ssmc.presets.s4d(8)).schedule.decisions[0]
    for text in decision.costs.values():
        assert evaluate(text, shape) > 0
    with pytest.raises(ssmc.ScheduleError, match="cost formula"):
        evaluate(f"__import__('os').system('touch {marker}')", shape)
    with pytest.raises(ssmc.ScheduleError, match="cost formula"):
        evaluate("len.__class__", shape)
    assert not marker.exists()


def test_read_srepr_rebuilds_what_srepr_wrote():
    from ssmc.ir.functions import silu, softplus
    expr = softplus(DT) * sympy.exp(-A / 3) + silu(A) ** 2 - sympy.Float(1.5) * sympy.pi + sympy.I * sympy.sqrt(DT)
    assert formula.read_srepr(sympy.srepr(expr), "test", {"softplus": softplus, "silu": silu}) == expr


def test_an_accepted_sqrt_formula_runs_forward_and_backward_like_the_reference(backend):
    """The whole pipeline agrees with the whitelist numerically too: sqrt's derivative (a -1/2
    power) through the derived backward, against float64 autograd of the reference."""
    import torch
    from conftest import rel_error, scan_inputs
    from ssmc.compiler import compile_package
    from ssmc.reference import selective_scan_ref
    backend("torch")
    spec = ssmc.SSM("cu_sqrt", 3, discretization=ssmc.Custom(decay="exp(sqrt(dt)*A)", input_scale="sqrt(dt)/(1 + dt)"),
                    selective=("dt", "B", "C"), dt_softplus=True, skip_D=False)
    inputs = scan_inputs(dim=4, length=12, n_state=3, dtype=torch.float64)
    fns = (lambda dt, A: torch.exp(torch.sqrt(dt) * A), lambda dt, A: torch.sqrt(dt) / (1 + dt) + 0 * A)
    names = ("u", "delta", "A", "B", "C")
    ours = {n: inputs[n].clone().requires_grad_() for n in names}
    ref = {n: inputs[n].clone().requires_grad_() for n in names}
    y = compile_package(spec).apply(*(ours[n] for n in names))
    y_ref = selective_scan_ref(*(ref[n] for n in names), delta_softplus=True, discretization=fns)
    assert rel_error(y, y_ref) < 1e-10
    grad = torch.randn_like(y_ref)
    y.backward(grad)
    y_ref.backward(grad)
    for n in names:
        assert rel_error(ours[n].grad, ref[n].grad) < 1e-10, n
