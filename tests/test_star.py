"""`r1core star` end to end on a tiny budget: the summary per iteration, rationalisation (the hint
is never in what is trained), the ablation, --resume at iteration granularity, bad input named."""

import json
import os
import re

import pytest

import r1core.data
from r1core.recipes import arms as A
from r1core.recipes import star as S
from r1core.recipes.cli import main
from r1core.tasks.countdown_traces import HINT, countdown_trace
from r1core.trainers.metrics import read_jsonl

TINY = ["--iterations", "2", "--train-size", "6", "--base-size", "24", "--eval-size", "4", "--eval-samples", "1",
        "--samples-per-problem", "2", "--max-new-tokens", "40", "--hidden-size", "32", "--num-hidden-layers", "1",
        "--search-budget", "6", "--base.max-steps", "2", "--base.per-device-train-batch-size", "4", "--finetune.max-steps", "2",
        "--finetune.per-device-train-batch-size", "4", "--finetune.save-steps", "1", "--no-replay-base", "--no-progress"]


def _summary(run_dir):
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)


@pytest.fixture
def oracle(monkeypatch):
    """A sampler that solves the even-indexed plain problems and every hinted one (it reads the
    hint), so every path of an iteration runs; records the prompts it was given."""
    seen = []

    def fake(model, tok, rows, funcs, *, n, seed, **kwargs):
        out = []
        for i, r in enumerate(rows):
            seen.append(r["prompt"])
            if HINT in r["prompt"] or i % 2 == 0:
                t = countdown_trace(r["numbers"], r["target"], "shortcut", budget=100)
                out.append({**r, "completion": t.text, "reward": 1.0, "completion_tokens": len(t.text)})
        return out

    monkeypatch.setattr(r1core.data, "rejection_sample", fake)
    return seen


def test_star_writes_one_entry_per_iteration(tmp_path):
    assert main(["star", "--runs-dir", str(tmp_path), "--name", "s", "--seed", "2", *TINY]) == 0
    run = tmp_path / "s"
    s = _summary(run)
    assert [e["name"] for e in s["iterations"]] == ["0", "1", "2"]
    for e in s["iterations"]:
        assert set(A.ENTRY_KEYS) | {"solved_fraction"} <= set(e)
        for k in ("accuracy", "greedy_accuracy", "format_rate", "solved_fraction"):
            assert 0.0 <= e[k] <= 1.0
        assert e["seconds"] > 0
    assert s["rationalization"] is True and s["wall_seconds"] > 0
    assert os.path.isdir(run / "base" / "model") and (run / "plots" / "iterations.png").exists()
    assert json.loads((run / "run_config.json").read_text())["seed"] == 2


def test_rationalisation_never_trains_on_the_hint(tmp_path, oracle, monkeypatch):
    trained = []
    real = S.finetune
    monkeypatch.setattr(S, "finetune", lambda cfg, base, rows, out, resume: trained.append(rows) or real(cfg, base, rows, out, resume))
    assert main(["star", "--runs-dir", str(tmp_path), *TINY]) == 0
    assert any(HINT in p for p in oracle)  # the hint was given ...
    assert len(trained) == 2 and all(trained)
    plain = {p for p in oracle if HINT not in p}
    for rows in trained:  # ... and never trained on
        for r in rows:
            assert set(r) == {"prompt", "completion"}
            assert HINT not in r["prompt"] and HINT not in r["completion"] and r["prompt"] in plain
    s = _summary(tmp_path / "star")
    first = s["iterations"][0]
    assert first["solved_fraction"] == 0.5 and first["rationalized_fraction"] == 0.5  # the odd half came back with the hint
    assert s["iterations"][1]["train_rows"] == 6 and s["iterations"][1]["train_steps"] == 2
    for i in range(3):
        for r in read_jsonl(os.path.join(A.stage_dir(str(tmp_path / "star"), str(i)), "kept.jsonl")):
            assert HINT not in r["prompt"] and "plain_prompt" not in r


