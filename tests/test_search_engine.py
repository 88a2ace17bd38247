"""Step-wise search: the engine-backed step generator, PRM beam search, DVTS and MCTS, on
constructed step generators whose answers are known and on a tiny random model through the engine."""
import random
from collections import Counter

import pytest
import torch

from r1core.search import CountdownVerifier
from r1core.search.beam import beam_search, diverse_verifier_tree_search
from r1core.search.mcts import Node, mcts, puct_select
from r1core.search.scoring import Partial, verifier_scorer
from r1core.search.step_generator import EngineStepGenerator, StepGenerator, StepProposal
from r1core.tasks import countdown
from r1core.tasks.countdown import apply_step, generate_countdown, parse_prompt, split_completion, steps_to_expression


def _decode(ids):
    return "".join(map(chr, ids))


def _encode(text):
    return [ord(c) for c in text]


class FakeCountdownPolicy:
    """A deterministic countdown 'policy' over characters (token id = ord): its next steps are the
    legal steps on the numbers left, most probable first by result, largest first, so its greedy
    path multiplies its way past most targets (a dead end the step verifier sees at once)."""

    def __init__(self, prompt: str):
        self.prompt = prompt
        self.problem = parse_prompt(prompt)
        self.calls = 0

    def _ranked(self, prefix_ids):
        text = _decode(prefix_ids)[len(self.prompt):]
        steps, _ = split_completion(text)
        avail = Counter(self.problem.numbers)
        for s in steps:
            assert apply_step(avail, s)
        vals = sorted(avail.elements())
        cands = set()
        for i in range(len(vals)):
            for j in range(i + 1, len(vals)):
                for a, op, b, r in countdown._combine(vals[i], vals[j]):
                    cands.add((r, f"{a}{op}{b}={r}"))
        ranked = sorted(cands, key=lambda c: (-c[0], c[1]))
        out = []
        for rank, (_, step) in enumerate(ranked):
            last = len(vals) == 2
            body = ("T" if not steps else "") + step
            body += f";A{steps_to_expression(self.problem.numbers, steps + [step])}" if last else ","
            out.append(StepProposal(_encode(body), body, -1.0 * rank, last))
        return out

    def expand(self, prefix_ids, n, max_step_tokens):
        self.calls += 1
        return self._ranked(prefix_ids)[:n]

    def rollout(self, prefix_ids, n, max_tokens):
        outs = []
        for _ in range(n):
            ids, text, lp = list(prefix_ids), "", 0.0
            while True:
                p = self._ranked(ids)[0]
                ids += p.token_ids
                text += p.text
                lp += p.logprob
                if p.finished:
                    break
            outs.append(StepProposal(ids[len(prefix_ids):], text, lp, True))
        return outs


def _greedy(gen, prompt_ids):
    ids, text = list(prompt_ids), ""
    while True:
        p = gen.expand(ids, 1, 32)[0]
        ids += p.token_ids
        text += p.text
        if p.finished:
            return text


def _hard_instances(k=12):
    rows = [r for r in generate_countdown(200, "train", seed=random.randrange(10**6), num_numbers=3, max_number=12,
                                          max_target=40)]
    ver = CountdownVerifier()
    hard = [r for r in rows if ver.outcome(r["prompt"], _greedy(FakeCountdownPolicy(r["prompt"]), _encode(r["prompt"])),
                                           numbers=r["numbers"], target=r["target"]) < 1.0]
    return hard[:k]


def test_fake_policy_follows_the_protocol():
    assert isinstance(FakeCountdownPolicy("8,3,2>22:"), StepGenerator)


