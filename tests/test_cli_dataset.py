"""`--dataset PATH` on the command line (r1core.recipes.user_data): sft, grpo and eval on data files
written by the test (JSONL, Parquet, CSV, a saved DatasetDict folder), chosen columns, a split,
conversational prompts through the tokenizer's chat template, and one-line errors naming the flag."""

from __future__ import annotations

import json

import datasets
import pytest

from r1core.recipes.base_model import build_model
from r1core.recipes.cli import main
from r1core.recipes.user_data import DataOptions, load_rows
from r1core.tasks.tokenizer import build_tokenizer

CHAT = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
ROWS = [
    {"question": f"{a}+{b}=", "response": f"A{a + b}", "gold": str(a + b)}
    for a, b in [(12, 30), (5, 7), (40, 2), (9, 9)]
]


@pytest.fixture
def chat_model(tmp_path):
    """A tiny model folder saved with a tokenizer that has a chat template."""
    tok = build_tokenizer()
    tok.chat_template = CHAT
    d = tmp_path / "model"
    build_model(tok, seed=0).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture
def jsonl(tmp_path):
    """ROWS as a JSON Lines file."""
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return str(path)


@pytest.fixture
def sft_argv(tmp_path, jsonl):
    """Two SFT steps on the JSONL file's named columns, into tmp_path/sft."""
    return ["sft", "--dataset", jsonl, "--prompt-column", "question", "--completion-column", "response",
            "--per-device-train-batch-size", "2", "--max-steps", "2", "--output-dir", str(tmp_path / "sft"), "--logging-steps", "1"]


def test_sft_on_a_jsonl_file_with_named_columns(tmp_path, sft_argv):
    out = tmp_path / "sft"
    assert main(sft_argv) == 0
    assert (out / "model" / "model.safetensors").exists()
    assert len((out / "sft_metrics.jsonl").read_text().splitlines()) == 2


def test_rows_render_conversations_with_the_chat_template(tmp_path):
    tok = build_tokenizer()
    tok.chat_template = CHAT
    rows = [
        {
            "prompt": [{"role": "user", "content": "1+2="}],
            "completion": [{"role": "assistant", "content": "A3"}],
            "answer": "3",
            "extra": 7,
        }
    ]
    path = tmp_path / "chat.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    got = load_rows(DataOptions(dataset=str(path)), tok, completion_field="completion")
    assert got == [{"prompt": "<user>1+2=<assistant>", "completion": "A3", "answer": "3", "extra": 7}]
    with pytest.raises(ValueError, match="no chat template"):
        load_rows(DataOptions(dataset=str(path)), build_tokenizer())


def test_grpo_on_conversational_parquet_prompts(tmp_path, chat_model):
    rows = [{"messages": [{"role": "user", "content": r["question"]}], "gold": r["gold"]} for r in ROWS]
    path = tmp_path / "rl.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    out = tmp_path / "grpo"
    argv = ["grpo", "--model", chat_model, "--dataset", str(path), "--prompt-column", "messages", "--answer-column", "gold",
            "--max-steps", "1", "--num-generations", "2", "--per-device-train-batch-size", "4", "--max-completion-length", "8",
            "--output-dir", str(out), "--rewards", "accuracy"]
    assert main(argv) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_eval_on_a_csv_file_and_a_saved_split(tmp_path, capsys, chat_model):
    csv = tmp_path / "eval.csv"
    datasets.Dataset.from_list(ROWS).to_csv(str(csv))
    base = ["eval", "--model", chat_model, "--prompt-column", "question", "--answer-column", "gold", "--samples", "1",
            "--max-new-tokens", "4"]
    assert main([*base, "--dataset", str(csv), "--n", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["eval_prompts"] == 3
    saved = tmp_path / "saved"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:2])}
    ).save_to_disk(str(saved))
    assert main([*base, "--dataset", str(saved), "--dataset-split", "test"]) == 0
    assert json.loads(capsys.readouterr().out)["eval_prompts"] == 2
    with pytest.raises(SystemExit, match=r"--dataset-split: .* has the splits \['test', 'train'\], not 'dev'"):
        main([*base, "--dataset", str(saved), "--dataset-split", "dev"])


def test_bad_dataset_flags_are_one_line_errors(tmp_path, jsonl):
    data = jsonl
    sft = ["sft", "--max-steps", "1", "--output-dir", str(tmp_path / "sft")]
    with pytest.raises(SystemExit, match="--dataset: no such file or folder"):
        main([*sft, "--dataset", str(tmp_path / "missing.jsonl")])
    with pytest.raises(
        SystemExit, match=r"--prompt-column: .* has no column 'prompt'; its columns: \['question', 'response', 'gold'\]"
    ):
        main([*sft, "--dataset", data])
    with pytest.raises(SystemExit, match="--completion-column: .* has no column 'completion'"):
        main([*sft, "--dataset", data, "--prompt-column", "question"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SystemExit, match=r"--dataset: .* is not a \.jsonl, \.json, \.parquet or \.csv file"):
        main([*sft, "--dataset", str(tmp_path / "notes.txt")])


def test_report_to_tensorboard_writes_the_logged_metrics(tmp_path, sft_argv):
    pytest.importorskip("tensorboard", reason="report_to tensorboard needs the tensorboard package (the test extra)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "sft"
    argv = sft_argv
    assert main([*argv, "--report-to", "tensorboard"]) == 0
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    logged = [json.loads(line) for line in (out / "sft_metrics.jsonl").read_text().splitlines()]
    loss = [e for e in events.Scalars(next(t for t in events.Tags()["scalars"] if t.endswith("/loss")))]
    assert [e.step for e in loss] == [r["step"] for r in logged] == [1, 2]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in logged])
    with pytest.raises(SystemExit, match=r"report_to.*'none', 'tensorboard'.*wandb"):
        main([*argv, "--report-to", "wandb"])


def test_rejection_sample_on_a_dataset(tmp_path, chat_model, jsonl):
    out = tmp_path / "kept.jsonl"
    argv = ["rejection-sample", "--model", chat_model, "--out", str(out), "--dataset", jsonl, "--prompt-column", "question",
            "--answer-column", "gold", "--n", "2", "--max-new-tokens", "4", "--num-prompts", "3"]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "kept.summary.json").read_text())
    assert summary["prompts"] == 3 and summary["samples"] == 6
