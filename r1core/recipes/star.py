"""`r1core star`: STaR (Zelikman et al., 2022) on Countdown: sample rationales, keep those that reach
the right answer; for the problems the model gets wrong, give it the answer as a hint and keep the
rationales that reach it (rationalisation); fine-tune from the original base on everything kept so
far; repeat.

The base (`--base-model train`, the default): a fresh ~1M-parameter Qwen2 over the trace alphabet
SFT'd briefly (--base.*) on the traces (`--base-style`, shortcut by default) of `base_size`
problems, a `hint_fraction` of them with the answer as a hint in the prompt (`8,3,2>22@(8+3)*2:`),
so the base knows what a hint is; or `--base-model DIR`, a saved model over the trace alphabet
(e.g. runs/journey/stages/journey/model).

Iteration i (0..iterations) writes one summary entry, named by its number: the model of iteration
i (0: the base; i >= 1: the base fine-tuned by --finetune.* on every row kept in iterations 0..i-1,
or the base again while nothing was kept) evaluated on held-out problems, and its
`solved_fraction`: the share of the `train_size` training problems on which one of its
`samples_per_problem` samples passed. Those samples are kept (one per problem, the shortest); with
rationalisation the unsolved problems are sampled again with the hint, and a sample that passes is
kept with the plain prompt: the hint never appears in what is kept. `--no-rationalization` is the
ablation.

What passes (`keep`): by default the answer is right and the trace replays from the problem, every
step legal arithmetic (`r1core.rewards.countdown_trace`); `--keep answer` checks the answer alone,
as the paper. At the base, about four in five answer-correct rationales carried a false step
(`5+4=18`), the rationalised ones most: trained on, they lowered held-out accuracy.

Each fine-tune starts from the base and takes `finetune_epochs` passes over its rows (at least one
step), within --finetune.max-seconds: the rows kept so far and, with `replay_base` (the default),
the base's own SFT rows, so that a few hundred kept rows do not pull the base away from what it
knew (without them, held-out accuracy fell after the first fine-tunes here: 0.070 -> 0.068 ->
0.057 at 2048 problems). `--no-replay-base` trains on the kept rows alone, as the paper, whose base
was a pretrained model with no SFT rows.

Budget: the base takes 500 SFT steps (about 90 s on 2 cores), each iteration samples 2048
training problems x 4 (and the unsolved again with the hint) and evaluates 512 held-out problems;
the three fine-tunes take 3 passes over about 800-2000 rows. A first check with a 60 s base on
200 traces (one thread) gave a base of held-out greedy 0.02 that solved none of 64 training
problems in 4 samples and rationalised 5: too weak a start, hence the larger base; 256 training
problems an iteration kept too few rows for the fine-tunes to move held-out accuracy.

    r1core star                                  # rationalisation on, seed 0, runs/star/
    r1core star --no-rationalization --name star-norat
    r1core star --iterations 5 --finetune.max-seconds 120
    r1core star --resume                         # a killed run goes on from its last finished iteration
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field

from r1core.recipes import arms as A
from r1core.recipes.flags import Command, Section, option
from r1core.trainers import SFTConfig

BASE_DEFAULTS = {"learning_rate": 2e-3, "per_device_train_batch_size": 32, "max_steps": 500, "max_seconds": 600.0,
                 "max_seq_length": 320, "logging_steps": 10, "save_steps": 50, "warmup_steps": 10}
KEEP = ("trace", "answer")
FINETUNE_DEFAULTS = dict(BASE_DEFAULTS, max_steps=100_000, max_seconds=180.0)  # caps: finetune_epochs sets the steps
BASE_OWNED = {"output_dir": "runs_dir/name/base", "seed": "the run's seed"}
FINETUNE_OWNED = {"output_dir": "the iteration's folder, runs_dir/name/stages/<i>", "seed": "the run's seed"}


@dataclass
class StarConfig(A.CountdownSetting):
    name: str = option("star", "the run's folder under runs_dir")
    runs_dir: str = option("runs", "where run folders go")
    seed: int = option(0, "the base, the problems and the samples")
    eval_size: int = option(512, "held-out problems (the test split: never in training); at accuracy 0.1 the "
                                 "standard error of 512 is 0.013, of 128 0.027: too coarse for STaR's steps")
    iterations: int = option(3, "STaR iterations (fine-tunes); the summary has iterations + 1 entries, 0 being the base")
    rationalization: bool = option(
        True, "sample the unsolved problems again with the answer as a hint (--no-rationalization: the ablation)")
    train_size: int = option(2048, "training problems sampled each iteration")
    samples_per_problem: int = option(4, "samples per training problem (and per hinted problem) each iteration")
    keep: str = option("trace", "which rationales are kept: 'trace' (the answer is right and every step of the trace replays "
                                "from the problem: r1core.rewards.countdown_trace) or 'answer' (the answer alone, as STaR's paper)")
    temperature: float = option(1.0, "the samples' temperature")
    base_model: str = option("train", "'train' (SFT a base first: --base.*, base_size, base_style, hint_fraction) or a model folder")
    replay_base: bool = option(True, "each fine-tune also trains on the base's own SFT rows (base_model train only; "
                                     "--no-replay-base: the kept rows alone, as STaR's paper, whose base had no such rows)")
    finetune_epochs: float = option(3.0, "passes over the kept rows per fine-tune (steps: epochs x rows / batch, at least 1; "
                                         "finetune.max_steps and max_seconds cap them): a few rows must not be trained on for minutes")
    base_size: int = option(1000, "problems drawn for the base's SFT (the STaR training problems among them are left out)")
    base_style: str = option("shortcut", "the base's traces: 'shortcut' or 'journey'")
    hint_fraction: float = option(0.5, "share of the base's examples that have the answer as a hint in the prompt")
    progress: bool = option(True, "progress bars and the table at the end")
    max_new_tokens: int = option(160, "tokens per completion at most (evaluation and sampling; shortcut traces are under 90)")
    base: SFTConfig = field(default_factory=dict)  # the base's SFT (base_model train)
    finetune: SFTConfig = field(default_factory=dict)  # each iteration's fine-tune from the base

    def __post_init__(self):
        from r1core.recipes.r1_zero import _trainer_config

        A.check_setting(self, "StarConfig")
        for name in ("iterations", "train_size", "samples_per_problem", "base_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"StarConfig.{name} must be an int >= 1, got {v!r}")
        if not isinstance(self.temperature, (int, float)) or isinstance(self.temperature, bool) or not self.temperature > 0:
            raise ValueError(f"StarConfig.temperature must be a number > 0, got {self.temperature!r}")
        if not isinstance(self.finetune_epochs, (int, float)) or isinstance(self.finetune_epochs, bool) or not self.finetune_epochs > 0:
            raise ValueError(f"StarConfig.finetune_epochs must be a number > 0, got {self.finetune_epochs!r}")
        if not isinstance(self.hint_fraction, (int, float)) or isinstance(self.hint_fraction, bool) or not 0 <= self.hint_fraction < 1:
            raise ValueError(f"StarConfig.hint_fraction must be a number in [0, 1), got {self.hint_fraction!r}")
        if self.keep not in KEEP:
            raise ValueError(f"StarConfig.keep must be one of {KEEP}, got {self.keep!r}")
        if self.base_style not in ("shortcut", "journey"):
            raise ValueError(f"StarConfig.base_style must be 'shortcut' or 'journey', got {self.base_style!r}")
        if self.base_model != "train" and not os.path.isdir(self.base_model):
            raise ValueError(f"StarConfig.base_model must be 'train' or a model folder, got {self.base_model!r} (no such folder)")
        if self.base_model != "train" and self.replay_base:
            raise ValueError(f"StarConfig.replay_base needs base_model 'train' (a base whose SFT rows the run knows), got base_model "
                             f"{self.base_model!r}: pass --no-replay-base")
        # two SFTConfigs: their errors name the one they are about (StarConfig.base.max_seconds: --base.max-seconds)
        self.base = _trainer_config("base", SFTConfig, self.base, BASE_DEFAULTS, lambda s: {
            "output_dir": os.path.join(self.run_dir, "base"), "seed": self.seed}, BASE_OWNED, "StarConfig")
        self.finetune = _trainer_config("finetune", SFTConfig, self.finetune, FINETUNE_DEFAULTS, lambda s: {
            "output_dir": self.run_dir, "seed": self.seed}, FINETUNE_OWNED, "StarConfig")

    @property
    def run_dir(self) -> str:
        return os.path.join(self.runs_dir, self.name)


@dataclass
class StarOptions:
    resume: bool = option(False, "go on with runs/<name>: finished iterations are kept, the running fine-tune resumes from its checkpoint")


# ---- the base ------------------------------------------------------------------------------------
def base_rows(cfg: StarConfig) -> list[dict]:
    """The base's SFT rows: traces of base_size problems (none of STaR's training problems, which
    the iterations must solve by themselves), a hint_fraction of them with the hint in the prompt."""
    import random

    from r1core.tasks.countdown_traces import hint_prompt, trace_rows

    star_problems = {r["prompt"] for r in A.countdown_problems(cfg, "train", cfg.train_size, cfg.seed)}
    problems = [r for r in A.countdown_problems(cfg, "train", cfg.base_size, cfg.seed + 1000) if r["prompt"] not in star_problems]
    rows = [r for r in trace_rows(problems, cfg.base_style, seed=cfg.seed, order=cfg.search_order, budget=cfg.search_budget) if r["solved"]]
    if not rows:
        raise ValueError(f"StarConfig.search_budget: no base problem was solved within {cfg.search_budget} steps")
    rng = random.Random(cfg.seed)
    for r in rows:
        if rng.random() < cfg.hint_fraction:
            r["prompt"] = hint_prompt(r["prompt"], r["completion"].split("<answer>")[1].split("</answer>")[0])
    return rows


def base_dir(cfg: StarConfig, resume: bool) -> str:
    """The base model's folder: base_model DIR, or runs/<name>/base/model made by SFT (kept for --resume)."""
    if cfg.base_model != "train":
        return cfg.base_model
    from r1core.trainers import SFTTrainer

    path = os.path.join(cfg.base.output_dir, "model")
    if resume and os.path.isdir(path):
        return path
    rows = base_rows(cfg)
    model, tok = A.new_model(cfg, rows)
    trainer = SFTTrainer(model, tok, rows, cfg.base)
    trainer.train(resume_from_checkpoint=True if resume and A.has_checkpoint(cfg.base.output_dir) else None, progress=cfg.progress)
    model.save_pretrained(path + ".tmp")
    tok.save_pretrained(path + ".tmp")
    os.replace(path + ".tmp", path)
    return path


