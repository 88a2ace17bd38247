"""Tree attention in search: the same searches with the same seeds, the switch off and on.

    off  Engine(tree_attention=False), ProcessRewardModel(tree_attention=False): paged attention per
         branch in every step, each candidate step scored by the PRM alone
    on   tree_attention="auto" for both: a step's sibling rows through one tree_attention call where
         the engine's measured rule takes it, and a node's (or a round's) candidates scored by the
         PRM in one forward over their packed tree

The policy is the 30M Qwen2 of bench_engine.py over the task tokenizer's characters (random
weights; a bias on its head makes the step delimiter "," frequent, so steps end and solutions
finish as a trained policy's do); the PRM a randomly initialised reward model on a backbone of the
same shape (a value model the policy's size); one prompt of 512 tokens. Cases:
  beam k       Engine.beam_search, k = 4 and 8 beams, 64 new tokens (policy only)
  mcts b       MCTS over steps (4 children, PRM values), budget b = 16 and 64 simulations
  prm_beam b   PRM-guided beam search over steps (beam width 4, 4 rounds), budget b = 16 and 64
  siblings k   the PRM scoring k = 8 sibling steps of one node (512-token prompt + 3 steps) alone
as `r1core ttc` runs its step searches (BranchStepGenerator, "," steps, ";A" ends a solution). Each
case runs --repeats times per arm, the arms interleaved, the fastest run kept (the machine is
shared); the table gives both times, off/on, and whether the results are the same (the searches'
answers, texts and generated tokens; the beams' hypotheses; the scores to 1e-5).

    python bench/bench_tree_search.py            # 30M policy and PRM, 512-token prompt (~5 min, 2 threads)
    python bench/bench_tree_search.py --quick    # tiny models, 64-token prompt, small budgets (seconds)

Goals (issue 18): off/on >= 1.2x for mcts 64 and prm_beam 64, >= 1.5x for siblings, >= 1.0x (within
noise) everywhere else, "same" everywhere.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from bench_engine import MODELS  # noqa: E402

from r1core.engine import Engine  # noqa: E402
from r1core.recipes.base_model import BaseModelSpec, build_model, build_tokenizer  # noqa: E402
from r1core.search.beam import beam_search_steps  # noqa: E402
from r1core.search.mcts import mcts_steps  # noqa: E402
from r1core.search.reward_models import ProcessRewardModel, RewardModel  # noqa: E402
from r1core.search.step_generator import BranchStepGenerator, drive  # noqa: E402
from r1core.tasks import arithmetic  # noqa: E402
from r1core.tasks.tokenizer import encode_prompt  # noqa: E402

ARMS = {"off": False, "on": "auto"}


def make_policy(tok, shape: dict, seed: int):
    spec = BaseModelSpec(hidden_size=shape["hidden_size"], intermediate_size=shape["intermediate_size"],
                         num_hidden_layers=shape["num_hidden_layers"], num_attention_heads=shape["num_attention_heads"],
                         num_key_value_heads=shape["num_key_value_heads"], max_position_embeddings=1024)
    model = build_model(tok, spec, seed=seed).eval()
    # random logits are near uniform over the 31 characters: steps would rarely end at ",";
    # this bias gives steps of ~8 tokens (p(",") ~ 0.11), and eos (p ~ 0.03) a finished solution
    # every ~5 steps
    head = model.lm_head
    bias = torch.zeros(head.out_features)
    bias[tok.convert_tokens_to_ids(",")] = 1.35
    head.bias = torch.nn.Parameter(bias)
    return model


def make_prm(tok, shape: dict, seed: int):
    """A reward model on a backbone of the policy's shape (random weights, its own seed)."""
    from transformers import Qwen2Config

    cfg = Qwen2Config(vocab_size=len(tok), max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
                      **{k: shape[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                               "num_key_value_heads")})
    cfg._attn_implementation = "sdpa"
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return RewardModel(cfg).eval()


def search_key(r):
    return r.answer, r.text, r.generated_tokens, [c.text for c in r.candidates]


