"""Formula safety: read formula text without running it, and accept only what every backend prints.

Two threats, two rules:
- `sympy.sympify` and `parse_expr` *evaluate* Python, so a formula string (or a stored
  `spec.json` / `graph.json`) could run code. Text is therefore parsed with `ast` and rebuilt from
  a whitelist of nodes and names; nothing is ever evaluated.
- A formula that a printer cannot print used to fail only when a backend rendered it (or its
  derived backward). `check_printable` applies the printers' rules at spec construction instead.
  The power rule is one function, `exponent_allowed`, which the printers call too; the function
  whitelist is `PRINTABLE_FUNCTIONS`, and tests/test_formula.py derives its drift cases from both.
- Checking costs sympy work that grows fast with nesting (a complex A's re/im split roughly triples
  per exp level): `_check_size` bounds operations, power degree, function nesting and the size of
  each re/im part before anything is simplified or differentiated.

This module is a leaf (sympy only): the spec imports it, and so may `ir`.
"""
from __future__ import annotations

import ast
import functools
import math

import sympy

from .errors import SpecError

#: functions a formula may call, by the name a user writes
FUNCTIONS = {"exp": sympy.exp, "log": sympy.log, "sin": sympy.sin, "cos": sympy.cos, "sqrt": sympy.sqrt}
#: constants a formula may name
CONSTANTS = {"pi": sympy.pi, "E": sympy.E, "I": sympy.I}
#: sympy function classes every printer prints (sqrt is a power, see POWER_RULE)
PRINTABLE_FUNCTIONS = ("exp", "log", "sin", "cos")
MAX_INTEGER_POWER = 4      # x**k, |k| <= 4: printed as a product (no pow call, exact in every target)
MAX_HALF_POWER = 9         # x**(k/2), |k| <= 9: printed as a product with one sqrt
POWER_RULE = (f"an integer exponent from -{MAX_INTEGER_POWER} to {MAX_INTEGER_POWER}, or a half-integer "
              f"from -{MAX_HALF_POWER}/2 to {MAX_HALF_POWER}/2 (powers of sqrt)")
FLOAT32_MAX = 3.4028234663852886e38
MAX_TEXT = 500
MAX_OPERATIONS = 200        # sympy.count_ops of a formula
MAX_NESTED_DEGREE = 16      # ((1 + dt)**4 + 1)**4 has degree 16: simplify and diff grow with it
MAX_FUNCTION_DEPTH = 3      # exp(exp(exp(dt*A))): a complex A's re/im split grows ~3x per level
MAX_NESTED_CALLS = 3       # calls whose argument holds another call: each multiplies the split's work
MAX_PART_OPERATIONS = 160   # sympy.count_ops of each real/imaginary part before simplify and diff

_CONSTRUCTS = {
    ast.Attribute: "attribute access", ast.Subscript: "subscript", ast.Lambda: "lambda",
    ast.Compare: "comparison", ast.BoolOp: "boolean operator", ast.IfExp: "conditional expression",
    ast.List: "list", ast.Tuple: "tuple", ast.Dict: "dict", ast.Set: "set", ast.Starred: "starred argument",
    ast.ListComp: "comprehension", ast.GeneratorExp: "comprehension", ast.DictComp: "comprehension",
    ast.SetComp: "comprehension", ast.JoinedStr: "f-string", ast.NamedExpr: "assignment expression",
    ast.Await: "await", ast.Yield: "yield", ast.YieldFrom: "yield",
}
_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}


def exponent_allowed(exponent) -> bool:
    """THE power rule, used by the parser, by `check_printable` and by every printer
    (backends/printers.py `_print_power`): small integer powers become products, half-integer
    powers a product with one sqrt; anything else has no exact spelling in every target."""
    exponent = sympy.Integer(exponent) if isinstance(exponent, int) else exponent
    if not isinstance(exponent, sympy.Basic) or not exponent.is_Rational:
        return False
    if exponent.is_Integer:
        return -MAX_INTEGER_POWER <= int(exponent) <= MAX_INTEGER_POWER
    return exponent.q == 2 and -MAX_HALF_POWER <= exponent.p <= MAX_HALF_POWER