# ---- one iteration -------------------------------------------------------------------------------
def sample_rationales(cfg: StarConfig, model, tok, problems: list[dict], seed: int) -> tuple[list[dict], list[dict], dict]:
    """(rows solved without a hint, rows rationalised with one, stats). Every row's prompt is the
    plain problem: a rationalised row was sampled with the hint and is kept without it."""
    from r1core.data import rejection_sample
    from r1core.engine import SamplingParams
    from r1core.rewards import countdown_reward
    from r1core.rewards.countdown_trace import countdown_trace_reward
    from r1core.tasks.countdown_traces import hint_prompt

    sampling = SamplingParams(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens)
    kwargs = {"n": cfg.samples_per_problem, "sampling": sampling, "per_prompt": 1, "progress": cfg.progress}
    plain = [{k: r[k] for k in ("prompt", "numbers", "target", "expression")} for r in problems]
    check = [countdown_trace_reward if cfg.keep == "trace" else countdown_reward]
    solved = list(rejection_sample(model, tok, plain, check, seed=seed, **kwargs))
    done = {r["prompt"] for r in solved}
    rationalized = []
    if cfg.rationalization:
        hinted = [{**r, "plain_prompt": r["prompt"], "prompt": hint_prompt(r["prompt"], r["expression"])} for r in plain
                  if r["prompt"] not in done]
        if hinted:
            for r in rejection_sample(model, tok, hinted, check, seed=seed + 1, **kwargs):
                row = {k: v for k, v in r.items() if k != "plain_prompt"}
                rationalized.append({**row, "prompt": r["plain_prompt"], "rationalized": True})
    stats = {"solved_fraction": len(done) / len(problems), "rationalized_fraction": len(rationalized) / len(problems)}
    return solved, rationalized, stats


