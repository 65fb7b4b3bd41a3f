"""Score formulas as safe arithmetic expressions.

Organizers choose the score constants per track (the MAI reports use
``2 ** (alpha * psnr) / (C * runtime)``), so the formula is configuration. It is
parsed once with :mod:`ast`, checked against a whitelist of node types, names and
functions, and evaluated by walking the tree: Python's ``eval`` is never used.

A formula is an organizer's text, so a slip must come back as a :class:`FormulaError`
naming the problem, never as a crash of whatever reads the file (``mai-ops validate``,
the DAG processor). Before :mod:`ast` sees it, a formula is at most
:data:`MAX_FORMULA_CHARS` long; Python's parser gives up on deep nesting with a
RecursionError or a MemoryError, both reported as a nesting problem; the parsed tree
may nest at most :data:`MAX_DEPTH` levels, so walking it never recurses deeply. Every
number is a float while it is evaluated (a huge exact integer would take unbounded time
and memory), an exponent above :data:`MAX_EXPONENT` in size is refused, and a part that
overflows is an error even when the whole comes back finite, so evaluating any accepted
formula costs a few microseconds per node and never hides an overflow.
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
MAX_EXPONENT = 4096.0
# The MAI formulas are under 60 characters and nest 4 levels deep.
MAX_FORMULA_CHARS = 1000
MAX_DEPTH = 40


class FormulaError(ValueError):
    """The formula is not a safe arithmetic expression, or names something unknown."""


def parse_formula(text: str, known_names: Iterable[str]) -> ast.Expression:
    """Parse and check ``text``; raise :class:`FormulaError` naming the offending part."""
    if not isinstance(text, str) or not text.strip():
        raise FormulaError("the formula is empty")
    text = text.strip()
    if len(text) > MAX_FORMULA_CHARS:
        raise FormulaError(
            f"the formula is {len(text)} characters long; at most {MAX_FORMULA_CHARS} are allowed"
        )
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise FormulaError(f"not an arithmetic expression: {exc.msg}") from None
    except (RecursionError, MemoryError):
        # CPython's parser on thousands of nested operators or brackets.
        raise FormulaError(_too_deep()) from None
    except ValueError as exc:  # e.g. a NUL character
        raise FormulaError(f"not an arithmetic expression: {exc}") from None
    _check_depth(tree)
    known = set(known_names)
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        _check_node(node, known, called)
    return tree


def _too_deep() -> str:
    return f"the formula nests more than {MAX_DEPTH} levels of operators, calls or brackets"


def _check_depth(tree: ast.AST) -> None:
    """Refuse a tree deeper than MAX_DEPTH, walking it without recursion."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise FormulaError(_too_deep())
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


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
        try:
            finite = math.isfinite(float(node.value))
        except OverflowError:
            finite = False
        if not finite:
            raise FormulaError(f"a number in the formula is too large ({_short(node.value)})")
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


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= 20 else f"{text[:8]}...({len(text)} digits)"


def evaluate_formula(text: str, variables: Mapping[str, float]) -> float:
    """Evaluate ``text`` with ``variables``; the result is a finite float or an error.

    A part that overflows to infinity (or is NaN) is an error even when the whole
    comes back finite: ``1 / (x * 1e308 * 10)`` is not a score of 0.
    """
    tree = parse_formula(text, variables.keys())
    not_finite: list[str] = []
    try:
        value = float(_eval(tree.body, variables, not_finite))
    except (ZeroDivisionError, OverflowError, ValueError, TypeError) as exc:
        raise FormulaError(f"cannot evaluate {text!r}: {exc}") from None
    if not math.isfinite(value):
        raise FormulaError(f"{text!r} evaluates to {value}")
    if not_finite:
        raise FormulaError(f"cannot evaluate {text!r}: {not_finite[0]}")
    return value


def _eval(node: ast.AST, variables: Mapping[str, float], not_finite: list[str]) -> float:
    value = _value(node, variables, not_finite)
    if not not_finite and not math.isfinite(value):
        not_finite.append(f"{ast.unparse(node)[:80]} is {value}")
    return value


def _value(node: ast.AST, variables: Mapping[str, float], not_finite: list[str]) -> float:
    if isinstance(node, ast.Constant):
        return float(node.value)  # floats overflow fast; huge exact ints would hang
    if isinstance(node, ast.Name):
        return float(variables[node.id])
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_eval(node.operand, variables, not_finite))
    if isinstance(node, ast.BinOp):
        left = _eval(node.left, variables, not_finite)
        right = _eval(node.right, variables, not_finite)
        if isinstance(node.op, ast.Pow):
            if abs(right) > MAX_EXPONENT:
                raise OverflowError(f"exponent {right} is too large")
            # math.pow refuses a negative base with a fractional exponent instead of
            # returning a complex number that abs() would quietly make real again.
            return math.pow(left, right)
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.Call):
        args = [_eval(a, variables, not_finite) for a in node.args]
        return FUNCTIONS[node.func.id](*args)
    raise FormulaError(f"{type(node).__name__} is not allowed in a score formula")
