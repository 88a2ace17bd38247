"""Generated tasks: determinism, disjoint splits, gold solutions that check, the tokenizer."""
import random
from collections import Counter

import pytest

from r1core.rewards import accuracy_reward, countdown_reward, format_reward, scratchpad_format_reward
from r1core.tasks import R1_ZERO_TEMPLATE, arithmetic, countdown, generate, make_dataset, r1_zero_prompt
from r1core.tasks.splits import problem_split
from r1core.tasks.tokenizer import TAG_TOKENS, TASK_ALPHABET, build_tokenizer, load_tokenizer


def test_r1_zero_template_verbatim():
    assert R1_ZERO_TEMPLATE.startswith("A conversation between User and Assistant. The user asks a question, and the "
                                       "Assistant solves it. The assistant first thinks")
    assert "<think> reasoning process here </think> <answer> answer here </answer>. User: {prompt}. Assistant:" \
        in R1_ZERO_TEMPLATE
    assert r1_zero_prompt("Compute 1+{2}").endswith("User: Compute 1+{2}. Assistant:")
    with pytest.raises(ValueError, match="question"):
        r1_zero_prompt("")


def test_addition_scratchpad_matches_the_default_format():
    p = arithmetic.ArithmeticProblem(989, 796, "+", 3)
    assert p.prompt() == "989+796="
    assert p.completion() == "T9+6+0=15,8+9+1=18,9+7+1=17;A1785"
    assert p.completion("tagged") == "<think>9+6+0=15,8+9+1=18,9+7+1=17</think><answer>1785</answer>"
    assert arithmetic.ArithmeticProblem(22, 426, "+", 3).prompt() == "022+426="


@pytest.mark.parametrize("op", ["+", "*"])
@pytest.mark.parametrize("digits", [1, 2, 3, 4])
@pytest.mark.parametrize("fmt", ["scratchpad", "tagged", "r1zero"])
def test_arithmetic_rows_are_exact_and_their_solutions_score(op, digits, fmt):
    rows = list(arithmetic.generate_arithmetic(40, "train", random.randrange(10**6), digits=digits, op=op, fmt=fmt))
    assert len(rows) == 40
    for r in rows:
        assert int(r["answer"]) == (r["a"] + r["b"] if op == "+" else r["a"] * r["b"])
        parsed = arithmetic.parse_prompt(r["prompt"])
        assert (parsed.a, parsed.b, parsed.op) == (r["a"], r["b"], op)
        steps, answer = arithmetic.split_completion(r["solution"])
        assert answer == r["answer"] and len(steps) == (digits if op == "+" else 2 * digits - 1)
        # every step is true arithmetic
        for s in steps:
            lhs, rhs = s.split("=")
            terms = lhs.split("+") if "+" in lhs else lhs.split("*")
            value = sum(map(int, terms)) if "+" in lhs else int(terms[0]) * int(terms[1])
            assert value == int(rhs), s
    sols = [r["solution"] for r in rows]
    assert accuracy_reward(None, sols, answer=[r["answer"] for r in rows]) == [1.0] * 40
    wrong = [str(int(r["answer"]) + 1) for r in rows]
    assert accuracy_reward(None, sols, answer=wrong) == [0.0] * 40
    fmt_reward = scratchpad_format_reward if fmt == "scratchpad" else format_reward
    assert fmt_reward(None, sols) == [1.0] * 40


def test_multiplication_scratchpad():
    p = arithmetic.ArithmeticProblem(123, 45, "*", 3)
    assert p.prompt() == "123*045="
    assert p.completion() == "T123*5=615,123*40=4920,123*000=0;615+4920=5535,5535+0=5535;A5535"


@pytest.mark.parametrize("name,kwargs", [("addition", {"digits": 2}), ("addition", {"digits": 3}),
                                         ("multiplication", {"digits": 2}), ("countdown", {})])