def training_rows(kept: list[dict]) -> list[dict]:
    """What a fine-tune trains on: prompt and completion only, each distinct pair once."""
    seen, out = set(), []
    for r in kept:
        key = (r["prompt"], r["completion"])
        if key not in seen:
            seen.add(key)
            out.append({"prompt": r["prompt"], "completion": r["completion"]})
    return out


def finetune_rows(cfg: StarConfig, kept: list[dict]) -> list[dict]:
    """An iteration's fine-tune data: the rows kept so far, and with replay_base the base's own."""
    return training_rows(base_rows(cfg) + kept if cfg.replay_base else kept)


def finetune(cfg: StarConfig, base: str, rows: list[dict], out: str, resume: bool):
    """The base fine-tuned on rows (a fresh copy each iteration, as STaR); (model, tokenizer, trainer)."""
    from r1core.trainers import SFTTrainer

    model, tok = A.load(base)
    steps = max(1, math.ceil(cfg.finetune_epochs * len(rows) / cfg.finetune.per_device_train_batch_size))
    trainer = SFTTrainer(model, tok, rows, dataclasses.replace(cfg.finetune, output_dir=out, max_steps=min(steps, cfg.finetune.max_steps)))
    trainer.metrics_file = "metrics.jsonl"
    trainer.train(resume_from_checkpoint=True if resume and A.has_checkpoint(out) else None, progress=cfg.progress)
    return model, tok, trainer


