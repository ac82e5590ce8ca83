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
from ..ir.functions import silu, softplus


class UnsupportedExpression(CompileError):
    pass


def _small_integer_power(expr: sympy.Pow):
    exp = expr.exp
    if exp.is_Integer and 1 <= abs(int(exp)) <= 4:
        return int(exp)
    return None


class _TensorPrinter(PythonCodePrinter):
    """Shared by the Triton and torch printers: Python syntax over a tensor library `lib`."""

    lib = ""
    functions: dict = {}

    def _print_Function(self, expr):
        name = type(expr).__name__
        if name not in self.functions:
            raise UnsupportedExpression(f"{type(self).__name__} cannot print {name}(...) in {expr}")
        args = ", ".join(self._print(a) for a in expr.args)
        return self.functions[name].format(args=args, lib=self.lib)

    _print_exp = _print_log = _print_cos = _print_sin = _print_Abs = _print_Function

    def _print_Pow(self, expr, rational=False):
        power = _small_integer_power(expr)
        base = self.parenthesize(expr.base, sympy.printing.precedence.PRECEDENCE["Mul"] + 1)
        if power is not None and power > 0:
            return "*".join([base] * power)
        if power is not None:
            return "1.0 / (" + "*".join([base] * -power) + ")"
        if expr.exp == sympy.Rational(1, 2):
            return self.functions["sqrt"].format(args=self._print(expr.base), lib=self.lib)
        raise UnsupportedExpression(f"{type(self).__name__}: non-integer power {expr}")

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


class TritonPrinter(_TensorPrinter):
    lib = "tl"
    functions = {
        "exp": "tl.exp({args})", "log": "tl.log({args})", "cos": "tl.cos({args})", "sin": "tl.sin({args})",
        "sqrt": "tl.sqrt({args})", "Abs": "tl.abs({args})",
        "softplus": "softplus({args})", "silu": "silu({args})",
    }


class TorchPrinter(_TensorPrinter):
    lib = "torch"
    functions = {
        "exp": "torch.exp({args})", "log": "torch.log({args})", "cos": "torch.cos({args})",
        "sin": "torch.sin({args})", "sqrt": "torch.sqrt({args})", "Abs": "torch.abs({args})",
        "arg": "torch.angle({args})",
        "softplus": "F.softplus({args})", "silu": "F.silu({args})",
    }
    _print_arg = _TensorPrinter._print_Function


class CPrinter(C99CodePrinter):
    """float32 C: `expf` not `exp`, `2.0f` literals, small powers as products."""

    functions = {"exp": "expf", "log": "logf", "cos": "cosf", "sin": "sinf", "sqrt": "sqrtf", "Abs": "fabsf",
                 "softplus": "ssmc_softplus", "silu": "ssmc_silu"}

    def _print_Function(self, expr):
        name = type(expr).__name__
        if name not in self.functions:
            raise UnsupportedExpression(f"CPrinter cannot print {name}(...) in {expr}")
        return f"{self.functions[name]}({', '.join(self._print(a) for a in expr.args)})"

    _print_exp = _print_log = _print_cos = _print_sin = _print_Abs = _print_Function

    def _print_Pow(self, expr):
        power = _small_integer_power(expr)
        base = self.parenthesize(expr.base, sympy.printing.precedence.PRECEDENCE["Mul"] + 1)
        if power is not None and power > 0:
            return "*".join([base] * power)
        if power is not None:
            return "1.0f / (" + "*".join([base] * -power) + ")"
        if expr.exp == sympy.Rational(1, 2):
            return f"sqrtf({self._print(expr.base)})"
        raise UnsupportedExpression(f"CPrinter: non-integer power {expr}")

    def _print_Rational(self, expr):
        return f"({float(expr.p)!r}f / {float(expr.q)!r}f)"

    def _print_Integer(self, expr):
        return f"{float(expr)!r}f"

    def _print_Float(self, expr):
        return f"{float(expr)!r}f"

    def _print_Symbol(self, expr):
        return expr.name


def print_block(block, printer, statement="{target} = {value}") -> list:
    """Render a plan's assignment block as lines of source."""
    return [statement.format(target=target, value=printer.doprint(expr)) for target, expr in block]


for _fn in (softplus, silu):
    # sympy dispatches on the class name; make sure the custom functions reach _print_Function
    setattr(TritonPrinter, f"_print_{_fn.__name__}", TritonPrinter._print_Function)
    setattr(TorchPrinter, f"_print_{_fn.__name__}", TorchPrinter._print_Function)
    setattr(CPrinter, f"_print_{_fn.__name__}", CPrinter._print_Function)
