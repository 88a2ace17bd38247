"""Tree attention in the engine's step (a request's rows in one `r1kernels.tree_attention` call) and
sibling-step scoring over a packed tree: the same results as paged attention and as scoring each
sequence alone, on Llama and Qwen2."""

import random

import pytest
import torch
from _engine_models import char_tokenizer, random_prompts, tiny_model

from r1core.engine import Engine, SamplingParams
from r1core.engine.tree_forward import pack_tree, tree_hidden_states
from r1core.search import ArithmeticVerifier, BranchStepGenerator
from r1core.search.beam import beam_search, diverse_verifier_tree_search
from r1core.search.mcts import mcts
from r1core.search.reward_models import ProcessRewardModel, build_reward_model, predict, predict_tree
from r1core.search.scoring import Partial, score_partials, verifier_scorer
from r1core.tasks import arithmetic

ARCHS = ["llama", "qwen2"]


@pytest.fixture(scope="module", params=ARCHS)
def model(request):
    torch.manual_seed(random.randrange(1000))
    return tiny_model(request.param)


def _engines(model, tok=None):
    return {t: Engine(model, tokenizer=tok, block_size=8, num_blocks=400, tree_attention=t) for t in (False, True)}


def test_switch_bad_value():
    with pytest.raises(ValueError, match="tree_attention"):
        Engine(tiny_model("qwen2"), block_size=8, num_blocks=16, tree_attention="yes")


def test_beam_search_same_with_the_switch_on_and_off(model):
    prompts = random_prompts([37, 20])
    outs, steps = {}, {}
    for t, engine in _engines(model).items():
        outs[t] = engine.beam_search(prompts, beam_width=4, max_new_tokens=12, num_return_sequences=4)
        steps[t] = engine.model_runner.num_tree_steps
    assert steps[False] == 0 and steps[True] >= 10  # every decode step of the beams went through the tree
    for a, b in zip(outs[False], outs[True]):
        assert [h.token_ids for h in a.hypotheses] == [h.token_ids for h in b.hypotheses]
        assert [h.score for h in a.hypotheses] == pytest.approx([h.score for h in b.hypotheses], abs=1e-5)


def test_samples_and_branches_same_with_the_switch_on_and_off(model):
    prompts = random_prompts([30, 45])
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=10, seed=3, logprobs=True)
    res = {}
    for t, engine in _engines(model).items():
        outs = engine.generate(prompts, params)
        root = engine.open_branch(prompts[0])
        kids = engine.fork_branch(root, 3)
        engine.extend(kids, SamplingParams(temperature=1.0, max_new_tokens=6, seed=4))
        grand = [g for k in kids for g in engine.fork_branch(k, 2)]  # rows that diverged: own cached tokens
        steps = engine.extend(grand, SamplingParams(temperature=1.0, max_new_tokens=6, seed=5, logprobs=True))
        res[t] = outs, steps, engine.model_runner.num_tree_steps
    (o0, s0, n0), (o1, s1, n1) = res[False], res[True]
    assert n0 == 0 and n1 > 0
    for a, b in zip(o0, o1):
        assert [c.token_ids for c in a.outputs] == [c.token_ids for c in b.outputs]
        for x, y in zip(a.outputs, b.outputs):
            assert x.logprobs == pytest.approx(y.logprobs, abs=1e-4)
    assert [s.token_ids for s in s0] == [s.token_ids for s in s1]
    assert [s.logprobs for s in s0] == [pytest.approx(s.logprobs, abs=1e-4) for s in s1]


def _siblings_logits(engine, prompt, n, k):
    """n forks of a resident prompt, each with its own k pending tokens, computed in one step."""
    root = engine.add_resident(prompt)
    engine.forward([root])
    kids = engine.fork_resident(root, n)
    for i, s in enumerate(kids):
        s.token_ids += [(7 * i + j) % 100 + 2 for j in range(k)]
    logits = engine.forward(kids)
    for s in [root, *kids]:
        engine.release_resident(s)
    return logits


def test_auto_takes_the_tree_for_sibling_steps_on_a_long_prefix(model):
    prompt = random_prompts([150])[0]
    want = _siblings_logits(Engine(model, block_size=8, num_blocks=400, tree_attention=False), prompt, 8, 4)
    engine = Engine(model, block_size=8, num_blocks=400)  # "auto"
    got = _siblings_logits(engine, prompt, 8, 4)  # 7 x 151 prefix tokens read once, 4 tokens each
    assert engine.model_runner.num_tree_steps == 1
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # two siblings of one token on a short prefix: not worth the tree (measured), paged attention
    _siblings_logits(engine, prompt[:40], 2, 1)
    engine.generate([prompt[:20]], SamplingParams(n=4, max_new_tokens=4))  # diverged samples: cascade or paged
    assert engine.model_runner.num_tree_steps == 1


def _searches(engine, tok, prm, prompt):
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    exact = verifier_scorer(ArithmeticVerifier(), prompt)
    results = []
    with BranchStepGenerator(engine, ",", temperature=1.0, seed=11) as gen:
        results.append(mcts(gen, ids, exact, budget=6, num_children=3, max_depth=4, max_step_tokens=8,
                            max_rollout_tokens=16, value="rollout", max_expansions=2))
    with BranchStepGenerator(engine, ",", temperature=1.0, seed=12, keep="frontier") as gen:
        results.append(beam_search(gen, ids, prm.scorer(prompt, "min"), budget=6, beam_width=3, max_steps=4,
                                   max_step_tokens=8))
    with BranchStepGenerator(engine, ",", temperature=1.0, seed=14, keep="frontier") as gen:
        results.append(diverse_verifier_tree_search(gen, ids, prm.scorer(prompt, "product"), budget=6, beam_width=3,
                                                    max_steps=4, max_step_tokens=8))
    with BranchStepGenerator(engine, ",", temperature=1.0, seed=13) as gen:
        results.append(mcts(gen, ids, prm.scorer(prompt, "last"), budget=6, num_children=3, max_depth=4,
                            max_step_tokens=8, max_rollout_tokens=16, max_expansions=2))
    return results