def run_iteration(cfg: StarConfig, i: int, base: str, kept: list[dict], problems: list[dict], held: list[dict], resume: bool) -> dict:
    """Iteration i: its model (the base, or fine-tuned on `kept`), held-out evaluation, the sampling
    of the training problems; the rows it kept go to stages/<i>/kept.jsonl (all so far)."""
    from r1core.data import write_jsonl

    t0 = time.perf_counter()
    out = A.stage_dir(cfg.run_dir, str(i))
    os.makedirs(out, exist_ok=True)
    train_steps = 0
    rows = finetune_rows(cfg, kept) if i > 0 and kept else []
    if not rows:  # nothing kept yet: the iteration's model is the base
        model, tok = A.load(base)
    else:
        model, tok, trainer = finetune(cfg, base, rows, out, resume)
        train_steps = trainer.global_step
    train_seconds = time.perf_counter() - t0
    entry = A.evaluate_entry(cfg, str(i), model, tok, held, train_seconds)
    solved, rationalized, stats = sample_rationales(cfg, model, tok, problems, seed=cfg.seed * 7919 + i)
    kept_now = kept + solved + rationalized
    write_jsonl(kept_now, os.path.join(out, "kept.jsonl"))
    entry.update(stats, seconds=time.perf_counter() - t0, train_steps=train_steps, train_rows=len(rows),
                 kept_solved=len(solved), kept_rationalized=len(rationalized))
    A.finish_stage(cfg.run_dir, entry, model if train_steps else None, tok)
    return entry


def run_star(cfg: StarConfig, resume: bool = False) -> dict:
    """The whole run; returns the summary written to runs/<name>/summary.json."""
    from r1core.data import read_jsonl

    t0 = A.begin_run(cfg, resume, "base")
    problems = A.countdown_problems(cfg, "train", cfg.train_size, cfg.seed)
    held = A.held_out(cfg)
    base = base_dir(cfg, resume)
    entries, kept = [], []
    names = [str(i) for i in range(cfg.iterations + 1)]
    for entry in A.each_stage(cfg.run_dir, names, resume, lambda i: run_iteration(cfg, int(i), base, kept, problems, held, resume)):
        kept = read_jsonl(os.path.join(A.stage_dir(cfg.run_dir, entry["name"]), "kept.jsonl"))  # the next iteration trains on it
        entries.append(entry)
    return A.finish_run(cfg, "iterations", entries, t0,
                        f"STaR on Countdown ({'with' if cfg.rationalization else 'without'} rationalisation): per iteration, held-out",
                        {"loss": ["loss", "grad_norm"]}, extra=("solved_fraction",), more_plots=lambda es: _plot_iterations(cfg, es),
                        seed=cfg.seed, rationalization=cfg.rationalization, base_model=base, train_problems=len(problems),
                        eval_prompts=len(held), eval_samples=cfg.eval_samples)


def _plot_iterations(cfg: StarConfig, entries: list[dict]) -> list[str]:
    from r1core.trainers.metrics import plot_metrics

    recs = [{"step": int(e["name"]), **{k: e.get(k) for k in ("accuracy", "greedy_accuracy", "solved_fraction")}} for e in entries]
    p = plot_metrics(recs, ["accuracy", "greedy_accuracy", "solved_fraction"], os.path.join(cfg.run_dir, "plots", "iterations.png"),
                     title="STaR per iteration")
    return [p] if p else []


def has_run(cfg: StarConfig) -> bool:
    return os.path.exists(os.path.join(cfg.run_dir, "run_config.json"))


# ---- the command ---------------------------------------------------------------------------------
def commands(sub) -> dict[str, Command]:
    return A.study_command(
        sub, "star", StarConfig, StarOptions, run_star, has_run, what="STaR run", trainers=[
            Section(SFTConfig, "base", BASE_DEFAULTS, BASE_OWNED, title=f"the base's SFT (set by the run: {', '.join(BASE_OWNED)})"),
            Section(SFTConfig, "finetune", FINETUNE_DEFAULTS, FINETUNE_OWNED,
                    title=f"each iteration's fine-tune from the base (set by the run: {', '.join(FINETUNE_OWNED)})")],
        help="STaR on Countdown: sample, keep correct rationales (and hinted ones), fine-tune from the base; repeat",
        description="Iterations of STaR from a base (SFT'd here by --base.*, or --base-model DIR): each samples the training "
                    "problems, keeps the correct rationales (with rationalisation, those reached with the answer as a hint, kept "
                    "without it) and fine-tunes the base on everything kept so far (--finetune.*); solved fraction and held-out "
                    "accuracy per iteration in runs/<name>/summary.json.")


__all__ = ["StarConfig", "StarOptions", "commands", "run_star", "sample_rationales", "training_rows"]