@pytest.mark.parametrize("value", ["verifier", "rollout"])
def test_mcts_with_exact_verifier_solves_what_greedy_misses(value):
    hard = _hard_instances()
    assert len(hard) >= 5, "the fake policy's greedy path should fail on many instances"
    ver = CountdownVerifier()
    solved = 0
    for r in hard:
        gen = FakeCountdownPolicy(r["prompt"])
        problem = {"numbers": r["numbers"], "target": r["target"]}
        scorer = verifier_scorer(ver, r["prompt"], problem, aggregate="min")
        res = mcts(gen, _encode(r["prompt"]), scorer, budget=60, num_children=64, value=value, stop_score=1.0)
        assert res.method == "mcts" and res.generated_tokens > 0
        ok = ver.outcome(r["prompt"], res.text, **problem) == 1.0
        solved += ok
        assert ok == res.extra["solved"]
    assert solved == len(hard)  # every instance is solvable and the exact verifier prunes every dead end


def test_mcts_greedy_path_with_uninformative_verifier_fails():
    # with a value that says nothing (always 0.5) and c_puct 0 the search is greedy on Q ties: the
    # first child; the instances above then stay unsolved, so the verifier is what solves them
    r = _hard_instances(1)[0]
    gen = FakeCountdownPolicy(r["prompt"])
    res = mcts(gen, _encode(r["prompt"]), lambda text, fin: 0.5, budget=3, num_children=1, c_puct=0.0)
    assert CountdownVerifier().outcome(r["prompt"], res.text, numbers=r["numbers"], target=r["target"]) == 0.0


def test_puct_prefers_prior_then_value():
    root = Node(Partial(), visits=10)
    a, b = Node(Partial(), 0.9, root, visits=1, value_sum=0.0), Node(Partial(), 0.1, root, visits=1, value_sum=0.0)
    root.children = [a, b]
    assert puct_select(root, 1.0) is a
    b.value_sum = 1.0  # Q 1.0 + 0.1 * sqrt(10) / 2 = 1.16 < a's 0.9 * sqrt(10) / 2 = 1.42
    assert puct_select(root, 1.0) is a
    assert puct_select(root, 0.5) is b  # 1.08 > 0.71


class DigitPolicy:
    """Each step is one digit and ','; the third step ends the solution with ';A<digits>'. Proposals
    come in a fixed shuffled order per prefix, so the policy's order says nothing about quality."""

    def __init__(self, depth=3):
        self.depth = depth

    def expand(self, prefix_ids, n, max_step_tokens):
        text = _decode(prefix_ids)
        depth = text.count(",") + 1
        digits = list(range(10))
        random.Random(text).shuffle(digits)
        out = []
        for d in digits[:n]:
            fin = depth == self.depth
            body = f"{d};A{''.join(c for c in text if c.isdigit())}{d}" if fin else f"{d},"
            out.append(StepProposal(_encode(body), body, -1.0, fin))
        return out


def _digit_score(text, finished):
    return float(sum(int(c) for c in text.split(";")[0] if c.isdigit()))


