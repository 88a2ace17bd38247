"""`r1core study distill` end to end on a tiny budget: the summary's arms and shape, the student's
data answers only while the teacher writes the reasoning, --resume at arm granularity and inside
an arm, and bad input named (a teacher of another tokenizer first)."""

import json
import os
import re

import pytest

from r1core.recipes import arms as A
from r1core.recipes import study_distill as D
from r1core.recipes.cli import main
from r1core.trainers.metrics import read_jsonl

TINY = ["--train-size", "40", "--eval-size", "4", "--eval-samples", "1", "--student-hidden-size", "16", "--student-layers", "1",
        "--sample-prompts", "8", "--samples-per-prompt", "2", "--num-prompts", "2", "--grpo.num-generations", "2",
        "--sft.max-steps", "2", "--sft.per-device-train-batch-size", "4", "--sft.save-steps", "1", "--sft.logging-steps", "1",
        "--grpo.max-steps", "1", "--grpo.save-steps", "1", "--distill.max-steps", "2", "--distill.per-device-train-batch-size", "4",
        "--distill.save-steps", "1", "--no-progress"]
NAMES = [*D.ARMS, "teacher"]


def _run(tmp_path, *more, name="sd"):
    return main(["study", "distill", "--runs-dir", str(tmp_path), "--name", name, *TINY, *more])


def _summary(run_dir):
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)


def test_study_distill_writes_the_run_directory_and_summary(tmp_path):
    assert _run(tmp_path, "--seed", "1") == 0
    run = tmp_path / "sd"
    s = _summary(run)
    assert [a["name"] for a in s["arms"]] == NAMES
    for a in s["arms"]:
        assert set(A.ENTRY_KEYS) <= set(a)
        for k in ("accuracy", "greedy_accuracy", "format_rate"):
            assert 0.0 <= a[k] <= 1.0
        assert a["seconds"] > 0 and a["mean_completion_tokens"] > 0
    assert all(a["train_steps"] == (1 if a["name"] == "rl" else 2) for a in s["arms"] if a["name"] != "teacher")
    assert s["wall_seconds"] > 0 and s["student_parameters"] < s["teacher_parameters"]
    assert s["teacher"] == D.SHIPPED_TEACHER and s["teacher_data"]["kept"] >= 1
    assert s["student_base"]["name"] == "student_base"
    assert {r["stage"] for r in read_jsonl(str(run / "metrics.jsonl"))} == set(D.ARMS)
    assert {p.name for p in (run / "plots").iterdir()} == {f"{a}.png" for a in D.ARMS}
    cfg = json.loads((run / "run_config.json").read_text())
    assert cfg["seed"] == 1 and cfg["distill"]["max_steps"] == 2 and cfg["arm_seconds"] == 110.0


def test_the_student_sees_answers_only_and_the_teacher_writes_the_reasoning(tmp_path, monkeypatch):
    import r1core.trainers
    from r1core.rewards import accuracy_reward, scratchpad_format_reward

    seen = {}
    for cls in ("SFTTrainer", "GRPOTrainer", "DistillTrainer"):
        real = getattr(r1core.trainers, cls)

        def spy(*a, _real=real, _cls=cls, **k):
            rows = a[3] if _cls == "DistillTrainer" or _cls == "GRPOTrainer" else a[2]
            seen.setdefault(_cls, []).append(list(rows))
            return _real(*a, **k)

        monkeypatch.setattr(r1core.trainers, cls, spy)
    assert _run(tmp_path, "--arms", "rl,sequence,logit,on_policy") == 0
    base_rows, sequence_rows = seen["SFTTrainer"]
    assert all(re.fullmatch(r"A\d+", r["completion"]) for r in base_rows)  # answers only: no scratchpad of its own
    assert all("solution" not in r and "completion" not in r for r in seen["GRPOTrainer"][0])
    logit_rows, on_policy_rows = seen["DistillTrainer"]
    assert logit_rows == sequence_rows  # offline logit distillation on the same teacher samples
    assert all("solution" not in r and "completion" not in r for r in on_policy_rows)  # the student samples
    completions = [r["completion"] for r in sequence_rows]
    assert completions and all(c.startswith("T") for c in completions)  # the teacher's reasoning
    assert accuracy_reward(None, completions, answer=[r["answer"] for r in sequence_rows]) == [1.0] * len(completions)
    assert sum(scratchpad_format_reward(None, completions)) == len(completions)


