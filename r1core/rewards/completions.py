"""Reading completions as TRL hands them to reward functions: plain strings or conversations."""
from __future__ import annotations

import re
from typing import Any, Sequence

_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")


def completion_text(completion: Any) -> str:
    """The text of one completion: a string, a message dict, or a conversation (list of messages;
    the last assistant message's content). Anything else is an empty string (not scorable text)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        content = completion.get("content", "")
        return content if isinstance(content, str) else ""
    if isinstance(completion, (list, tuple)):
        messages = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in messages if m.get("role") == "assistant"] or messages
        return completion_text(assistant[-1]) if assistant else ""
    return ""


def tagged_answer(text: str) -> str | None:
    """Content of the last <answer>...</answer> (pairs taken left to right, as re.findall would),
    stripped. A scan with str.find: the lazy regex took quadratic time (26 s on 20000 unclosed
    <answer> tags)."""
    found, i = None, 0
    while True:
        start = text.find("<answer>", i)
        if start < 0:
            break
        end = text.find("</answer>", start + 8)
        if end < 0:
            break
        found, i = text[start + 8:end], end + 9
    return found.strip() if found is not None else None


def scratchpad_answer(text: str) -> str | None:
    """What follows the final `A` of a scratchpad completion (`T...;A1785`, or just `A1785`)."""
    text = text.strip()
    if re.match(r"A(?![A-Za-z])", text):  # "A1785", not the first word of "After adding, ..."
        return text[1:].strip()
    head, sep, tail = text.rpartition(";A")
    return tail.strip() if sep else None


def boxed_answer(text: str) -> str | None:
    """Content of the last \\boxed{...}, with nested braces."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None


def extract_answer(completion: Any) -> str | None:
    """The final answer of a completion: <answer> tags, else the scratchpad's `A`, else \\boxed{},
    else the last number; None when there is none."""
    text = completion_text(completion)
    for find in (tagged_answer, scratchpad_answer, boxed_answer):
        found = find(text)
        if found is not None:
            return found
    numbers = _NUMBER_RE.findall(text)
    return numbers[-1] if numbers else None


def check_column(name: str, column: Sequence | None, n: int) -> None:
    if column is not None and len(column) != n:
        raise ValueError(f"{name}: expected one value per completion ({n}), got {len(column)}")
