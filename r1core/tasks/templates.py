"""Prompt templates: the DeepSeek-R1-Zero template (arXiv 2501.12948, Table 1), verbatim, and the
parsing of the two completion formats the tasks share."""

import re

R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves "
    "it. The assistant first thinks about the reasoning process in the mind and then provides the "
    "user with the answer. The reasoning process and answer are enclosed within <think> </think> and "
    "<answer> </answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> "
    "answer here </answer>. User: {prompt}. Assistant:"
)


def r1_zero_prompt(question: str) -> str:
    """The R1-Zero template around `question`; the model continues after "Assistant:"."""
    if not isinstance(question, str) or not question:
        raise ValueError(f"question: expected a non-empty string, got {question!r}")
    # str.replace rather than str.format: a question may itself contain braces
    return R1_ZERO_TEMPLATE.replace("{prompt}", question)


def r1_zero_completion(thinking: str, answer: str) -> str:
    """The completion the R1-Zero format reward accepts."""
    return f"<think>{thinking}</think><answer>{answer}</answer>"


def split_completion(completion: str, separators: str) -> tuple[list[str], str | None]:
    """(steps, final answer text or None) of a scratchpad (`T<steps>;A<answer>`) or tagged
    (`<think>..</think><answer>..</answer>`) completion, steps split at any of `separators`;
    never raises."""
    m = re.search(r"<think>(.*?)</think>", completion, re.S)
    if m:
        body = m.group(1)
        ans = re.search(r"<answer>(.*?)</answer>", completion[m.end():], re.S)
        answer = ans.group(1).strip() if ans else None
    else:
        body = completion[1:] if completion.startswith("T") else completion
        head, sep, tail = body.rpartition(";A")
        body, answer = (head, tail.strip()) if sep else (body, None)
    steps = [s.strip() for s in re.split(f"[{re.escape(separators)}]", body) if s.strip()]
    return steps, answer
