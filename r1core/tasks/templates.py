"""Prompt templates: the DeepSeek-R1-Zero template (arXiv 2501.12948, Table 1), verbatim."""

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
