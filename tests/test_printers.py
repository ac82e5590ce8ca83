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
