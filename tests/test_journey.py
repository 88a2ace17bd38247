"""`r1core journey` end to end on a tiny budget: the run directory, the summary's shape, --config,
--resume at arm granularity and inside an arm, and bad input named."""

import json
import os
import re

import pytest

from r1core.recipes import arms as A
from r1core.recipes import journey as J
from r1core.recipes.cli import main
from r1core.trainers.metrics import read_jsonl

TINY = ["--train-size", "30", "--eval-size", "4", "--eval-samples", "1", "--max-new-tokens", "40", "--hidden-size", "32",
        "--num-hidden-layers", "1", "--search-budget", "6", "--num-prompts", "2", "--sft.max-steps", "2",
        "--sft.per-device-train-batch-size", "4", "--sft.save-steps", "1", "--grpo.max-steps", "1", "--grpo.num-generations", "2",
        "--grpo.save-steps", "1", "--no-progress"]


def _summary(run_dir):
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)


def test_journey_writes_the_run_directory_and_summary(tmp_path):
    assert main(["journey", "--runs-dir", str(tmp_path), "--name", "j", "--seed", "1", *TINY]) == 0
    run = tmp_path / "j"
    s = _summary(run)
    assert [a["name"] for a in s["arms"]] == list(J.ARMS)
    for a in s["arms"]:
        assert set(A.ENTRY_KEYS) <= set(a)
        for k in ("accuracy", "greedy_accuracy", "format_rate"):
            assert 0.0 <= a[k] <= 1.0
        assert a["seconds"] > 0 and a["mean_completion_tokens"] > 0
    assert s["wall_seconds"] > 0 and s["train_problems"] >= 1
    arms = {a["name"]: a for a in s["arms"]}
    # the same problems in both styles, the journey traces the longer
    assert arms["journey"]["train_examples"] == arms["shortcut"]["train_examples"]
    assert arms["journey"]["mean_trace_chars"] > arms["shortcut"]["mean_trace_chars"]
    assert arms["journey+grpo"]["train_steps"] == 1
    stages = {r["stage"] for r in read_jsonl(str(run / "metrics.jsonl"))}
    assert stages == set(J.ARMS)
    assert {p.name for p in (run / "plots").iterdir()} == {"journey.png", "shortcut.png", "journey_grpo.png", "shortcut_grpo.png"}
    for arm in J.ARMS:
        assert os.path.isdir(A.stage_model(str(run), arm))
    cfg = json.loads((run / "run_config.json").read_text())
    assert cfg["seed"] == 1 and cfg["sft"]["max_steps"] == 2


def test_both_students_start_from_one_initialisation(tmp_path, monkeypatch):
    import r1core.trainers

    seen = []

    class Spy(r1core.trainers.SFTTrainer):
        def __init__(self, model, *a, **k):
            seen.append([p.detach().clone() for p in model.parameters()])
            super().__init__(model, *a, **k)

    monkeypatch.setattr(r1core.trainers, "SFTTrainer", Spy)
    main(["journey", "--runs-dir", str(tmp_path), "--arms", "journey,shortcut", *TINY])
    assert len(seen) == 2 and all(bool((a == b).all()) for a, b in zip(*seen))
    trained = [A.load(A.stage_model(str(tmp_path / "journey"), arm))[0] for arm in ("journey", "shortcut")]
    assert any(not bool((a == b).all()) for a, b in zip(*(m.parameters() for m in trained)))  # then trained apart


def test_resume_skips_done_arms_and_goes_on_inside_the_running_one(tmp_path, monkeypatch):
    argv = ["journey", "--runs-dir", str(tmp_path), "--name", "r", *TINY]

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(J, "grpo_arm", killed)  # killed after the SFT arms
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    first = {arm: A.done_entry(str(tmp_path / "r"), arm) for arm in ("journey", "shortcut")}
    assert all(first.values())
    monkeypatch.undo()
    # the shortcut arm killed inside its SFT: its entry gone, its checkpoint kept
    os.remove(os.path.join(A.stage_dir(str(tmp_path / "r"), "shortcut"), "entry.json"))
    calls = []
    real_sft = J.sft_arm
    monkeypatch.setattr(J, "sft_arm", lambda *a: calls.append(a[1]) or real_sft(*a))
    assert main([*argv, "--resume"]) == 0
    s = _summary(tmp_path / "r")
    assert calls == ["shortcut"]  # journey was done and kept as it was
    assert s["arms"][0] == first["journey"]
    shortcut = s["arms"][1]
    assert shortcut["train_steps"] == 2  # from checkpoint-2: no step again
    steps = [r["step"] for r in read_jsonl(os.path.join(A.stage_dir(str(tmp_path / "r"), "shortcut"), "metrics.jsonl"))]
    assert steps == sorted(set(steps)) and steps[-1] == 2  # no step logged twice
    assert [a["name"] for a in s["arms"]] == list(J.ARMS)


def test_config_file_and_flags(tmp_path):
    conf = tmp_path / "j.yaml"
    conf.write_text("arms: [journey]\nsft:\n  max_steps: 1\n")
    assert main(["journey", "--runs-dir", str(tmp_path), "--config", str(conf), *TINY]) == 0  # the flag's max_steps 2 wins
    s = _summary(tmp_path / "journey")
    assert [a["name"] for a in s["arms"]] == ["journey"] and s["arms"][0]["train_steps"] == 2


@pytest.mark.parametrize("argv, pat", [
    (["--arms", "journey,tree"], r"--arms: .*unknown arm\(s\) \['tree'\]"),
    (["--arms", "shortcut+grpo"], r"--arms: .*'shortcut\+grpo' trains on top of 'shortcut'"),
    (["--sft.max-seconds", "0"], r"--sft.max-seconds: .*max_seconds must be"),
    (["--grpo.max-steps", "0"], r"--grpo.max-steps: .*max_steps must be"),
    (["--search-budget", "0"], r"--search-budget: .*search_budget must be an int >= 1"),
    (["--search-order", "bfs"], r"--search-order: .*'heuristic' or 'random'"),
    (["--resume", "--name", "never"], r"--resume: .*holds no journey run"),
])
def test_bad_input_is_named(tmp_path, argv, pat, cli_error):
    msg = cli_error(["journey", "--runs-dir", str(tmp_path), *argv])
    assert re.search(pat, msg), msg


def test_help(capsys):
    with pytest.raises(SystemExit):
        main(["journey", "--help"])
    out = capsys.readouterr().out
    for flag in ("--seed", "--name", "--config", "--no-progress", "--resume", "--sft.max-seconds", "--grpo.learning-rate", "--arms"):
        assert flag in out


def test_default_budgets():
    cfg = J.JourneyConfig()
    assert (cfg.sft.max_seconds, cfg.sft.packing, cfg.sft.per_device_train_batch_size, cfg.sft.max_seq_length) == (180.0, False, 32, 320)
    assert (cfg.grpo.max_seconds, cfg.grpo.per_device_train_batch_size, cfg.grpo.max_completion_length) == (60.0, 64, 256)
    assert (cfg.num_numbers, cfg.max_number, cfg.max_target, cfg.search_budget, cfg.arms) == (3, 10, 50, 16, list(J.ARMS))
