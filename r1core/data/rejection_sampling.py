"""Rejection sampling: n completions per prompt from a model through `r1core.engine`, scored by
reward functions of TRL's signature (the GRPO trainer's, read the same way:
`r1core.trainers.scoring`), the passing ones kept as prompt/completion rows for SFT. DeepSeek-R1's
distillation data is this step run on the teacher; STaR runs it on the student.

A sample passes when its total reward (the weighted sum over the functions; None from every
function: not scorable) is at least `min_reward`. Samples cut off at max_new_tokens
(finish_reason "length") and, with `max_tokens`, completions longer than that are never kept: SFT
would teach the model to stop where it did not; both are counted in the statistics. Of a prompt's
kept candidates the shortest come first (ties in sampling order); `per_prompt` of them are kept,
distinct texts only with `dedupe`.

    data = rejection_sample(teacher, tok, rows, [accuracy_reward], n=8, seed=0)
    data.to_jsonl("distill.jsonl"); print(data.summary)
    SFTTrainer(student, tok, "distill.jsonl", SFTConfig(...)).train()

Samples are seeded per prompt from `seed` and the prompt's index, so the same call gives the same
rows whatever the batching.
"""

from __future__ import annotations

import dataclasses
import math
import os

import torch

from r1core.data.jsonl import write_jsonl
from r1core.tasks.tokenizer import encode_prompt
from r1core.trainers.scoring import func_name, score_completions, total_reward

KEEP = ("correct", "all")  # "all": every sample that stopped by itself, scored but not filtered


class SampledDataset(list):
    """The kept rows ({"prompt", "completion", "reward", "completion_tokens", ...the dataset's other
    columns}), plus `stats` (one dict per prompt: samples, passed, kept, truncated, too_long,
    unscorable) and `summary` (prompts, samples, accepted, acceptance_rate, kept, prompts_kept,
    mean_length)."""

    def __init__(self, rows: list[dict], stats: list[dict], summary: dict):
        super().__init__(rows)
        self.stats = stats
        self.summary = summary

    def to_jsonl(self, path: str | os.PathLike) -> str:
        return write_jsonl(self, path)

    def to_hf(self):
        """The rows as a Hugging Face `datasets.Dataset` (what TRL's trainers take)."""
        from datasets import Dataset

        return Dataset.from_list(list(self))

    def summary_line(self) -> str:
        s = self.summary
        rate = f"{s['acceptance_rate']:.3f}" if s["acceptance_rate"] is not None else "-"
        length = f"{s['mean_length']:.1f}" if s["mean_length"] is not None else "-"
        return (f"prompts {s['prompts']}, samples {s['samples']}, accepted {s['accepted']} (acceptance rate {rate}), "
                f"kept {s['kept']} rows from {s['prompts_kept']} prompts, mean length {length} tokens")


def _check_args(n, keep, per_prompt, min_reward, max_tokens, reward_funcs, reward_weights) -> list:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if keep not in KEEP:
        raise ValueError(f"keep must be one of {KEEP}, got {keep!r}")
    if not isinstance(per_prompt, int) or isinstance(per_prompt, bool) or per_prompt < 1:
        raise ValueError(f"per_prompt must be an int >= 1, got {per_prompt!r}")
    if not isinstance(min_reward, (int, float)) or isinstance(min_reward, bool) or not math.isfinite(min_reward):
        raise ValueError(f"min_reward must be a finite number, got {min_reward!r}")
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise ValueError(f"max_tokens must be None or an int >= 1, got {max_tokens!r}")
    funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
    if not funcs:
        raise ValueError("reward_funcs is empty: rejection sampling needs at least one reward function")
    for i, f in enumerate(funcs):
        if not callable(f):
            raise ValueError(f"reward_funcs[{i}] is not callable: {f!r}")
    if reward_weights is not None and len(reward_weights) != len(funcs):
        raise ValueError(f"reward_weights has {len(reward_weights)} entries for {len(funcs)} reward functions")
    return funcs


def _read_rows(dataset, tokenizer) -> tuple[list[dict], list[list[int]]]:
    rows = list(dataset)
    if not rows:
        raise ValueError("dataset is empty: no prompts to sample")
    ids = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not isinstance(r.get("prompt"), str):
            got = sorted(r) if isinstance(r, dict) else type(r).__name__
            raise ValueError(f"dataset row {i} needs a string 'prompt' column (got {got})")
        p = encode_prompt(tokenizer, r["prompt"])
        if not p:
            raise ValueError(f"dataset row {i}: the prompt {r['prompt']!r} encodes to no tokens")
        ids.append(p)
    return rows, ids


def _pick(samples: list[dict], keep: str, per_prompt: int, dedupe: bool) -> list[dict]:
    """The kept samples of one prompt: eligible ones, shortest first, per_prompt of them."""
    cands = [s for s in samples if s["eligible"] and (keep == "all" or s["passed"])]
    cands.sort(key=lambda s: (len(s["token_ids"]), s["index"]))
    out, seen = [], set()
    for s in cands:
        if dedupe and s["text"] in seen:
            continue
        seen.add(s["text"])
        out.append(s)
        if len(out) == per_prompt:
            break
    return out


