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

RunConfig holds the GRPOConfig (`grpo`) and the SFTConfig (`sft`) the stages train with: on the
command line `--grpo.learning-rate`, `--sft.max-steps`, ... (the older flat flags, `--learning-rate`,
`--sft-max-steps`, still name the same fields), in a config file `grpo: {learning_rate: ...}`. The
run sets their seed, output_dir, GRPO's batch (num_prompts groups of num_generations) and SFT's
completion column itself.

`--resume` continues a killed run where it stopped: inside SFT from the last SFT checkpoint
(sft/checkpoint-N, every sft.save_steps), after it from the saved base model and its evaluation,
inside GRPO from the last GRPO checkpoint (every grpo.save_steps). Both stages' time budgets count
the seconds spent before the kill.

Each stage is a function a later recipe can compose: base_model_dir, load_base or train_base (1),
evaluate_base (2), grpo_budget and train_grpo (3), evaluate_policy (4), summarize, write_plots and
print_table (5); `run` chains them.

    r1core run                              # defaults, seed 0, the shipped base
    r1core run --seed 1 --name s1           # another seed
    r1core run --base-model train --name own   # SFT a base of the run's own first
    r1core run --grpo.learning-rate 1e-4 --sft.max-steps 500 --base-model train
    r1core run --config my_run.yaml         # e.g. `seed: 1` and `grpo: {max_steps: 200}`; flags win
    r1core run --help
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import typing
from dataclasses import dataclass, field
from typing import Callable

import torch

from r1core.recipes.flags import option
from r1core.trainers import GRPOConfig, SFTConfig
from r1core.trainers.config import NOT_EMPTY, Rule, above, at_least, type_check, within

SHIPPED_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "addition3-base")


# The recipe's GRPO and SFT settings where they differ from GRPOConfig's and SFTConfig's defaults.
GRPO_DEFAULTS = dict(
    num_generations=8, learning_rate=1.5e-4,
    lr_scheduler_type="linear",  # decays to 0 over GRPO's time budget (or max_steps, whichever ends first)
    warmup_steps=10, epsilon=0.2, beta=0.0, temperature=1.0, loss_type="dapo", max_completion_length=48,
    max_steps=10000, max_seconds=430.0,  # GRPO's own cap; RunConfig.total_seconds is the whole run's
    save_steps=None, logging_steps=1, max_grad_norm=1.0)
SFT_DEFAULTS = dict(
    learning_rate=2e-3, per_device_train_batch_size=64,
    logging_steps=10,  # the stopping rule's check runs at each logged step
    max_steps=3000, max_seconds=240.0,
    save_steps=50)  # SFT checkpoints (runs/<name>/sft/checkpoint-N) for --resume; None: none
# The trainers' fields the run sets itself, and from what.
GRPO_OWNED = {"per_device_train_batch_size": "num_prompts * grpo.num_generations: one optimizer step of num_prompts groups",
              "output_dir": "the run's folder, runs_dir/name", "seed": "the run's seed"}
SFT_OWNED = {"output_dir": "runs_dir/name/sft", "seed": "the run's seed", "completion_field": "the task rows' 'solution'"}


ANY = Rule(lambda v: True, "")
RUN_RULES = {  # RunConfig's own fields: each is its annotation's type and passes its rule
    **{name: at_least(1) for name in ("digits", "train_size", "val_size", "eval_size", "num_prompts", "threads")},
    "name": Rule(lambda v: v != "" and "/" not in v, "that names a folder (not empty, no '/')"), "runs_dir": NOT_EMPTY,
    "seed": ANY, "eval_samples": at_least(0), "base_model": NOT_EMPTY, "sft_target_accuracy": within(0, 1),
    "total_seconds": above(0), "progress": ANY,
}


