"""Expression printers, one per backend: sympy -> Triton, C, PyTorch source text.

Each printer has a table of the functions it knows; any other function fails loudly
(`UnsupportedExpression`) instead of printing something that parses and means something else.
WARNING for whoever extends these: every operator whose semantics differ between targets must be
overridden here — C's `%`, `/` on ints and `pow`, Python's `**` on tensors — not patched in a
template.
"""
from __future__ import annotations

import sympy
from sympy.printing.c import C99CodePrinter
from sympy.printing.pycode import PythonCodePrinter

from ..errors import CompileError
from ..formula import POWER_RULE, exponent_allowed
from ..ir.functions import expm1, log1p, silu, softplus


class UnsupportedExpression(CompileError):
    pass


def _print_power(printer, expr: sympy.Pow, one: str, sqrt_format: str) -> str:
    """x**k for small integer k as products (no pow call, exact in every target), x**(1/2) as sqrt,
    x**(k/2) as a product with one sqrt; other powers are refused. Which powers: the one rule
    `ssmc.formula.exponent_allowed`, the same that formulas are checked against at spec time."""
    exp = expr.exp
    if not exponent_allowed(exp):
        raise UnsupportedExpression(f"{type(printer).__name__}: unsupported power {expr} (expected {POWER_RULE})")
    if exp == 0:
        return one
    if exp == sympy.Rational(1, 2):
        return sqrt_format.format(printer._print(expr.base))
    # x**k as k factors; x**(k/2) (derivatives of sqrt: x**(-1/2), x**(-3/2)) as x**(k//2)·sqrt(x);
    # inverted for k < 0, and parenthesised: the caller may print it after a `/` (y/x**3 must not
    # become y/x*x*x)
    base = printer.parenthesize(expr.base, sympy.printing.precedence.PRECEDENCE["Mul"] + 1)
    factors = [base] * (abs(exp.p) // exp.q)
    if exp.q == 2:
        factors.append(sqrt_format.format(printer._print(expr.base)))
    product = "(" + "*".join(factors) + ")"
    return product if exp > 0 else f"{one} / {product}"


class _TensorPrinter(PythonCodePrinter):
    """Shared by the Triton and torch printers: Python syntax over a tensor library `lib`."""

    lib = ""
    functions: dict = {}

    def doprint(self, expr, *args, **kwargs):
        _refuse_unknown_functions(self, expr)
        return super().doprint(expr, *args, **kwargs)

    def _print_Function(self, expr):
        name = type(expr).__name__
        if name not in self.functions:
            raise UnsupportedExpression(f"{type(self).__name__} cannot print {name}(...) in {expr}")
        if not expr.free_symbols and expr.is_extended_real:
            # a constant (exp(-1), pi/E's 1/E): torch.exp / tl.exp take tensors, not Python floats
            value = float(expr)
            return repr(value) if value >= 0 else f"({value!r})"
        args = ", ".join(self._print(a) for a in expr.args)
        return self.functions[name].format(args=args, lib=self.lib)

    _print_exp = _print_log = _print_cos = _print_sin = _print_Abs = _print_sign = _print_Function

    def _print_Pow(self, expr, rational=False):
        return _print_power(self, expr, "1.0", self.functions["sqrt"].format(args="{}", lib=self.lib))

    def _print_Rational(self, expr):
        return f"({float(expr.p)!r} / {float(expr.q)!r})"

    def _print_Integer(self, expr):
        return f"{float(expr)!r}"

    def _print_Float(self, expr):
        return repr(float(expr))

    def _print_Symbol(self, expr):
        return expr.name

    def _print_Pi(self, expr):
        return "3.141592653589793"

    def _print_Exp1(self, expr):
        return "2.718281828459045"


class TritonPrinter(_TensorPrinter):
    lib = "tl"
    functions = {
        "exp": "tl.exp({args})", "log": "tl.log({args})", "cos": "tl.cos({args})", "sin": "tl.sin({args})",
        "sqrt": "tl.sqrt({args})", "Abs": "tl.abs({args})",
        "sign": "tl.where(({args}) > 0, 1.0, tl.where(({args}) < 0, -1.0, 0.0))",
        # the template's jit helpers (no libdevice: it does not run under the interpreter)
        "softplus": "softplus({args})", "silu": "silu({args})", "expm1": "expm1({args})", "log1p": "log1p({args})",
    }


class TorchPrinter(_TensorPrinter):
    lib = "torch"
    functions = {
        "exp": "torch.exp({args})", "log": "torch.log({args})", "cos": "torch.cos({args})",
        "sin": "torch.sin({args})", "sqrt": "torch.sqrt({args})", "Abs": "torch.abs({args})",
        "arg": "torch.angle({args})", "sign": "torch.sign({args})",
        "expm1": "torch.expm1({args})", "log1p": "torch.log1p({args})",
        "softplus": "F.softplus({args})", "silu": "F.silu({args})",
    }
    _print_arg = _TensorPrinter._print_Function


class CPrinter(C99CodePrinter):
    """float32 C: `expf` not `exp`, `2.0f` literals, small powers as products."""

    functions = {"exp": "expf", "log": "logf", "cos": "cosf", "sin": "sinf", "sqrt": "sqrtf", "Abs": "fabsf",
                 "expm1": "expm1f", "log1p": "log1pf", "sign": "ssmc_sign",
                 "softplus": "ssmc_softplus", "silu": "ssmc_silu"}

    def doprint(self, expr, *args, **kwargs):
        _refuse_unknown_functions(self, expr)
        return super().doprint(expr, *args, **kwargs)

    def _print_Function(self, expr):
        name = type(expr).__name__
        if name not in self.functions:
            raise UnsupportedExpression(f"CPrinter cannot print {name}(...) in {expr}")
        return f"{self.functions[name]}({', '.join(self._print(a) for a in expr.args)})"

    _print_exp = _print_log = _print_cos = _print_sin = _print_Abs = _print_sign = _print_Function

    suffix = "f"          # float literals: 2.0f

    def _print_Pow(self, expr):
        return _print_power(self, expr, f"1.0{self.suffix}", self.functions["sqrt"] + "({})")

    def _print_Rational(self, expr):
        return f"({float(expr.p)!r}{self.suffix} / {float(expr.q)!r}{self.suffix})"

    def _print_Integer(self, expr):
        return f"{float(expr)!r}{self.suffix}"

    def _print_Float(self, expr):
        return f"{float(expr)!r}{self.suffix}"

    def _print_Symbol(self, expr):
        return expr.name


class DoubleCPrinter(CPrinter):
    """double C: libm's double functions, unsuffixed literals."""

    suffix = ""
    functions = {"exp": "exp", "log": "log", "cos": "cos", "sin": "sin", "sqrt": "sqrt", "Abs": "fabs",
                 "expm1": "expm1", "log1p": "log1p", "sign": "ssmc_sign_double",
                 "softplus": "ssmc_softplus_double", "silu": "ssmc_silu_double"}


def _refuse_unknown_functions(printer, expr) -> None:
    """sympy's printers know many functions (gamma, erf...) with target-specific spellings; ssmc
    accepts only those in the printer's own table, whose semantics it has checked. Only sympy
    objects are printed: a string would have to be sympified, which evaluates Python."""
    if not isinstance(expr, sympy.Basic):
        raise UnsupportedExpression(f"{type(printer).__name__} prints sympy expressions only, got "
                                    f"{type(expr).__name__}")
    for function in expr.atoms(sympy.Function):
        name = type(function).__name__
        if name not in printer.functions:
            raise UnsupportedExpression(f"{type(printer).__name__} cannot print {name}(...) in {expr}")


def print_block(block, printer, statement="{target} = {value}") -> list:
    """Render a plan's assignment block as lines of source."""
    return [statement.format(target=target, value=printer.doprint(expr)) for target, expr in block]


for _fn in (softplus, silu, expm1, log1p):
    # sympy dispatches on the class name; make sure the custom functions reach _print_Function
    setattr(TritonPrinter, f"_print_{_fn.__name__}", TritonPrinter._print_Function)
    setattr(TorchPrinter, f"_print_{_fn.__name__}", TorchPrinter._print_Function)
    setattr(CPrinter, f"_print_{_fn.__name__}", CPrinter._print_Function)
