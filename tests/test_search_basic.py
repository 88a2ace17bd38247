"""The pure parts of r1core.search: voting, best-of-N, metrics, verifiers, sampling drivers."""
import itertools
import math
import random

import pytest

from r1core.search import (
    ArithmeticVerifier,
    CountdownVerifier,
    SearchResult,
    aggregate_step_scores,
    best_of_n,
    maj_at_k,
    majority_vote,
    mean_pass_at_k,
    pass_at_k,
    sample_and_select,
    select,
    weighted_best_of_n,
)
from r1core.search.voting import group_answers
from r1core.tasks import arithmetic, generate


def brute_pass_at_k(n, c, k):
    correct = set(range(c))
    subsets = list(itertools.combinations(range(n), k))
    return sum(bool(correct & set(s)) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_matches_enumeration_and_never_falls(n):
    for c in range(n + 1):
        values = [pass_at_k(n, c, k) for k in range(1, n + 1)]
        for k, v in zip(range(1, n + 1), values):
            assert v == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)
        assert all(b >= a - 1e-15 for a, b in zip(values, values[1:]))
        assert values[0] == pytest.approx(c / n)


def test_pass_at_k_large_n_is_stable():
    n = 2000
    c = random.randrange(1, 50)
    k = random.randrange(1, 200)
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)  # exact integers; floats would overflow
    assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-9)
    assert pass_at_k(n, 0, k) == 0.0 and pass_at_k(n, n, 1) == 1.0
    vals = [pass_at_k(n, c, k) for k in range(1, n + 1, 97)]
    assert vals == sorted(vals) and all(0 <= v <= 1 for v in vals)
    assert mean_pass_at_k([4, 4], [0, 4], 1) == pytest.approx(0.5)


@pytest.mark.parametrize("n,c,k,name", [(0, 0, 1, "n"), (4, 5, 1, "c"), (4, -1, 1, "c"), (4, 2, 5, "k"),
                                        (4, 2, 0, "k"), (4.0, 2, 1, "n"), (4, True, 1, "c")])