def test_beam_search_keeps_the_best_partial_solutions():
    N, M = 8, 4
    res = beam_search(DigitPolicy(), [ord("x")], _digit_score, budget=N, beam_width=M, select="best")
    hist = res.extra["history"]
    assert [len(h["candidate_scores"]) for h in hist] == [N, N, N]  # N first steps, then N/M beams x M
    for h in hist[:-1]:
        assert h["kept_scores"] == sorted(h["candidate_scores"], reverse=True)[:N // M]
    # tokens: rounds 1-2 "d," (2 tokens), round 3 "d;Axyz" (6 tokens)
    assert res.generated_tokens == N * 2 + N * 2 + N * 6
    assert res.extra["finished"] == len(res.candidates) == N
    assert res.score == max(c.score for c in res.candidates)
    assert res.text.endswith(res.answer) and res.answer == "".join(c for c in res.text.split(";")[0] if c.isdigit())


def test_beam_search_beats_the_policys_own_order():
    # every step of the best beam is the best digit among those proposed to it, so the solution
    # scores at least what the policy's first proposals would
    res = beam_search(DigitPolicy(), [ord("y")], _digit_score, budget=16, beam_width=4)
    gen, ids, text = DigitPolicy(), [ord("y")], ""
    for _ in range(3):
        p = gen.expand(ids, 1, 4)[0]
        ids, text = ids + p.token_ids, text + p.text
    assert res.score >= _digit_score(text, True)
    assert res.score >= 9  # 16 distinct-per-prefix first digits include a 9 at least once


def test_dvts_runs_independent_subtrees():
    res = diverse_verifier_tree_search(DigitPolicy(), [ord("z")], _digit_score, budget=12, beam_width=4)
    assert res.extra["subtrees"] == 3 and len(res.candidates) == 3
    assert res.generated_tokens == 12 * 2 + 12 * 2 + 12 * 6
    for c in res.candidates:
        assert c.score == _digit_score(c.text, True)
        # each subtree kept the best of its 4 proposals at every round
        ids = [ord("z")]
        for d in c.answer:
            offered = [int(p.text[0]) for p in DigitPolicy().expand(ids, 4, 4)]
            assert int(d) == max(offered)
            ids += _encode(f"{d},")
    assert res.score == max(c.score for c in res.candidates)


@pytest.mark.parametrize("kwargs, match", [
    (dict(budget=0), "budget"), (dict(budget=4, beam_width=8), "beam_width"), (dict(budget=4, beam_width=0), "beam_width"),
    (dict(budget=4, select="vote"), "select"), (dict(budget=4, max_tokens=0), "max_tokens"), (dict(budget=True), "budget"),
])
def test_beam_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        beam_search(DigitPolicy(), [1], _digit_score, **kwargs)
    with pytest.raises(ValueError, match=match):
        diverse_verifier_tree_search(DigitPolicy(), [1], _digit_score, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(budget=0), "budget"), (dict(budget=2, num_children=0), "num_children"), (dict(budget=2, value="prm"), "value"),
    (dict(budget=2, c_puct=-1.0), "c_puct"), (dict(budget=2, max_tokens=0), "max_tokens"),
])
def test_mcts_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mcts(DigitPolicy(), [1], _digit_score, **kwargs)


# --- through the engine ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine_and_tok():
    from r1core.engine import Engine
    from r1core.recipes.base_model import BaseModelSpec, build_model, build_tokenizer

    tok = build_tokenizer()
    model = build_model(tok, BaseModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                           num_key_value_heads=1, max_position_embeddings=64), seed=random.randrange(1000))
    return Engine(model, tokenizer=tok, block_size=4, num_blocks=256), tok


def test_engine_step_generator_stops_at_delimiter(engine_and_tok):
    engine, tok = engine_and_tok
    gen = EngineStepGenerator(engine, ",", temperature=1.0, seed=random.randrange(1000))
    assert isinstance(gen, StepGenerator)
    prefix = tok("123+456=T", add_special_tokens=False)["input_ids"]
    props = gen.expand(prefix, 16, 40)
    assert len(props) == 16
    # near-uniform over ~30 tokens: some steps reach the ',' within 40 tokens, some end otherwise
    assert any(not p.finished for p in props)
    eos = tok.eos_token_id
    for p in props:
        assert 1 <= p.num_tokens <= 40
        assert p.text == tok.decode(p.token_ids, skip_special_tokens=True)
        if not p.finished:
            assert p.text.endswith(",") and p.text.count(",") == 1 and eos not in p.token_ids
        else:
            assert not p.text.endswith(",") or p.token_ids[-1] == eos
    # the step's log-prob is the sum of the policy's log-probs of its tokens
    p = props[0]
    with torch.no_grad():
        logits = engine.model(torch.tensor([prefix + p.token_ids])).logits[0, len(prefix) - 1:-1]
    ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(p.token_ids)[:, None]).sum()
    torch.testing.assert_close(torch.tensor(p.logprob), ref, atol=1e-4, rtol=1e-4)
    assert gen.generated_tokens == sum(q.num_tokens for q in props)


def test_engine_step_generator_reuses_the_prefix(engine_and_tok):
    engine, tok = engine_and_tok
    gen = EngineStepGenerator(engine, ",", seed=random.randrange(1000))
    prefix = tok("1,2,3,4,5,6>21:T1+2=3,3+3=6,6+4=10,", add_special_tokens=False)["input_ids"]
    bm = engine.block_manager
    gen.expand(prefix, 4, 8)
    hits = bm.prefix_hits
    gen.expand(prefix + tok("1", add_special_tokens=False)["input_ids"], 4, 8)  # a child's expansion
    assert bm.prefix_hits - hits == len(prefix) // bm.block_size  # the parent's full blocks come from the cache


