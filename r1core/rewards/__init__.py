"""Rule-based rewards with TRL's signature `fn(prompts, completions, **dataset_columns) -> list[float | None]`.

Completions are strings or TRL conversations ([{"role": "assistant", "content": ...}]); None means
"not scorable" (the row has no gold answer). No reward raises on a garbage completion.
"""
from .accuracy import accuracy_reward, answers_match
from .completions import completion_text, extract_answer
from .countdown import countdown_reward, score_expression
from .format import format_reward, scratchpad_format_reward
from .language import language_consistency_reward

__all__ = [
    "accuracy_reward", "countdown_reward", "format_reward", "scratchpad_format_reward", "language_consistency_reward",
    "answers_match", "completion_text", "extract_answer", "score_expression",
]
