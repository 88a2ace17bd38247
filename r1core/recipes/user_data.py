"""A user's own data on the command line: `--dataset PATH` for `sft`, `grpo` and `eval` instead of a
generated task. JSON Lines, JSON, Parquet and CSV files, and folders written by `datasets`'
`save_to_disk`, are read through `datasets`; the prompt, completion and answer columns are named by
flags and become the rows' `prompt`, the SFT target field and `answer` (what the rewards compare
with); every other column stays, so reward functions see it by name, as in TRL.

Conversational prompts (TRL's format: a list of {"role": ..., "content": ...} messages) are
rendered with the tokenizer's chat template (`apply_chat_template`, with the generation prompt);
a conversational completion is its messages' contents joined. Plain-text prompts are used as they
are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from r1core.recipes.flags import option

BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class DataOptions:
    """Where the rows come from when not from the generated --task."""

    dataset: str | None = option(
        None,
        "a data file (.jsonl, .json, .parquet, .csv) or a folder saved by `datasets` "
        "(save_to_disk) to use instead of the generated --task; none: the task",
    )
    dataset_split: str = option(
        "train", "the split of --dataset: a saved DatasetDict's split, or a slice of a file's rows such as train[:1000]"
    )
    prompt_column: str = option("prompt", "the prompt column of --dataset (text, or a list of chat messages)")
    completion_column: str = option("completion", "the SFT target column of --dataset")
    answer_column: str = option("answer", "the column of --dataset the rewards compare with (kept as `answer`)")

    def __post_init__(self):
        if self.dataset is not None and (not isinstance(self.dataset, str) or not self.dataset):
            raise ValueError(f"DataOptions.dataset must be a file or folder, got {self.dataset!r}")
        for name in ("dataset_split", "prompt_column", "completion_column", "answer_column"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"DataOptions.{name} must be a non-empty string, got {value!r}")


def load_table(path: str, split: str = "train"):
    """The `datasets.Dataset` at path (a file by its extension, or a save_to_disk folder)."""
    import datasets

    if not os.path.exists(path):
        raise ValueError(f"--dataset: no such file or folder: {path!r}")
    if os.path.isdir(path):
        try:
            data = datasets.load_from_disk(path)
        except FileNotFoundError as e:
            raise ValueError(f"--dataset: {path!r} is not a folder written by datasets' save_to_disk ({e})") from None
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise ValueError(f"--dataset-split: {path!r} has the splits {sorted(data)}, not {split!r}")
            return data[split]
        return data
    ext = os.path.splitext(path)[1].lower()
    if ext not in BUILDERS:
        raise ValueError(
            f"--dataset: {path!r} is not a .jsonl, .json, .parquet or .csv file or a saved datasets folder"
        )
    # the file's rows are the split "train"; --dataset-split may slice them (train[:100], train[10%:])
    return datasets.load_dataset(BUILDERS[ext], data_files={"train": path}, split=split)


def is_conversation(value) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def render_prompt(tokenizer, prompt):
    """A prompt as text: a conversation through the tokenizer's chat template, text as it is."""
    if isinstance(prompt, str):
        return prompt
    if not is_conversation(prompt):
        raise ValueError(
            f"--prompt-column: a prompt must be text or a list of {{role, content}} messages, got {prompt!r:.80}"
        )
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "--dataset: the prompts are conversations but the tokenizer has no chat template "
            "(chat_template in its tokenizer_config.json)"
        )
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def render_completion(completion):
    if isinstance(completion, str):
        return completion
    if is_conversation(completion):
        return "".join(m["content"] for m in completion)
    raise ValueError(f"--completion-column: a completion must be text or a list of messages, got {completion!r:.80}")


def load_rows(
    opts: DataOptions,
    tokenizer,
    *,
    completion_field: str | None = None,
    prompt_field: str = "prompt",
    need_answer: bool = False,
    limit: int | None = None,
) -> list[dict]:
    """The rows of opts.dataset: `prompt_field` the rendered prompt, `completion_field` (SFT) the
    completion, `answer` the answer column where present (required with need_answer), the other
    columns as they are. limit: the first rows only."""
    table = load_table(opts.dataset, opts.dataset_split)
    wanted = [("--prompt-column", opts.prompt_column)]
    if completion_field is not None:
        wanted.append(("--completion-column", opts.completion_column))
    if need_answer:
        wanted.append(("--answer-column", opts.answer_column))
    for flag, column in wanted:
        if column not in table.column_names:
            raise ValueError(f"{flag}: {opts.dataset!r} has no column {column!r}; its columns: {table.column_names}")
    if limit is not None:
        table = table.select(range(min(limit, len(table))))
    rows = []
    for raw in table:
        row = {
            k: v for k, v in raw.items() if k not in (opts.prompt_column, opts.completion_column, opts.answer_column)
        }
        row[prompt_field] = render_prompt(tokenizer, raw[opts.prompt_column])
        if completion_field is not None:
            row[completion_field] = render_completion(raw[opts.completion_column])
        if opts.answer_column in raw:
            row["answer"] = raw[opts.answer_column]
        rows.append(row)
    if not rows:
        raise ValueError(f"--dataset: {opts.dataset!r} (split {opts.dataset_split!r}) has no rows")
    return rows
