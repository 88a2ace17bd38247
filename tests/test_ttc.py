"""`r1core ttc`: every method on a policy whose per-step accuracy is known (so the accuracies can be
checked), end to end on a tiny random model through the engine in a shrunk configuration, the CLI
and bad configurations."""
import json
import os
import random

import pytest
from _search_fakes import NoisyAdditionPolicy

from r1core.recipes.base_model import build_tokenizer
from r1core.recipes.ttc import ALL_METHODS, TTCConfig, evaluate_methods, exact_verifier, problem_columns, run_ttc
from r1core.search.scoring import verifier_scorer
from r1core.tasks import generate


def test_methods_on_a_policy_with_known_step_accuracy():
    tok = build_tokenizer()
    cfg = TTCConfig(num_problems=12, budgets=[1, 8], digits=3, aggregate="min")
    rows = generate("addition", "test", cfg.num_problems, seed=random.randrange(1000), digits=3)
    ver = exact_verifier("addition")
    gen = NoisyAdditionPolicy(tok, p=0.6, seed=random.randrange(1000))

    def correct(row, text):
        return ver.outcome(row["prompt"], text, **problem_columns(row)) >= 1.0

    scorers = [verifier_scorer(ver, r["prompt"], problem_columns(r), "min", finished="steps") for r in rows]
    table = evaluate_methods(gen, lambda t: tok(t, add_special_tokens=False)["input_ids"], rows, cfg, scorers, correct)
    acc = {(r["method"], r["budget"]): r["accuracy"] for r in table}
    tokens = {(r["method"], r["budget"]): r["generated_tokens"] for r in table}
    assert set(acc) == {(m, b) for m in ALL_METHODS for b in (1, 8)}
    # one sample is right with probability 0.6^3 = 0.22; with 8 and the exact step verifier,
    # best-of-N fails only when all 8 are wrong (0.78^8 = 0.14), beam search and MCTS almost never
    for m in ("best_of_n", "weighted_best_of_n", "beam_search", "mcts"):
        assert acc[(m, 8)] >= 0.5, (m, acc)
        assert tokens[(m, 8)] > tokens[(m, 1)]
    assert acc[("beam_search", 8)] >= 0.9
    # MCTS expands each node once (4 steps): a right node whose 4 proposals were all wrong
    # (0.4^4 per level) leaves that subtree dead, so it trails beam search by a few problems
    assert acc[("mcts", 8)] >= 0.75
    assert acc[("majority", 1)] <= 0.75  # one noisy sample: no search, no miracle


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    cfg = TTCConfig(model="tiny", runs_dir=str(d), name="tiny", num_problems=2, budgets=[1, 2], max_new_tokens=24,
                    max_step_tokens=8, progress=False)
    return cfg, run_ttc(cfg)


def test_ttc_end_to_end_on_a_tiny_random_model(tiny_run):
    cfg, res = tiny_run
    rows = res["rows"]
    assert {(r["method"], r["budget"]) for r in rows} == {(m, b) for m in ALL_METHODS for b in (1, 2)}
    for r in rows:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["generated_tokens"] > 0
    for key in ("json", "md", "png"):
        assert os.path.getsize(res["paths"][key]) > 0
    saved = json.load(open(res["paths"]["json"]))
    assert saved["rows"] == rows and saved["problems"] == 2
    table = open(res["paths"]["md"]).read()
    assert all(m in table for m in ALL_METHODS)


def test_ttc_cli(tiny_run, tmp_path):
    from r1core.recipes.cli import main

    cfg, _ = tiny_run
    assert main(["ttc", "--model", "tiny", "--runs-dir", str(tmp_path), "--name", "cli", "--num-problems", "1",
                 "--budgets", "1", "--methods", "majority,beam_search", "--max-new-tokens", "16", "--no-progress"]) == 0
    saved = json.load(open(tmp_path / "cli" / "ttc.json"))
    assert {(r["method"], r["budget"]) for r in saved["rows"]} == {("majority", 1), ("beam_search", 1)}
    with pytest.raises(SystemExit, match="no model"):
        main(["ttc", "--runs-dir", str(tmp_path), "--name", "missing", "--no-progress"])
    with pytest.raises(SystemExit, match="TTCConfig.model: model '.*nowhere' is not a folder"):  # the commands' one loader
        main(["ttc", "--model", str(tmp_path / "nowhere"), "--no-progress"])
    # a YAML config file, a list in it as a list or as the flag's comma-separated string; flags win
    config = tmp_path / "ttc.yaml"
    config.write_text(f"model: tiny\nruns_dir: {tmp_path}\nname: yaml\nnum_problems: 1\nbudgets: [1, 2]\nmethods: majority,best_of_n\n"
                      "max_new_tokens: 16\nprogress: false\n")
    assert main(["ttc", "--config", str(config), "--budgets", "1"]) == 0
    saved = json.load(open(tmp_path / "yaml" / "ttc.json"))
    assert {(r["method"], r["budget"]) for r in saved["rows"]} == {("majority", 1), ("best_of_n", 1)}


@pytest.mark.parametrize("kwargs, match", [
    (dict(budgets=[0, 2]), "budgets"), (dict(budgets=[]), "budgets"), (dict(methods=["oracle"]), "methods"),
    (dict(verifier="orm"), "verifier"), (dict(aggregate="mean"), "aggregate"), (dict(temperature=0.0), "temperature"),
    (dict(num_problems=0), "num_problems"), (dict(finished_score="answer"), "finished_score"), (dict(task="sudoku"), "task"),
    (dict(name="a/b"), "name"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TTCConfig(**kwargs)


def test_prm_verifier_option_trains_on_the_policys_rollouts():
    from r1core.recipes.ttc import _train_prm

    tok = build_tokenizer()
    cfg = TTCConfig(digits=2, prm_problems=4, prm_rollouts=2, prm_steps=10, verifier="prm", prm_soft_labels=True)
    gen = NoisyAdditionPolicy(tok, p=0.7, seed=random.randrange(1000))
    ver = exact_verifier("addition")
    prm, info = _train_prm(cfg, gen, lambda t: tok(t, add_special_tokens=False)["input_ids"],
                           lambda row, text: ver.outcome(row["prompt"], text, **problem_columns(row)) >= 1.0, tok, lambda s: None)
    assert info["examples"] == 8 and 0.0 <= info["positive_fraction"] <= 1.0
    score = prm.scorer("12+34=", "min")
    assert 0.0 < score("T2+4+0=6,", False) < 1.0