def test_replay_base_trains_on_the_base_rows_and_the_kept_ones(tmp_path, oracle, monkeypatch):
    trained = []
    real = S.finetune
    monkeypatch.setattr(S, "finetune", lambda cfg, base, rows, out, resume: trained.append(rows) or real(cfg, base, rows, out, resume))
    argv = [a for a in TINY if a != "--no-replay-base"]
    assert main(["star", "--runs-dir", str(tmp_path), "--iterations", "1", *argv[2:]]) == 0
    cfg = S.StarConfig(runs_dir=str(tmp_path), **{"base_size": 24, "train_size": 6, "search_budget": 6})
    base = {(r["prompt"], r["completion"]) for r in S.base_rows(cfg)}
    kept = {(r["prompt"], r["completion"]) for r in read_jsonl(os.path.join(A.stage_dir(str(tmp_path / "star"), "0"), "kept.jsonl"))}
    assert len(trained) == 1 and base and kept
    assert {(r["prompt"], r["completion"]) for r in trained[0]} == base | kept
    assert _summary(tmp_path / "star")["iterations"][1]["train_rows"] == len(base | kept)


def test_no_rationalization_gives_no_hint(tmp_path, oracle):
    assert main(["star", "--runs-dir", str(tmp_path), "--no-rationalization", *TINY]) == 0
    assert oracle and not any(HINT in p for p in oracle)
    s = _summary(tmp_path / "star")
    assert s["rationalization"] is False and all(e["rationalized_fraction"] == 0 for e in s["iterations"])


def test_resume_goes_on_from_the_last_finished_iteration(tmp_path, oracle, monkeypatch):
    argv = ["star", "--runs-dir", str(tmp_path), *TINY]
    real = S.run_iteration

    def killed_at_2(cfg, i, *a):
        if i == 2:
            raise KeyboardInterrupt
        return real(cfg, i, *a)

    monkeypatch.setattr(S, "run_iteration", killed_at_2)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    done = [A.done_entry(str(tmp_path / "star"), str(i)) for i in range(2)]
    assert all(done) and A.done_entry(str(tmp_path / "star"), "2") is None
    ran = []
    monkeypatch.setattr(S, "run_iteration", lambda cfg, i, *a: ran.append(i) or real(cfg, i, *a))
    assert main([*argv, "--resume"]) == 0
    assert ran == [2]
    s = _summary(tmp_path / "star")
    assert s["iterations"][:2] == done and s["iterations"][2]["train_rows"] == 6


@pytest.mark.parametrize("argv, pat", [
    (["--iterations", "0"], r"--iterations: StarConfig.iterations must be an int >= 1"),
    (["--base-model", "/no/such/dir"], r"--base-model: .*'train' or a model folder"),
    (["--hint-fraction", "1"], r"--hint-fraction: .*\[0, 1\)"),
    (["--finetune.max-seconds", "0"], r"--finetune.max-seconds: StarConfig.finetune.max_seconds must be"),
    (["--base.max-steps", "0"], r"--base.max-steps: StarConfig.base.max_steps must be"),
    (["--base-style", "tree"], r"--base-style: .*'shortcut' or 'journey'"),
    (["--base-model", "."], r"StarConfig.replay_base needs base_model 'train'.*--no-replay-base"),
    (["--keep", "reward"], r"--keep: StarConfig.keep must be one of \('trace', 'answer'\)"),
    (["--resume", "--name", "never"], r"--resume: .*holds no STaR run"),
])
def test_bad_input_is_named(tmp_path, argv, pat, cli_error):
    msg = cli_error(["star", "--runs-dir", str(tmp_path), *argv])
    assert re.search(pat, msg), msg


def test_help(capsys):
    with pytest.raises(SystemExit):
        main(["star", "--help"])
    out = capsys.readouterr().out
    for flag in ("--seed", "--name", "--config", "--no-progress", "--resume", "--no-rationalization", "--finetune.max-seconds",
                 "--base.learning-rate", "--iterations"):
        assert flag in out


