"""Each backend printer prints the same expression with its own library, and refuses what it
does not know."""
import pytest
import sympy

from ssmc.backends.printers import CPrinter, TorchPrinter, TritonPrinter, UnsupportedExpression
from ssmc.ir.functions import silu, softplus

x, y = sympy.symbols("x y", real=True)


def test_known_functions_and_powers():
    expr = softplus(x) * sympy.exp(y) / (x ** 2 + 1) + silu(y) + sympy.sqrt(x)
    c, t, p = CPrinter().doprint(expr), TritonPrinter().doprint(expr), TorchPrinter().doprint(expr)
    assert "ssmc_softplus(x)" in c and "expf(y)" in c and "(x*x)" in c and "sqrtf(x)" in c and "pow" not in c
    assert "softplus(x)" in t and "tl.exp(y)" in t and "tl.sqrt(x)" in t
    assert "F.softplus(x)" in p and "torch.exp(y)" in p and "F.silu(y)" in p


@pytest.mark.parametrize("printer", [CPrinter(), TritonPrinter(), TorchPrinter()], ids=["c", "triton", "torch"])
def test_unknown_functions_and_powers_fail_loudly(printer):
    with pytest.raises(UnsupportedExpression):
        printer.doprint(sympy.gamma(x))
    with pytest.raises(UnsupportedExpression):
        printer.doprint(x ** sympy.Rational(1, 3))


def test_torch_printer_output_evaluates_like_sympy():
    import torch
    import torch.nn.functional as F  # noqa: F401  (used by the printed text)
    expr = (sympy.exp(x * y) - 1) / (x ** 3) + softplus(y)
    text = TorchPrinter().doprint(expr)
    value = eval(text, {"torch": torch, "F": torch.nn.functional, "x": torch.tensor(0.7, dtype=torch.float64),
                        "y": torch.tensor(-0.4, dtype=torch.float64)})
    reference = float(((sympy.exp(x * y) - 1) / x ** 3 + sympy.log(1 + sympy.exp(y))).subs({x: 0.7, y: -0.4}))
    assert abs(float(value) - reference) < 1e-12


@pytest.mark.parametrize("printer", [CPrinter(), TritonPrinter(), TorchPrinter()], ids=["c", "triton", "torch"])
def test_powers_in_denominators_keep_their_parentheses(printer):
    assert printer.doprint(y / x ** 3).replace(" ", "").endswith("/(x*x*x)")


def test_stable_forms_print_in_every_backend():
    """expm1 / log1p (IR-internal, introduced by the passes) and sign (the derivative of Abs)."""
    from ssmc.backends.c import RecurrenceCPrinter
    from ssmc.backends.printers import DoubleCPrinter
    from ssmc.ir.functions import expm1, log1p

    expr = expm1(x) + log1p(y) + sympy.sign(x)
    assert {"expm1f(x)", "log1pf(y)", "ssmc_sign(x)"} <= set(_calls(CPrinter().doprint(expr)))
    assert "ssmc_expm1(x)" in RecurrenceCPrinter().doprint(expr)
    assert {"expm1(x)", "log1p(y)", "ssmc_sign_double(x)"} <= set(_calls(DoubleCPrinter().doprint(expr)))
    triton = TritonPrinter().doprint(expr)
    assert "expm1(x)" in triton and "log1p(y)" in triton and "tl.where((x) > 0" in triton
    torch_text = TorchPrinter().doprint(expr)
    assert "torch.expm1(x)" in torch_text and "torch.log1p(y)" in torch_text and "torch.sign(x)" in torch_text


def _calls(text):
    import re
    return re.findall(r"[A-Za-z_0-9]+\([a-z]\)", text)


def test_expm1_derivative_and_complex_split_match_exp_minus_one():
    """expm1's derivative is exp, and its (re, im) parts (half-angle form) equal those of exp(z) - 1."""
    from ssmc.ir.functions import expm1, use_expm1

    assert sympy.diff(expm1(2 * x), x) == 2 * sympy.exp(2 * x)
    a, b = sympy.symbols("a b", real=True)
    re, im = sympy.expand_complex(expm1(a + sympy.I * b)).as_real_imag()
    point = {a: 0.3, b: -1.7}
    exact = complex(sympy.exp(a + sympy.I * b).subs(point).evalf()) - 1
    assert abs(complex(re.subs(point).evalf()) - exact.real) < 1e-12
    assert abs(complex(im.subs(point).evalf()) - exact.imag) < 1e-12
    assert use_expm1((sympy.exp(x * y) - 1) / x) == expm1(x * y) / x
    assert use_expm1(sympy.exp(x) + 2) == sympy.exp(x) + 2


def test_half_integer_powers_evaluate_like_sympy():
    """x**(k/2), as derivatives of sqrt produce (x**(-1/2), x**(-3/2)), printed with one sqrt."""
    import torch
    expr = y * x ** sympy.Rational(-3, 2) + x ** sympy.Rational(5, 2) - x ** sympy.Rational(-1, 2)
    text = TorchPrinter().doprint(expr)
    value = eval(text, {"torch": torch, "x": torch.tensor(1.7, dtype=torch.float64),
                        "y": torch.tensor(-0.4, dtype=torch.float64)})
    assert abs(float(value) - float(expr.subs({x: 1.7, y: -0.4}))) < 1e-12
    assert "pow" not in CPrinter().doprint(expr) and CPrinter().doprint(expr).count("sqrtf") == 3


@pytest.mark.parametrize("printer", [CPrinter(), TritonPrinter(), TorchPrinter()], ids=["c", "triton", "torch"])
def test_only_sympy_objects_are_printed(printer):
    """A string would have to be sympified, which evaluates Python: refused, never evaluated."""
    for value in ("__import__('os').getcwd()", "x + 1", 1.5, None):
        with pytest.raises(UnsupportedExpression, match="prints sympy expressions only"):
            printer.doprint(value)


def test_constant_functions_print_as_numbers_in_the_tensor_printers():
    """exp(-1) (1/E, as in pi/E) is a Python float to torch.exp and tl.exp, which take tensors."""
    import math

    import torch
    expr = sympy.pi / sympy.E * x + sympy.log(sympy.Rational(1, 2)) * sympy.exp(x) + sympy.E
    text = TorchPrinter().doprint(expr)
    assert "exp(-1" not in text and "log(" not in text.replace("torch.log1p", ""), text
    value = eval(text, {"torch": torch, "x": torch.tensor(0.3, dtype=torch.float64)})
    assert abs(float(value) - (math.pi / math.e * 0.3 + math.log(0.5) * math.exp(0.3) + math.e)) < 1e-12
    assert "exp(-1" not in TritonPrinter().doprint(expr)