@dataclass
class RunConfig:
    name: str = option("r1-zero", "the run's folder under runs_dir")
    runs_dir: str = option("runs", "where run folders go")
    seed: int = option(0, "training and held-out problems, samples, and with base_model train the base's initialisation and SFT")
    digits: int = option(3, "operand digits of the addition problems")
    train_size: int = option(20000, "training problems")
    val_size: int = option(128, "validation prompts for the SFT stopping rule (disjoint from the held-out ones)")
    eval_size: int = option(256, "held-out prompts for base and final accuracy")
    eval_samples: int = option(4, "samples per held-out prompt for pass@1 at temperature 1")
    base_model: str = option("shipped", "'shipped' (the repository's), 'train' (SFT at the start, with sft) or a saved model folder")
    sft_target_accuracy: float = option(0.40, "SFT of the base stops at this greedy accuracy on the validation prompts")
    num_prompts: int = option(16, "prompts per GRPO step, each sampled grpo.num_generations times")
    total_seconds: float | None = option(450.0, "the whole run's budget: GRPO stops early enough for the final evaluation")
    threads: int = option(2, "torch threads")
    progress: bool = option(True, "progress bars and the table at the end")
    # the trainers' configs: a GRPOConfig / SFTConfig, or a dict of their fields over GRPO_DEFAULTS / SFT_DEFAULTS;
    # the fields in GRPO_OWNED / SFT_OWNED are always the run's
    grpo: GRPOConfig = field(default_factory=dict)
    sft: SFTConfig = field(default_factory=dict)  # the base model's SFT (--base-model train)

    def __post_init__(self):
        # the run's own fields by the trainers' configs' rule: the annotation's type, then RUN_RULES
        hints = typing.get_type_hints(RunConfig)
        for name, rule in RUN_RULES.items():
            v = getattr(self, name)
            test, phrase, optional = type_check(hints[name])
            if not (optional and v is None) and not (test(v) and rule.test(v)):
                expected = " ".join(w for w in ("None or" if optional else "", phrase, rule.says) if w)
                raise ValueError(f"RunConfig.{name} must be {expected}, got {v!r}")
        if self.base_model not in ("shipped", "train") and not os.path.isdir(self.base_model):
            raise ValueError(f"RunConfig.base_model must be 'shipped', 'train' or a model folder, got {self.base_model!r} (no such folder)")
        self.grpo = _trainer_config("grpo", GRPOConfig, self.grpo, GRPO_DEFAULTS, lambda g: {
            "per_device_train_batch_size": self.num_prompts * g["num_generations"], "output_dir": self.run_dir, "seed": self.seed},
            GRPO_OWNED)
        self.sft = _trainer_config("sft", SFTConfig, self.sft, SFT_DEFAULTS, lambda s: {
            "output_dir": os.path.join(self.run_dir, "sft"), "seed": self.seed, "completion_field": "solution"}, SFT_OWNED)
        if self.grpo.max_seconds is None:  # the run's budget needs GRPO's cap
            raise ValueError("RunConfig.grpo.max_seconds must be a number > 0, got None")

    @property
    def run_dir(self) -> str:
        return os.path.join(self.runs_dir, self.name)


