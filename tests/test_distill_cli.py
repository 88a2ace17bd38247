"""`r1core rejection-sample` and `r1core distill`: --help, the data file and its summary, every
distillation mode shrunk by flags (the run directory of `r1core run`), --resume, and bad input
named in one line."""

import json

import pytest

from r1core.recipes.cli import main, parse
from r1core.recipes.distill import DistillRunConfig
from r1core.recipes.r1_zero import SHIPPED_BASE
from r1core.rewards import accuracy_reward

STUDENT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2}


@pytest.fixture
def student_config(tmp_path):
    p = tmp_path / "student.json"
    p.write_text(json.dumps(STUDENT))
    return str(p)


def _shrunk(tmp_path, student_config, name):
    return ["distill", "--teacher", SHIPPED_BASE, "--student-config", student_config, "--runs-dir", str(tmp_path), "--name", name,
            "--train-size", "64", "--eval-size", "6", "--eval-samples", "1", "--sample-prompts", "16", "--samples-per-prompt", "3",
            "--no-progress", "--distill.max-steps", "2", "--distill.per-device-train-batch-size", "4", "--distill.max-new-tokens", "40",
            "--sft.max-steps", "2", "--sft.per-device-train-batch-size", "4", "--distill.logging-steps", "1", "--sft.logging-steps", "1"]