def test_engine_search_end_to_end(engine_and_tok):
    engine, tok = engine_and_tok
    from r1core.search import ArithmeticVerifier

    prompt = "123+456="
    gen = EngineStepGenerator(engine, ",", seed=random.randrange(1000))
    scorer = verifier_scorer(ArithmeticVerifier(), prompt)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    before = gen.generated_tokens
    r1 = beam_search(gen, ids, scorer, budget=4, beam_width=2, max_steps=4, max_step_tokens=8)
    assert r1.generated_tokens == gen.generated_tokens - before > 0
    r2 = mcts(gen, ids, scorer, budget=4, num_children=3, max_depth=4, max_step_tokens=8, max_rollout_tokens=16)
    r3 = diverse_verifier_tree_search(gen, ids, scorer, budget=4, beam_width=2, max_steps=4, max_step_tokens=8)
    assert gen.generated_tokens - before == r1.generated_tokens + r2.generated_tokens + r3.generated_tokens
    for r in (r1, r2, r3):
        assert r.text is not None and r.generated_tokens > 0


def test_engine_step_generator_bad_input(engine_and_tok):
    engine, _ = engine_and_tok
    with pytest.raises(ValueError, match="delimiter"):
        EngineStepGenerator(engine, "")
    gen = EngineStepGenerator(engine, ",")
    with pytest.raises(ValueError, match="n"):
        gen.expand([5, 6], 0, 4)
    with pytest.raises(ValueError, match="max_step_tokens"):
        gen.expand([5, 6], 2, 0)


def test_drive_many_batches_searches_and_matches_them_alone():
    from r1core.search import beam_search_steps, drive_many, mcts_steps

    class CountingPolicy(DigitPolicy):
        def __init__(self):
            super().__init__()
            self.calls = []

        def serve(self, requests):
            self.calls.append(len(requests))
            return [self.expand(r.prefix_ids, r.n, r.max_tokens) for r in requests]

    prompts = [[ord(c)] for c in "abcd"]
    alone = [beam_search(DigitPolicy(), p, _digit_score, budget=8, beam_width=4) for p in prompts]
    alone += [mcts(DigitPolicy(), p, _digit_score, budget=6, num_children=3) for p in prompts]
    gen = CountingPolicy()
    many = drive_many([beam_search_steps(p, _digit_score, budget=8, beam_width=4) for p in prompts]
                      + [mcts_steps(p, _digit_score, budget=6, num_children=3) for p in prompts], gen)
    key = lambda r: (r.method, r.text, r.score, r.generated_tokens)  # noqa: E731
    assert [key(r) for r in many] == [key(r) for r in alone]
    # one serve per round: beam rounds ask 1 then 2 prefixes per problem, MCTS one per simulation
    assert gen.calls[:3] == [4 + 4, 8 + 4, 8 + 4] and len(gen.calls) == 6


