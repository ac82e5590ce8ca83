"""The IR's dimensions: open, named, one sympy symbol per name.

A shape is a tuple of dimension names, in memory order; each name stands for one positive integer
symbol, shared by every formula that mentions it (shapes, cost models, stage size relations). The
set is open: a family with new axes (S5's `P`, GLA's key and value dims) names them and gets their
symbols here, nothing else to change. `KNOWN` lists today's names for parsers that need a whitelist
(a stored cost formula may mention only these).
"""
from __future__ import annotations

import functools

import sympy

KNOWN = ("batch", "len", "dim", "state", "groups", "heads", "headdim", "chunk", "chunks")


@functools.lru_cache(maxsize=None)
def dim(name: str) -> sympy.Symbol:
    if not name.isidentifier():
        raise ValueError(f"a dimension name must be an identifier, got {name!r}")
    return sympy.Symbol(name, positive=True, integer=True)


def symbols(*names: str) -> dict:
    """{name: symbol} for `names` (all of `KNOWN` when none are given)."""
    return {name: dim(name) for name in (names or KNOWN)}
