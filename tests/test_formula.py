"""Score formulas: exact values for the MAI score family, and nothing unsafe gets through."""

from __future__ import annotations

import ast
import builtins
import math
import time

import pytest

from mai_ops.challenge.formula import (
    MAX_DEPTH,
    MAX_EXPONENT,
    MAX_FORMULA_CHARS,
    FormulaError,
    evaluate_formula,
    formula_names,
    parse_formula,
)

MAI_SCORE = "2 ** (alpha * psnr) / (C * runtime)"


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        # 2 ** (0.5 * 20) / (2 * 8) = 1024 / 16
        pytest.param({"alpha": 0.5, "psnr": 20.0, "C": 2.0, "runtime": 8.0}, 64.0, id="small"),
        # 2 ** (2 * 25) / (1e15 * 40) = 1125899906842624 / 4e16
        pytest.param(
            {"alpha": 2.0, "psnr": 25.0, "C": 1e15, "runtime": 40.0},
            0.0281474976710656,
            id="mai-constants",
        ),
        # 2 ** (1 * 0) / (1 * 0.5) = 1 / 0.5
        pytest.param({"alpha": 1.0, "psnr": 0.0, "C": 1.0, "runtime": 0.5}, 2.0, id="zero-psnr"),
        # 2 ** (2 * -1) / (0.25 * 1) = 0.25 / 0.25
        pytest.param({"alpha": 2.0, "psnr": -1.0, "C": 0.25, "runtime": 1.0}, 1.0, id="negative"),
    ],
)
def test_mai_score_by_hand(variables: dict[str, float], expected: float) -> None:
    assert evaluate_formula(MAI_SCORE, variables) == pytest.approx(expected, rel=1e-12)


def test_mai_score_rewards_fidelity_and_penalizes_runtime() -> None:
    base = {"alpha": 2.0, "psnr": 30.0, "C": 1e15, "runtime": 50.0}
    score = evaluate_formula(MAI_SCORE, base)
    # +0.5 dB PSNR at alpha 2 doubles the score; doubling the runtime halves it.
    assert evaluate_formula(MAI_SCORE, {**base, "psnr": 30.5}) == pytest.approx(2 * score)
    assert evaluate_formula(MAI_SCORE, {**base, "runtime": 100.0}) == pytest.approx(score / 2)


def test_depth_score_by_hand() -> None:
    # 2 ** (-20 * 0.1) / (0.001 * 250) = 0.25 / 0.25
    value = evaluate_formula(
        "2 ** (-alpha * si_rmse) / (C * runtime)",
        {"alpha": 20.0, "si_rmse": 0.1, "C": 0.001, "runtime": 250.0},
    )
    assert value == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize(
    ("formula", "expected"),
    [
        ("log(x)", 1.0),
        ("log(8, 2)", 3.0),
        ("log2(1024)", 10.0),
        ("log10(1000)", 3.0),
        ("exp(0)", 1.0),
        ("sqrt(16)", 4.0),
        ("sqrt(y) * 2", 6.0),
        ("abs(-2.5)", 2.5),
        ("min(3, 1, 2)", 1.0),
        ("max(3, 1, 2)", 3.0),
        ("min(y, 10) + max(y, 10)", 19.0),
        ("-y + +y - 1", -1.0),
        ("(1 + 2) * 3 - 4 / 8", 8.5),
        ("2 ** 3 ** 2", 512.0),  # right-associative, as in Python
    ],
)
def test_functions_and_operators(formula: str, expected: float) -> None:
    value = evaluate_formula(formula, {"x": math.e, "y": 9.0})
    assert value == pytest.approx(expected, rel=1e-12)
    assert isinstance(value, float)


def test_integer_result_is_a_float() -> None:
    value = evaluate_formula("1 + 2", {})
    assert value == 3.0 and type(value) is float