def run_search(policy, prm_model, tok, prompt, ids, arm, kind, budget, cfg):
    engine = Engine(policy, tokenizer=tok, tree_attention=ARMS[arm])
    prm = ProcessRewardModel(prm_model, tok, split=arithmetic.split_completion, separator=",", tree_attention=ARMS[arm])
    scorer = prm.scorer(prompt, "min")
    gen = BranchStepGenerator(engine, ",", end_marker=";A", temperature=1.0, seed=cfg.seed)
    if kind == "mcts":
        # depth 24: 512 + 24 x 16 + 48 tokens stay inside the models' 1024 positions
        co = mcts_steps(ids, scorer, budget=budget, num_children=4, max_depth=24, max_step_tokens=16, max_rollout_tokens=48)
    else:
        co = beam_search_steps(ids, scorer, budget=budget, beam_width=4, max_steps=4, max_step_tokens=16)
    res = drive(co, gen)
    scores = [c.score for c in res.candidates]
    return search_key(res), scores


def run_beams(policy, tok, ids, arm, k, n):
    engine = Engine(policy, tokenizer=tok, tree_attention=ARMS[arm])
    hyps = engine.beam_search(ids, beam_width=k, max_new_tokens=n, num_return_sequences=k)[0].hypotheses
    return [h.token_ids for h in hyps], [h.score for h in hyps]


def run_siblings(prm_model, tok, prompt, parent, kids, arm):
    prm = ProcessRewardModel(prm_model, tok, split=arithmetic.split_completion, separator=",",
                             tree_attention=True if arm == "on" else False)
    with torch.inference_mode():
        scores = prm.completions_scores(prompt, [parent + k for k in kids])
    return None, [x for s in scores for x in s]


def measure(fn, repeats):
    """{arm: (fastest seconds, (key, scores))}, the arms interleaved."""
    best = {}
    for _ in range(repeats):
        for arm in ARMS:
            gc.collect()  # the engines of earlier runs (and their KV caches) go before the clock starts
            t = time.perf_counter()
            out = fn(arm)
            dt = time.perf_counter() - t
            if arm not in best or dt < best[arm][0]:
                best[arm] = (dt, out)
    return best


def same(a, b) -> bool:
    (ka, sa), (kb, sb) = a, b
    return ka == kb and len(sa) == len(sb) and all(abs(x - y) <= 1e-5 for x, y in zip(sa, sb))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny models, 64-token prompt, budgets 4 and 8")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    cfg = ap.parse_args()
    torch.set_num_threads(cfg.threads)
    tok = build_tokenizer()
    if cfg.quick:
        shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
        prompt_len, budgets, beams, new_tokens = 64, (4, 8), (4, 8), 16
    else:
        shape = MODELS["30M"]
        prompt_len, budgets, beams, new_tokens = 512, (16, 64), (4, 8), 64
    policy = make_policy(tok, shape, cfg.seed)
    prm_model = make_prm(tok, shape, cfg.seed + 1)
    prompt = ("123+456=" * prompt_len)[: prompt_len - 1]  # with the bos: prompt_len tokens
    parent = "T123+456=579,T579+1=580,T580+2=582,"  # a node three steps deep, and 8 sibling steps of it
    kids = [f"T582+{i}={582 + i}," for i in range(1, 9)]
    ids = encode_prompt(tok, prompt)
    print(f"policy {sum(p.numel() for p in policy.parameters()) / 1e6:.1f}M, PRM "
          f"{sum(p.numel() for p in prm_model.parameters()) / 1e6:.1f}M params, prompt {len(ids)} tokens, "
          f"{cfg.threads} threads, fastest of {cfg.repeats}")

    for arm in ARMS:  # warm-up: first calls pay for lazy initialisation
        run_beams(policy, tok, ids[:32], arm, 2, 4)
        run_siblings(prm_model, tok, prompt[:32], parent, kids[:2], arm)
    rows = []
    for k in beams:
        rows.append((f"beam {k}", measure(lambda arm, k=k: run_beams(policy, tok, ids, arm, k, new_tokens), cfg.repeats)))
    for kind in ("mcts", "prm_beam"):
        for b in budgets:
            rows.append((f"{kind} {b}", measure(lambda arm, kind=kind, b=b: run_search(policy, prm_model, tok, prompt, ids, arm,
                                                                                     kind, b, cfg), cfg.repeats)))
    rows.append(("siblings 8", measure(lambda arm: run_siblings(prm_model, tok, prompt, parent, kids, arm), cfg.repeats)))

    print(f"\n{'case':<14} {'off s':>9} {'on s':>9} {'off/on':>7}  same")
    for name, best in rows:
        off, on = best["off"], best["on"]
        print(f"{name:<14} {off[0]:>9.3f} {on[0]:>9.3f} {off[0] / on[0]:>6.2f}x  {'yes' if same(off[1], on[1]) else 'NO'}")


if __name__ == "__main__":
    main()
