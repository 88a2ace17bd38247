"""Held-out evaluation through the engine: pass@1 of samples at a temperature (the quantity RL
optimises: the mean correctness over `samples` completions per prompt), greedy accuracy, format
rate and mean completion length."""

from __future__ import annotations

import time

from r1core.tasks.tokenizer import encode_prompt


def evaluate(engine, tokenizer, rows: list[dict], *, reward_func, format_func=None, samples: int = 4,
             temperature: float = 1.0, max_new_tokens: int = 64, seed: int = 0, greedy: bool = True, stop=None) -> dict:
    """Metrics over rows (dicts with `prompt` and the reward's columns), fractions in [0, 1]."""
    from r1core.engine import SamplingParams

    if not rows:
        raise ValueError("evaluate: rows is empty")
    t0 = time.perf_counter()
    ids = [encode_prompt(tokenizer, r["prompt"]) for r in rows]
    columns = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"}
    prompts = [r["prompt"] for r in rows]
    out: dict = {"eval_prompts": len(rows)}

    def score(texts, reps):
        cols = {k: [v for v in vals for _ in range(reps)] for k, vals in columns.items()}
        ps = [p for p in prompts for _ in range(reps)]
        acc = [1.0 if (v or 0.0) >= 1.0 else 0.0 for v in reward_func(ps, texts, **cols)]
        fmt = [float(v or 0.0) for v in format_func(ps, texts, **cols)] if format_func is not None else None
        return acc, fmt

    if samples > 0:
        params = [SamplingParams(n=samples, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed * 1_000_003 + i, stop=stop)
                  for i in range(len(rows))]
        comps = [c for o in engine.generate(ids, params) for c in o.outputs]
        acc, fmt = score([c.text for c in comps], samples)
        out["accuracy"] = sum(acc) / len(acc)
        if fmt is not None:
            out["format_rate"] = sum(fmt) / len(fmt)
        out["completion_length"] = sum(len(c.token_ids) for c in comps) / len(comps)
    if greedy:
        comps = [o.outputs[0] for o in engine.generate(ids, SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens, stop=stop))]
        acc, fmt = score([c.text for c in comps], 1)
        out["greedy_accuracy"] = sum(acc) / len(acc)
        if fmt is not None:
            out["greedy_format_rate"] = sum(fmt) / len(fmt)
        out["greedy_completion_length"] = sum(len(c.token_ids) for c in comps) / len(comps)
    out["eval_seconds"] = time.perf_counter() - t0
    return out