def _trainer_config(name: str, cls, given, defaults: dict, owned: Callable[[dict], dict], why: dict, owner: str | None = None):
    """cls from `given` (a cls, or a dict of its fields over `defaults`) with the fields the run sets,
    owned(fields) -> {field: value}. A dict that names one of those is an error (why says where the
    run takes it from); a cls's are replaced, so that dataclasses.replace(run_config, seed=...) works.
    owner: the recipe config's class name, so that every error names the recipe's field
    (R1Config.grpo.max_steps, which the user set as --grpo.max-steps); None keeps RunConfig's and
    the trainer config's own names."""
    if owner is not None:
        try:
            return _trainer_config(name, cls, given, defaults, owned, why)
        except ValueError as e:
            msg = str(e)
            for prefix in (f"{cls.__name__}.", f"RunConfig.{name}."):
                if msg.startswith(prefix):
                    msg = f"{owner}.{name}." + msg[len(prefix):]
            raise ValueError(msg) from None
    if isinstance(given, cls):
        values = {f.name: getattr(given, f.name) for f in dataclasses.fields(cls) if f.init}
    elif isinstance(given, dict):
        class_defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        unknown = sorted(set(given) - set(class_defaults))
        if unknown:
            raise ValueError(f"RunConfig.{name}: {cls.__name__} has no field(s) {unknown}")
        values = {**defaults, **given}
        mine = owned({**class_defaults, **values})
        for k, v in mine.items():
            if k in given and given[k] != v:
                raise ValueError(f"RunConfig.{name}.{k} is set by the run to {v!r} ({why[k]}), got {given[k]!r}")
    else:
        raise ValueError(f"RunConfig.{name} must be a {cls.__name__} or a dict of its fields, got {type(given).__name__}")
    return cls(**{**values, **owned(values)})


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
            raise ValueError(f"RunConfig.val_size + eval_size ({cfg.val_size + cfg.eval_size}) exceed the distinct test problems "
                             f"for digits={cfg.digits}")
    return train, test[:cfg.val_size], test[cfg.val_size:]


