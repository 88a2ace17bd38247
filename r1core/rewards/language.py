"""Language-consistency reward (DeepSeek-R1, section 2.3.3): the share of the reasoning's words
that are in the target language, here decided by script: "en" counts words of ASCII letters, "zh"
counts CJK ideographs (one word each, as Chinese has no spaces). `script_share` and
`script_consistency_reward` measure digits instead: the share of the reasoning's digits in one
script ("latin" 0-9, or "arabic-indic"), for tasks whose reasoning is numbers
(`r1core.tasks.two_script`)."""
from __future__ import annotations

import re
from typing import Any, Sequence

from .completions import completion_text

LANGUAGES = ("en", "zh")
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD_RE = re.compile(rf"[{_CJK}]|[^\W\d_{_CJK}]+")
DIGIT_SCRIPTS = {"latin": "0123456789", "arabic-indic": "\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669"}
_ANY_DIGIT = "".join(DIGIT_SCRIPTS.values())
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


def script_share(text: str, script: str = "latin") -> float | None:
    """Share of the digits of `text` (of the scripts in DIGIT_SCRIPTS) that are in `script`; None
    when there are none."""
    if script not in DIGIT_SCRIPTS:
        raise ValueError(f"script: expected one of {tuple(DIGIT_SCRIPTS)}, got {script!r}")
    digits = [c for c in text if c in _ANY_DIGIT]
    if not digits:
        return None
    return sum(c in DIGIT_SCRIPTS[script] for c in digits) / len(digits)


def script_consistency_reward(prompts: Sequence | None, completions: Sequence, script: str = "latin",
                              **kwargs: Any) -> list[float | None]:
    """Share of the digits inside <think>...</think> (the whole completion when it has no tags) in
    `script`; None for reasoning without digits (not scorable)."""
    if script not in DIGIT_SCRIPTS:
        raise ValueError(f"script: expected one of {tuple(DIGIT_SCRIPTS)}, got {script!r}")
    return [script_share(_reasoning(completion_text(c)), script) for c in completions]
