"""Countdown search traces for SFT in the R1 format: a **journey** trace (a depth-first search
written step by step, wrong branches, their check and the backtrack out of them, ending in the
solution) and a **shortcut** trace (the solution path alone), as O1 Replication Journey and
Stream of Search compare them.

The notation is one a ~1M-parameter model can follow (what a first try showed it could not: long
arithmetic, and a solved node marked with the backtrack's character):

    journey   <think>8,3,2>22|8+3=11:11,2>22|11+2=13:13>22^|11*2=22:22>22!</think><answer>(8+3)*2</answer>
    shortcut  <think>8,3,2>22|8+3=11:11,2>22|11*2=22:22>22!</think><answer>(8+3)*2</answer>

- a node is the numbers left and the target restated (`11,2>22`), so each check compares
  neighbours;
- `|a op b=r:` is a step into a child node;
- `!` marks a node whose single number is the target, `^` a dead end (back up) (a single number that is
  not the target, a node whose largest reachable value is below the target, or a node whose
  children all failed): distinct characters for the two outcomes;
- doomed nodes are cut at once (`3,2>22^`: nothing from 3 and 2 reaches 22), so traces stay short.

The search order is seeded: `order="heuristic"` tries the steps whose result is nearest the
target first (ties broken by the seed), `"random"` a seeded shuffle. `budget` caps the steps the
search may write; a search that runs out ends its trace unsolved (`<answer></answer>`), as real
search does, and the trace says so (`solved=False`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .countdown import _combine, _reachable, steps_to_expression
from .templates import r1_zero_completion
from .tokenizer import TASK_ALPHABET

STYLES = ("journey", "shortcut")
ORDERS = ("heuristic", "random")
SOLVED, DEAD = "!", "^"
HINT = "@"  # STaR's rationalisation: `8,3,2>22@(8+3)*2:` gives the answer with the problem
# the characters of the prompts, both trace styles and hinted prompts; the tags are the tokenizer's own tokens
TRACE_ALPHABET = TASK_ALPHABET + "|^!" + HINT

_STEP_RE = re.compile(r"^(\d+)([-+*/])(\d+)=(\d+)$")
_NODE_RE = re.compile(r"^(\d+(?:,\d+)*)>(\d+)$")


@dataclass(frozen=True)
class Trace:
    """A written search: the completion text, whether it reached the target, the solution's steps
    (empty when unsolved) and how many steps the search wrote."""

    text: str
    solved: bool
    steps: tuple[str, ...]
    expanded: int


def _node(values: Sequence[int], target: int) -> str:
    return ",".join(map(str, values)) + f">{target}"


def _doomed(values: tuple[int, ...], target: int) -> bool:
    """Nothing reachable from `values` is as large as the target (exact: the reachable table)."""
    return len(values) > 1 and max(_reachable(tuple(sorted(values)))) < target


def _children(values: tuple[int, ...], target: int, order: str, rng: random.Random) -> list[tuple[str, tuple[int, ...]]]:
    """(step, values after it) for every legal step, in search order; the new value goes last."""
    out = []
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            rest = values[:i] + values[i + 1:j] + values[j + 1:]
            for a, op, b, r in _combine(values[i], values[j]):
                out.append((f"{a}{op}{b}={r}", rest + (r,)))
    out = list(dict.fromkeys(out))  # equal numbers give equal steps
    rng.shuffle(out)
    if order == "heuristic":  # stable: the shuffle breaks ties
        out.sort(key=lambda c: min(abs(v - target) for v in c[1]))
    return out


class _Search:
    def __init__(self, target: int, order: str, rng: random.Random, budget: int):
        self.target, self.order, self.rng, self.budget = target, order, rng, budget
        self.parts: list[str] = []
        self.expanded = 0

    def visit(self, values: tuple[int, ...]) -> list[str] | None:
        """Writes the node and its subtree; the steps from here to the target, or None."""
        if len(values) == 1:
            self.parts.append(SOLVED if values[0] == self.target else DEAD)
            return [] if values[0] == self.target else None
        if _doomed(values, self.target):
            self.parts.append(DEAD)
            return None
        for step, after in _children(values, self.target, self.order, self.rng):
            if self.expanded >= self.budget:
                return None
            self.expanded += 1
            self.parts.append(f"|{step}:{_node(after, self.target)}")
            found = self.visit(after)
            if found is not None:
                return [step] + found
        if self.expanded < self.budget:
            self.parts.append(DEAD)
        return None


def countdown_trace(numbers: Sequence[int], target: int, style: str = "journey", *, seed: int = 0, order: str = "heuristic",
                    budget: int = 16) -> Trace:
    """The trace of a depth-first search for `target` from `numbers` (see the module docstring).
    The shortcut trace is the journey search's solution path alone, so both styles of a problem
    reach the same answer and an unsolved journey leaves an unsolved shortcut."""
    if style not in STYLES:
        raise ValueError(f"style: expected one of {STYLES}, got {style!r}")
    if order not in ORDERS:
        raise ValueError(f"order: expected one of {ORDERS}, got {order!r}")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
        raise ValueError(f"budget: expected an int >= 1 (steps the search may write), got {budget!r}")
    if len(numbers) < 2 or any(not isinstance(v, int) or v < 1 for v in numbers):
        raise ValueError(f"numbers: expected at least two ints >= 1, got {list(numbers)!r}")
    values = tuple(numbers)
    search = _Search(target, order, random.Random(seed), budget)
    steps = search.visit(values)
    root = _node(values, target)
    if steps is None:
        return Trace(r1_zero_completion(root + "".join(search.parts), ""), False, (), search.expanded)
    if style == "journey":
        body = root + "".join(search.parts)
    else:
        body, left = root, list(values)
        for step in steps:
            a, _, b, r = parse_step_text(step)
            left.remove(a)
            left.remove(b)
            left.append(r)
            body += f"|{step}:{_node(left, target)}"
        body += SOLVED
    return Trace(r1_zero_completion(body, steps_to_expression(values, steps)), True, tuple(steps), search.expanded)


def parse_step_text(step: str) -> tuple[int, str, int, int]:
    m = _STEP_RE.match(step)
    if m is None:
        raise ValueError(f"step: expected 'a+b=c', got {step!r}")
    return int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))


def replay_trace(text: str) -> tuple[list[str], str | None]:
    """Reads a trace back as the search it writes: every step must be legal on its parent node
    and the node after it must list the numbers left; returns (the steps of the path that ends in
    `!`, the answer text). ValueError naming the first thing that does not follow."""
    m = re.fullmatch(r"<think>(.*)</think><answer>(.*)</answer>", text, re.DOTALL)
    if m is None:
        raise ValueError(f"trace: expected <think>...</think><answer>...</answer>, got {text[:60]!r}")
    body, answer = m.group(1), m.group(2)
    tokens = re.findall(r"\|[^:|^!]+:[^|^!]+|[\^!]|[^|^!]+", body)
    if not tokens or not _NODE_RE.match(tokens[0]):
        raise ValueError(f"trace: expected a root node such as '8,3,2>22', got {body[:30]!r}")
    root = _NODE_RE.match(tokens[0])
    target = int(root.group(2))
    stack: list[tuple[list[int], str | None]] = [([int(x) for x in root.group(1).split(",")], None)]
    for tok in tokens[1:]:
        if tok == SOLVED:
            if stack[-1][0] != [target]:
                raise ValueError(f"trace: '!' after node {stack[-1][0]} that is not the target {target}")
            return [s for _, s in stack[1:]], answer
        if tok == DEAD:
            stack.pop()
            if not stack:
                break
            continue
        step, node = tok[1:].split(":")
        a, op, b, r = parse_step_text(step)
        if not any((x, o, y, z) == (a, op, b, r) for x, o, y, z in _combine(a, b)):
            raise ValueError(f"trace: step {step!r} is not legal arithmetic")
        left = list(stack[-1][0])
        for v in (a, b):
            if v not in left:
                raise ValueError(f"trace: step {step!r} uses {v}, not in {stack[-1][0]}")
            left.remove(v)
        nm = _NODE_RE.match(node)
        if nm is None or int(nm.group(2)) != target or sorted(int(x) for x in nm.group(1).split(",")) != sorted(left + [r]):
            raise ValueError(f"trace: node {node!r} after {step!r} should list {sorted(left + [r])}>{target}")
        stack.append(([int(x) for x in nm.group(1).split(",")], step))
    return [], answer or None


def hint_prompt(prompt: str, answer: str) -> str:
    """A short countdown prompt (`8,3,2>22:`) with the answer given as a hint: `8,3,2>22@(8+3)*2:`."""
    if not prompt.endswith(":") or HINT in prompt:
        raise ValueError(f"prompt: expected a short countdown prompt such as '8,3,2>22:' without a hint, got {prompt!r}")
    if not answer or HINT in answer or ":" in answer:
        raise ValueError(f"answer: expected an expression such as '(8+3)*2', got {answer!r}")
    return f"{prompt[:-1]}{HINT}{answer}:"


def trace_rows(rows: Sequence[dict], style: str, *, seed: int = 0, order: str = "heuristic", budget: int = 16) -> list[dict]:
    """Countdown rows (`numbers`, `target`, `prompt`) with their traces as `completion`, plus
    `solved` and `expanded`; each problem's search order is seeded by `seed` and its index."""
    out = []
    for i, r in enumerate(rows):
        t = countdown_trace(r["numbers"], r["target"], style, seed=seed * 1_000_003 + i, order=order, budget=budget)
        out.append({"prompt": r["prompt"], "numbers": list(r["numbers"]), "target": r["target"], "completion": t.text,
                    "solved": t.solved, "expanded": t.expanded})
    return out


__all__ = ["HINT", "ORDERS", "STYLES", "TRACE_ALPHABET", "Trace", "countdown_trace", "hint_prompt", "replay_trace", "trace_rows"]