def write_plots(run_dir: str) -> list[str]:
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
    per_seq = -(-(cfg.digits * 2 + 3 + cfg.grpo.max_completion_length) // 16) + 1
    return 2 * cfg.num_prompts * cfg.grpo.num_generations * per_seq


@dataclass
class Policy:
    """The model the stages train and evaluate, its tokenizer and engine, and how the base was made."""

    model: object
    tokenizer: object
    engine: object
    base_dir: str | None  # the folder the base came from; None: trained by this run's SFT stage just now
    trained_here: bool  # the base is this run's own SFT (now, or before a --resume)
    sft_steps: int = 0
    sft_seconds: float = 0.0


def start_run(cfg: RunConfig) -> None:
    """Threads, the seed, runs/<name>/ and its run_config.json."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    os.makedirs(cfg.run_dir, exist_ok=True)
    with open(os.path.join(cfg.run_dir, "run_config.json"), "w") as f:
        json.dump(dataclasses.asdict(cfg), f, indent=1)


def eval_kwargs(cfg: RunConfig) -> dict:
    """evaluate()'s reward, format check and sampling, as GRPO samples."""
    from r1core.rewards import accuracy_reward, scratchpad_format_reward

    return dict(reward_func=accuracy_reward, format_func=scratchpad_format_reward, max_new_tokens=cfg.grpo.max_completion_length,
                temperature=cfg.grpo.temperature)


def base_model_dir(cfg: RunConfig, resume: bool) -> str | None:
    """Where the base model comes from: the shipped one, a saved one (base_model DIR), this run's own
    from before a --resume; None: the SFT stage trains it."""
    own_base = os.path.join(cfg.run_dir, "base")
    if cfg.base_model == "train":
        return own_base if resume and os.path.isdir(own_base) else None
    return SHIPPED_BASE if cfg.base_model == "shipped" else cfg.base_model


def load_base(cfg: RunConfig, base_dir: str) -> Policy:
    """Stage 1 from a folder; this run's own base reports the SFT that made it, as the uninterrupted run does."""
    from r1core.engine import Engine
    from r1core.recipes.base_model import load_model

    model, tok = load_model(base_dir)
    p = Policy(model, tok, Engine(model, tokenizer=tok, num_blocks=_cache_blocks(cfg)), base_dir,
               trained_here=base_dir == os.path.join(cfg.run_dir, "base"))
    done_path = os.path.join(base_dir, "sft_summary.json")
    if p.trained_here and os.path.exists(done_path):
        with open(done_path) as f:
            done = json.load(f)
        p.sft_steps, p.sft_seconds = done["sft_steps"], done["sft_seconds"]
    return p


def train_base(cfg: RunConfig, train: list[dict], val: list[dict], resume: bool) -> Policy:
    """Stage 1 by SFT (cfg.sft) from a random initialisation until greedy accuracy on `val` reaches
    cfg.sft_target_accuracy (checked at each logged step); saved to runs/<name>/base."""
    from r1core.engine import Engine
    from r1core.recipes.base_model import build_model, build_tokenizer
    from r1core.recipes.evaluate import evaluate
    from r1core.trainers import SFTTrainer

    tok = build_tokenizer()
    model = build_model(tok, seed=cfg.seed)
    engine = Engine(model, tokenizer=tok, num_blocks=_cache_blocks(cfg))
    if not resume:  # a fresh run under an old name: an old checkpoint must not be resumed later
        shutil.rmtree(cfg.sft.output_dir, ignore_errors=True)
    sft = SFTTrainer(model, tok, train, cfg.sft)

    def check(step):
        model.eval()
        r = evaluate(engine, tok, val, samples=0, seed=cfg.seed, **eval_kwargs(cfg))
        return {"greedy_accuracy": r["greedy_accuracy"]}

    sft.train(callback=check, every=cfg.sft.logging_steps, progress=cfg.progress,
              stop=lambda rec: rec["greedy_accuracy"] >= cfg.sft_target_accuracy,
              resume_from_checkpoint=resume and trainer_has_checkpoint(cfg.sft.output_dir))
    # written to a temporary folder and renamed: a base folder is always complete, so --resume can trust it
    tmp, base = os.path.join(cfg.run_dir, "base.tmp"), os.path.join(cfg.run_dir, "base")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    with open(os.path.join(tmp, "sft_summary.json"), "w") as f:
        json.dump({"sft_steps": sft.step, "sft_seconds": sft.elapsed}, f)
    shutil.rmtree(base, ignore_errors=True)
    os.replace(tmp, base)
    return Policy(model, tok, engine, None, trained_here=True, sft_steps=sft.step, sft_seconds=sft.elapsed)


def evaluate_policy(cfg: RunConfig, policy: Policy, held_out: list[dict]) -> dict:
    """Held-out pass@1 of cfg.eval_samples samples at GRPO's temperature, greedy accuracy, format, length."""
    from r1core.recipes.evaluate import evaluate

    return evaluate(policy.engine, policy.tokenizer, held_out, samples=cfg.eval_samples, seed=cfg.seed + 17, **eval_kwargs(cfg))


def evaluate_base(cfg: RunConfig, policy: Policy, held_out: list[dict], resume: bool) -> dict:
    """Stage 2, kept in runs/<name>/base_eval.json (a --resume reads it back)."""
    path = os.path.join(cfg.run_dir, "base_eval.json")
    if resume and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    base = evaluate_policy(cfg, policy, held_out)
    with open(path, "w") as f:
        json.dump(base, f, indent=1)
    return base


def grpo_budget(cfg: RunConfig, spent: float, sft_seconds: float, base_eval: dict) -> float:
    """GRPO's seconds: its own cap, or what is left of the run's budget less the final evaluation (as
    long as the base one, with margin); a resumed run counts the SFT and evaluation seconds of the
    process that did them."""
    if cfg.total_seconds is None:
        return cfg.grpo.max_seconds
    eval_seconds = base_eval.get("eval_seconds", 0.0)
    left = cfg.total_seconds - max(spent, sft_seconds + eval_seconds) - 1.5 * eval_seconds - 5.0
    return max(1.0, min(cfg.grpo.max_seconds, left))


def train_grpo(cfg: RunConfig, policy: Policy, train: list[dict], max_seconds: float, resume: bool):
    """Stage 3: GRPO (cfg.grpo) with the binary correctness reward for max_seconds at most; the model
    goes to runs/<name>/final. Returns the trainer and the second it started."""
    from r1core.rewards import accuracy_reward
    from r1core.trainers import GRPOTrainer

    grpo_cfg = dataclasses.replace(cfg.grpo, max_seconds=max_seconds)
    trainer = GRPOTrainer(policy.model, policy.tokenizer, [accuracy_reward], train, grpo_cfg, engine=policy.engine)
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume and trainer_has_checkpoint(cfg.run_dir), progress=cfg.progress)
    if grpo_cfg.save_steps:
        trainer.save_state()
    policy.model.save_pretrained(os.path.join(cfg.run_dir, "final"))
    return trainer, t0


