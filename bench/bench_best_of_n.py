"""Best-of-N at N=16: r1core's engine against transformers' `model.generate`, in one process, on
the same random Qwen2 models and the same prompts.

Both sample N=16 completions for each of P held-out 3-digit addition prompts (temperature 1,
max_new_tokens new tokens, eos ignored so both generate the same number of tokens), then each
prompt's best completion is picked by the exact arithmetic verifier (`r1core.search.select`,
best_of_n). Prompt formats: "scratchpad" (`989+796=`, 9 tokens) and "r1zero" (the R1-Zero
template, ~330 tokens: the case where prefilling a prompt once for its 16 samples matters).
  engine    Engine.generate(P prompts, SamplingParams(n=16)): the prompt prefilled once, forked 16 ways
  generate  model.generate(P prompts, do_sample=True, num_return_sequences=16): one batch of P x 16
Reported: wall time (best of `--repeats`), generated tokens/s, and the ratio generate / engine.

    python bench/bench_best_of_n.py             # models tiny (the default run's) and 5M, both formats
    python bench/bench_best_of_n.py --quick     # tiny model, scratchpad only
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from r1core.engine import Engine, SamplingParams  # noqa: E402
from r1core.recipes.base_model import build_tokenizer  # noqa: E402
from r1core.search import ArithmeticVerifier, select  # noqa: E402
from r1core.tasks import generate  # noqa: E402
from r1core.tasks.tokenizer import encode_prompt  # noqa: E402

MODELS = {
    "tiny": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4),
    "5M": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2),
}


def make_model(name: str, tok):
    cfg = Qwen2Config(**MODELS[name], vocab_size=len(tok), max_position_embeddings=512, tie_word_embeddings=True,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    cfg._attn_implementation = "sdpa"
    return Qwen2ForCausalLM(cfg).eval()


def best_of_n(rows, texts_per_prompt, counts_per_prompt, verifier):
    picks = []
    for row, texts, counts in zip(rows, texts_per_prompt, counts_per_prompt):
        r = select(texts, "best_of_n", token_counts=counts, verifier=verifier, prompt=row["prompt"], problem={"answer": row["answer"]})
        picks.append(r.extra["index"])
    return picks


def run_engine(engine, ids, rows, n, max_new, verifier, seed):
    params = SamplingParams(n=n, temperature=1.0, max_new_tokens=max_new, ignore_eos=True, seed=seed)
    t = time.perf_counter()
    outs = engine.generate(ids, params)
    texts = [[c.text for c in o.outputs] for o in outs]
    counts = [[len(c.token_ids) for c in o.outputs] for o in outs]
    best_of_n(rows, texts, counts, verifier)
    return time.perf_counter() - t, sum(map(sum, counts))


def run_generate(model, tok, ids, rows, n, max_new, verifier, seed):
    torch.manual_seed(seed)
    x = torch.tensor(ids)  # [P, L]: every prompt of a format has the same length, no padding needed
    t = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                             num_return_sequences=n, max_new_tokens=max_new, min_new_tokens=max_new,
                             pad_token_id=tok.pad_token_id)
    new = out[:, x.shape[1]:]  # [P * n, max_new]
    texts = tok.batch_decode(new, skip_special_tokens=True)
    texts = [texts[i * n:(i + 1) * n] for i in range(len(ids))]
    counts = [[new.shape[1]] * n for _ in ids]
    best_of_n(rows, texts, counts, verifier)
    return time.perf_counter() - t, int(new.numel())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    tok = build_tokenizer()
    verifier = ArithmeticVerifier()
    models = ["tiny"] if args.quick else ["tiny", "5M"]
    formats = ["scratchpad"] if args.quick else ["scratchpad", "r1zero"]
    print(f"best-of-N, N={args.n}, {args.prompts} prompts, {args.max_new_tokens} new tokens, threads={args.threads}")
    print(f"{'model':>6} {'format':>10} {'prompt':>6} | {'engine s':>8} {'tok/s':>7} | {'generate s':>10} {'tok/s':>7} | {'ratio':>5}")
    for name in models:
        torch.manual_seed(0)
        model = make_model(name, tok)
        for fmt in formats:
            rows = generate("addition", "test", args.prompts, seed=1, digits=3, fmt=fmt)
            ids = [encode_prompt(tok, r["prompt"]) for r in rows]
            engine = Engine(model, tokenizer=tok, block_size=16, num_blocks=args.prompts * args.n * 40 + 256,
                            enable_prefix_caching=False)  # no help from earlier repeats
            # warm-up at full size: first-call allocations, math-verify's import, the kernels' first runs
            run_engine(engine, ids, rows, args.n, args.max_new_tokens, verifier, 99)
            run_generate(model, tok, ids, rows, args.n, args.max_new_tokens, verifier, 99)
            e = min((run_engine(engine, ids, rows, args.n, args.max_new_tokens, verifier, s) for s in range(args.repeats)),
                    key=lambda r: r[0])
            g = min((run_generate(model, tok, ids, rows, args.n, args.max_new_tokens, verifier, s) for s in range(args.repeats)),
                    key=lambda r: r[0])
            print(f"{name:>6} {fmt:>10} {len(ids[0]):>6} | {e[0]:>8.2f} {e[1] / e[0]:>7.0f} | {g[0]:>10.2f} {g[1] / g[0]:>7.0f} | "
                  f"{g[0] / e[0]:>5.2f}", flush=True)


if __name__ == "__main__":
    main()
