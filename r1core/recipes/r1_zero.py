"""The default run (`r1core run`, `make run`): a tiny R1-Zero on this CPU in minutes.

1. The base model: a ~1M-parameter Qwen2 over the character tokenizer, pretrained by SFT on
   zero-padded 3-digit addition with the scratchpad (`989+796=` -> `T9+6+0=15,8+9+1=18,9+7+1=17;A1785`,
   batch 64, lr 2e-3) only until greedy accuracy on 128 validation prompts reaches 0.40 (checked
   every 10 steps). By default the one shipped in the repository (r1core/recipes/assets/
   addition3-base: this recipe with seed 0, 210 steps, 77 s; provenance.json says how it was made),
   so all of the run's budget goes to RL. `--base-model train` runs the SFT at the start instead
   (about 80-100 s of the budget, a base of the run's own seed); `--base-model DIR` takes a saved one.
   Why shipped: bases of the same recipe differ a lot in how fast GRPO improves them (seed 1's own
   base: greedy 0.64-0.72 after 350 GRPO steps in every setting tried, seed 0's: 0.96 after 347).
2. Held-out evaluation: pass@1 of samples at temperature 1 and greedy accuracy.
3. R1-Zero-style GRPO: 16 prompts x 8 samples per step, temperature 1, binary correctness reward
   (math-verify on the answer after `A`), token-level clipped loss (dapo, epsilon 0.2), no KL,
   AdamW lr 1.5e-4 after 10 warmup steps, decaying linearly to 0 over GRPO's time budget (constant
   lr 2e-4 and above collapsed the policy in 20-140 steps here; the decay settles the greedy path
   at the end), a time budget: GRPO
   gets what is left of 450 s for the whole run (at most 430 s) after SFT and the base
   evaluation, less a reserve for the final evaluation, so the run ends within 8 minutes.
4. Held-out evaluation again; a table on the terminal; in runs/<name>/: metrics.jsonl,
   sft/sft_metrics.jsonl (when the run trains its base), PNG plots, summary.json, the base and
   final models.

The seed picks the training and held-out problems (the held-out ones never in any train split),
the samples and, with `--base-model train`, the base model's initialisation and SFT.

`--resume` continues a killed run where it stopped: inside SFT from the last SFT checkpoint
(sft/checkpoint-N, every sft_save_steps), after it from the saved base model and its evaluation,
inside GRPO from the last GRPO checkpoint (every save_steps). Both stages' time budgets count the
seconds spent before the kill.

    r1core run                              # defaults, seed 0, the shipped base
    r1core run --seed 1 --name s1           # another seed
    r1core run --base-model train --name own   # SFT a base of the run's own first
    r1core run --help
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass

import torch


SHIPPED_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "addition3-base")


@dataclass
class RunConfig:
    name: str = "r1-zero"
    runs_dir: str = "runs"
    seed: int = 0
    digits: int = 3
    train_size: int = 20000
    val_size: int = 128  # validation prompts for the SFT stopping rule (disjoint from eval)
    eval_size: int = 256  # held-out prompts for base and final accuracy
    eval_samples: int = 4  # samples per held-out prompt for pass@1 at temperature 1
    base_model: str = "shipped"  # "shipped" (SHIPPED_BASE), "train" (SFT at the start) or a saved model folder
    # SFT of the base model
    sft_learning_rate: float = 2e-3
    sft_batch_size: int = 64
    sft_target_accuracy: float = 0.40
    sft_check_every: int = 10
    sft_max_steps: int = 3000
    sft_max_seconds: float = 240.0
    sft_save_steps: int | None = 50  # SFT checkpoints (runs/<name>/sft/checkpoint-N) for --resume; None: none
    # GRPO
    num_prompts: int = 16
    num_generations: int = 8
    learning_rate: float = 1.5e-4
    lr_scheduler_type: str = "linear"  # decays to 0 over GRPO's time budget (or max_steps, whichever ends first)
    warmup_steps: int = 10
    epsilon: float = 0.2
    beta: float = 0.0
    temperature: float = 1.0
    loss_type: str = "dapo"
    max_completion_length: int = 48
    max_steps: int = 10000
    max_seconds: float = 430.0  # GRPO's own cap ...
    total_seconds: float | None = 450.0  # ... and the whole run's: GRPO stops early enough for the final evaluation
    save_steps: int | None = None
    threads: int = 2
    progress: bool = True

    def __post_init__(self):
        for name in ("digits", "train_size", "val_size", "eval_size", "sft_batch_size", "sft_check_every", "sft_max_steps",
                     "num_prompts", "num_generations", "max_completion_length", "max_steps", "threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"RunConfig.{name} must be an int >= 1, got {v!r}")
        if not 0 <= self.sft_target_accuracy <= 1:
            raise ValueError(f"RunConfig.sft_target_accuracy must be in [0, 1], got {self.sft_target_accuracy!r}")
        if self.eval_samples < 0:
            raise ValueError(f"RunConfig.eval_samples must be >= 0, got {self.eval_samples!r}")
        for name in ("sft_max_seconds", "max_seconds", "learning_rate", "sft_learning_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"RunConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.sft_save_steps is not None and (isinstance(self.sft_save_steps, bool) or not isinstance(self.sft_save_steps, int)
                                                or self.sft_save_steps < 1):
            raise ValueError(f"RunConfig.sft_save_steps must be None or an int >= 1, got {self.sft_save_steps!r}")
        if self.total_seconds is not None and not self.total_seconds > 0:
            raise ValueError(f"RunConfig.total_seconds must be None or > 0, got {self.total_seconds!r}")
        from r1core.trainers.grpo_config import LR_SCHEDULERS

        if self.lr_scheduler_type not in LR_SCHEDULERS:  # checked here, not minutes later when GRPO starts
            raise ValueError(f"RunConfig.lr_scheduler_type must be one of {LR_SCHEDULERS}, got {self.lr_scheduler_type!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"RunConfig.warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if not isinstance(self.base_model, str) or not self.base_model:
            raise ValueError(f"RunConfig.base_model must be 'shipped', 'train' or a model folder, got {self.base_model!r}")
        if self.base_model not in ("shipped", "train") and not os.path.isdir(self.base_model):
            raise ValueError(f"RunConfig.base_model must be 'shipped', 'train' or a model folder, got {self.base_model!r} (no such folder)")
        if not self.name or "/" in self.name:
            raise ValueError(f"RunConfig.name must be a non-empty folder name, got {self.name!r}")

    @property
    def run_dir(self) -> str:
        return os.path.join(self.runs_dir, self.name)


def make_splits(cfg: RunConfig) -> tuple[list[dict], list[dict], list[dict]]:
    """(train, validation, held-out eval); validation and eval are distinct test-split problems,
    and no test-split problem is ever in train (r1core.tasks splits by a hash of the problem)."""
    from r1core.tasks import generate

    train = generate("addition", "train", cfg.train_size, seed=cfg.seed, digits=cfg.digits)
    test, seen = [], set()
    draw = 0
    while len(test) < cfg.val_size + cfg.eval_size:
        for r in generate("addition", "test", 2 * (cfg.val_size + cfg.eval_size), seed=cfg.seed + 1 + draw, digits=cfg.digits):
            if r["prompt"] not in seen and len(test) < cfg.val_size + cfg.eval_size:
                seen.add(r["prompt"])
                test.append(r)
        draw += 1
        if draw > 20:
            raise ValueError(f"RunConfig.val_size + eval_size ({cfg.val_size + cfg.eval_size}) exceed the distinct test problems for digits={cfg.digits}")
    return train, test[:cfg.val_size], test[cfg.val_size:]


def _plots(run_dir: str) -> list[str]:
    """plots/grpo.png (reward, accuracy, KL, completion length and the diagnostics per step) and
    plots/sft.png; two figures, since each savefig costs about a second here."""
    from r1core.trainers.metrics import plot_metrics, read_jsonl

    out = []
    recs = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    p = plot_metrics(recs, ["reward", "accuracy", "kl", "completion_length", "entropy", "zero_std_frac", "clip_region", "grad_norm"],
                     os.path.join(run_dir, "plots", "grpo.png"), title="GRPO per step")
    if p:
        out.append(p)
    sft = read_jsonl(os.path.join(run_dir, "sft", "sft_metrics.jsonl"))
    p = plot_metrics(sft, ["loss", "greedy_accuracy"], os.path.join(run_dir, "plots", "sft.png"), title="SFT of the base model")
    if p:
        out.append(p)
    return out


def print_table(base: dict, final: dict, base_seconds: float, rl_seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="R1-Zero on 3-digit addition: base vs after RL (held-out)")
    t.add_column("metric")
    t.add_column("base", justify="right")
    t.add_column("after RL", justify="right")
    for key, label in (("accuracy", "accuracy (pass@1, T=1)"), ("greedy_accuracy", "greedy accuracy"),
                       ("format_rate", "format rate"), ("completion_length", "mean completion length")):
        if key in base and key in final:
            fmt = "{:.1f}" if key == "completion_length" else "{:.3f}"
            t.add_row(label, fmt.format(base[key]), fmt.format(final[key]))
    t.add_row("time (s)", f"{base_seconds:.0f} (base + eval)", f"{rl_seconds:.0f} (GRPO + eval)")
    Console().print(t)


def _cache_blocks(cfg: RunConfig) -> int:
    """KV blocks (16 tokens) for one GRPO step's sequences with room to spare; evaluation batches
    larger than that are scheduled in turns by the engine."""
    per_seq = -(-(cfg.digits * 2 + 3 + cfg.max_completion_length) // 16) + 1
    return 2 * cfg.num_prompts * cfg.num_generations * per_seq


def run(cfg: RunConfig, resume: bool = False) -> dict:
    """The whole pipeline; returns the summary written to runs/<name>/summary.json."""
    from transformers import AutoModelForCausalLM

    from r1core.engine import Engine
    from r1core.recipes.base_model import build_model, build_tokenizer, num_parameters
    from r1core.recipes.evaluate import evaluate
    from r1core.rewards import accuracy_reward, scratchpad_format_reward
    from r1core.trainers import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

    t_start, cpu_start = time.perf_counter(), time.process_time()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    run_dir = cfg.run_dir
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "run_config.json"), "w") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=1)
    train, val, held_out = make_splits(cfg)
    eval_kw = dict(reward_func=accuracy_reward, format_func=scratchpad_format_reward, max_new_tokens=cfg.max_completion_length,
                   temperature=cfg.temperature)
    own_base = os.path.join(run_dir, "base")
    if cfg.base_model == "train":
        base_dir = own_base if resume and os.path.isdir(own_base) else None
    else:
        base_dir = SHIPPED_BASE if cfg.base_model == "shipped" else cfg.base_model
    trained_here = base_dir in (None, own_base)  # the base is this run's own SFT (now, or before a --resume)

    # 1. the base model
    sft_steps, sft_seconds = 0, 0.0
    tok = build_tokenizer()
    if base_dir is not None:
        model = AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="sdpa")
        engine = Engine(model, tokenizer=tok, num_blocks=_cache_blocks(cfg))
        done_path = os.path.join(base_dir, "sft_summary.json")
        if base_dir == own_base and os.path.exists(done_path):  # this run's own base: report its SFT as the uninterrupted run does
            with open(done_path) as f:
                done = json.load(f)
            sft_steps, sft_seconds = done["sft_steps"], done["sft_seconds"]
    else:
        model = build_model(tok, seed=cfg.seed)
        engine = Engine(model, tokenizer=tok, num_blocks=_cache_blocks(cfg))
        sft_dir = os.path.join(run_dir, "sft")
        if not resume:  # a fresh run under an old name: an old checkpoint must not be resumed later
            shutil.rmtree(sft_dir, ignore_errors=True)
        sft = SFTTrainer(model, tok, train, SFTConfig(
            learning_rate=cfg.sft_learning_rate, per_device_train_batch_size=cfg.sft_batch_size, max_steps=cfg.sft_max_steps,
            max_seconds=cfg.sft_max_seconds, completion_field="solution", logging_steps=cfg.sft_check_every,
            save_steps=cfg.sft_save_steps, output_dir=sft_dir, seed=cfg.seed))

        def check(step):
            model.eval()
            r = evaluate(engine, tok, val, samples=0, seed=cfg.seed, **eval_kw)
            return {"greedy_accuracy": r["greedy_accuracy"]}

        sft.train(callback=check, every=cfg.sft_check_every, progress=cfg.progress,
                  stop=lambda rec: rec["greedy_accuracy"] >= cfg.sft_target_accuracy,
                  resume_from_checkpoint=resume and trainer_has_checkpoint(sft_dir))
        sft_steps, sft_seconds = sft.step, sft.elapsed
        # written to a temporary folder and renamed: a base folder is always complete, so --resume can trust it
        tmp = os.path.join(run_dir, "base.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        with open(os.path.join(tmp, "sft_summary.json"), "w") as f:
            json.dump({"sft_steps": sft_steps, "sft_seconds": sft_seconds}, f)
        shutil.rmtree(os.path.join(run_dir, "base"), ignore_errors=True)
        os.replace(tmp, os.path.join(run_dir, "base"))

    # 2. base accuracy
    base_eval_path = os.path.join(run_dir, "base_eval.json")
    if resume and os.path.exists(base_eval_path):
        with open(base_eval_path) as f:
            base = json.load(f)
    else:
        base = evaluate(engine, tok, held_out, samples=cfg.eval_samples, seed=cfg.seed + 17, **eval_kw)
        with open(base_eval_path, "w") as f:
            json.dump(base, f, indent=1)
    base_seconds = time.perf_counter() - t_start

    # 3. GRPO
    grpo_cfg = GRPOConfig(
        num_generations=cfg.num_generations, max_completion_length=cfg.max_completion_length, temperature=cfg.temperature,
        beta=cfg.beta, epsilon=cfg.epsilon, loss_type=cfg.loss_type, learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.num_prompts * cfg.num_generations, lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_steps,
        max_steps=cfg.max_steps, max_seconds=cfg.max_seconds, save_steps=cfg.save_steps, output_dir=run_dir, seed=cfg.seed,
        logging_steps=1, max_grad_norm=1.0,
    )
    if cfg.total_seconds is not None:
        # what is left of the run's budget, less the final evaluation (as long as the base one, with margin)
        # (a resumed run counts the SFT and evaluation seconds of the process that did them)
        spent = max(time.perf_counter() - t_start, sft_seconds + base.get("eval_seconds", 0.0))
        left = cfg.total_seconds - spent - 1.5 * base.get("eval_seconds", 0.0) - 5.0
        grpo_cfg.max_seconds = max(1.0, min(cfg.max_seconds, left))
    trainer = GRPOTrainer(model, tok, [accuracy_reward], train, grpo_cfg, engine=engine)
    t_rl = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume and trainer_has_checkpoint(run_dir), progress=cfg.progress)
    if cfg.save_steps:
        trainer.save_state()
    model.save_pretrained(os.path.join(run_dir, "final"))

    # 4. final accuracy
    final = evaluate(engine, tok, held_out, samples=cfg.eval_samples, seed=cfg.seed + 17, **eval_kw)
    rl_seconds = time.perf_counter() - t_rl
    wall = time.perf_counter() - t_start
    summary = {
        "base_accuracy": base.get("accuracy"), "final_accuracy": final.get("accuracy"),
        "base_greedy_accuracy": base["greedy_accuracy"], "final_greedy_accuracy": final["greedy_accuracy"],
        "base_format_rate": base.get("format_rate"), "final_format_rate": final.get("format_rate"),
        "base_completion_length": base.get("completion_length"), "final_completion_length": final.get("completion_length"),
        "wall_seconds": wall, "cpu_seconds": time.process_time() - cpu_start, "sft_seconds": sft_seconds, "sft_steps": sft_steps, "grpo_seconds": rl_seconds,
        "grpo_steps": trainer.global_step, "grpo_budget_seconds": grpo_cfg.max_seconds, "policy_collapsed": trainer.collapsed, "seed": cfg.seed,
        "base_model": "trained by this run (runs/<name>/base)" if trained_here else base_dir,
        "num_parameters": num_parameters(model), "eval_prompts": len(held_out), "eval_samples": cfg.eval_samples,
        "base": base, "final": final,
    }
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    summary["plots"] = _plots(run_dir)
    if cfg.progress:
        print_table(base, final, base_seconds, rl_seconds)
        base_note = f"SFT {sft_steps} steps" if trained_here else f"base {os.path.relpath(base_dir)}"
        print(f"wall {wall:.0f} s ({base_note}, GRPO {trainer.global_step} steps); written to {run_dir}/")
    return summary


def trainer_has_checkpoint(run_dir: str) -> bool:
    from r1core.trainers.checkpoint import latest_checkpoint

    return latest_checkpoint(run_dir) is not None
