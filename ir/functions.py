"""Scalar functions the IR needs beyond sympy's own, with derivatives for the backward pass.

Each backend printer maps them to its library (`tl`, C, torch); a printer that meets a function it
does not know fails loudly instead of emitting something plausible and wrong. `expm1` and `log1p`
are IR-internal: passes introduce them where the naive form cancels (users write exp(x) - 1).
"""
import sympy


class softplus(sympy.Function):
    """log(1 + e^x), as torch computes it (linear above 20, so exp never overflows)."""

    def fdiff(self, argindex=1):
        return 1 / (1 + sympy.exp(-self.args[0]))


class silu(sympy.Function):
    """x · sigmoid(x): Mamba's output gate."""

    def fdiff(self, argindex=1):
        x = self.args[0]
        sig = 1 / (1 + sympy.exp(-x))
        return sig * (1 + x * (1 - sig))


class expm1(sympy.Function):
    """exp(x) - 1 without its cancellation near 0: ZOH's input scale (exp(dt A) - 1) / A at small dt
    loses ~log10(1/|dt A|) digits in float32 when computed as written."""

    def fdiff(self, argindex=1):
        return sympy.exp(self.args[0])

    def _eval_is_extended_real(self):
        return self.args[0].is_extended_real

    def as_real_imag(self, deep=True, **hints):
        """exp(x + iy) - 1 = (expm1(x) - 2 sin²(y/2) e^x) + i·2 sin(y/2) cos(y/2) e^x: the half-angle
        form keeps the real part free of cancellation when both x and y are small (cos(y) - 1 would
        cancel), and uses as many sin/cos as the split of exp(x + iy) itself (complex_split writes
        that one in half angles too, so the two share them)."""
        x, y = self.args[0].as_real_imag()
        if y == 0:
            return self.func(x), sympy.S.Zero
        half_sin, half_cos, magnitude = sympy.sin(y / 2), sympy.cos(y / 2), sympy.exp(x)
        return self.func(x) - 2 * half_sin**2 * magnitude, 2 * half_sin * half_cos * magnitude


class log1p(sympy.Function):
    """log(1 + x), exact for small x where log(1 + x) rounds 1 + x first."""

    def fdiff(self, argindex=1):
        return 1 / (1 + self.args[0])


# the one registry of IR functions by name: for reading srepr'd expressions back (plans, graph.json);
# tests/test_ir.py checks it lists every sympy.Function class defined here
IR_FUNCTIONS = {f.__name__: f for f in (softplus, silu, expm1, log1p)}


def use_expm1(expr: sympy.Expr) -> sympy.Expr:
    """`expr` with every c·exp(x) − c written c·expm1(x), for any number c: inside sums
    (exp(x) + y − 1), scaled ((2·exp(x) − 2)/A), negated (1 − exp(x)) and however sympy ordered the
    terms; other exps are kept."""
    def rewrite(add):
        constant = sum((term for term in add.args if term.is_Number), sympy.S.Zero)
        if constant == 0:
            return add
        for term in add.args:
            coefficient, rest = term.as_coeff_Mul()
            if isinstance(rest, sympy.exp) and coefficient == -constant:
                others = [t for t in add.args if not t.is_Number and t is not term]
                return sympy.Add(coefficient * expm1(rest.args[0]), *others)
        return add

    return expr.replace(lambda e: isinstance(e, sympy.Add), rewrite)


def real_symbol(name: str) -> sympy.Symbol:
    return sympy.Symbol(name, real=True)