# --------------------------------------------------------------------------------------------
# Parsing formula text: ast -> sympy, by whitelist
# --------------------------------------------------------------------------------------------
def parse(text, field: str, symbols: dict, functions: dict = FUNCTIONS, constants: dict = CONSTANTS,
          error=SpecError) -> sympy.Expr:
    """The sympy expression of `text` over `symbols`, built without evaluating any code.

    Accepted: numbers, the names in `symbols` and `constants`, + - * / ** (exponents by the power
    rule), unary -/+, and one-argument calls of the names in `functions`. Everything else is an
    `error` naming `field` and the construct."""
    if not isinstance(text, str):
        raise error(f"{field}: expected a formula string, got {type(text).__name__}")
    if len(text) > MAX_TEXT:
        raise error(f"{field}: formula is {len(text)} characters long, expected at most {MAX_TEXT}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        reason = getattr(exc, "msg", None) or type(exc).__name__
        raise error(f"{field}: cannot parse formula {text!r} ({reason})") from None
    builder = _Builder(text, field, symbols, functions, constants, error)
    try:
        return builder.build(tree.body)
    except RecursionError:
        raise error(f"{field}: formula {text!r} is nested too deeply") from None


class _Builder:
    def __init__(self, text, field, symbols, functions, constants, error):
        self.text, self.field, self.error = text, field, error
        self.symbols, self.functions, self.constants = symbols, functions, constants

    def fail(self, what: str):
        raise self.error(f"{self.field}: {what} is not allowed in formula {self.text!r}")

    def build(self, node):
        if isinstance(node, ast.Constant):
            return self.number(node.value)
        if isinstance(node, ast.Name):
            return self.name(node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = self.build(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return self.binary(node)
        if isinstance(node, ast.BinOp):
            hint = " (write ** for a power)" if isinstance(node.op, ast.BitXor) else ""
            self.fail(f"the operator {type(node.op).__name__}{hint}")
        if isinstance(node, ast.Call):
            return self.call(node)
        self.fail(_CONSTRUCTS.get(type(node), f"a {type(node).__name__} expression"))

    def number(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = " (write I for the imaginary unit)" if isinstance(value, complex) else ""
            self.fail(f"the literal {value!r}{hint}")
        if isinstance(value, int):
            return sympy.Integer(value)
        if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
            self.fail(f"the literal {value!r} (not finite in float32)")
        return sympy.Float(value)

    def name(self, name: str):
        if name in self.symbols:
            return self.symbols[name]
        if name in self.constants:
            return self.constants[name]
        if name in self.functions:
            self.fail(f"the function {name} without arguments")
        allowed = ", ".join(list(self.symbols) + list(self.constants))
        raise self.error(f"{self.field}: unknown symbols [{name!r}], expected only {allowed} "
                         f"in formula {self.text!r}")

    def binary(self, node):
        left, right = self.build(node.left), self.build(node.right)
        if isinstance(node.op, ast.Pow):
            return self.power(left, right)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        return left / right

    def power(self, base, exponent):
        if exponent.is_Float and float(exponent) * 2 == int(float(exponent) * 2):
            exponent = sympy.Rational(int(float(exponent) * 2), 2)      # 0.5 -> 1/2, 2.0 -> 2
        if not exponent_allowed(exponent):          # a symbol, I or pi is no Rational: refused too
            self.fail(f"the power **({exponent}) (expected {POWER_RULE})")
        return base ** exponent

    def call(self, node):
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in self.functions:
            if name is None:
                construct = _CONSTRUCTS.get(type(node.func), type(node.func).__name__)
                self.fail(f"calling something other than a function name ({construct})")
            self.fail(f"the function {name}(...) (expected one of {', '.join(self.functions)})")
        if node.keywords or len(node.args) != 1 or isinstance(node.args[0], ast.Starred):
            self.fail(f"{name}(...) with other than one positional argument")
        return self.functions[name](self.build(node.args[0]))


# --------------------------------------------------------------------------------------------
# Printability: the rules of backends/printers.py, applied at spec construction
# --------------------------------------------------------------------------------------------
def check_printable(expr, field: str, allow_complex: bool = True, where: str = "", text: str | None = None) -> None:
    """Refuse (SpecError naming `field` and the construct) anything a backend printer would refuse
    or that is not a finite float32 number: unknown functions, sums, integrals, relations, zoo/nan,
    powers outside the printers' rule, and (for real quantities) the imaginary unit.

    `where` says which derived form `expr` is ("after differentiation with respect to dt"...); for
    the formula itself, `text` (what the user wrote, when a string) tells a construct the user wrote
    from one sympy made of it when reading it (sqrt(dt**2) is Abs(dt))."""
    def refuse(what: str, node=None):
        origin = where
        if not origin:
            origin = "in the formula"
            if text is not None and node is not None and not _written(node, text):
                origin = "in the formula as sympy evaluated it (not written as such)"
        raise SpecError(f"{field}: {what} cannot be compiled; found {origin}: {expr}")

    for node in sympy.preorder_traversal(expr):
        if isinstance(node, sympy.Symbol) or node in (sympy.pi, sympy.E):
            continue
        if node is sympy.I:
            if not allow_complex:
                refuse("the imaginary unit I on a real-A spec", node)
            continue
        if node in (sympy.zoo, sympy.oo, -sympy.oo, sympy.nan):
            refuse(f"{node} (a division by zero, an infinity or NaN)", node)
        if node.is_Number:
            _check_number(node, refuse)
        elif node.is_Add or node.is_Mul:
            continue
        elif node.is_Pow:
            if not exponent_allowed(node.exp):
                refuse(f"the power {node} (expected {POWER_RULE})", node)
        elif isinstance(node, sympy.Function):
            name = type(node).__name__
            if name not in PRINTABLE_FUNCTIONS:
                refuse(f"the function {name}(...) (expected one of {', '.join(PRINTABLE_FUNCTIONS)}, sqrt)", node)
        else:
            refuse(f"{type(node).__name__}(...)", node)
    _check_constants(expr, refuse)


def _written(node, text: str) -> bool:
    """Whether the user's text plausibly contains `node`'s construct (not one sympy made of it)."""
    if isinstance(node, sympy.Function):
        return f"{type(node).__name__}(" in text
    if node.is_Pow:
        return "**" in text or (node.exp == sympy.Rational(1, 2) and "sqrt(" in text)
    return True


def _check_number(node, refuse) -> None:
    try:
        value = abs(float(node))
    except (OverflowError, TypeError):
        value = math.inf
    if not value <= FLOAT32_MAX:
        refuse(f"the number {node} (not finite in float32)")


def _check_constants(expr, refuse) -> None:
    """Constant subexpressions (exp(1000), log(0)) must be finite float32 numbers too."""
    if expr.is_Atom:
        return
    if not expr.free_symbols:
        try:
            value = complex(expr.evalf(20))
        except (TypeError, ValueError):
            refuse(f"the constant {expr} (not a number)")
        if not all(math.isfinite(v) and abs(v) <= FLOAT32_MAX for v in (value.real, value.imag)):
            refuse(f"the constant {expr} (not finite in float32)")
        return
    for arg in expr.args:
        _check_constants(arg, refuse)


# --------------------------------------------------------------------------------------------
# A discretization formula as the compiler will see it
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def check_discretization(expr, field: str, a_complex: bool | None, text: str | None = None) -> None:
    """Check `expr` (in dt and A) and what the compiler derives from it: the simplified formula,
    its real and imaginary parts over real symbols (complex A), and the derivatives of each with
    respect to dt and A (A_re, A_im): the backward pass differentiates on real symbols.

    `a_complex=None` (a Custom alone, A's kind not known yet): the formula as written and its
    derivatives for a real A, with I allowed. dt is any real number (the compiler assumes no more),
    so e.g. sqrt(dt) of a complex-A spec, whose parts need Abs and atan2, is refused."""
    _check_size(expr, field)
    check_printable(expr, field, allow_complex=a_complex is not False, text=text)
    for where, part, variables in _compiled_forms(expr, a_complex, field):
        check_printable(part, field, allow_complex=not a_complex, where=where, text=text)
        for variable in variables:
            of = where.replace("in its", "of its")
            check_printable(sympy.diff(part, variable), field, allow_complex=not a_complex,
                            where=_words(f"after differentiation with respect to {variable}", of))


def _compiled_forms(expr, a_complex, field):
    """(where, real expression, variables it is differentiated by) for each form the compiler
    prints: the formula as written and simplified (ir/passes/discretize.py), split into simplified
    real and imaginary parts for a complex A (ir/passes/complex_split.py)."""
    dt = sympy.Symbol("dt", real=True)
    if a_complex:
        a_re, a_im = sympy.Symbol("A_re", real=True), sympy.Symbol("A_im", real=True)
        variables, a_value = (dt, a_re, a_im), a_re + sympy.I * a_im
    else:
        variables = (dt, sympy.Symbol("A", real=True))
        a_value = variables[1]
    stages = [("", expr)] + ([("after simplification", sympy.simplify(expr))] if a_complex is not None else [])
    for stage, form in stages:
        real = form.xreplace({s: (dt if s.name == "dt" else a_value) for s in form.free_symbols})
        if not a_complex:
            yield stage, real, variables
            continue
        for label, part in zip(("real", "imaginary"), sympy.expand_complex(real).as_real_imag()):
            where = _words(f"in its {label} part", stage)
            _check_part_size(part, field, where.replace("in its", "its"))
            yield where, (sympy.simplify(part) if stage else part), variables


def _words(*parts) -> str:
    return " ".join(filter(None, parts))


def _check_size(expr, field: str) -> None:
    """Bound the work simplification and differentiation do: a short formula of nested powers can
    otherwise keep sympy busy for minutes."""
    operations = sympy.count_ops(expr)
    if operations > MAX_OPERATIONS:
        raise SpecError(f"{field}: the formula has {operations} operations, expected at most {MAX_OPERATIONS}")
    degree = _nested_degree(expr)
    if degree > MAX_NESTED_DEGREE:
        raise SpecError(f"{field}: nested powers multiply to degree {degree}, expected at most "
                        f"{MAX_NESTED_DEGREE}, in {expr}")
    depth = _function_depth(expr)
    if depth > MAX_FUNCTION_DEPTH:
        raise SpecError(f"{field}: the formula is too deeply nested to check: exp/log/sin/cos nested {depth} deep, "
                        f"expected at most {MAX_FUNCTION_DEPTH}, in {expr}")
    nested = sum(1 for node in sympy.preorder_traversal(expr) if isinstance(node, sympy.Function)
                 and any(isinstance(inner, sympy.Function) for arg in node.args for inner in sympy.preorder_traversal(arg)))
    if nested > MAX_NESTED_CALLS:
        raise SpecError(f"{field}: the formula is too deeply nested to check: {nested} calls of exp/log/sin/cos "
                        f"have another inside, expected at most {MAX_NESTED_CALLS}, in {expr}")


def _check_part_size(part, field: str, where: str) -> None:
    """A complex A's real/imaginary parts grow with every function level: bound them before
    simplify and diff, whose time grows faster still."""
    operations = sympy.count_ops(part)
    if operations > MAX_PART_OPERATIONS:
        raise SpecError(f"{field}: the formula is too large to check: {where} has {operations} operations, "
                        f"expected at most {MAX_PART_OPERATIONS}")


def _function_depth(expr) -> int:
    inner = max((_function_depth(arg) for arg in expr.args), default=0)
    return inner + 1 if isinstance(expr, sympy.Function) else inner


def _nested_degree(expr) -> int:
    if expr.is_Pow and expr.exp.is_Number:
        return max(1, math.ceil(abs(expr.exp))) * _nested_degree(expr.base)
    return max((_nested_degree(arg) for arg in expr.args), default=1)


# --------------------------------------------------------------------------------------------
# Reading stored expressions (srepr text in spec.json / graph.json) without eval
# --------------------------------------------------------------------------------------------
_SREPR_CLASSES = (
    "Symbol", "Dummy", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Tuple",
    "exp", "log", "sin", "cos", "tan", "sinh", "cosh", "tanh", "atan2", "Abs", "sign", "re", "im",
    "arg", "conjugate", "Heaviside", "Max", "Min", "Piecewise",
    "StrictLessThan", "LessThan", "StrictGreaterThan", "GreaterThan", "Equality", "Unequality",
    "And", "Or", "Not",
)
_SREPR_SINGLETONS = {"pi": sympy.pi, "E": sympy.E, "I": sympy.I, "oo": sympy.oo, "zoo": sympy.zoo,
                     "nan": sympy.nan, "true": sympy.true, "false": sympy.false}
MAX_STORED_EXPONENT = 1024


@functools.cache
def _srepr_classes() -> dict:
    """The whitelisted sympy classes by name, looked up once (read_srepr runs per stored expression)."""
    from sympy.functions.elementary.piecewise import ExprCondPair
    return {**{name: getattr(sympy, name) for name in _SREPR_CLASSES}, "ExprCondPair": ExprCondPair}


def read_srepr(text: str, field: str, functions: dict | None = None, error=SpecError):
    """The sympy object written by `sympy.srepr`, rebuilt by calling only whitelisted sympy
    classes (plus `functions`, the IR's own) on literal arguments: no eval, so a tampered file
    can at worst be refused."""
    classes = {**_srepr_classes(), **(functions or {})}
    if not isinstance(text, str) or len(text) > 1_000_000:
        raise error(f"{field}: expected a stored sympy expression (srepr text)")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise error(f"{field}: cannot read stored expression {text[:80]!r}") from None

    def fail(what):
        raise error(f"{field}: {what} is not allowed in a stored expression")

    def build(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool, type(None))):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) \
                and isinstance(node.operand.value, (int, float)) and not isinstance(node.operand.value, bool):
            return -node.operand.value
        if isinstance(node, ast.Name) and node.id in _SREPR_SINGLETONS:
            return _SREPR_SINGLETONS[node.id]
        if isinstance(node, (ast.Tuple, ast.List)):
            return tuple(build(e) for e in node.elts)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in classes:
            args = [build(a) for a in node.args]
            kwargs = {k.arg: build(k.value) for k in node.keywords if k.arg is not None}
            if len(kwargs) != len(node.keywords):
                fail("**keywords")
            if node.func.id == "Pow" and len(args) == 2 and all(isinstance(a, sympy.Number) for a in args) \
                    and abs(args[1]) > MAX_STORED_EXPONENT:
                fail(f"the power {args[0]}**{args[1]}")
            try:
                return classes[node.func.id](*args, **kwargs)
            except (TypeError, ValueError) as exc:
                raise error(f"{field}: cannot rebuild {node.func.id}(...) ({exc})") from None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            fail(f"the name {node.func.id}")
        fail(_CONSTRUCTS.get(type(node), f"a {type(node).__name__} expression"))

    try:
        return build(tree.body)
    except RecursionError:
        raise error(f"{field}: stored expression nested too deeply") from None