def test_pass_at_k_bad_input(n, c, k, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        pass_at_k(n, c, k)


def test_majority_vote():
    assert majority_vote(["3", "5", "5", "3", "7", "5"]) == "5"
    assert majority_vote(["3", "5", "5", "3"]) == "3"  # tie: the first to appear
    assert majority_vote(["5", "3", "3", "5"]) == "5"
    assert majority_vote([None, None, "4", None]) == "4"  # None is no vote
    assert majority_vote([None, None]) is None and majority_vote([]) is None
    assert majority_vote([" 4", "4 ", "5", "5"]) == "5"
    assert majority_vote([" 4", "4 ", "5", "5"], normalize="strip") == " 4"
    assert majority_vote(["0.5", "3", "1/2", "\\frac{1}{2}", "3"], normalize="math") == "0.5"
    assert majority_vote(["Paris", "paris", "Rome"], normalize=str.lower) == "Paris"
    with pytest.raises(ValueError, match="normalize"):
        majority_vote(["1"], normalize="lower")
    with pytest.raises(ValueError, match="normalize"):
        majority_vote(["1"], normalize=3)


def test_majority_vote_random_against_counting():
    for _ in range(50):
        answers = [random.choice("abcd") for _ in range(random.randint(1, 12))]
        counts = {a: answers.count(a) for a in answers}
        top = max(counts.values())
        expected = next(a for a in answers if counts[a] == top)
        assert majority_vote(answers) == expected
        assert sorted(i for g in group_answers(answers) for i in g) == list(range(len(answers)))


def test_best_of_n_and_weighted():
    assert best_of_n(["a", "b", "c"], [0.2, 0.9, 0.5]) == "b"
    assert best_of_n(["a", "b", "c"], [0.9, 0.9, 0.5]) == "a"  # tie: first
    assert best_of_n(["a", "b"], [None, 0.1]) == "b"
    assert best_of_n(["a", "b"], [None, None]) is None
    # one outlier scored high by a noisy verifier; three agreeing samples win on the summed score
    answers, scores = ["7", "4", "4", "4"], [0.95, 0.5, 0.4, 0.6]
    assert best_of_n(answers, scores) == "7"
    assert weighted_best_of_n(answers, scores) == "4"
    assert weighted_best_of_n(["1", "2"], [0.5, 0.5]) == "1"
    assert weighted_best_of_n(["1", None, "2"], [0.1, 5.0, 0.2]) == "2"  # a None answer gets nothing
    assert weighted_best_of_n(["0.5", "1/2", "3"], [0.4, 0.4, 0.7], normalize="math") == "0.5"
    for fn in (best_of_n, weighted_best_of_n):
        with pytest.raises(ValueError, match="scores"):
            fn(["a", "b"], [1.0])
        with pytest.raises(ValueError, match="scores"):
            fn(["a", "b"], [1.0, float("nan")])
        with pytest.raises(ValueError, match="scores"):
            fn(["a", "b"], [1.0, "high"])


def test_maj_at_k():
    answers = ["1", "2", "2", "1", "1"]
    assert maj_at_k(answers, "2", k=3) == 1.0
    assert maj_at_k(answers, "1") == 1.0
    assert maj_at_k(answers, "2") == 0.0
    assert maj_at_k(["0.5", "1/2", "3"], "\\frac{1}{2}", normalize="math") == 1.0
    assert maj_at_k([None, None], "1") == 0.0
    with pytest.raises(ValueError, match="k"):
        maj_at_k(answers, "1", k=6)
    with pytest.raises(ValueError, match="k"):
        maj_at_k(answers, "1", k=0)


def test_aggregate_step_scores():
    s = [0.9, 0.5, 0.8]
    assert aggregate_step_scores(s, "last") == 0.8
    assert aggregate_step_scores(s, "min") == 0.5
    assert aggregate_step_scores(s, "product") == aggregate_step_scores(s, "prod") == pytest.approx(0.36)
    with pytest.raises(ValueError, match="how"):
        aggregate_step_scores(s, "mean")
    with pytest.raises(ValueError, match="scores"):
        aggregate_step_scores([], "min")


def test_countdown_verifier_prefixes_dead_ends_and_outcome():
    v = CountdownVerifier()
    for row in generate("countdown", "test", 30, random.randrange(10**6)):
        prompt, steps = row["prompt"], row["steps"]
        for k in range(1, len(steps) + 1):
            assert v.score(prompt, steps[:k]) == [1.0] * k
            assert v.score("", steps[:k], numbers=row["numbers"], target=row["target"]) == [1.0] * k
        assert v.outcome(prompt, row["solution"]) == 1.0
        assert v.solution_score(prompt, row["solution"], "min") == 1.0
        # a first step that is legal but leaves no way to the target scores 0, and so does the rest
        nums = row["numbers"]
        dead = next((f"{max(a, b)}+{min(a, b)}={a + b}" for a, b in itertools.combinations(nums, 2)
                     if not v.score(prompt, [f"{max(a, b)}+{min(a, b)}={a + b}"])[0]), None)
        if dead is not None:
            assert v.score(prompt, [dead] + steps[1:]) == [0.0] * len(steps)
    assert v.score("8,3,2>22:", ["8+2=10", "10*3=30"]) == [0.0, 0.0]  # {10, 3} cannot give 22
    assert v.outcome("8,3,2>22:", "T;A8*3+2") == 0.0
    with pytest.raises(ValueError, match="prompt"):
        v.score("what?", ["8*3=24"])


def test_arithmetic_verifier_steps_and_outcome():
    v = ArithmeticVerifier()
    p = arithmetic.ArithmeticProblem(random.randrange(1000), random.randrange(1000), "+", 3)
    steps = p.steps()
    assert v.score(p.prompt(), steps) == [1.0, 1.0, 1.0]
    wrong = steps[:1] + ["0+0+0=1"] + steps[2:]
    assert v.score(p.prompt(), wrong) == [1.0, 0.0, 0.0]
    assert v.score(p.prompt(), steps + ["1+1+0=2"]) == [1.0, 1.0, 1.0, 0.0]
    assert v.outcome(p.prompt(), p.completion()) == 1.0
    assert v.outcome(p.prompt(), f"T;A{p.answer + 1}") == 0.0
    assert v.outcome(p.prompt("r1zero"), p.completion("r1zero")) == 1.0
    assert v.solution_score(p.prompt(), p.completion(), "prod") == 1.0
    assert v.solution_score(p.prompt(), "garbage", "last") == 0.0


def test_select_methods_on_known_cases():
    texts = ["T;A5", "T;A6", "T;A6", "T;A5", "T;A5"]
    counts = [3, 4, 5, 6, 7]
    r = select(texts, "majority", token_counts=counts)
    assert isinstance(r, SearchResult)
    assert (r.answer, r.text, r.generated_tokens, r.budget) == ("5", "T;A5", 25, 5)
    assert r.score == pytest.approx(3 / 5) and len(r.candidates) == 5
    r = select(texts, "best_of_n", token_counts=counts, scores=[0.1, 0.9, 0.2, 0.3, 0.3])
    assert (r.answer, r.score) == ("6", 0.9)
    r = select(texts, "weighted_best_of_n", token_counts=counts, scores=[0.1, 0.9, 0.2, 0.3, 0.3])
    assert (r.answer, r.score) == ("6", pytest.approx(1.1))
    r = select(texts, "best_of_n", token_counts=counts, prompt="2+3=", verifier=ArithmeticVerifier())
    assert r.answer == "5" and [c.score for c in r.candidates] == [1.0, 0.0, 0.0, 1.0, 1.0]
    r = select(["junk", "more junk"], "majority", token_counts=[1, 1])
    assert r.answer is None and r.text is None


def test_best_of_n_with_exact_verifier_reaches_pass_at_n():
    v = CountdownVerifier()
    rows = generate("countdown", "train", 20, random.randrange(10**6))
    for row in rows:
        wrong = [f"T;A{'+'.join(map(str, row['numbers']))}-0" for _ in range(5)]
        texts = wrong[:]
        texts.insert(random.randrange(6), row["solution"])
        r = select(texts, "best_of_n", token_counts=[1] * 6, prompt=row["prompt"], verifier=v)
        assert r.text == row["solution"] and r.score == 1.0


def test_sample_and_select_budget_and_generate_contract():
    calls = []

    def gen(prompt, n):
        calls.append(n)
        return [(f"T;A{c}", 4) for c in "55565556"[:n]]  # fixed: a random draw could out-vote the 5s

    r = sample_and_select(gen, "2+3=", 8, "majority")
    assert calls == [8] and r.generated_tokens == 32 and r.budget == 8 and r.answer == "5"

    class Out:
        def __init__(self, text, token_ids):
            self.text, self.token_ids = text, token_ids

    r = sample_and_select(lambda p, n: [Out("T;A5", [1, 2, 3])] * n, "2+3=", 2, "best_of_n",
                          verifier=ArithmeticVerifier())
    assert r.generated_tokens == 6 and r.answer == "5"
    r = sample_and_select(lambda p, n: [{"text": "T;A5", "num_tokens": 2}] * n, "2+3=", 3)
    assert r.generated_tokens == 6
    for budget in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="budget"):
            sample_and_select(gen, "p", budget)
    with pytest.raises(ValueError, match="generate"):
        sample_and_select(lambda p, n: [("a", 1)] * (n - 1), "p", 3)
    with pytest.raises(ValueError, match="generate"):
        sample_and_select(lambda p, n: ["no token count"] * n, "p", 2)
    with pytest.raises(ValueError, match="method"):
        sample_and_select(gen, "p", 2, "beam")
    with pytest.raises(ValueError, match="verifier"):
        sample_and_select(gen, "p", 2, "best_of_n")
    with pytest.raises(ValueError, match="token_counts"):
        select(["a", "b"], token_counts=[1])
    with pytest.raises(ValueError, match="texts"):
        select([], token_counts=[])
    with pytest.raises(ValueError, match="scores"):
        select(["a", "b"], "best_of_n", token_counts=[1, 1], scores=[1.0])


