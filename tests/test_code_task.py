"""The generated code task: rows, splits, test cases, the gold programs passing in the sandbox."""

import random

import pytest

from r1core.rewards import code_reward, extract_code
from r1core.sandbox import sandbox_available
from r1core.tasks import CODE_TASKS, TASKS, generate
from r1core.tasks.code import FAMILIES, CodeProblem, generate_code

needs_namespaces = pytest.mark.skipif(not sandbox_available(), reason="the kernel refuses user/network namespaces here")


def _columns(rows):
    return {k: [r[k] for r in rows] for k in rows[0]}


def test_rows_are_seeded_and_the_splits_disjoint():
    a = generate("code", "train", 40, seed=3)
    assert a == generate("code", "train", 40, seed=3)
    assert a != generate("code", "train", 40, seed=4)
    test_keys = {r["key"] for r in generate("code", "test", 40, seed=3)}
    assert test_keys and not test_keys & {r["key"] for r in generate("code", "train", 400, seed=5)}
    for r in a:
        assert set(r) >= {"prompt", "solution", "test_cases", "key", "family"} and r["task"] == "code"
        assert len(r["test_cases"]) == 4 and all(set(c) == {"input", "output"} for c in r["test_cases"])
        assert "```python" in r["prompt"] and extract_code(r["solution"]) is not None
    assert "code" in CODE_TASKS and "code" not in TASKS


def test_a_problem_has_the_same_tests_in_every_dataset():
    rows = generate("code", "train", 60, seed=0) + generate("code", "train", 60, seed=1)
    by_key = {}
    for r in rows:
        assert by_key.setdefault(r["key"], r["test_cases"]) == r["test_cases"]
    assert len(by_key) < len(rows)  # some problem came up twice
    p = CodeProblem("linear", (3, 7))
    assert p.key == "linear:3,7" and p.test_cases(6)[:4] == p.test_cases(4)
    assert len({c["input"] for c in p.test_cases(6)}) > 1


@needs_namespaces
def test_every_familys_gold_program_passes_its_tests_and_others_do_not():
    rng = random.Random(0)
    rows = [CodeProblem(f, FAMILIES[f].params(rng)).row(fmt) for f in sorted(FAMILIES) for fmt in ("plain", "r1zero")]
    cols = _columns(rows)
    assert code_reward(cols["prompt"], cols["solution"], **cols) == [1.0] * len(rows)
    # each gold program against the next family's tests: the outputs differ
    shifted = cols["solution"][2:] + cols["solution"][:2]
    assert all(s < 1.0 for s in code_reward(cols["prompt"], shifted, **cols))


def test_formats_and_bad_arguments():
    p = CodeProblem("repeat", (3, 0))
    assert p.prompt().startswith("Read a word and print it 3 times, separated by '-'.")
    assert p.prompt().endswith("block.\n")
    assert p.prompt("r1zero").startswith("A conversation between User and Assistant")
    assert "block. Assistant:" in p.prompt("r1zero")
    assert p.completion("r1zero").startswith("<think>") and extract_code(p.completion("r1zero")) == p.program
    with pytest.raises(ValueError, match="fmt"):
        p.prompt("scratchpad")
    with pytest.raises(ValueError, match="family"):
        CodeProblem("chess", ())
    with pytest.raises(ValueError, match="split"):
        list(generate_code(1, "dev"))
    with pytest.raises(ValueError, match="num_tests"):
        list(generate_code(1, num_tests=0))
    with pytest.raises(ValueError, match="name"):
        generate("python", "train", 1)


@needs_namespaces
@pytest.mark.filterwarnings("ignore:NOTHING TO LEARN")  # a random model's completions hold no code block
def test_grpo_command_trains_on_the_code_task_with_code_reward(tmp_path, monkeypatch):
    import functools
    import json

    import r1core.rewards
    from r1core.recipes.cli import main

    rows = {r["prompt"]: r for r in generate("code", "train", 8, seed=0)}  # the command's rows (seed 0)
    seen = []
    real = r1core.rewards.code_reward

    @functools.wraps(real)
    def recording(prompts, completions, **columns):
        # the random tiny model writes no code: the first completion of each step is swapped for its
        # prompt's gold program, so a score from the sandbox reaches the step's metrics
        seen.append((list(prompts), columns["test_cases"]))
        return real(prompts, [rows[prompts[0]]["solution"], *completions[1:]], **columns)

    monkeypatch.setattr(r1core.rewards, "code_reward", recording)  # the CLI looks it up per run
    out = tmp_path / "grpo"
    assert main(["grpo", "--task", "code", "--model", "tiny", "--max-steps", "2", "--num-generations", "2",
                 "--per-device-train-batch-size", "4", "--max-completion-length", "16", "--train-size", "8",
                 "--output-dir", str(out), "--logging-steps", "1"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and (out / "final").is_dir()
    for r in records:  # one completion of four scored, by the sandbox: 1.0
        assert r["rewards/code_reward"] == 1.0 and r["unscorable"] == 0.75, r
    # each step scored its 4 completions against the test cases of their own prompts
    assert len(seen) == 2
    for prompts, cases in seen:
        assert len(prompts) == 4 and [rows[p]["test_cases"] for p in prompts] == cases