def test_engine_step_generator_finished_flags():
    # an engine stand-in with scripted outputs: what ends a step decides `finished`
    from types import SimpleNamespace

    from r1core.engine.outputs import CompletionOutput, RequestOutput
    from r1core.recipes.base_model import build_tokenizer

    tok = build_tokenizer()
    enc = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    eos = tok.eos_token_id
    scripted = [(enc("1+2=3,"), "stop"), (enc("4+5=9") + [eos], "stop"), (enc("12"), "length"), (enc("7;A17,"), "stop")]
    seen = []

    class Stub:
        tokenizer, max_positions = tok, 64
        stop_checker = SimpleNamespace(eos_token_ids={eos})

        def generate(self, prompts, params):
            seen.append(params)
            return [RequestOutput(0, None, p, [CompletionOutput(i, ids, "", [-0.5] * len(ids), why)
                                               for i, (ids, why) in enumerate(scripted)]) for p in prompts]

    for marker, last in ((None, False), (";A", True)):
        gen = EngineStepGenerator(Stub(), ",", end_marker=marker)
        props = gen.expand(enc("12+5="), 4, 8)
        assert [p.finished for p in props] == [False, True, True, last]
        assert props[0].text == "1+2=3," and props[1].text == "4+5=9"
        assert props[0].logprob == pytest.approx(-0.5 * 6)
        assert seen[-1][0].stop_strings == (",",) and seen[-1][0].n == 4 and seen[-1][0].max_new_tokens == 8
    rolled = gen.rollout(enc("12+5="), 4, 100)
    assert all(p.finished for p in rolled)
    assert seen[-1][0].stop_strings == () and seen[-1][0].max_new_tokens == 64 - len(enc("12+5="))  # room left in the model
    with pytest.raises(ValueError, match="end_marker"):
        EngineStepGenerator(Stub(), ",", end_marker="")


def test_verifier_scorer_finished_modes():
    from r1core.search import ArithmeticVerifier

    ver, prompt = ArithmeticVerifier(), "12+34="
    right_steps_wrong_answer = "T2+4+0=6,1+3+0=4;A47"
    right = "T2+4+0=6,1+3+0=4;A46"
    wrong_step = "T2+4+0=7,1+3+0=4;A46"
    for mode, expect in (("outcome", (0.0, 1.0, 1.0)), ("steps", (1.0, 1.0, 0.0)), ("steps_and_outcome", (0.0, 1.0, 0.0))):
        score = verifier_scorer(ver, prompt, aggregate="min", finished=mode)
        assert tuple(score(t, True) for t in (right_steps_wrong_answer, right, wrong_step)) == expect, mode
        assert score("T2+4+0=6,", False) == 1.0 and score("T2+4+0=5,", False) == 0.0 and score("T", False) == 1.0
    with pytest.raises(ValueError, match="finished"):
        verifier_scorer(ver, prompt, finished="answer")
    with pytest.raises(ValueError, match="aggregate"):
        verifier_scorer(ver, prompt, aggregate="mean")


def test_beam_final_selection_modes():
    best = beam_search(DigitPolicy(), [ord("w")], _digit_score, budget=8, beam_width=4, select="best")
    weighted = beam_search(DigitPolicy(), [ord("w")], _digit_score, budget=8, beam_width=4, select="weighted")
    assert weighted.candidates == best.candidates  # the same search; only the final pick differs
    sums = {}
    for c in weighted.candidates:
        sums[c.answer] = sums.get(c.answer, 0.0) + c.score
    assert weighted.score == max(sums.values()) and sums[weighted.answer] == weighted.score
    majority = beam_search(DigitPolicy(), [ord("w")], _digit_score, budget=8, beam_width=4, select="majority")
    counts = Counter(c.answer for c in majority.candidates)
    assert counts[majority.answer] == max(counts.values())


class RotatingCountdownPolicy(FakeCountdownPolicy):
    """Asked again for the same prefix, proposes its next most probable steps (as a sampler would
    eventually): the first proposal is the greedy dead end."""

    def __init__(self, prompt):
        super().__init__(prompt)
        self.asked = Counter()

    def expand(self, prefix_ids, n, max_step_tokens):
        k = self.asked[tuple(prefix_ids)]
        self.asked[tuple(prefix_ids)] += 1
        return self._ranked(prefix_ids)[k * n:(k + 1) * n] or self._ranked(prefix_ids)[:n]


def test_mcts_expands_a_node_again_when_every_branch_below_ended():
    ver = CountdownVerifier()
    hard = _hard_instances(6)
    solved = {1: 0, 16: 0}
    for r in hard:
        problem = {"numbers": r["numbers"], "target": r["target"]}
        scorer = verifier_scorer(ver, r["prompt"], problem, aggregate="min")
        for max_exp in solved:
            res = mcts(RotatingCountdownPolicy(r["prompt"]), _encode(r["prompt"]), scorer, budget=200, num_children=1,
                       max_expansions=max_exp, stop_score=1.0)
            solved[max_exp] += ver.outcome(r["prompt"], res.text, **problem) == 1.0
    assert solved[1] == 0  # one step per node: the greedy path, a dead end
    assert solved[16] == len(hard)


