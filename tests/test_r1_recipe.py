"""`r1core r1` end to end on a tiny budget: the run directory and the summary's shape, R1-Zero's
budget, --resume after a kill, stage 3's rejection sampling keeping only readable correct samples,
the two-script task and its rewards, and bad input named."""

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from r1core.recipes import arms as A
from r1core.recipes import r1_stages as S
from r1core.recipes.cli import main
from r1core.recipes.r1 import R1_STAGES, STAGES, R1Config
from r1core.trainers.metrics import read_jsonl

TINY = ["--base-model", "train", "--train-size", "64", "--val-size", "4", "--eval-size", "4", "--eval-samples", "2",
        "--cold-start-size", "8", "--rejection-prompts", "4", "--rejection-samples", "2", "--num-prompts", "2", "--base.max-steps", "2",
        "--base.per-device-train-batch-size", "8", "--base.logging-steps", "1", "--sft.max-steps", "2",
        "--sft.per-device-train-batch-size", "4", "--sft.save-steps", "1", "--grpo.max-steps", "1", "--grpo.num-generations", "2",
        "--grpo.save-steps", "1", "--threads", "1", "--no-progress"]


def _summary(run_dir):
    with open(os.path.join(run_dir, "summary.json")) as f:
        return json.load(f)


def test_r1_writes_the_run_directory_and_summary(tmp_path):
    assert main(["r1", "--runs-dir", str(tmp_path), "--name", "r", "--seed", "1", *TINY]) == 0
    run = tmp_path / "r"
    s = _summary(run)
    assert [e["name"] for e in s["stages"]] == ["base", *STAGES]
    for e in s["stages"]:
        assert set(A.ENTRY_KEYS) | {"language_consistency"} <= set(e)
        for k in ("accuracy", "greedy_accuracy", "format_rate", "language_consistency"):
            assert 0.0 <= e[k] <= 1.0, (e["name"], k)
        assert e["seconds"] > 0 and e["mean_completion_tokens"] > 0
    assert s["wall_seconds"] > 0
    stages = {e["name"]: e for e in s["stages"]}
    # R1-Zero's budget: the seconds the four R1 stages trained (stage 3's sampling included)
    assert s["r1_zero_budget_seconds"] == pytest.approx(sum(stages[n]["train_seconds"] for n in R1_STAGES))
    assert stages["rejection_sft"]["sampled"] == 4 * 2 and stages["rejection_sft"]["non_reasoning_rows"] >= 1
    assert stages["reasoning_rl"]["train_steps"] == stages["r1_zero"]["train_steps"] == 1
    assert {r["stage"] for r in read_jsonl(str(run / "metrics.jsonl"))} == {"base", *STAGES}
    assert {p.name for p in (run / "plots").iterdir()} == {f"{n}.png" for n in ("base", *STAGES)}
    for n in ("base", *STAGES):
        assert os.path.isdir(A.stage_model(str(run), n))
    cfg = json.loads((run / "run_config.json").read_text())
    assert cfg["seed"] == 1 and cfg["grpo"]["max_steps"] == 1


def test_resume_after_a_kill_goes_on_where_it_stopped(tmp_path, monkeypatch):
    argv = ["r1", "--runs-dir", str(tmp_path), "--name", "k", *TINY]
    real = S.run_stage

    def killed_at_final(cfg, name, *a):
        if name == "final_rl":
            raise KeyboardInterrupt
        return real(cfg, name, *a)

    monkeypatch.setattr(S, "run_stage", killed_at_final)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    run = str(tmp_path / "k")
    first = {n: A.done_entry(run, n) for n in ("base", "cold_start", "reasoning_rl", "rejection_sft")}
    assert all(first.values()) and A.done_entry(run, "final_rl") is None
    # stage 3 killed inside its SFT: its entry gone, its samples and checkpoint kept
    os.remove(os.path.join(A.stage_dir(run, "rejection_sft"), "entry.json"))
    monkeypatch.setattr(S, "run_stage", lambda cfg, name, *a: calls.append(name) or real(cfg, name, *a))
    monkeypatch.setattr(S, "readable_samples", lambda *a, **k: pytest.fail("stage 3 sampled again on --resume"))
    calls = []
    assert main([*argv, "--resume"]) == 0
    assert calls == ["rejection_sft", "final_rl", "r1_zero"]
    s = _summary(run)
    assert [e["name"] for e in s["stages"]] == ["base", *STAGES]
    for n in ("base", "cold_start", "reasoning_rl"):
        assert s["stages"][["base", *STAGES].index(n)] == first[n]  # kept as they were
    done_steps = first["rejection_sft"]["train_steps"]
    assert s["stages"][3]["train_steps"] == done_steps  # from its last checkpoint: no step again
    steps = [r["step"] for r in read_jsonl(os.path.join(A.stage_dir(run, "rejection_sft"), "metrics.jsonl"))]
    assert steps == sorted(set(steps)) and steps[-1] == done_steps  # no step logged twice