def test_mcts_prm_beam_search_and_dvts_same_with_the_switch_on_and_off(model):
    tok = char_tokenizer()
    prompt = random.choice(["123+456=", "77+05=", "908+099="]) * 4
    reward = build_reward_model(tok, hidden_size=32, num_layers=2, num_heads=2, seed=random.randrange(1000))
    res = {}
    for t, engine in _engines(model, tok).items():
        prm = ProcessRewardModel(reward, tok, split=arithmetic.split_completion, separator=",", tree_attention=t)
        res[t] = _searches(engine, tok, prm, prompt), engine.model_runner.num_tree_steps
    (r0, n0), (r1, n1) = res[False], res[True]
    assert n0 == 0 and n1 > 0
    for a, b in zip(r0, r1):
        assert (a.answer, a.text, a.generated_tokens) == (b.answer, b.text, b.generated_tokens)
        assert [c.text for c in a.candidates] == [c.text for c in b.candidates]
        assert [c.score for c in a.candidates] == pytest.approx([c.score for c in b.candidates], abs=1e-5)


def test_pack_tree_shares_the_prefix_and_repeated_tokens():
    tree = pack_tree([[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 3], [1, 2, 3, 4, 7]])
    assert tree.prefix == [1, 2, 3]
    assert tree.node_ids == [4, 5, 6, 7] and tree.parents == [-1, -1, 1, 0] and tree.depths == [0, 0, 1, 1]
    assert tree.rows == [[0, 1, 2, 3], [0, 1, 2, 4, 5], [0, 1, 2], [0, 1, 2, 3, 6]]
    assert pack_tree([[5], [6, 7]]).prefix == []
    with pytest.raises(ValueError, match="seqs"):
        pack_tree([])


def test_tree_hidden_states_equal_each_sequence_alone(model):
    prefix = random_prompts([29])[0]
    seqs = [prefix + [5, 6, 7], prefix + [5, 6, 9, 10], prefix + [11], prefix, [3, 4] + prefix]
    for group in (seqs[:4], seqs):  # a shared prefix; none (the trie from the first token)
        hidden = tree_hidden_states(model.model, group)
        with torch.no_grad():
            for s, h in zip(group, hidden):
                torch.testing.assert_close(h, model.model(torch.tensor([s])).last_hidden_state[0], atol=1e-5, rtol=1e-5)


def test_sibling_step_scoring_equals_scoring_each_alone():
    tok = char_tokenizer()
    reward = build_reward_model(tok, hidden_size=32, num_layers=2, num_heads=2, seed=random.randrange(1000))
    prompt = "12+34=" * 6
    parent = "T2+4=6,"
    kids = [parent + s for s in ("1+3=4,", "1+3=5,", "1+2=3;A46", "")]
    want = predict(reward, tok, prompt, kids, "prm")
    torch.testing.assert_close(torch.tensor([x for s in predict_tree(reward, tok, prompt, kids, "prm") for x in s]),
                               torch.tensor([x for s in want for x in s]), atol=1e-5, rtol=1e-5)
    scorers = {t: ProcessRewardModel(reward, tok, split=arithmetic.split_completion, separator=",", tree_attention=t)
               .scorer(prompt, "min") for t in (False, True, "auto")}
    partials = [Partial(steps=[k], finished=i == 2) for i, k in enumerate(kids)]
    alone = [scorers[False](p.text, p.finished) for p in partials]
    for t, sc in scorers.items():
        assert score_partials(sc, partials) == pytest.approx(alone, abs=1e-5), t
    # a scorer's cache: a step the candidates share scores the very same in every later call (ties stay ties)
    prm = ProcessRewardModel(reward, tok, split=arithmetic.split_completion, separator=",")
    cache = {}
    (first,) = prm.completions_scores(prompt, [parent], cache)
    later = prm.completions_scores(prompt, kids, cache)
    assert all(s[0] == first[0] for s in later[:3]) and later[3] == first
    with pytest.raises(ValueError, match="tree_attention"):
        ProcessRewardModel(reward, tok, split=arithmetic.split_completion, tree_attention=1)


def test_ttc_flag_sets_the_switch(tmp_path, monkeypatch):
    from r1core.recipes.cli import main
    from r1core.recipes.ttc import TTCConfig

    seen = []
    real = Engine.__init__

    def init(self, *args, **kwargs):
        seen.append(kwargs.get("tree_attention", "auto"))
        real(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "__init__", init)
    for word, value in (("off", False), ("on", True)):
        assert main(["ttc", "--model", "tiny", "--runs-dir", str(tmp_path), "--name", word, "--num-problems", "1",
                     "--budgets", "2", "--methods", "beam_search", "--max-new-tokens", "8", "--no-progress",
                     "--tree-attention", word]) == 0
        assert seen[-1] is value
    with pytest.raises(ValueError, match="tree_attention"):
        TTCConfig(tree_attention="yes")