@pytest.mark.parametrize("cmd,flag", [("rejection-sample", "--per-prompt"), ("distill", "--distill.lmbda")])
def test_help(cmd, flag, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out and flag in out
    if cmd == "distill":
        assert "--sft.max-steps" in out and "--distill.mode" not in out and "--distill.output-dir" not in out  # the run sets those


def test_rejection_sample_writes_passing_rows_and_a_summary(tmp_path, capsys):
    out = tmp_path / "data.jsonl"
    assert main(["rejection-sample", "--model", SHIPPED_BASE, "--out", str(out), "--num-prompts", "16", "--n", "3", "--seed", "1"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    summary = json.loads((tmp_path / "data.summary.json").read_text())
    assert rows and len(rows) == summary["kept"] <= 16 and summary["samples"] == 48 and len(summary["per_prompt_stats"]) == 16
    scores = accuracy_reward([r["prompt"] for r in rows], [r["completion"] for r in rows], answer=[r["answer"] for r in rows])
    assert scores == [1.0] * len(rows)
    printed = capsys.readouterr().out
    assert f"prompts 16, samples 48, accepted {summary['accepted']}" in printed and "mean length" in printed
    again = tmp_path / "again.jsonl"
    assert main(["rejection-sample", "--model", SHIPPED_BASE, "--out", str(again), "--num-prompts", "16", "--n", "3", "--seed", "1"]) == 0
    assert again.read_text() == out.read_text()  # the same seed, the same file


@pytest.mark.parametrize("mode", ["sequence", "logit", "on-policy", "reverse-kl"])
def test_distill_modes_write_the_run_directory(tmp_path, student_config, mode):
    assert main([*_shrunk(tmp_path, student_config, mode), "--mode", mode]) == 0
    d = tmp_path / mode
    s = json.loads((d / "summary.json").read_text())
    for k in ("base_accuracy", "final_accuracy", "base_greedy_accuracy", "final_greedy_accuracy", "teacher_accuracy",
              "teacher_greedy_accuracy"):
        assert 0.0 <= s[k] <= 1.0, k
    assert s["teacher_greedy_accuracy"] > 0.0 and s["wall_seconds"] > 0 and s["train_steps"] == 2 and s["mode"] == mode
    assert (s["rejection_sampling"] is not None) == (mode == "sequence")
    recs = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2]
    if mode != "sequence":
        assert [r["on_policy"] for r in recs] == [0.0 if mode == "logit" else 1.0] * 2
    assert (d / "plots" / "distill.png").stat().st_size > 1000 and (d / "final" / "model.safetensors").exists()
    assert json.loads((d / "run_config.json").read_text())["distill"]["mode"] == ("reverse_kl_pg" if mode == "reverse-kl" else "logit")


def test_distill_resumes_from_its_checkpoint(tmp_path, student_config):
    argv = [*_shrunk(tmp_path, student_config, "r"), "--mode", "logit", "--distill.save-steps", "1"]
    assert main(argv) == 0
    assert main([*argv, "--distill.max-steps", "3", "--resume"]) == 0
    assert [json.loads(line)["step"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["train_steps"] == 3


def test_run_config_sets_lmbda_by_mode_unless_given(tmp_path, student_config):
    base = ["distill", "--teacher", SHIPPED_BASE, "--student", "tiny"]
    assert parse([*base, "--mode", "logit"]).build(DistillRunConfig).distill.lmbda == 0.0
    assert parse([*base, "--mode", "on-policy"]).build(DistillRunConfig).distill.lmbda == 1.0
    cfg = parse([*base, "--mode", "on-policy", "--distill.lmbda", "0.5"]).build(DistillRunConfig)
    assert (cfg.distill.lmbda, cfg.distill.mode, cfg.distill.completion_field) == (0.5, "logit", "solution")
    assert parse([*base, "--mode", "reverse-kl"]).build(DistillRunConfig).distill.mode == "reverse_kl_pg"


@pytest.mark.parametrize("argv,pat", [
    (["distill", "--student", "tiny"], "required: --teacher"),
    (["distill", "--teacher", "/no/such/dir", "--student", "tiny"], "DistillRunConfig.teacher must be a model folder"),
    (["distill", "--teacher", SHIPPED_BASE], "exactly one of the two"),
    (["distill", "--teacher", SHIPPED_BASE, "--student", "tiny", "--student-config", "x.json"], "exactly one of the two"),
    (["distill", "--teacher", SHIPPED_BASE, "--student", "tiny", "--mode", "kd"], "invalid choice: 'kd'"),
    (["distill", "--teacher", SHIPPED_BASE, "--student", "tiny", "--distill.lmbda", "2"], "--distill.lmbda: DistillConfig.lmbda must be"),
    (["rejection-sample", "--model", "tiny"], "required: --out"),
    (["rejection-sample", "--model", "tiny", "--out", "x.jsonl", "--n", "0"], "n must be an int >= 1"),
])
def test_bad_input_is_one_line_that_names_it(argv, pat, cli_error):
    assert pat in cli_error(argv)


def test_student_from_a_transformers_config(tmp_path):
    from transformers import Qwen2ForCausalLM

    from r1core.recipes.base_model import build_tokenizer
    from r1core.recipes.distill import load_student

    tok = build_tokenizer()
    qwen = {"model_type": "qwen2", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
            "num_key_value_heads": 1, "max_position_embeddings": 64}
    p = tmp_path / "qwen.yaml"
    p.write_text(json.dumps(qwen))
    cfg = parse(["distill", "--teacher", SHIPPED_BASE, "--student-config", str(p)]).build(DistillRunConfig)
    student, student_tok = load_student(cfg, tok)
    assert isinstance(student, Qwen2ForCausalLM) and student_tok is tok
    assert (student.config.vocab_size, student.config.hidden_size, student.config.eos_token_id) == (len(tok), 16, tok.eos_token_id)
    p.write_text(json.dumps({**qwen, "vocab_size": 1000}))
    with pytest.raises(ValueError, match="vocab_size 1000 is not the teacher's tokenizer's"):
        load_student(cfg, tok)
    p.write_text(json.dumps({"hidden_size": 16, "layers": 1}))
    with pytest.raises(ValueError, match="unknown key\\(s\\) \\['layers'\\]"):
        load_student(cfg, tok)


def test_a_student_of_another_tokenizer_is_named(tmp_path):
    from r1core.recipes.base_model import build_model
    from r1core.tasks.tokenizer import build_tokenizer

    tok = build_tokenizer("0123456789+=;A")  # not the task tokenizer the shipped teacher reads
    build_model(tok, seed=0).save_pretrained(tmp_path / "s")
    tok.save_pretrained(tmp_path / "s")
    with pytest.raises(SystemExit, match="its tokenizer differs from the teacher's"):
        main(["distill", "--teacher", SHIPPED_BASE, "--student", str(tmp_path / "s"), "--runs-dir", str(tmp_path), "--no-progress",
              "--eval-size", "4", "--mode", "sequence"])


def test_owned_fields_in_a_config_file_are_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(f"teacher: {SHIPPED_BASE}\nstudent: tiny\ndistill:\n  mode: logit\n")
    with pytest.raises(SystemExit, match="'distill.mode' is set by `r1core distill` \\(--mode\\)"):
        main(["distill", "--config", str(p)])


def _user_file(tmp_path, n=20):
    """A user's JSONL: the addition task's rows under other column names, plus a column of its own."""
    from r1core.tasks import generate

    p = tmp_path / "mine.jsonl"
    rows = generate("addition", "train", n, seed=5, digits=3)
    p.write_text("".join(json.dumps({"question": r["prompt"], "target": r["solution"], "gold": r["answer"], "extra": 1}) + "\n"
                         for r in rows))
    return str(p), rows


@pytest.mark.parametrize("mode", ["logit", "sequence"])
def test_distill_on_a_users_dataset(tmp_path, student_config, mode):
    path, rows = _user_file(tmp_path)
    args = [*_shrunk(tmp_path, student_config, mode), "--mode", mode, "--dataset", path, "--prompt-column", "question",
            "--completion-column", "target", "--answer-column", "gold", "--eval-size", "5"]
    assert main(args) == 0
    summary = json.loads((tmp_path / mode / "summary.json").read_text())
    assert summary["dataset"] == path and summary["eval_prompts"] == 5
    if mode == "sequence":  # the teacher was sampled on the file's prompts, never the generated task's
        kept = [json.loads(line) for line in (tmp_path / mode / "distill_data.jsonl").read_text().splitlines()]
        assert {r["prompt"] for r in kept} <= {r["prompt"] for r in rows}


def test_distill_dataset_refuses_too_few_rows(tmp_path, student_config):
    path, _ = _user_file(tmp_path, n=4)
    with pytest.raises(SystemExit, match="4 rows leave none to train on once --eval-size 6"):
        main([*_shrunk(tmp_path, student_config, "few"), "--dataset", path, "--prompt-column", "question",
              "--completion-column", "target", "--answer-column", "gold"])


def test_distill_dataset_names_a_missing_column(tmp_path, student_config):
    path, _ = _user_file(tmp_path)
    with pytest.raises(SystemExit, match="--answer-column: .* has no column 'answer'"):
        main([*_shrunk(tmp_path, student_config, "nocol"), "--dataset", path, "--prompt-column", "question",
              "--completion-column", "target"])


def test_distill_reports_to_tensorboard(tmp_path, student_config):
    pytest.importorskip("tensorboard")
    assert main([*_shrunk(tmp_path, student_config, "tb"), "--mode", "logit", "--distill.report-to", "tensorboard"]) == 0
    assert list((tmp_path / "tb" / "tensorboard").iterdir())  # the event file beside metrics.jsonl