class _FakeEngine:
    """Hands rejection sampling fixed completions (n per prompt, in order)."""

    def __init__(self, tok, texts: list[tuple[str, str]]):
        self.tok, self.texts = tok, texts

    def generate(self, ids, params):
        outs = []
        for _ in ids:
            comps = [SimpleNamespace(text=t, token_ids=self.tok(t, add_special_tokens=False)["input_ids"], finish_reason=why)
                     for t, why in self.texts]
            outs.append(SimpleNamespace(outputs=comps))
        return outs


def test_rejection_sampling_keeps_only_correct_readable_single_script_short_samples():
    from r1core.tasks.two_script import in_second_script

    good = "<think>3+6+0=9,2+5+0=7,1+4+0=5</think><answer>579</answer>"
    texts = [
        ("<think>3+6+0=9," + in_second_script("2+5+0=7") + ",1+4+0=5</think><answer>579</answer>", "stop"),  # two scripts
        ("<think>3+6+0=9,2+5+0=7,1+4+0=5</think><answer>578</answer>", "stop"),  # wrong
        ("T3+6+0=9,2+5+0=7,1+4+0=5;A579", "stop"),  # not the R1 format
        ("<think>3+6+0=9,2+5+0=7,1+4+0=5,0+0+0=0,0+0+0=0,0+0+0=0</think><answer>579</answer>", "stop"),  # past the bound
        (good, "length"),  # cut off
        (good, "stop"),
    ]
    cfg = R1Config(length_bound=40, rejection_samples=len(texts), progress=False)
    model, tok = S.new_model(cfg)
    rows = [{"prompt": "123+456=", "answer": "579"}, {"prompt": "111+111=", "answer": "222"}]
    data = S.readable_samples(cfg, model, tok, rows, engine=_FakeEngine(tok, texts))
    assert [(r["prompt"], r["completion"]) for r in data] == [("123+456=", good)]
    assert data.summary["too_long"] == data.summary["truncated"] == 2  # one of each per prompt
    assert [s["passed"] for s in data.stats] == [3, 0]  # the rewards pass the good one, the long one and the cut-off copy


def test_two_script_task_and_rewards():
    from r1core.rewards.language import script_consistency_reward, script_share
    from r1core.rewards.length import length_penalty
    from r1core.tasks.two_script import SECOND_DIGITS, latin_rows, mixed_rows, translation_rows

    latin = latin_rows(20, seed=3)
    mixed = mixed_rows(200, seed=3, mix=0.5)
    assert [r["prompt"] for r in latin] == [r["prompt"] for r in mixed[:20]] or latin  # seeded rows
    assert all(s == 1.0 for s in script_consistency_reward(None, [r["solution"] for r in latin]))
    shares = script_consistency_reward(None, [r["solution"] for r in mixed])
    assert 0.3 < sum(shares) / len(shares) < 0.7 and min(shares) < 1.0 and max(shares) == 1.0
    for r in mixed:  # the answer always Latin, the prompt too
        assert r["solution"].endswith(f"<answer>{r['answer']}</answer>") and not set(r["prompt"]) & set(SECOND_DIGITS)
    t = translation_rows(3, seed=0)[0]
    assert set(t["prompt"][:-1]) <= set(SECOND_DIGITS) and t["solution"] == f"<think></think><answer>{t['answer']}</answer>"
    assert script_share("12" + SECOND_DIGITS[:2], "arabic-indic") == 0.5 and script_share("abc") is None
    assert script_consistency_reward(None, ["<think>a</think><answer>12</answer>"]) == [None]  # no digits in the reasoning
    assert length_penalty(4)(None, ["ab", "abcdef", "x" * 20]) == [0.0, -0.5, -1.0]
    with pytest.raises(ValueError, match="script"):
        script_share("1", "roman")
    with pytest.raises(ValueError, match="mix"):
        mixed_rows(2, mix=1.5)
    with pytest.raises(ValueError, match="max_tokens"):
        length_penalty(0)


