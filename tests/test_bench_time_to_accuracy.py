"""bench/bench_time_to_accuracy.py: its arithmetic (time to a threshold, the ratio and its bounds,
the median over seeds, the time-based lr factor), its argument errors, and both trainers for a
budget of seconds on a small version of the recipe (2 prompts a step, 64 training problems):
points at 0 s, during and at the end of the budget, evaluation outside the training clock."""

from __future__ import annotations

import os
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import _tta  # noqa: E402
import bench_time_to_accuracy as tta  # noqa: E402


def _run(trainer, seed, greedy, seconds=(0.0, 30.0, 60.0, 90.0)):
    return {"trainer": trainer, "seed": seed, "points": [{"seconds": s, "greedy_accuracy": g} for s, g in zip(seconds, greedy)]}


def test_time_to_first_point_at_or_above():
    pts = _run("trl", 0, [0.4, 0.5, 0.85, 0.95])["points"]
    assert tta.time_to(pts, 0.5) == 30.0
    assert tta.time_to(pts, 0.8) == 60.0
    assert tta.time_to(pts, 0.96) is None


def test_ratio_text_bounds():
    assert tta.ratio_text(90.0, 30.0, 430.0) == "3.00x"
    assert tta.ratio_text(None, 43.0, 430.0) == ">10.00x"  # TRL never got there: at least budget / ours
    assert tta.ratio_text(215.0, None, 430.0) == "<0.50x"
    assert tta.ratio_text(None, None, 430.0) == "-"
    assert tta.ratio_text(0.0, 0.0, 430.0) == "base"  # the base itself is at or above the threshold
    assert tta.ratio_text(None, 0.0, 430.0) == "inf" == tta.ratio_text(30.0, 0.0, 430.0)


def test_summary_rows_per_seed_and_median():
    results = [_run("trl", 0, [0.4, 0.5, 0.6, 0.9]), _run("r1core", 0, [0.4, 0.9, 0.9, 0.9]),
               _run("trl", 1, [0.4, 0.4, 0.4, 0.4]), _run("r1core", 1, [0.4, 0.4, 0.9, 0.9]),
               _run("trl", 2, [0.4, 0.4, 0.9, 0.9]), _run("r1core", 2, [0.4, 0.9, 0.9, 0.9])]
    rows = {(r["seed"], r["threshold"]): r for r in tta.summary_rows(results, 430.0)}
    assert rows[(0, 0.9)]["trl_seconds"] == 90.0 and rows[(0, 0.9)]["r1core_seconds"] == 30.0
    assert rows[(1, 0.9)]["trl_seconds"] is None and rows[(1, 0.9)]["ratio"] == ">7.17x"
    med = rows[("median", 0.9)]  # TRL 90, never, 60 -> 90; r1core 30, 60, 30 -> 30
    assert (med["trl_seconds"], med["r1core_seconds"], med["ratio"]) == (90.0, 30.0, "3.00x")


def test_lr_factor_warms_up_by_step_then_decays_by_training_time():
    clock = _tta.TrainClock()
    factor = _tta.time_lambda(10, clock, 100.0)
    assert factor(0) == 0.0 and factor(5) == 0.5  # TRL's linear warmup
    clock.t0, clock.paused = time.perf_counter() - 70.0, 20.0  # 70 s of wall, 20 of them paused: 50 s of training
    assert factor(20) == pytest.approx(0.5, abs=0.01)
    clock.paused = 0.0
    clock.t0 = time.perf_counter() - 150.0
    assert factor(20) == 0.0


@pytest.mark.parametrize("argv, named", [(["--budget", "0"], "--budget"), (["--eval-every", "-1"], "--eval-every"),
                                         (["--eval-size", "0"], "--eval-size"), (["--seeds", "1", "1"], "--seeds"),
                                         (["--trainers", "trl,verl"], "--trainers")])
def test_bad_arguments_name_the_flag(argv, named, capsys):
    with pytest.raises(SystemExit):
        tta.parse_args(argv)
    assert named in capsys.readouterr().err


def test_quick_defaults_and_explicit_values_win():
    a = tta.parse_args(["--quick", "--eval-every", "2"])
    assert (a.budget, a.eval_every, a.eval_size) == (10.0, 2.0, 32)
    assert tta.parse_args([]).budget == 430.0


# eval_every below any step: a point after every step whatever the machine's speed
SMALL = dict(budget=3.0, eval_every=0.01, eval_size=16, eval_samples=1, run={"train_size": 64, "num_prompts": 2})


