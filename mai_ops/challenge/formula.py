"""Score formulas as safe arithmetic expressions.

Organizers choose the score constants per track (the MAI reports use
``2 ** (alpha * psnr) / (C * runtime)``), so the formula is configuration. It is
parsed once with :mod:`ast`, checked against a whitelist of node types, names and
functions, and evaluated by walking the tree: Python's ``eval`` is never used.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Iterable, Mapping

FUNCTIONS: dict[str, Callable[..., float]] = {
    "log": math.log,
    "log2": math.log2,
    "log10": math.log10,
    "exp": math.exp,
    "sqrt": math.sqrt,
    "abs": abs,
    "min": min,
    "max": max,
}

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
# Exponents above this overflow a float long before they mean anything; refusing
# them keeps a typo such as ``2 ** 2 ** 99`` from hanging the scorer.
_MAX_EXPONENT = 4096.0


class FormulaError(ValueError):
    """The formula is not a safe arithmetic expression, or names something unknown."""


def parse_formula(text: str, known_names: Iterable[str]) -> ast.Expression:
    """Parse and check ``text``; raise :class:`FormulaError` naming the offending part."""
    if not isinstance(text, str) or not text.strip():
        raise FormulaError("the formula is empty")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise FormulaError(f"not an arithmetic expression: {exc.msg}") from None
    known = set(known_names)
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        _check_node(node, known, called)
    return tree


def formula_names(tree: ast.Expression) -> set[str]:
    """Variable names a parsed formula reads (function names excluded)."""
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in called}


def _check_node(node: ast.AST, known: set[str], called: set[int]) -> None:
    if isinstance(node, ast.Expression | ast.Load | ast.operator | ast.unaryop):
        return  # operators are checked by the BinOp/UnaryOp that holds them
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise FormulaError(f"only numbers are allowed as constants, not {node.value!r}")
        return
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY:
            raise FormulaError(f"operator {type(node.op).__name__} is not allowed")
        return
    if isinstance(node, ast.UnaryOp):
        if type(node.op) not in _UNARY:
            raise FormulaError(f"operator {type(node.op).__name__} is not allowed")
        return
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise FormulaError(
                f"function {name!r} is not allowed; allowed: {', '.join(sorted(FUNCTIONS))}"
            )
        if node.keywords:
            raise FormulaError("keyword arguments are not allowed")
        return
    if isinstance(node, ast.Name):
        if id(node) in called:
            return  # checked by its Call
        if node.id in FUNCTIONS and node.id not in known:
            raise FormulaError(f"{node.id!r} is a function; call it like {node.id}(x)")
        if node.id not in known:
            raise FormulaError(
                f"unknown variable {node.id!r}; known: {', '.join(sorted(known)) or 'none'}"
            )
        return
    raise FormulaError(f"{type(node).__name__} is not allowed in a score formula")


def evaluate_formula(text: str, variables: Mapping[str, float]) -> float:
    """Evaluate ``text`` with ``variables``; the result is a finite float or an error."""
    tree = parse_formula(text, variables.keys())
    try:
        value = float(_eval(tree.body, variables))
    except (ZeroDivisionError, OverflowError, ValueError, TypeError) as exc:
        raise FormulaError(f"cannot evaluate {text!r}: {exc}") from None
    if not math.isfinite(value):
        raise FormulaError(f"{text!r} evaluates to {value}")
    return value


def _eval(node: ast.AST, variables: Mapping[str, float]) -> float:
    if isinstance(node, ast.Constant):
        return float(node.value)  # floats overflow fast; huge exact ints would hang
    if isinstance(node, ast.Name):
        return float(variables[node.id])
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_eval(node.operand, variables))
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, variables), _eval(node.right, variables)
        if isinstance(node.op, ast.Pow):
            if abs(right) > _MAX_EXPONENT:
                raise OverflowError(f"exponent {right} is too large")
            # math.pow refuses a negative base with a fractional exponent instead of
            # returning a complex number that abs() would quietly make real again.
            return math.pow(left, right)
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.Call):
        return FUNCTIONS[node.func.id](*(_eval(a, variables) for a in node.args))
    raise FormulaError(f"{type(node).__name__} is not allowed in a score formula")
