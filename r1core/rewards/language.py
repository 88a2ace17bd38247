"""Language-consistency reward (DeepSeek-R1, section 2.3.3): the share of the reasoning's words
that are in the target language, here decided by script: "en" counts words of ASCII letters, "zh"
counts CJK ideographs (one word each, as Chinese has no spaces)."""
from __future__ import annotations

import re
from typing import Any, Sequence

from .completions import completion_text

LANGUAGES = ("en", "zh")
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD_RE = re.compile(rf"[{_CJK}]|[^\W\d_{_CJK}]+")
_IS_TARGET = {"en": re.compile(r"^[A-Za-z]+$").match, "zh": re.compile(rf"^[{_CJK}]$").match}


def _reasoning(text: str) -> str:
    """The text inside the first <think>...</think>, else all of it (str.find: linear, where the
    lazy regex took quadratic time on many unclosed <think> tags)."""
    start = text.find("<think>")
    end = text.find("</think>", start + 7) if start >= 0 else -1
    return text[start + 7:end] if end >= 0 else text


def language_share(text: str, language: str = "en") -> float | None:
    """Share of the words of `text` in `language`; None when there are no words."""
    if language not in LANGUAGES:
        raise ValueError(f"language: expected one of {LANGUAGES}, got {language!r}")
    words = _WORD_RE.findall(text)
    if not words:
        return None
    is_target = _IS_TARGET[language]
    return sum(1 for w in words if is_target(w)) / len(words)


def language_consistency_reward(prompts: Sequence | None, completions: Sequence, language: str = "en",
                                **kwargs: Any) -> list[float | None]:
    """Share of target-language words inside <think>...</think> (the whole completion when it has no
    tags); None for reasoning without words (digits and symbols only are not scorable)."""
    if language not in LANGUAGES:
        raise ValueError(f"language: expected one of {LANGUAGES}, got {language!r}")
    out = []
    for c in completions:
        text = completion_text(c)
        out.append(language_share(_reasoning(text), language))
    return out
