"""`r1core study all` end to end on tiny budgets (each sub-run its recipe's own command), a recipe
the CLI does not have reported as skipped, --resume after a kill going on where it stopped, the
table's findings beside their claims, --quick's flags, and bad input named."""

import json
import os
import re

import pytest

from r1core.recipes import study_all as S
from r1core.recipes import study_distill as D
from r1core.recipes.cli import build_parser, main
from r1core.recipes.study_table import CLAIMS, findings, markdown

TINY = {
    "journey": ["--train-size", "30", "--eval-size", "4", "--eval-samples", "1", "--max-new-tokens", "40", "--hidden-size", "32",
                "--num-hidden-layers", "1", "--search-budget", "6", "--num-prompts", "2", "--sft.max-steps", "2",
                "--sft.per-device-train-batch-size", "4", "--grpo.max-steps", "1", "--grpo.num-generations", "2"],
    "distill": ["--train-size", "40", "--eval-size", "4", "--eval-samples", "1", "--student-hidden-size", "16", "--student-layers", "1",
                "--sample-prompts", "8", "--samples-per-prompt", "2", "--num-prompts", "2", "--grpo.num-generations", "2",
                "--sft.max-steps", "2", "--sft.per-device-train-batch-size", "4", "--sft.save-steps", "1", "--grpo.max-steps", "1",
                "--distill.max-steps", "2", "--distill.per-device-train-batch-size", "4", "--distill.save-steps", "1"],
    "ttc": ["--methods", "majority,best_of_n"],
}


@pytest.fixture
def tiny(monkeypatch):
    """Every sub-run at TINY's budgets (ttc at --quick's), and `r1core r1` as a command this r1core lacks."""
    real = S.sub_argv
    monkeypatch.setattr(S, "sub_argv", lambda cfg, recipe, seed, commands: real(cfg, recipe, seed, commands) + TINY.get(recipe, []))
    monkeypatch.setitem(S.COMMANDS, "r1", (["no-such-recipe"], []))


def _table(run_dir):
    with open(os.path.join(run_dir, "table.json")) as f:
        return json.load(f)


def test_study_all_writes_one_table_with_each_finding_beside_its_claim(tmp_path, tiny):
    argv = ["study", "all", "--runs-dir", str(tmp_path), "--recipes", "journey,r1,distill,ttc", "--seeds", "0", "--quick", "--no-progress"]
    assert main(argv) == 0
    t = _table(tmp_path / "study")
    assert [r["finding"] for r in t["rows"]] == ["journey_sft", "journey_grpo", "distill", "ttc"]
    assert set(t["skipped"]) == {"r1"} and "r1core no-such-recipe" in t["skipped"]["r1"] and t["failed"] == {}
    distill = t["rows"][2]
    assert distill["claim"] == CLAIMS["distill"][1] and set(distill["measured"]) == {*D.ARMS, "teacher"}
    assert all(len(v) == 1 for v in distill["per_seed"].values()) and distill["holds"] in (True, False)
    md = (tmp_path / "study" / "table.md").read_text()
    assert "| finding | source's claim | measured here | holds |" in md and "skipped r1" in md
    assert "r1core study all --quick --seeds 0" in md
    for recipe in ("journey", "distill"):
        assert os.path.exists(tmp_path / "study" / f"{recipe}-s0" / "summary.json")
    assert os.path.exists(tmp_path / "study" / "ttc-s0" / "ttc.json")


def test_resume_after_a_kill_goes_on_where_it_stopped(tmp_path, tiny, monkeypatch):
    argv = ["study", "all", "--runs-dir", str(tmp_path), "--recipes", "distill,ttc", "--seeds", "0", "--no-progress"]
    real_arm, arms = D.run_arm, []

    def killed_at_logit(cfg, arm, *a):
        arms.append(arm)
        if arm == "logit" and arms.count("logit") == 1:
            raise KeyboardInterrupt
        return real_arm(cfg, arm, *a)

    monkeypatch.setattr(D, "run_arm", killed_at_logit)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    assert arms == ["rl", "sequence", "logit"] and not os.path.exists(tmp_path / "study" / "ttc-s0")
    real_sub, subs = S.run_sub, []
    monkeypatch.setattr(S, "run_sub", lambda cfg, recipe, *a: subs.append(recipe) or real_sub(cfg, recipe, *a))
    assert main([*argv, "--resume"]) == 0
    assert arms[3:] == ["logit", "on_policy", "reverse_kl", "teacher"]  # rl and sequence were kept
    assert subs == ["distill", "ttc"]
    assert main([*argv, "--resume"]) == 0  # all done: nothing runs again, the table is written again
    assert subs == ["distill", "ttc"] and [r["finding"] for r in _table(tmp_path / "study")["rows"]] == ["distill", "ttc"]