def _check_run(res: dict):
    pts = res["points"]
    assert pts[0]["seconds"] == 0.0 and pts[0]["step"] == 0
    assert [p["step"] for p in pts] == list(range(res["steps"] + 1))  # 0 s, then after every step
    assert pts[-1]["seconds"] >= SMALL["budget"] > pts[-2]["seconds"]  # the step that passes the budget is the last
    assert [p["seconds"] for p in pts] == sorted(p["seconds"] for p in pts)
    assert all(0.0 <= p["greedy_accuracy"] <= 1.0 and 0.0 <= p["accuracy"] <= 1.0 for p in pts)
    # the training clock paused during evaluation: set-up, training and evaluation are disjoint stretches of
    # the side's wall time (a clock running through the evaluations during the budget would count them twice)
    assert res["setup_seconds"] + res["train_seconds"] + res["eval_seconds"] <= res["wall_seconds"] + 0.02


@pytest.fixture(scope="module")
def r1core_small():
    return _tta.run_r1core(seed=0, **SMALL)


def test_r1core_side_small_budget(r1core_small):
    _check_run(r1core_small)


def test_trl_side_small_budget_same_base_and_settings(r1core_small):
    pytest.importorskip("trl", reason="TRL is not installed (the bench extra)")
    res = _tta.run_trl(seed=0, **SMALL)
    _check_run(res)
    assert res["differs"] == {}  # every shared GRPO field as the recipe has it
    # the same base and the same evaluation: identical points at 0 s
    strip = lambda p: {k: v for k, v in p.items() if k != "eval_seconds"}  # noqa: E731
    assert strip(res["points"][0]) == strip(r1core_small["points"][0])


def test_async_flag_needs_the_config_field(capsys):
    if _tta.has_async_rollouts():
        assert tta.parse_args(["--r1core-async"]).trainer_list == ["trl", "r1core", "r1core-async"]
    else:
        with pytest.raises(SystemExit):
            tta.parse_args(["--r1core-async"])
        assert "--r1core-async" in capsys.readouterr().err


def _saved(tmp_path, name, *runs):
    full = [{"budget": 430.0, "eval_every": 30.0, "eval_prompts": 256, "eval_samples": 4, "steps": 300, "train_seconds": 431.0,
             "eval_seconds": 60.0, "setup_seconds": 9.0, "threads": 2, **r,
             "points": [{**p, "accuracy": 0.5} for p in r["points"]]} for r in runs]
    path = tmp_path / name / "time_to_accuracy.json"
    path.parent.mkdir()
    path.write_text(tta.json.dumps({"command": f"python bench/bench_time_to_accuracy.py --out {name}", "runs": full}))
    return str(path)


def test_merge_one_table_from_separate_invocations(tmp_path, capsys):
    a = _saved(tmp_path, "trl-0", _run("trl", 0, [0.4, 0.5, 0.6, 0.9]))
    b = _saved(tmp_path, "r1core-0", _run("r1core", 0, [0.4, 0.9, 0.9, 0.9]))
    content = tta.merge([a, b], str(tmp_path / "all"), ["--merge", a, b])
    by = {r["threshold"]: r for r in content["table"]}
    assert (by[0.9]["trl_seconds"], by[0.9]["r1core_seconds"], by[0.9]["ratio"]) == (90.0, 30.0, "3.00x")
    assert (tmp_path / "all" / "time_to_accuracy.png").stat().st_size > 0
    assert "3.00x" in capsys.readouterr().out


def test_merge_refuses_a_run_twice_and_mixed_schedules(tmp_path):
    a = _saved(tmp_path, "a", _run("trl", 0, [0.4]))
    b = _saved(tmp_path, "b", _run("trl", 0, [0.5]))
    with pytest.raises(ValueError, match=r"--merge: \(trainer, seed\) \[\('trl', 0\)\]"):
        tta.merge([a, b], str(tmp_path / "out"), [])
    c = _saved(tmp_path, "c", {**_run("r1core", 0, [0.4]), "budget": 60.0})
    with pytest.raises(ValueError, match="--merge: the runs differ"):
        tta.merge([a, c], str(tmp_path / "out"), [])
    with pytest.raises(ValueError, match="--merge: .* is not a file"):
        tta.merge([str(tmp_path / "nothing.json")], str(tmp_path / "out"), [])