def test_generators_deterministic_and_splits_disjoint(name, kwargs):
    seed = random.randrange(10**6)
    a = generate(name, "train", 200, seed, **kwargs)
    assert a == generate(name, "train", 200, seed, **kwargs)
    assert a != generate(name, "train", 200, seed + 1, **kwargs)
    test = generate(name, "test", 100, seed, **kwargs)
    test_other_seed = generate(name, "test", 100, seed + 7, **kwargs)
    key = ((lambda r: tuple(sorted(r["numbers"])) + (r["target"],)) if name == "countdown"
           else (lambda r: (r["a"], r["b"])))
    train_keys = {key(r) for r in a} | {key(r) for r in generate(name, "train", 500, seed + 3, **kwargs)}
    test_keys = {key(r) for r in test + test_other_seed}
    assert train_keys and test_keys and not train_keys & test_keys
    assert len(test_keys) > 10  # the test split is not degenerate


def test_split_is_a_function_of_the_problem_only():
    keys = [f"{random.randrange(1000):03d}+{random.randrange(1000):03d}" for _ in range(2000)]
    splits = [problem_split(k) for k in keys]
    assert splits == [problem_split(k) for k in keys]
    frac = splits.count("test") / len(splits)
    assert 0.05 < frac < 0.15
    assert problem_split(keys[0], 0.5) in ("train", "test")
    with pytest.raises(ValueError, match="test_fraction"):
        problem_split("1+1", 1.5)


@pytest.mark.parametrize("fmt", ["scratchpad", "tagged", "r1zero"])
def test_countdown_instances_solvable_and_solution_verifies(fmt):
    rows = generate("countdown", "train", 150, random.randrange(10**6), fmt=fmt)
    assert Counter(len(r["numbers"]) for r in rows).keys() <= {3, 4}
    for r in rows:
        assert countdown.is_solved(r["numbers"], r["target"], r["steps"])
        assert all(countdown.check_steps(r["numbers"], r["target"], r["steps"]))
        parsed = countdown.parse_prompt(r["prompt"])
        assert list(parsed.numbers) == r["numbers"] and parsed.target == r["target"]
        assert countdown.split_completion(r["solution"]) == (r["steps"], r["expression"])
    sols = [r["solution"] for r in rows]
    rewards = countdown_reward(None, sols, numbers=[r["numbers"] for r in rows], target=[r["target"] for r in rows])
    assert rewards == [1.0] * len(rows)
    off = countdown_reward(None, sols, numbers=[r["numbers"] for r in rows], target=[r["target"] + 1 for r in rows])
    assert off == [0.0] * len(rows)