def test_resume_skips_done_arms_and_goes_on_inside_the_running_one(tmp_path, monkeypatch):
    assert _run(tmp_path, "--arms", "rl,sequence", name="r") == 0
    first = {arm: A.done_entry(str(tmp_path / "r"), arm) for arm in ("rl", "sequence", "teacher")}
    # as if killed while training sequence: its entry gone, its checkpoints kept; and its budget raised
    os.remove(os.path.join(A.stage_dir(str(tmp_path / "r"), "sequence"), "entry.json"))
    ran = []
    real = D.run_arm
    monkeypatch.setattr(D, "run_arm", lambda cfg, arm, *a: ran.append(arm) or real(cfg, arm, *a))
    assert _run(tmp_path, "--arms", "rl,sequence", "--sft.max-steps", "3", "--resume", name="r") == 0
    assert ran == ["sequence"]
    s = _summary(tmp_path / "r")
    assert [a["name"] for a in s["arms"]] == ["rl", "sequence", "teacher"]
    assert s["arms"][0] == first["rl"] and s["arms"][2] == first["teacher"]
    steps = [r["step"] for r in read_jsonl(os.path.join(A.stage_dir(str(tmp_path / "r"), "sequence"), "metrics.jsonl"))]
    assert steps == [1, 2, 3]  # steps 1 and 2 from before, step 3 resumed from the checkpoint


def test_a_teacher_of_another_tokenizer_is_named(tmp_path):
    from r1core.recipes.base_model import BaseModelSpec, build_model
    from r1core.tasks.tokenizer import build_tokenizer

    tok = build_tokenizer()  # every printable character: not the addition task's tokenizer
    model = build_model(tok, BaseModelSpec(hidden_size=16, intermediate_size=32, num_hidden_layers=1))
    model.save_pretrained(tmp_path / "other")
    tok.save_pretrained(tmp_path / "other")
    with pytest.raises(SystemExit) as e:
        _run(tmp_path, "--teacher", str(tmp_path / "other"))
    assert re.search(r"--teacher: .*other'.*tokenizer that differs from the student's", str(e.value.code)), e.value.code
    assert not (tmp_path / "sd").exists()  # refused before any work


@pytest.mark.parametrize("argv, pat", [
    (["--arms", "rl,sft"], r"--arms: .*unknown arm\(s\) \['sft'\]"),
    (["--arm-seconds", "0"], r"--arm-seconds: .*arm_seconds must be a number of seconds > 0"),
    (["--base-seconds", "-1"], r"--base-seconds: .*base_seconds must be"),
    (["--teacher", "no/such/dir"], r"--teacher: .*'no/such/dir'"),
    (["--student-hidden-size", "10"], r"--student-hidden-size: .*multiple of 4"),
    (["--sft.max-seconds", "5"], r"sft.max_seconds.*(set by|no such|unrecognized)|--sft.max-seconds"),
    (["--distill.max-steps", "0"], r"--distill.max-steps: .*max_steps must be"),
    (["--resume", "--name", "never"], r"--resume: .*holds no distillation study"),
])
def test_bad_input_is_named(tmp_path, argv, pat, cli_error):
    msg = cli_error(["study", "distill", "--runs-dir", str(tmp_path), *argv])
    assert re.search(pat, msg), msg


def test_help_and_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["study", "distill", "--help"])
    out = capsys.readouterr().out
    for flag in ("--seed", "--name", "--config", "--no-progress", "--resume", "--teacher", "--arm-seconds", "--grpo.learning-rate",
                 "--distill.beta", "--sft.learning-rate", "--arms"):
        assert flag in out
    cfg = D.StudyDistillConfig()
    assert cfg.teacher_dir == D.SHIPPED_TEACHER and os.path.exists(os.path.join(D.SHIPPED_TEACHER, "provenance.json"))
    assert (cfg.sft.max_seconds, cfg.grpo.max_seconds, cfg.distill.max_seconds) == (110.0, 110.0, 110.0)  # the same budget per arm
    assert cfg.arms == list(D.ARMS) and cfg.grpo.per_device_train_batch_size == cfg.num_prompts * cfg.grpo.num_generations