def summarize(cfg: RunConfig, policy: Policy, base: dict, final: dict, trainer, held_out: list[dict], seconds: dict) -> dict:
    """Stage 5's summary.json (seconds: wall, cpu, grpo and grpo_budget)."""
    from r1core.recipes.base_model import num_parameters

    summary = {
        "base_accuracy": base.get("accuracy"), "final_accuracy": final.get("accuracy"),
        "base_greedy_accuracy": base["greedy_accuracy"], "final_greedy_accuracy": final["greedy_accuracy"],
        "base_format_rate": base.get("format_rate"), "final_format_rate": final.get("format_rate"),
        "base_completion_length": base.get("completion_length"), "final_completion_length": final.get("completion_length"),
        "wall_seconds": seconds["wall"], "cpu_seconds": seconds["cpu"], "sft_seconds": policy.sft_seconds, "sft_steps": policy.sft_steps,
        "grpo_seconds": seconds["grpo"], "grpo_steps": trainer.global_step, "grpo_budget_seconds": seconds["grpo_budget"],
        "policy_collapsed": trainer.collapsed, "seed": cfg.seed,
        "base_model": "trained by this run (runs/<name>/base)" if policy.trained_here else policy.base_dir,
        "num_parameters": num_parameters(policy.model), "eval_prompts": len(held_out), "eval_samples": cfg.eval_samples,
        "base": base, "final": final,
    }
    with open(os.path.join(cfg.run_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def run(cfg: RunConfig, resume: bool = False) -> dict:
    """The whole pipeline; returns the summary written to runs/<name>/summary.json."""
    t_start, cpu_start = time.perf_counter(), time.process_time()
    start_run(cfg)
    train, val, held_out = make_splits(cfg)
    base_dir = base_model_dir(cfg, resume)
    policy = load_base(cfg, base_dir) if base_dir is not None else train_base(cfg, train, val, resume)  # 1. the base model
    base = evaluate_base(cfg, policy, held_out, resume)  # 2. base accuracy
    base_seconds = time.perf_counter() - t_start
    budget = grpo_budget(cfg, time.perf_counter() - t_start, policy.sft_seconds, base)
    trainer, t_rl = train_grpo(cfg, policy, train, budget, resume)  # 3. GRPO
    final = evaluate_policy(cfg, policy, held_out)  # 4. final accuracy
    rl_seconds = time.perf_counter() - t_rl
    wall = time.perf_counter() - t_start
    summary = summarize(cfg, policy, base, final, trainer, held_out,  # 5. the report
                        {"wall": wall, "cpu": time.process_time() - cpu_start, "grpo": rl_seconds, "grpo_budget": budget})
    summary["plots"] = write_plots(cfg.run_dir)
    if cfg.progress:
        print_table(base, final, base_seconds, rl_seconds)
        base_note = f"SFT {policy.sft_steps} steps" if policy.trained_here else f"base {os.path.relpath(policy.base_dir)}"
        print(f"wall {wall:.0f} s ({base_note}, GRPO {trainer.global_step} steps); written to {cfg.run_dir}/")
    return summary


def has_run(cfg: RunConfig) -> bool:
    """Did a run of this name start (its config, base model or a checkpoint is there)? `--resume`
    of a name that never ran is a mistake (a misspelt --name), not a fresh start."""
    return (os.path.exists(os.path.join(cfg.run_dir, "run_config.json")) or os.path.isdir(os.path.join(cfg.run_dir, "base"))
            or trainer_has_checkpoint(cfg.run_dir) or trainer_has_checkpoint(cfg.sft.output_dir))


def trainer_has_checkpoint(run_dir: str) -> bool:
    from r1core.trainers.checkpoint import latest_checkpoint

    return latest_checkpoint(run_dir) is not None