def test_a_failed_sub_run_is_reported_and_the_rest_go_on(tmp_path, tiny, monkeypatch):
    monkeypatch.setitem(TINY, "distill", ["--arm-seconds", "0"])
    argv = ["study", "all", "--runs-dir", str(tmp_path), "--recipes", "distill,ttc", "--seeds", "0", "--no-progress"]
    assert main(argv) == 1
    t = _table(tmp_path / "study")
    assert re.search(r"--arm-seconds: .*must be a number of seconds > 0", t["failed"]["distill-s0"])
    assert [r["finding"] for r in t["rows"]] == ["distill", "ttc"] and t["rows"][0]["holds"] is None


def _summary(key, values):
    return {key: [{"name": n, "greedy_accuracy": v, **more} for n, (v, more) in values.items()], "wall_seconds": 60.0}


def test_findings_hold_or_not_by_the_claims_margins():
    results = {
        "distill": {0: _summary("arms", {"rl": (0.30, {}), "sequence": (0.50, {}), "teacher": (0.9, {})}),
                    1: _summary("arms", {"rl": (0.40, {}), "sequence": (0.50, {}), "teacher": (0.9, {})}),
                    2: None},  # a seed that did not run is left out of the median
        "star": {0: _summary("iterations", {str(i): (v, {}) for i, v in enumerate([0.1, 0.2, 0.2, 0.3])})},
        "star_norat": {0: _summary("iterations", {str(i): (v, {}) for i, v in enumerate([0.1, 0.1, 0.2, 0.35])})},
        "r1": {0: _summary("stages", {"cold_start": (0.2, {"language_consistency": 1.0}), "final": (0.6, {"language_consistency": 0.995}),
                                      "r1_zero": (0.45, {"language_consistency": 0.7})})},
    }
    rows = {r["finding"]: r for r in findings(results, [0, 1, 2])}
    assert rows["distill"]["measured"]["sequence"] == 0.5 and rows["distill"]["measured"]["rl"] == 0.35
    assert rows["distill"]["holds"] is True  # 0.50 >= 0.35 + 0.15
    assert rows["star_rises"]["holds"] is True and rows["star_rationalization"]["holds"] is False  # 0.30 < 0.35
    assert rows["r1_vs_zero"]["holds"] is True and rows["r1_language"]["holds"] is True
    results["distill"][1]["arms"][1]["greedy_accuracy"] = 0.45  # median sequence 0.475 < 0.35 + 0.15
    assert {r["finding"]: r for r in findings(results, [0, 1, 2])}["distill"]["holds"] is False
    md = markdown({"rows": findings(results, [0, 1, 2]), "seeds": [0, 1, 2], "quick": False, "skipped": {}, "failed": {},
                   "wall_minutes": {"distill": 1.0}, "goal_minutes": {"distill": 15}, "command": "r1core study all"})
    assert "sequence 0.475 [0.500, 0.450, -]" in md and "| distill | 1.000 | 15 |" in md


def test_quick_shrinks_every_recipe_budget():
    _, commands = build_parser()
    star = S.quick_args(commands["star"])
    assert {"--base.max-seconds", "--finetune.max-seconds", "--iterations", "--eval-size", "--train-size"} <= set(star[::2])
    distill = S.quick_args(commands["study"].commands["distill"])
    assert {"--base-seconds", "--arm-seconds", "--eval-size", "--sample-prompts"} <= set(distill[::2])
    assert all(v == str(S.QUICK_SECONDS) for k, v in zip(distill[::2], distill[1::2]) if k.endswith("seconds"))


@pytest.mark.parametrize("argv, pat", [
    (["--recipes", "journey,sos"], r"--recipes: .*unknown recipe\(s\) \['sos'\]"),
    (["--seeds", "-1"], r"--seeds: .*ints >= 0"),
    (["--ttc-budgets", "0"], r"--ttc-budgets: .*ints >= 1"),
    (["--resume", "--name", "never"], r"--resume: .*holds no study"),
])
def test_bad_input_is_named(tmp_path, argv, pat, cli_error):
    msg = cli_error(["study", "all", "--runs-dir", str(tmp_path), *argv])
    assert re.search(pat, msg), msg


def test_help(capsys):
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    assert "distill" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["study", "all", "--help"])
    out = capsys.readouterr().out
    for flag in ("--seeds", "--recipes", "--quick", "--resume", "--name", "--config", "--no-progress"):
        assert flag in out