def test_config_file_nests_both_sft_configs(tmp_path):
    from r1core.recipes.cli import parse

    conf = tmp_path / "s.yaml"
    conf.write_text("iterations: 4\nrationalization: false\nbase:\n  max_seconds: 30\nfinetune: {max_steps: 7}\n")
    cfg = parse(["star", "--config", str(conf), "--finetune.max-steps", "9"]).build(S.StarConfig)  # the flag wins
    assert (cfg.iterations, cfg.rationalization, cfg.base.max_seconds, cfg.finetune.max_steps) == (4, False, 30, 9)
    conf.write_text("finetune: {output_dir: x}\n")
    with pytest.raises(SystemExit, match="'finetune.output_dir' is set by `r1core star`"):
        parse(["star", "--config", str(conf)])


def test_default_budgets():
    cfg = S.StarConfig()
    base = cfg.base
    assert (base.max_steps, base.max_seconds, cfg.finetune.max_seconds, base.per_device_train_batch_size, base.max_seq_length) == (
        500, 600.0, 180.0, 32, 320)
    assert (cfg.keep, cfg.replay_base) == ("trace", True)
    assert (cfg.iterations, cfg.rationalization, cfg.train_size, cfg.samples_per_problem, cfg.base_size, cfg.finetune_epochs) == (
        3, True, 2048, 4, 1000, 3.0)
    assert cfg.eval_size == 512


def test_finetune_steps_follow_the_kept_rows(tmp_path, oracle):
    # 3 kept rows (half of 6 solved, rationalisation off), 4 epochs of batch 4: 3 steps, not finetune.max_steps
    argv = list(TINY)
    argv[argv.index("--finetune.max-steps") + 1] = "50"
    assert main(["star", "--runs-dir", str(tmp_path), "--no-rationalization", "--iterations", "1", *argv[2:]]) == 0
    s = _summary(tmp_path / "star")
    assert s["iterations"][1]["train_rows"] == 3 and s["iterations"][1]["train_steps"] == 3



def _false_first_step(text):
    a, b = text.index("="), text.index(":")
    return text[:a + 1] + str(int(text[a + 1:b]) + 1) + text[b:]


@pytest.mark.parametrize("keep, kept_unsound", [("trace", False), ("answer", True)])
def test_keep_decides_whether_false_arithmetic_is_kept(tmp_path, monkeypatch, keep, kept_unsound):
    # each problem's first sample has the right answer after a false step, its second is the
    # solver's sound trace; the sampler keeps the first sample that passes the recipe's check
    from r1core.rewards.countdown_trace import trace_is_sound

    def sampler(model, tok, rows, funcs, *, n, seed, **kwargs):
        out = []
        for r in rows:
            good = countdown_trace(r["numbers"], r["target"], "shortcut", budget=100).text
            for text in (_false_first_step(good), good):
                cols = {"numbers": [r["numbers"]], "target": [r["target"]]}
                if all(f([r["prompt"]], [text], **cols)[0] == 1.0 for f in funcs):
                    out.append({**r, "completion": text, "reward": 1.0, "completion_tokens": len(text)})
                    break
        return out

    monkeypatch.setattr(r1core.data, "rejection_sample", sampler)
    cfg = S.StarConfig(runs_dir=str(tmp_path), keep=keep, train_size=6, progress=False)
    problems = [p for p in A.countdown_problems(cfg, "train", cfg.train_size, cfg.seed)
                if countdown_trace(p["numbers"], p["target"], "shortcut", budget=100).solved]
    solved, rationalized, _ = S.sample_rationales(cfg, None, None, problems, seed=0)
    assert len(solved) == len(problems) > 0 and not rationalized
    sound = [trace_is_sound(r["completion"], r["numbers"], r["target"]) for r in solved]
    assert sound == [not kept_unsound] * len(solved)