@pytest.mark.parametrize("argv, pat", [
    (["--stages", "cold_start,distill"], r"--stages: .*unknown stage\(s\) \['distill'\]"),
    (["--stages", "reasoning_rl"], r"--stages: .*'reasoning_rl' trains on top of 'cold_start'"),
    (["--reasoning-seconds", "0"], r"--reasoning-seconds: .*reasoning_seconds must be a number > 0"),
    (["--cold-start-seconds", "0"], r"--cold-start-seconds: .*cold_start_seconds must be a number > 0"),
    (["--final-seconds", "-1"], r"--final-seconds: .*final_seconds must be a number > 0"),
    (["--grpo.max-steps", "0"], r"--grpo.max-steps: .*max_steps must be"),
    (["--mix", "1.5"], r"--mix: .*mix must be a number in \[0, 1"),
    (["--resume", "--name", "never"], r"--resume: .*holds no r1 run"),
    (["--base-model", "/nonexistent/base"], r"--base-model: .*'shipped', 'train' or a model folder"),
])
def test_bad_input_is_named(tmp_path, argv, pat, cli_error):
    msg = cli_error(["r1", "--runs-dir", str(tmp_path), *argv])
    assert re.search(pat, msg), msg


def test_a_base_folder_without_its_tokenizer_is_named(tmp_path):
    from r1core.recipes.r1 import SHIPPED_BASE

    base = tmp_path / "base"
    base.mkdir()
    for f in ("config.json", "model.safetensors"):
        (base / f).write_bytes(Path(SHIPPED_BASE, f).read_bytes())
    with pytest.raises(SystemExit, match=r"base_model: .*holds no tokenizer.json"):
        main(["r1", "--runs-dir", str(tmp_path), "--base-model", str(base), "--stages", "cold_start", "--no-progress"])


def test_help(capsys):
    with pytest.raises(SystemExit):
        main(["r1", "--help"])
    out = capsys.readouterr().out
    for flag in ("--seed", "--name", "--config", "--no-progress", "--resume", "--stages", "--reasoning-seconds", "--grpo.learning-rate",
                 "--sft.learning-rate", "--base.max-seconds"):
        assert flag in out


def test_the_shipped_base_is_the_default_and_reads_both_scripts(tmp_path):
    from r1core.recipes.r1 import SHIPPED_BASE
    from r1core.tasks.two_script import SECOND_DIGITS

    assert R1Config().base_model == "shipped"
    assert os.path.exists(os.path.join(SHIPPED_BASE, "provenance.json"))
    _, tok = S.load(SHIPPED_BASE)  # the recipe's loader: AutoTokenizer would drop the second script
    ids = tok(SECOND_DIGITS + "0123456789", add_special_tokens=False)["input_ids"]
    assert len(ids) == 20 and tok.unk_token_id not in ids
    argv = [a for a in TINY if a not in ("--base-model", "train")]
    assert main(["r1", "--runs-dir", str(tmp_path), "--stages", "cold_start", *argv]) == 0
    s = _summary(tmp_path / "r1")
    assert [e["name"] for e in s["stages"]] == ["base", "cold_start"] and s["stages"][0]["train_steps"] == 0
    assert s["base_model"] == SHIPPED_BASE


@pytest.mark.parametrize("field,value,named", [("grpo", {"max_steps": 0}, "R1Config.grpo.max_steps must be"),
                                               ("sft", {"learning_rate": -1.0}, "R1Config.sft.learning_rate must be"),
                                               ("base", {"output_dir": "elsewhere"}, "R1Config.base.output_dir is set by the run")])
def test_a_trainer_configs_error_names_the_recipes_field(field, value, named):
    with pytest.raises(ValueError, match=named):
        R1Config(**{field: value})