def test_accuracy_by_budget_on_constructed_samples():
    from r1core.search import accuracy_by_budget

    answers = [["5", "6", "5", "5"], ["7", "4", "4", "4"], ["1", "2", "3", "9"]]
    gold = ["5", "4", "9"]
    texts = [[f"T;A{a}" for a in row] for row in answers]
    correct = [[a == g for a in row] for row, g in zip(answers, gold)]
    counts = [[random.randint(1, 9) for _ in row] for row in answers]
    rows = accuracy_by_budget(texts, counts, correct, [1, 2, 3, 4], "majority")
    assert [r["accuracy"] for r in rows] == [pytest.approx(1 / 3), pytest.approx(1 / 3), pytest.approx(2 / 3),
                                            pytest.approx(2 / 3)]
    for b, r in zip([1, 2, 3, 4], rows):
        assert r["generated_tokens"] == pytest.approx(sum(sum(c[:b]) for c in counts) / 3)
        assert r["pass_at_k"] == pytest.approx(sum(pass_at_k(4, sum(c), b) for c in correct) / 3)
    assert rows[-1]["pass_at_k"] == 1.0
    # best-of-N with an exact verifier's scores picks a correct sample whenever the first b hold one
    scores = [[float(c) for c in row] for row in correct]
    rows = accuracy_by_budget(texts, counts, correct, [1, 2, 3, 4], "best_of_n", scores=scores)
    assert [r["accuracy"] for r in rows] == [pytest.approx(sum(any(c[:b]) for c in correct) / 3) for b in range(1, 5)]
    with pytest.raises(ValueError, match="budgets"):
        accuracy_by_budget(texts, counts, correct, [5])
    with pytest.raises(ValueError, match="correct"):
        accuracy_by_budget(texts, counts, correct[:2], [1])
    with pytest.raises(ValueError, match="method"):
        accuracy_by_budget(texts, counts, correct, [1], "mcts")
