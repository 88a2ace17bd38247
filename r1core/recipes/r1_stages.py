"""The stages of `r1core r1` (see r1core.recipes.r1), the run that chains them, and the command.

A stage is done when stages/<stage>/entry.json exists (written after its model): `--resume` skips
done stages and resumes the running one from its trainer's last checkpoint; stage 3 keeps its
sampled rows (kept.jsonl) so a resumed stage 3 does not sample again.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time

from r1core.recipes import arms as A
from r1core.recipes.r1 import BUDGETS, R1_STAGES, SHIPPED_BASE, TARGET_SCRIPT, R1Config


# ---- data and models -----------------------------------------------------------------------------
@dataclasses.dataclass
class Problems:
    train: list[dict]  # prompt and answer: the RL stages' prompts
    val: list[dict]  # the base's stopping rule
    held: list[dict]  # every stage's evaluation


def make_problems(cfg: R1Config) -> Problems:
    """Training problems and distinct test-split validation and held-out ones (never trained on)."""
    from r1core.tasks import generate

    def plain(rows):
        return [{"prompt": r["prompt"], "answer": r["answer"]} for r in rows]

    test, seen, draw = [], set(), 0
    while len(test) < cfg.val_size + cfg.eval_size:
        if draw > 20:
            raise ValueError(f"R1Config.eval_size: val_size + eval_size ({cfg.val_size + cfg.eval_size}) exceed the distinct test "
                             f"problems of {cfg.digits} digits")
        for r in generate("addition", "test", 2 * (cfg.val_size + cfg.eval_size), seed=cfg.seed + 1 + draw, digits=cfg.digits):
            if r["prompt"] not in seen and len(test) < cfg.val_size + cfg.eval_size:
                seen.add(r["prompt"])
                test.append(r)
        draw += 1
    train = generate("addition", "train", cfg.train_size, seed=cfg.seed, digits=cfg.digits)
    return Problems(plain(train), plain(test[:cfg.val_size]), plain(test[cfg.val_size:]))


def new_model(cfg: R1Config):
    """(model, tokenizer): a fresh Qwen2 over the two-script alphabet, positions for a prompt and a completion."""
    from r1core.recipes.base_model import BaseModelSpec, build_model
    from r1core.tasks.tokenizer import build_tokenizer
    from r1core.tasks.two_script import TWO_SCRIPT_ALPHABET

    tok = build_tokenizer(TWO_SCRIPT_ALPHABET)
    positions = 16 * -(-(2 * cfg.digits + 2 + max(cfg.grpo.max_completion_length, cfg.length_bound) + 1) // 16)
    return build_model(tok, BaseModelSpec(max_position_embeddings=positions), seed=cfg.seed), tok


def engine_for(cfg: R1Config, model, tok):
    """An engine with KV blocks for two GRPO steps' sequences (a larger evaluation runs in turns)."""
    from r1core.engine import Engine

    per_seq = -(-(2 * cfg.digits + 2 + cfg.grpo.max_completion_length) // 16) + 1
    return Engine(model, tokenizer=tok, num_blocks=2 * cfg.num_prompts * cfg.grpo.num_generations * per_seq + 16)


def load(path: str):
    """(model, tokenizer) of a saved folder. The tokenizer through `load_tokenizer`: AutoTokenizer
    reads a Qwen2 folder's tokenizer as Qwen2's byte-level one, which drops the second script's
    digits when it encodes (the prompts of the non-reasoning rows became "=")."""
    from r1core.tasks.tokenizer import load_tokenizer

    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        raise ValueError(f"R1Config.base_model: {path!r} holds no tokenizer.json (a model over the two-script alphabet, saved "
                         "with its tokenizer, as every stage's model/ is)")
    model, _ = A.load(path)
    return model, load_tokenizer(path)


# ---- evaluation ----------------------------------------------------------------------------------
def evaluate_stage(cfg: R1Config, name: str, model, tok, held: list[dict], train_seconds: float, engine=None) -> dict:
    """The stage's summary entry: held-out pass@1 of eval_samples samples at temperature 1, greedy
    accuracy, format rate and completion tokens (of the samples; greedy's with eval_samples 0), and
    the language consistency: the mean share of target-script digits in the reasoning of those
    completions (those with digits in it)."""
    from r1core.engine import SamplingParams
    from r1core.rewards import accuracy_reward, format_reward
    from r1core.rewards.language import script_consistency_reward
    from r1core.tasks.tokenizer import encode_prompt

    t0 = time.perf_counter()
    model.eval()
    engine = engine or engine_for(cfg, model, tok)
    ids = [encode_prompt(tok, r["prompt"]) for r in held]

    def measure(n: int, temperature: float, seed: int) -> dict:
        params = [SamplingParams(n=n, temperature=temperature, max_new_tokens=cfg.grpo.max_completion_length, seed=seed + i)
                  for i in range(len(held))]
        comps = [c for o in engine.generate(ids, params) for c in o.outputs]
        texts, answers = [c.text for c in comps], [r["answer"] for r in held for _ in range(n)]
        shares = [s for s in script_consistency_reward(None, texts, script=TARGET_SCRIPT) if s is not None]
        return {"accuracy": _mean(accuracy_reward(None, texts, answer=answers)), "format_rate": _mean(format_reward(None, texts)),
                "tokens": _mean([len(c.token_ids) for c in comps]), "language": _mean(shares) if shares else None}

    greedy = measure(1, 0.0, 0)
    sampled = measure(cfg.eval_samples, 1.0, (cfg.seed + 17) * 1_000_003) if cfg.eval_samples else None
    main = sampled or greedy
    return {"name": name, "accuracy": sampled["accuracy"] if sampled else None, "greedy_accuracy": greedy["accuracy"],
            "format_rate": main["format_rate"], "mean_completion_tokens": main["tokens"],
            "seconds": train_seconds + time.perf_counter() - t0, "language_consistency": main["language"],
            "greedy_language_consistency": greedy["language"], "greedy_format_rate": greedy["format_rate"],
            "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - t0}


def _mean(xs) -> float:
    xs = [float(x or 0.0) for x in xs]
    return sum(xs) / len(xs) if xs else 0.0


# ---- the stages ----------------------------------------------------------------------------------
def _resume_flag(resume: bool, out: str):
    return True if resume and A.has_checkpoint(out) else None


def base_path(cfg: R1Config) -> str:
    """The base model's folder: this run's own (stages/base/model, base_model train), the shipped one or base_model DIR."""
    if cfg.base_model == "train":
        return A.stage_model(cfg.run_dir, "base")
    return SHIPPED_BASE if cfg.base_model == "shipped" else cfg.base_model


def base_stage(cfg: R1Config, problems: Problems, resume: bool) -> dict:
    """Stage 0, the base: loaded (shipped or a folder), or with base_model train pretrained on
    mixed-script reasoning until its greedy validation accuracy reaches base_target_accuracy
    (stages/base/model); its held-out evaluation."""
    if cfg.base_model != "train":
        model, tok = load(base_path(cfg))
        entry = evaluate_stage(cfg, "base", model, tok, problems.held, 0.0)
        entry.update(train_steps=0, base_model=os.path.relpath(base_path(cfg)))
        A.finish_stage(cfg.run_dir, entry)
        return entry
    model, tok, trainer, engine = pretrain_base(cfg, problems, resume)
    entry = evaluate_stage(cfg, "base", model, tok, problems.held, trainer.elapsed, engine=engine)
    entry.update(train_steps=trainer.global_step, base_model="trained by this run (stages/base/model)", mix=cfg.mix)
    A.finish_stage(cfg.run_dir, entry, model, tok)
    return entry


def pretrain_base(cfg: R1Config, problems: Problems, resume: bool):
    """A fresh model SFT'd (cfg.base) on mixed-script reasoning, stopped at base_target_accuracy;
    (model, tokenizer, trainer, engine)."""
    from r1core.recipes.evaluate import evaluate
    from r1core.rewards import accuracy_reward
    from r1core.tasks.two_script import mixed_rows
    from r1core.trainers import SFTTrainer

    model, tok = new_model(cfg)
    engine = engine_for(cfg, model, tok)
    rows = mixed_rows(cfg.train_size, "train", cfg.seed + 1000, digits=cfg.digits, mix=cfg.mix)
    trainer = SFTTrainer(model, tok, rows, cfg.base)
    trainer.metrics_file = "metrics.jsonl"

    def check(step):
        model.eval()
        r = evaluate(engine, tok, problems.val, reward_func=accuracy_reward, samples=0, max_new_tokens=cfg.grpo.max_completion_length)
        return {"greedy_accuracy": r["greedy_accuracy"]}

    trainer.train(callback=check, every=cfg.base.logging_steps, progress=cfg.progress,
                  stop=lambda rec: rec["greedy_accuracy"] >= cfg.base_target_accuracy,
                  resume_from_checkpoint=_resume_flag(resume, cfg.base.output_dir))
    engine.weights_updated()
    return model, tok, trainer, engine


def sft_stage(cfg: R1Config, name: str, start: str, rows: list[dict], epochs: float, seconds: float, resume: bool):
    """SFT of the model in `start` on rows for `epochs` passes (at least one step) within `seconds`;
    (model, tokenizer, trainer)."""
    from r1core.trainers import SFTTrainer

    model, tok = load(start)
    steps = max(1, math.ceil(epochs * len(rows) / cfg.sft.per_device_train_batch_size))
    out = A.stage_dir(cfg.run_dir, name)
    sft = dataclasses.replace(cfg.sft, output_dir=out, max_steps=min(steps, cfg.sft.max_steps), max_seconds=seconds)
    trainer = SFTTrainer(model, tok, rows, sft)
    trainer.metrics_file = "metrics.jsonl"
    trainer.train(progress=cfg.progress, resume_from_checkpoint=_resume_flag(resume, out))
    return model, tok, trainer


def grpo_stage(cfg: R1Config, name: str, start: str, reward_funcs: list, seconds: float, problems: Problems, resume: bool) -> dict:
    """GRPO of the model in `start` with reward_funcs (summed) for `seconds`; its summary entry."""
    from r1core.trainers import GRPOTrainer

    model, tok = load(start)
    out = A.stage_dir(cfg.run_dir, name)
    engine = engine_for(cfg, model, tok)
    grpo = dataclasses.replace(cfg.grpo, output_dir=out, max_seconds=seconds)
    trainer = GRPOTrainer(model, tok, reward_funcs, problems.train, grpo, engine=engine)
    trainer.train(resume_from_checkpoint=_resume_flag(resume, out), progress=cfg.progress)
    engine.weights_updated()
    entry = evaluate_stage(cfg, name, model, tok, problems.held, trainer.elapsed, engine=engine)
    entry.update(train_steps=trainer.global_step, policy_collapsed=trainer.collapsed)
    A.finish_stage(cfg.run_dir, entry, model, tok)
    return entry


def r1_rewards(cfg: R1Config, length_penalty: bool = False) -> list:
    """Stage 2's rewards (accuracy, format, language consistency), stage 4's with the length penalty too."""
    from r1core.rewards import accuracy_reward, format_reward
    from r1core.rewards.language import script_consistency_reward
    from r1core.rewards.length import length_penalty as penalty

    funcs = [accuracy_reward, format_reward, script_consistency_reward]
    return funcs + [penalty(cfg.length_bound)] if length_penalty else funcs


def readable_samples(cfg: R1Config, model, tok, prompts: list[dict], engine=None):
    """Stage 3's rejection sampling: the samples that are correct, well formatted and all in the
    target script (each reward 1, so their sum is 3), at most length_bound tokens, one per problem
    (the shortest); an `r1core.data.SampledDataset`."""
    from r1core.data import rejection_sample
    from r1core.engine import SamplingParams

    sampling = SamplingParams(temperature=1.0, max_new_tokens=cfg.grpo.max_completion_length)
    funcs = r1_rewards(cfg)
    return rejection_sample(model, tok, prompts, funcs, n=cfg.rejection_samples, sampling=sampling, min_reward=float(len(funcs)),
                            max_tokens=cfg.length_bound, per_prompt=1, seed=cfg.seed * 7_919 + 3, engine=engine,
                            progress=cfg.progress)


def rejection_sft_stage(cfg: R1Config, problems: Problems, resume: bool) -> dict:
    """Stage 3: rejection sampling from stage 2 (kept in stages/rejection_sft/kept.jsonl), mixed
    with non-reasoning rows, then SFT from the base."""
    from r1core.data import read_jsonl, write_jsonl
    from r1core.tasks.two_script import translation_rows

    out = A.stage_dir(cfg.run_dir, "rejection_sft")
    kept_path, stats_path = os.path.join(out, "kept.jsonl"), os.path.join(out, "sampling.json")
    if resume and os.path.exists(stats_path):
        kept = read_jsonl(kept_path)
        with open(stats_path) as f:
            stats = json.load(f)
    else:
        t0 = time.perf_counter()
        model, tok = load(A.stage_model(cfg.run_dir, "reasoning_rl"))
        drawn = problems.train[:cfg.rejection_prompts]
        data = readable_samples(cfg, model, tok, drawn)
        kept = [{"prompt": r["prompt"], "solution": r["completion"]} for r in data]
        stats = {**data.summary, "sampling_seconds": time.perf_counter() - t0}
        os.makedirs(out, exist_ok=True)
        write_jsonl(kept, kept_path)
        with open(stats_path, "w") as f:
            json.dump(stats, f)
    f = cfg.non_reasoning_fraction
    extra = max(1, round(f / (1 - f) * len(kept))) if f > 0 else 0
    rows = kept + [{"prompt": r["prompt"], "solution": r["solution"]} for r in translation_rows(extra, cfg.seed, digits=cfg.digits)]
    if not rows:
        raise ValueError("R1Config.non_reasoning_fraction: stage 3 kept no sample and has no non-reasoning rows to train on")
    model, tok, trainer = sft_stage(cfg, "rejection_sft", base_path(cfg), rows, cfg.rejection_epochs,
                                    cfg.rejection_sft_seconds, resume)
    train_seconds = stats["sampling_seconds"] + trainer.elapsed
    entry = evaluate_stage(cfg, "rejection_sft", model, tok, problems.held, train_seconds)
    entry.update(train_steps=trainer.global_step, kept_rows=len(kept), non_reasoning_rows=extra,
                 acceptance_rate=stats["acceptance_rate"], sampled=stats["samples"], sampling_seconds=stats["sampling_seconds"])
    A.finish_stage(cfg.run_dir, entry, model, tok)
    return entry


def cold_start_stage(cfg: R1Config, problems: Problems, resume: bool) -> dict:
    """Stage 1: SFT of the base on cold_start_size readable (single-script) gold examples."""
    from r1core.tasks.two_script import latin_rows

    rows = [{"prompt": r["prompt"], "solution": r["solution"]}
            for r in latin_rows(cfg.cold_start_size, "train", cfg.seed + 2000, digits=cfg.digits)]
    model, tok, trainer = sft_stage(cfg, "cold_start", base_path(cfg), rows, cfg.cold_start_epochs,
                                    cfg.cold_start_seconds, resume)
    entry = evaluate_stage(cfg, "cold_start", model, tok, problems.held, trainer.elapsed)
    entry.update(train_steps=trainer.global_step, train_rows=len(rows))
    A.finish_stage(cfg.run_dir, entry, model, tok)
    return entry


def run_stage(cfg: R1Config, name: str, problems: Problems, done: list[dict], resume: bool) -> dict:
    """One of STAGES; `done`: the entries before it (r1_zero's budget is the R1 stages' training seconds)."""
    from r1core.rewards import accuracy_reward, format_reward

    if name == "cold_start":
        return cold_start_stage(cfg, problems, resume)
    if name == "reasoning_rl":
        return grpo_stage(cfg, name, A.stage_model(cfg.run_dir, "cold_start"), r1_rewards(cfg), cfg.reasoning_seconds, problems, resume)
    if name == "rejection_sft":
        return rejection_sft_stage(cfg, problems, resume)
    if name == "final_rl":
        return grpo_stage(cfg, name, A.stage_model(cfg.run_dir, "rejection_sft"), r1_rewards(cfg, length_penalty=True),
                          cfg.final_seconds, problems, resume)
    entry = grpo_stage(cfg, name, base_path(cfg), [accuracy_reward, format_reward], zero_budget(cfg, done),
                       problems, resume)
    return entry


def zero_budget(cfg: R1Config, done: list[dict]) -> float:
    """R1-Zero's seconds: what the R1 stages of this run spent training (their sampling included), or
    the sum of their budgets when none ran."""
    spent = [e["train_seconds"] for e in done if e["name"] in R1_STAGES]
    return sum(spent) if spent else sum(getattr(cfg, b) for b in BUDGETS.values())


# ---- the run -------------------------------------------------------------------------------------
def run_r1(cfg: R1Config, resume: bool = False) -> dict:
    """The base, the stages of cfg.stages, the report; returns the summary (runs/<name>/summary.json)."""
    t0 = A.begin_run(cfg, resume)
    problems = make_problems(cfg)
    entries: list[dict] = []

    def one(name: str) -> dict:
        return base_stage(cfg, problems, resume) if name == "base" else run_stage(cfg, name, problems, entries, resume)

    for entry in A.each_stage(cfg.run_dir, ["base", *cfg.stages], resume, one):
        entries.append(entry)
    return A.finish_run(cfg, "stages", entries, t0, "DeepSeek-R1 stages vs R1-Zero on two-script addition (held-out)",
                        {"reward": ["reward", "accuracy", "completion_length", "grad_norm"], "loss": ["loss", "grad_norm"]},
                        extra=("language_consistency",), seed=cfg.seed, base_model=base_path(cfg), eval_prompts=len(problems.held),
                        eval_samples=cfg.eval_samples, target_script=TARGET_SCRIPT, r1_zero_budget_seconds=zero_budget(cfg, entries))


__all__ = ["Problems", "make_problems", "evaluate_stage", "readable_samples", "run_stage", "run_r1", "base_path"]