def test_countdown_solver_agrees_with_brute_force():
    # every value reachable from 3 numbers, by brute force over orders and operations
    def brute(nums):
        if len(nums) == 1:
            return {nums[0]}
        out = set()
        for i in range(len(nums)):
            for j in range(len(nums)):
                if i == j:
                    continue
                a, b = nums[i], nums[j]
                rest = [x for k, x in enumerate(nums) if k not in (i, j)]
                for r in (a + b, a * b, a - b if a >= b else None, a // b if b and a % b == 0 else None):
                    if r is not None:
                        out |= brute(rest + [r])
        return out

    for _ in range(20):
        nums = [random.randint(1, 12) for _ in range(3)]
        reach = brute(nums)
        for t in range(0, 60):
            steps = countdown.solve(nums, t)
            assert (steps is not None) == (t in reach), (nums, t)
            if steps is not None:
                assert countdown.is_solved(nums, t, steps)


def test_step_verifier_prefixes_and_dead_ends():
    nums, target = [8, 3, 2], 22
    steps = countdown.solve(nums, target)
    for k in range(len(steps) + 1):
        assert countdown.check_steps(nums, target, steps[:k]) == [True] * k
    # legal arithmetic but no way back to 22: 8+3=11 leaves {11, 2} (13, 9, 22? 11*2=22!)
    assert countdown.check_steps(nums, target, ["8+3=11"]) == [True]
    assert countdown.check_steps(nums, target, ["8-3=5"]) == [False]  # {5, 2}: 7, 3, 10 (5/2 not exact)
    assert countdown.check_steps(nums, target, ["8*3=24", "24+2=26"]) == [True, False]
    assert countdown.check_steps(nums, target, ["8*3=25"]) == [False]  # wrong arithmetic
    assert countdown.check_steps(nums, target, ["8*8=64"]) == [False]  # 8 is there only once
    assert countdown.check_steps(nums, target, ["9*3=27"]) == [False]  # 9 is not available
    assert countdown.check_steps(nums, target, ["3-8=-5"]) == [False]  # negative intermediate
    assert countdown.check_steps(nums, target, ["hello", "8*3=24"]) == [False, False]  # dead stays dead
    assert not countdown.is_solved(nums, target, ["8*3=24"])


def test_countdown_bad_arguments():
    with pytest.raises(ValueError, match="num_numbers"):
        generate("countdown", n=1, num_numbers=1)
    with pytest.raises(ValueError, match="fmt"):
        generate("countdown", n=1, fmt="xml")
    with pytest.raises(ValueError, match="split"):
        generate("countdown", "validation", n=1)
    with pytest.raises(ValueError, match="prompt"):
        countdown.parse_prompt("no numbers here")


def test_arithmetic_bad_arguments():
    with pytest.raises(ValueError, match="digits"):
        generate("addition", n=1, digits=0)
    with pytest.raises(ValueError, match="op"):
        arithmetic.ArithmeticProblem(1, 2, "-", 1)
    with pytest.raises(ValueError, match="b"):
        arithmetic.ArithmeticProblem(1, 200, "+", 2)
    with pytest.raises(ValueError, match="n"):
        generate("addition", n=-1)
    with pytest.raises(ValueError, match="name"):
        generate("subtraction")
    with pytest.raises(ValueError, match="prompt"):
        arithmetic.parse_prompt("12+345=")


def test_make_dataset():
    ds = make_dataset("addition", "test", 20, seed=1, digits=2)
    assert len(ds) == 20 and {"prompt", "answer", "solution"} <= set(ds.column_names)
    ds = make_dataset("countdown", "train", 10, seed=1)
    assert {"prompt", "numbers", "target", "solution"} <= set(ds.column_names)
    assert isinstance(ds[0]["numbers"], list)


def test_tokenizer_round_trip_and_single_tag_tokens(tmp_path):
    tok = build_tokenizer()
    for tag in TAG_TOKENS:
        assert len(tok(tag, add_special_tokens=False)["input_ids"]) == 1
    rows = generate("countdown", "train", 5, random.randrange(1000), fmt="r1zero")
    rows += generate("addition", "train", 5, random.randrange(1000), fmt="scratchpad")
    for r in rows:
        text = r["prompt"] + r["solution"]
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
        assert len(ids) == len(text) - sum(text.count(t) * (len(t) - 1) for t in TAG_TOKENS)
    # tags survive skip_special_tokens (the format reward reads them), eos and pad do not
    ids = tok("<think>1</think><answer>2</answer>")["input_ids"] + [tok.eos_token_id, tok.pad_token_id]
    assert tok.decode(ids, skip_special_tokens=True) == "<think>1</think><answer>2</answer>"
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}) == 4
    assert tok("é")["input_ids"] == [tok.unk_token_id]
    batch = tok(["12+3=", "1+2="], padding=True)
    assert batch["input_ids"][1][-1] == tok.pad_token_id and batch["attention_mask"][1] == [1, 1, 1, 1, 0]

    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(tmp_path)
    text = rows[0]["prompt"] + rows[0]["solution"]
    assert loaded(text)["input_ids"] == auto(text)["input_ids"] == tok(text)["input_ids"]
    assert (loaded.eos_token_id, loaded.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)
    with pytest.raises(ValueError, match="path"):
        load_tokenizer(tmp_path / "missing")


def test_task_alphabet_covers_scratchpad_formats():
    tok = build_tokenizer(TASK_ALPHABET)
    assert len(tok) < 40
    rows = generate("addition", n=5, digits=4) + generate("multiplication", n=5) + generate("countdown", n=5)
    for r in rows:
        ids = tok(r["prompt"] + r["solution"])["input_ids"]
        assert tok.unk_token_id not in ids
    with pytest.raises(ValueError, match="alphabet"):
        build_tokenizer("")