def test_python_eval_is_never_used(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("eval/exec called")

    monkeypatch.setattr(builtins, "eval", refuse)
    monkeypatch.setattr(builtins, "exec", refuse)
    assert evaluate_formula(MAI_SCORE, {"alpha": 1, "psnr": 3, "C": 1, "runtime": 2}) == 4.0


@pytest.mark.parametrize(
    ("formula", "variables", "match"),
    [
        pytest.param(
            "psnr / runtime",
            {"psnr": 30.0, "runtime": 0.0},
            "division by zero",
            id="division-by-zero",
        ),
        pytest.param(
            "psnr / (runtime - runtime)",
            {"psnr": 1.0, "runtime": 3.0},
            "division by zero",
            id="division-by-computed-zero",
        ),
        pytest.param("2 ** 5000", {}, r"exponent 5000(\.0)? is too large", id="huge-exponent"),
        pytest.param("2 ** 2 ** 99", {}, "is too large", id="tower-exponent"),
        pytest.param("2 ** -5000", {}, "is too large", id="huge-negative-exponent"),
        pytest.param(
            "2 ** (alpha * psnr)",
            {"alpha": 1000.0, "psnr": 40.0},
            "is too large",
            id="huge-exponent-from-variables",
        ),
        pytest.param("10.0 ** 400", {}, "cannot evaluate", id="float-overflow"),
        pytest.param("10 ** 400", {}, "cannot evaluate", id="int-too-large-for-float"),
        pytest.param("exp(1000)", {}, "cannot evaluate", id="exp-overflow"),
        pytest.param("log(x)", {"x": 0.0}, "math domain error", id="log-zero"),
        pytest.param("sqrt(x)", {"x": -1.0}, "math domain error", id="sqrt-negative"),
        pytest.param("min()", {}, "cannot evaluate", id="min-without-arguments"),
        pytest.param("(-8) ** 0.5", {}, "cannot evaluate", id="complex-result"),
        pytest.param("x * 1e308 * 10", {"x": 1.0}, "evaluates to inf", id="infinite"),
        pytest.param(
            "x * 1e308 * 10 - x * 1e308 * 10", {"x": 1.0}, "evaluates to nan", id="not-a-number"
        ),
        pytest.param("x * 2", {"x": float("inf")}, "evaluates to inf", id="infinite-input"),
        pytest.param("x + 1", {"x": float("nan")}, "evaluates to nan", id="nan-input"),
    ],
)
def test_evaluation_errors_are_formula_errors(
    formula: str, variables: dict[str, float], match: str
) -> None:
    with pytest.raises(FormulaError, match=match):
        evaluate_formula(formula, variables)


def test_unknown_variable() -> None:
    with pytest.raises(FormulaError, match=r"unknown variable 'psrn'; known: C, alpha, psnr"):
        evaluate_formula("2 ** (alpha * psrn) / C", {"alpha": 2.0, "psnr": 30.0, "C": 1.0})
    with pytest.raises(FormulaError, match=r"unknown variable 'psnr'; known: none"):
        parse_formula("psnr", [])


def test_formula_error_is_a_value_error() -> None:
    # Callers (pydantic validators, the CLI) may catch ValueError.
    assert issubclass(FormulaError, ValueError)


@pytest.mark.parametrize(
    ("formula", "match"),
    [
        pytest.param(
            "__import__('os').system('x')",
            r"function .*__import__.* is not allowed",
            id="import-system",
        ),
        pytest.param(
            "open('f')", r"function 'open' is not allowed; allowed: abs, exp, log", id="open"
        ),
        pytest.param("eval('1')", r"function 'eval' is not allowed", id="eval"),
        pytest.param("psnr(2)", r"function 'psnr' is not allowed", id="call-a-variable"),
        pytest.param("runtime.real", r"Attribute is not allowed", id="attribute"),
        pytest.param("psnr.__class__", r"Attribute is not allowed", id="dunder-attribute"),
        pytest.param("lambda: 1", r"Lambda is not allowed", id="lambda"),
        pytest.param("(lambda: 1)()", r"function 'lambda: 1' is not allowed", id="lambda-call"),
        pytest.param("[x for x in (1, 2)]", r"ListComp is not allowed", id="list-comprehension"),
        pytest.param("max(x for x in (1, 2))", r"GeneratorExp is not allowed", id="generator"),
        pytest.param("[psnr, 1]", r"List is not allowed", id="list"),
        pytest.param("(psnr, 1)", r"Tuple is not allowed", id="tuple"),
        pytest.param("{'a': 1}", r"Dict is not allowed", id="dict"),
        pytest.param("psnr['a']", r"Subscript is not allowed", id="subscript"),
        pytest.param("'abc'", r"only numbers are allowed as constants, not 'abc'", id="string"),
        pytest.param("b'abc'", r"only numbers are allowed as constants", id="bytes"),
        pytest.param("True", r"only numbers are allowed as constants, not True", id="bool"),
        pytest.param("None", r"only numbers are allowed as constants, not None", id="none"),
        pytest.param("1j", r"only numbers are allowed as constants", id="complex"),
        pytest.param("...", r"only numbers are allowed as constants", id="ellipsis"),
        pytest.param("psnr > 30", r"Compare is not allowed", id="comparison"),
        pytest.param("psnr and runtime", r"BoolOp is not allowed", id="and"),
        pytest.param("not psnr", r"operator Not is not allowed", id="not"),
        pytest.param("~psnr", r"operator Invert is not allowed", id="invert"),
        pytest.param("psnr if runtime else 1", r"IfExp is not allowed", id="conditional"),
        pytest.param("psnr // 2", r"operator FloorDiv is not allowed", id="floordiv"),
        pytest.param("psnr % 2", r"operator Mod is not allowed", id="mod"),
        pytest.param("2 ^ psnr", r"operator BitXor is not allowed", id="xor-for-power"),
        pytest.param("psnr << 2", r"operator LShift is not allowed", id="shift"),
        pytest.param("(x := 1)", r"NamedExpr is not allowed", id="walrus"),
        pytest.param("f'{psnr}'", r"JoinedStr is not allowed", id="f-string"),
        pytest.param("max(*psnr)", r"Starred is not allowed", id="starred"),
        pytest.param("log(psnr, base=2)", r"keyword arguments are not allowed", id="keyword"),
        pytest.param("max(**psnr)", r"keyword arguments are not allowed", id="double-star"),
        pytest.param("2 ** (psnr", r"not an arithmetic expression", id="syntax-error"),
        pytest.param("psnr = 1", r"not an arithmetic expression", id="assignment"),
        pytest.param("import os", r"not an arithmetic expression", id="statement"),
        pytest.param("psnr\nruntime", r"not an arithmetic expression", id="two-lines"),
        pytest.param("", r"the formula is empty", id="empty"),
        pytest.param(" \n\t", r"the formula is empty", id="blank"),
    ],
)
def test_unsafe_or_malformed_formulas_are_refused(formula: str, match: str) -> None:
    with pytest.raises(FormulaError, match=match):
        parse_formula(formula, ["psnr", "runtime", "x"])
    # evaluate_formula checks the same way before it computes anything.
    with pytest.raises(FormulaError, match=match):
        evaluate_formula(formula, {"psnr": 30.0, "runtime": 10.0, "x": 1.0})


def test_non_string_formula_is_refused() -> None:
    with pytest.raises(FormulaError, match="the formula is empty"):
        parse_formula(None, [])  # type: ignore[arg-type]


def test_parse_accepts_surrounding_whitespace_and_reports_names() -> None:
    tree = parse_formula("  log(psnr) / max(runtime, C)\n", ["psnr", "runtime", "C"])
    assert formula_names(tree) == {"psnr", "runtime", "C"}
    assert formula_names(parse_formula(MAI_SCORE, ["alpha", "psnr", "C", "runtime"])) == {
        "alpha",
        "psnr",
        "C",
        "runtime",
    }


# A function name used as a bare variable passes the check (names in FUNCTIONS are
# allowed anywhere) and then fails at evaluation with a KeyError, not a FormulaError:
# a config with formula "psnr * log" validates and crashes the scorer. See the report.
def test_function_name_used_as_a_variable_is_refused() -> None:
    with pytest.raises(FormulaError, match="log"):
        evaluate_formula("psnr * log", {"psnr": 30.0})


# A negative base to a fractional power gives a complex number; abs() turns it back
# into a real one, so a formula like abs((psnr - 40) ** 0.5) silently scores 1.0 for
# psnr 39 instead of failing. See the report.
def test_complex_intermediate_is_refused() -> None:
    with pytest.raises(FormulaError):
        evaluate_formula("abs((psnr - 40) ** 0.5)", {"psnr": 39.0})


# --------------------------------------------------------------- pathological formulas
# An organizer's slip (a generated formula, a paste gone wrong) must come back as a
# FormulaError naming the problem, quickly: before these limits, CPython's parser raised
# RecursionError or MemoryError on them, and the scorer's recursive walk did too.

PATHOLOGICAL = [
    pytest.param("(" * 5000 + "psnr" + ")" * 5000, "characters long", id="5000-parentheses"),
    pytest.param("-" * 100_000 + "psnr", "characters long", id="100000-unary-minus"),
    pytest.param(" + ".join(["psnr"] * 50_000), "characters long", id="50000-additions"),
    pytest.param(" ** ".join(["2"] * 100_000), "characters long", id="100000-power-chain"),
    pytest.param("abs(" * 3000 + "psnr" + ")" * 3000, "characters long", id="3000-nested-calls"),
    pytest.param("psnr" + ".real" * 100_000, "characters long", id="100000-attributes"),
    pytest.param("1" + "0" * 5000, "characters long", id="5000-digit-number"),
    # Under the length limit, still too deep for the parser or for a recursive walk.
    pytest.param("-" * 900 + "psnr", "nests more than 40 levels", id="900-unary-minus"),
    pytest.param("+".join(["psnr"] * 199), "nests more than 40 levels", id="199-additions"),
    pytest.param("**".join(["2"] * 300), "nests more than 40 levels", id="300-power-chain"),
    pytest.param("abs(" * 100 + "psnr" + ")" * 100, "nests more than 40", id="100-nested-calls"),
    pytest.param("(" * 250 + "psnr" + ")" * 250, "nested parentheses", id="250-parentheses"),
    pytest.param("1" + "0" * 400, r"too large \(10000000\.\.\.\(401 digits\)\)", id="huge-int"),
    pytest.param("psnr * 1e400", r"too large \(inf\)", id="float-literal-overflow"),
]


@pytest.mark.parametrize(("formula", "match"), PATHOLOGICAL)
def test_pathological_formulas_are_refused_quickly(formula: str, match: str) -> None:
    started = time.monotonic()
    with pytest.raises(FormulaError, match=match):
        parse_formula(formula, ["psnr"])
    with pytest.raises(FormulaError, match=match):
        evaluate_formula(formula, {"psnr": 30.0})
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("error", [RecursionError, MemoryError])
def test_a_parser_that_gives_up_is_a_formula_error(
    monkeypatch: pytest.MonkeyPatch, error: type[Exception]
) -> None:
    """CPython's parser raises these on deep nesting, depending on its stack and version."""

    def give_up(*args: object, **kwargs: object) -> None:
        raise error()

    monkeypatch.setattr(ast, "parse", give_up)
    with pytest.raises(FormulaError, match="nests more than 40 levels"):
        parse_formula("psnr", ["psnr"])


def test_the_longest_and_deepest_accepted_formulas_evaluate() -> None:
    flat = "max(" + ", ".join(["psnr"] * 10_000) + ")"
    flat = flat[: MAX_FORMULA_CHARS - 1].rsplit(",", 1)[0] + ")"
    assert len(flat) <= MAX_FORMULA_CHARS
    assert evaluate_formula(flat, {"psnr": 30.0}) == 30.0
    with pytest.raises(FormulaError, match=f"at most {MAX_FORMULA_CHARS}"):
        parse_formula(flat[:-1] + ", psnr" * 200 + ")", ["psnr"])
    deep = "-" * (MAX_DEPTH - 2) + "psnr"  # Expression > UnaryOp ... > Name > Load
    assert evaluate_formula(deep, {"psnr": 30.0}) == 30.0
    with pytest.raises(FormulaError, match="nests more than"):
        parse_formula("-" * MAX_DEPTH + "psnr", ["psnr"])


@pytest.mark.parametrize(
    "formula",
    [
        pytest.param("10 ** 10 ** 10", id="10**10**10"),
        pytest.param("9 ** 9 ** 9 ** 9", id="9**9**9**9"),
        pytest.param("2 ** (psnr * psnr * psnr)", id="exponent-from-variables"),
        pytest.param("(-2) ** 5001", id="negative-base"),
        pytest.param("psnr ** -4097", id="tiny-result"),
    ],
)
def test_huge_exponents_fail_at_once_and_never_build_a_huge_number(formula: str) -> None:
    """Exact integers would take minutes and gigabytes here; floats and the cap do not."""
    started = time.monotonic()
    with pytest.raises(FormulaError, match="is too large"):
        evaluate_formula(formula, {"psnr": 30.0})
    assert time.monotonic() - started < 0.1
    assert MAX_EXPONENT == 4096


def test_an_overflowing_power_below_the_exponent_cap_is_a_formula_error() -> None:
    with pytest.raises(FormulaError, match="cannot evaluate"):
        evaluate_formula("(10 ** 300) ** 2", {})
    with pytest.raises(FormulaError, match="cannot evaluate"):
        evaluate_formula("psnr ** 4096", {"psnr": 30.0})


@pytest.mark.parametrize(
    ("formula", "variables"),
    [
        pytest.param("1 / (x * 1e308 * 10)", {"x": 1.0}, id="overflow-then-divided"),
        pytest.param("max(x * 1e308 * 10, 5)", {"x": -1.0}, id="overflow-then-max"),
        pytest.param("1 / x", {"x": float("inf")}, id="infinite-input-divided"),
    ],
)
def test_an_overflow_on_the_way_is_not_hidden_by_a_finite_result(
    formula: str, variables: dict[str, float]
) -> None:
    with pytest.raises(FormulaError, match=r"cannot evaluate .* is -?inf"):
        evaluate_formula(formula, variables)


# ----------------------------------------------------- a formula that fails on one row


def test_a_score_that_cannot_be_computed_fails_that_record_alone(tmp_path) -> None:
    """The MAI formula on a PSNR of 2100 dB needs 2 ** 4200: that record fails with
    ``score_not_computable`` (ours to look at: clearing retries it), the next is scored."""
    from mai_ops.challenge.config import load_challenge
    from mai_ops.submissions import evaluation

    from .conftest import MAI2021

    challenge = load_challenge(MAI2021)
    track = challenge.track("learned_isp")
    assert track.score.formula == MAI_SCORE
    psnr = {"sane": 23.0, "absurd": 2100.0}

    def measured(team: str) -> evaluation.Evaluation:
        """A record its benchmark and fidelity stages filled (the score stage runs alone)."""
        return evaluation.Evaluation(
            team=team, runtime={"median_ms": 80.0}, metrics={"psnr": psnr[team], "ssim": 0.9}
        )

    records = {
        team: evaluation.evaluate(
            measured(team), challenge, track, None, tmp_path, stages=("score",)
        ).as_json()
        for team in psnr
    }
    assert records["sane"]["status"] == "ok"
    assert records["sane"]["score"] == pytest.approx(2 ** (2 * 23.0) / (1e15 * 80.0))
    absurd = records["absurd"]
    assert absurd["status"] == "failed" and absurd["score"] is None
    assert [(e["code"], e["stage"]) for e in absurd["errors"]] == [
        ("score_not_computable", "score")
    ]
    assert "exponent 4200" in absurd["errors"][0]["message"]
    assert evaluation.retryable(absurd)