def _engine_for(model, tokenizer, prompt_ids, chunk: int, n: int, max_new: int):
    from r1core.engine import Engine

    # a cache sized for one chunk's sequences (the engine's default takes a share of free RAM):
    # whole blocks of 16, one spare per sequence
    per_seq = -(-(max(len(p) for p in prompt_ids) + max_new) // 16) + 1
    return Engine(model, tokenizer=tokenizer, block_size=16, num_blocks=min(chunk, len(prompt_ids)) * n * per_seq + 16)


def rejection_sample(model, tokenizer, dataset, reward_funcs, *, n: int = 8, sampling=None, keep: str = "correct",
                     per_prompt: int = 1, dedupe: bool = True, min_reward: float = 1.0, max_tokens: int | None = None,
                     seed: int = 0, reward_weights: list[float] | None = None, engine=None, chunk_prompts: int = 32,
                     progress: bool = False) -> SampledDataset:
    """Samples n completions per row of dataset (dicts with a 'prompt' and the columns the reward
    functions read), scores them and keeps the passing ones; see the module docstring.

    sampling: an `r1core.engine.SamplingParams` (temperature, max_new_tokens, stop, ...; its n and
    seed are replaced by n and the per-prompt seeds); default temperature 1, 256 new tokens.
    keep: "correct" (total reward >= min_reward) or "all" (no reward filter; rows carry their
    reward). engine: an `Engine` on model to reuse; default one sized for chunk_prompts prompts."""
    from r1core.engine import SamplingParams

    funcs = _check_args(n, keep, per_prompt, min_reward, max_tokens, reward_funcs, reward_weights)
    names = [func_name(f) for f in funcs]
    weights = torch.tensor(reward_weights or [1.0] * len(funcs), dtype=torch.float32)
    sampling = sampling if sampling is not None else SamplingParams(temperature=1.0, max_new_tokens=256)
    if not isinstance(sampling, SamplingParams):
        raise ValueError(f"sampling must be an r1core.engine.SamplingParams, got {type(sampling).__name__}")
    rows, prompt_ids = _read_rows(dataset, tokenizer)
    if engine is None:
        engine = _engine_for(model, tokenizer, prompt_ids, chunk_prompts, n, sampling.max_new_tokens)

    was_training = model.training
    model.eval()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(rows), desc="rejection sampling", unit="prompt", dynamic_ncols=True)
    kept, stats = [], []
    try:
        for start in range(0, len(rows), chunk_prompts):
            idx = range(start, min(start + chunk_prompts, len(rows)))
            params = [dataclasses.replace(sampling, n=n, seed=(seed * 1_000_003 + i * 104_729) % (2**31)) for i in idx]
            outs = engine.generate([prompt_ids[i] for i in idx], params)
            comps = [c for o in outs for c in o.outputs]
            columns = {k: [rows[i][k] for i in idx for _ in range(n)] for k in rows[0] if k != "prompt"}
            rewards = score_completions(funcs, [rows[i]["prompt"] for i in idx for _ in range(n)], [c.text for c in comps],
                                        [c.token_ids for c in comps], columns, names)
            totals = total_reward(rewards, weights).tolist()
            for k, i in enumerate(idx):
                rows_i, stat = _one_prompt(i, rows[i], comps[k * n:(k + 1) * n], totals[k * n:(k + 1) * n], keep, per_prompt,
                                           dedupe, min_reward, max_tokens)
                kept.extend(rows_i)
                stats.append(stat)
            if bar is not None:
                bar.update(len(idx))
                bar.set_postfix(accepted=sum(s["passed"] for s in stats), kept=len(kept))
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    return SampledDataset(kept, stats, _summary(stats, kept))


def _one_prompt(i: int, row: dict, comps, totals, keep, per_prompt, dedupe, min_reward, max_tokens) -> tuple[list[dict], dict]:
    samples = []
    for j, (c, r) in enumerate(zip(comps, totals)):
        truncated = c.finish_reason == "length"
        too_long = max_tokens is not None and len(c.token_ids) > max_tokens
        samples.append({"index": j, "text": c.text, "token_ids": c.token_ids, "reward": None if math.isnan(r) else r,
                        "passed": not math.isnan(r) and r >= min_reward, "eligible": not truncated and not too_long,
                        "truncated": truncated, "too_long": too_long and not truncated})
    picked = _pick(samples, keep, per_prompt, dedupe)
    others = {k: v for k, v in row.items() if k not in ("prompt", "completion", "reward", "completion_tokens")}
    out = [{**others, "prompt": row["prompt"], "completion": s["text"], "reward": s["reward"], "completion_tokens": len(s["token_ids"])}
           for s in picked]
    stat = {"index": i, "samples": len(samples), "passed": sum(s["passed"] for s in samples), "kept": len(out),
            "truncated": sum(s["truncated"] for s in samples), "too_long": sum(s["too_long"] for s in samples),
            "unscorable": sum(s["reward"] is None for s in samples)}
    return out, stat


def _summary(stats: list[dict], kept: list[dict]) -> dict:
    samples = sum(s["samples"] for s in stats)
    accepted = sum(s["passed"] for s in stats)
    return {"prompts": len(stats), "samples": samples, "accepted": accepted,
            "acceptance_rate": accepted / samples if samples else None, "kept": len(kept),
            "prompts_kept": sum(s["kept"] > 0 for s in stats), "truncated": sum(s["truncated"] for s in stats),
            "too_long": sum(s["too_long"] for s in stats), "unscorable": sum(s["unscorable"] for s in stats),
            "mean_length": sum(r["completion_tokens"] for r in kept) / len(kept) if kept else None}


__all__ = ["KEEP", "SampledDataset", "rejection_sample"]