# --- through engine branches -----------------------------------------------------------------------

def _key(r):
    return (r.method, r.text, r.score, r.generated_tokens, [(c.text, c.score) for c in r.candidates])


def _spy_tokens(engine, monkeypatch):
    """Count the tokens the model runner computes."""
    seen = []
    real = engine.model_runner.run

    def run(batch):
        seen.append(batch.num_tokens)
        return real(batch)

    monkeypatch.setattr(engine.model_runner, "run", run)
    return seen


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("search,keep", [("beam", "tree"), ("beam", "frontier"), ("dvts", "tree"), ("dvts", "frontier"),
                                         ("mcts-verifier", "tree"), ("mcts-rollout", "tree")])
def test_branch_generator_matches_the_engine_generator(engine_and_tok, monkeypatch, search, keep, temperature):
    # greedy: the same steps; sampled: the same seeds draw the same samples, so the same search
    from r1core.search import ArithmeticVerifier, BranchStepGenerator

    engine, tok = engine_and_tok
    prompt = random.choice(["123+456=", "77+05=", "908+099="])
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    scorer = verifier_scorer(ArithmeticVerifier(), prompt)

    def run(gen):
        if search == "beam":
            return beam_search(gen, ids, scorer, budget=4, beam_width=2, max_steps=4, max_step_tokens=8)
        if search == "dvts":
            return diverse_verifier_tree_search(gen, ids, scorer, budget=4, beam_width=2, max_steps=4, max_step_tokens=8)
        return mcts(gen, ids, scorer, budget=6, num_children=3, max_depth=4, max_step_tokens=8, max_rollout_tokens=16,
                    value=search.split("-")[1], max_expansions=2)

    bm = engine.block_manager
    used = bm.num_used_blocks
    seen = _spy_tokens(engine, monkeypatch)
    seed = random.randrange(1000)
    old = run(EngineStepGenerator(engine, ",", temperature=temperature, seed=seed))
    old_computed = sum(seen)
    seen.clear()
    gen = BranchStepGenerator(engine, ",", temperature=temperature, seed=seed, keep=keep)
    held = []
    real_serve = gen.serve

    def serve(requests):
        held.append(gen.num_branches)  # after the pruned nodes' Release notices
        return real_serve(requests)

    gen.serve = serve
    new = run(gen)
    assert _key(new) == _key(old)
    # every branch is released when the search ends
    assert gen.num_branches == 0 and engine.num_open_branches == 0 and bm.num_used_blocks == used
    # the prompt is prefilled once and every node extends its parent's branch: each generated token
    # is computed once (the pending token of a child, then its step's tokens but its last)
    assert gen.opened == 1
    if not search.startswith("mcts"):  # the pruned nodes' branches were released: only the live beams' are held
        assert max(held) <= 2
    assert sum(seen) <= len(ids) - 1 + new.generated_tokens
    # (the old generator computes each expanded prefix's partly filled last block again)
    assert sum(seen) <= old_computed


