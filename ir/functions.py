"""Scalar functions the IR needs beyond sympy's own, with derivatives for the backward pass.

Each backend printer maps them to its library (`tl`, C, torch); a printer that meets a function it
does not know fails loudly instead of emitting something plausible and wrong.
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


def real_symbol(name: str) -> sympy.Symbol:
    return sympy.Symbol(name, real=True)
