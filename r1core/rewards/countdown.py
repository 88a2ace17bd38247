"""Countdown reward: the answer expression uses exactly the given numbers (each once) and equals
the target. The expression is parsed with `ast` and evaluated by a walker that knows only
+ - * /, parentheses and non-negative integer literals, in exact rational arithmetic; nothing is
ever `eval`ed. Division by zero, any other syntax, or the wrong numbers give 0."""
from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction
from typing import Any, Sequence

from .completions import check_column, completion_text, scratchpad_answer, tagged_answer

MAX_EXPRESSION_CHARS = 200
_ALLOWED_CHARS = re.compile(r"^[0-9+\-*/() ]+$")
_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
        ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}


def _literals(node: ast.AST) -> list[int]:
    """The integer literals of an allowed expression tree; ValueError for anything else."""
    if isinstance(node, ast.Expression):
        return _literals(node.body)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _literals(node.left) + _literals(node.right)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return [node.value]
    raise ValueError(f"disallowed syntax: {type(node).__name__}")


def _evaluate(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.BinOp):
        return _OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    return Fraction(node.value)


def parse_expression(expr: str) -> ast.Expression:
    """The syntax tree of a countdown expression; ValueError when it is anything else."""
    if not isinstance(expr, str) or len(expr) > MAX_EXPRESSION_CHARS or not _ALLOWED_CHARS.match(expr):
        raise ValueError(f"expr: expected integers, + - * / and parentheses, got {expr!r}")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ValueError(f"expr: not an arithmetic expression: {expr!r}") from e
    _literals(tree)
    return tree


def score_expression(expr: str | None, numbers: Sequence[int], target: int) -> float:
    """1.0 if `expr` uses exactly `numbers` (as a multiset) and equals `target`, else 0.0. An
    `expr = target` form is accepted when the right side is the target."""
    if expr is None:
        return 0.0
    if "=" in expr:
        expr, _, right = expr.partition("=")
        if right.strip() != str(target):
            return 0.0
    try:
        tree = parse_expression(expr.strip())
        if Counter(_literals(tree)) != Counter(int(x) for x in numbers):
            return 0.0
        return 1.0 if _evaluate(tree) == target else 0.0
    except (ValueError, ZeroDivisionError, RecursionError, TypeError):
        return 0.0


def countdown_answer(completion: Any) -> str | None:
    """The answer expression: inside <answer> tags, else after the scratchpad's final `A`."""
    text = completion_text(completion)
    found = tagged_answer(text)
    return found if found is not None else scratchpad_answer(text)


def countdown_reward(prompts: Sequence | None, completions: Sequence, numbers: Sequence | None = None,
                     target: Sequence | None = None, **kwargs: Any) -> list[float | None]:
    """Per completion 1.0 / 0.0 (see module docstring); None where the row has no numbers or target."""
    n = len(completions)
    check_column("numbers", numbers, n)
    check_column("target", target, n)
    if numbers is None or target is None:
        return [None] * n
    return [None if nums is None or tgt is None else score_expression(countdown_answer(c), nums, int(tgt))
            for c, nums, tgt in zip(completions, numbers, target)]


# the dataset columns the reward reads: GRPOTrainer checks them before the first step
countdown_reward.required_columns = ("numbers", "target")