def test_branch_generator_under_a_small_cache_evicts_and_reopens():
    from r1core.engine import Engine
    from r1core.recipes.base_model import BaseModelSpec, build_model, build_tokenizer
    from r1core.search import ArithmeticVerifier, BranchStepGenerator

    tok = build_tokenizer()
    model = build_model(tok, BaseModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                           num_key_value_heads=1, max_position_embeddings=64), seed=random.randrange(1000))
    big = Engine(model, tokenizer=tok, block_size=4, num_blocks=256)
    small = Engine(model, tokenizer=tok, block_size=4, num_blocks=22)
    prompt = "123+456="
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    scorer = verifier_scorer(ArithmeticVerifier(), prompt)
    kw = dict(budget=16, num_children=3, max_depth=3, max_step_tokens=16, max_rollout_tokens=16, max_expansions=2)
    evicted = reopened = 0
    for seed in random.sample(range(1000), 6):  # searches of random length: some outgrow the cache
        want = mcts(EngineStepGenerator(big, ",", seed=seed), ids, scorer, **kw)
        gen = BranchStepGenerator(small, ",", seed=seed)
        real = gen._evict

        def evict(need, protect, gen=gen, real=real):
            nonlocal evicted
            before = gen.num_branches
            real(need, protect)
            evicted += before - gen.num_branches

        gen._evict = evict
        got = mcts(gen, ids, scorer, **kw)
        assert _key(got) == _key(want)
        assert small.block_manager.num_used_blocks == 0 and small.num_open_branches == 0
        reopened += gen.opened - 1  # evicted nodes expanded again are opened again (from the prefix cache)
    assert evicted > 0 and reopened > 0, "the small cache never needed an eviction"


@pytest.mark.parametrize("num_blocks", [24, 40, 70])
def test_many_rollouts_on_a_small_cache_are_the_big_caches(num_blocks):
    # more rollouts than the free blocks hold at once: the generator runs them in parts, each part
    # forking afresh, and every sample is the one the big cache draws (a rolled-back part once kept
    # a private block per fork and, where a step ran out mid-way, forks whose copies were never made)
    from r1core.engine import Engine
    from r1core.recipes.base_model import BaseModelSpec, build_model, build_tokenizer
    from r1core.search import BranchStepGenerator
    from r1core.search.step_generator import StepRequest, serve

    tok = build_tokenizer()
    model = build_model(tok, BaseModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                           num_key_value_heads=1, max_position_embeddings=64), seed=random.randrange(1000))
    # 7 and 9 tokens: the last block of each prompt partly filled, so its forks copy it on write
    prompts = [tok(f"{random.randrange(10, 100)}+{random.randrange(100, 1000)}=", add_special_tokens=False)["input_ids"]
               for _ in range(2)]
    prompts += [tok(f"{random.randrange(100, 1000)}+{random.randrange(1000, 10000)}=", add_special_tokens=False)["input_ids"]
                for _ in range(2)]
    seed = random.randrange(1000)

    def rollouts(engine):
        with BranchStepGenerator(engine, ",", seed=seed) as gen:
            out = serve(gen, [StepRequest(p, 7, 20, rollout=True) for p in prompts])
        assert engine.block_manager.num_used_blocks == 0
        return [[(s.token_ids, s.text, s.finished) for s in ss] for ss in out]

    want = rollouts(Engine(model, tokenizer=tok, block_size=4, num_blocks=512))
    assert rollouts(Engine(model, tokenizer=tok, block_size=4, num_blocks=num_blocks)) == want


def test_branch_generator_samples_as_the_engine_generator_and_drops_stale_branches(engine_and_tok):
    from r1core.search import BranchStepGenerator

    engine, tok = engine_and_tok
    seed = random.randrange(1000)
    prefix = tok("12+34=T", add_special_tokens=False)["input_ids"]
    old = EngineStepGenerator(engine, ",", seed=seed).expand(prefix, 6, 8)
    with BranchStepGenerator(engine, ",", seed=seed) as gen:
        new = gen.expand(prefix, 6, 8)
        # the same seeds draw the same samples (samples j of the same requests)
        assert [p.token_ids for p in new] == [p.token_ids for p in old]
        for a, b in zip(new, old):
            assert a.text == b.text and a.finished == b.finished and a.logprob == pytest.approx(b.logprob, abs=1e-4)
        kept = gen.num_branches
        assert kept == len({tuple(p.token_ids) for p in new if not p.finished}) + 1  # the root, the open steps
        with torch.no_grad():  # a training step: every branch's KV is stale
            next(engine.model.parameters()).add_(0.0 + 1e-3)
        gen.expand(prefix, 2, 8)
        assert gen.opened == 2
    assert engine.num_open_branches == 0
    with pytest.raises(ValueError, match="keep"):
        BranchStepGenerator(engine, ",", keep="all")
