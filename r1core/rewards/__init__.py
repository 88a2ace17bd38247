"""Rule-based rewards with TRL's signature `fn(prompts, completions, **dataset_columns) -> list[float | None]`.

Completions are strings or TRL conversations ([{"role": "assistant", "content": ...}]); None means
"not scorable" (the row has no gold answer). No reward raises on a garbage completion.
"""
from .accuracy import accuracy_reward, answers_match
from .code import code_reward, extract_code, make_code_reward, outputs_match
from .completions import completion_text, extract_answer
from .countdown import countdown_reward, score_expression
from .countdown_trace import countdown_trace_reward
from .format import format_reward, scratchpad_format_reward
from .language import language_consistency_reward


def rewards_for_task(task: str, fmt: str = "scratchpad") -> list:
    """The reward functions a task is trained with: its correctness reward, plus the R1-Zero format
    reward for the tagged formats. No format reward for the scratchpad: one that also paid
    well-formed wrong answers halved the GRPO gain on the default task (BACKGROUND.md). The code
    task: code_reward alone (its gold completions are code blocks, in any of its formats)."""
    from r1core.tasks import CODE_TASKS, TASKS
    from r1core.tasks.arithmetic import FORMATS

    if task in CODE_TASKS:
        return [code_reward]
    if task not in TASKS:
        raise ValueError(f"task: expected one of {TASKS + CODE_TASKS}, got {task!r}")
    if fmt not in FORMATS:
        raise ValueError(f"fmt: expected one of {FORMATS}, got {fmt!r}")
    correctness = countdown_reward if task == "countdown" else accuracy_reward
    return [correctness] if fmt == "scratchpad" else [correctness, format_reward]


__all__ = [
    "rewards_for_task",
    "accuracy_reward", "countdown_reward", "countdown_trace_reward",
    "format_reward", "scratchpad_format_reward", "language_consistency_reward",
    "code_reward", "make_code_reward",
    "answers_match", "completion_text", "extract_answer", "score_expression", "extract_code", "outputs_match",
]
