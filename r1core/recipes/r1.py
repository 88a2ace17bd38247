"""`r1core r1`: the four stages of DeepSeek-R1 (arXiv 2501.12948, section 2.3) beside R1-Zero at the
same budget, on addition whose reasoning may be written in two scripts (`r1core.tasks.two_script`).

0. The base ("base"): by default the one shipped in r1core/recipes/assets/two-script-base (its
   provenance.json says how it was made: `--base-model train`, seed 0), so the whole budget goes to
   the stages; `--base-model train` makes one at the start: a ~1M-parameter Qwen2 over the
   two-script alphabet, pretrained by SFT (--base.*) on addition whose reasoning steps are each in
   the second script with probability `mix`, until its greedy accuracy on validation prompts
   reaches `base_target_accuracy` (310 steps, 331 s on a loaded 2-core machine for the shipped
   one): a weak base that writes both scripts and mixes them within a completion, as R1-Zero's
   base mixed languages (held-out greedy 0.42, language consistency 0.46 for the shipped one).
1. "cold_start": SFT of the base on a few readable long-CoT examples (`cold_start_size` problems
   with the gold reasoning all in the target script), `cold_start_epochs` passes.
2. "reasoning_rl": GRPO from stage 1 with the accuracy, format and language-consistency rewards
   (the share of the reasoning's digits in the target script, summed with the others as R1 does).
3. "rejection_sft": `rejection_samples` samples of `rejection_prompts` training problems from stage
   2; kept: correct, well formatted, single-script and at most `length_bound` tokens (the shortest
   of a problem). Mixed with non-reasoning data (`non_reasoning_fraction` of the rows: a number
   written in the second script, answered by its Latin digits without reasoning), then SFT **from
   the base** (`rejection_epochs` passes).
4. "final_rl": GRPO from stage 3 with the three rewards plus a length penalty (past `length_bound`).
5. "r1_zero": GRPO from the same base with the accuracy and format rewards only, no cold start,
   for the seconds stages 1-4 spent training (sampling included), not counting evaluations.

Each stage's budget is time (`cold_start_seconds` 30, `reasoning_seconds` 60,
`rejection_sft_seconds` 60 plus the sampling, `final_seconds` 60; SFT stages are capped by their
epochs too): about 240 s of training for R1 and as much for R1-Zero, plus six evaluations, within
10 minutes on 2 cores. Every stage is evaluated on held-out problems: pass@1 at temperature 1,
greedy accuracy, format rate, completion tokens and `language_consistency` (the mean share of
target-script digits in the sampled reasoning).

Probes on a shared machine (load 5-9 on 2 cores: about a third of a quiet machine's steps), seed
0, the shipped base (greedy 0.42): with these defaults the R1 stages reached greedy 0.68 (cold
start, 27 steps), 0.75, 0.66 (stage 3 restarts from the base), 0.81 (language consistency 0.999);
R1-Zero 0.61 after 96 steps in the same 242 s (consistency 0.40); seed 1 (base greedy 0.38): R1
0.81 (consistency 0.999), R1-Zero 0.64 after 176 steps (consistency 0.53), 539 s of wall time in
all. 512 cold-start examples in 20 s and 30 s of stage-3 SFT ended at 0.63 against R1-Zero's
0.64; the SFT stages at lr 2e-3 knocked the base down to 0.26. docs/recipes.md has the table.

    r1core r1                                   # seed 0, runs/r1/
    r1core r1 --seed 1 --name r1-s1
    r1core r1 --stages cold_start,reasoning_rl  # the first two stages only
    r1core r1 --resume                          # done stages kept, the running one resumes from its checkpoint
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from r1core.recipes import arms as A
from r1core.recipes.flags import Command, Section, option
from r1core.recipes.r1_zero import GRPO_DEFAULTS as ZERO_GRPO_DEFAULTS
from r1core.trainers import GRPOConfig, SFTConfig

STAGES = ("cold_start", "reasoning_rl", "rejection_sft", "final_rl", "r1_zero")
R1_STAGES = STAGES[:4]
BUDGETS = {"cold_start": "cold_start_seconds", "reasoning_rl": "reasoning_seconds", "rejection_sft": "rejection_sft_seconds",
           "final_rl": "final_seconds"}
TARGET_SCRIPT = "latin"
SHIPPED_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "two-script-base")

BASE_DEFAULTS = {"learning_rate": 2e-3, "per_device_train_batch_size": 64, "max_steps": 3000, "max_seconds": 150.0,
                 "logging_steps": 10, "save_steps": 50}
# lr 1e-3 with a short warmup: 2e-3 (the base's own) took the cold start from greedy 0.42 down to 0.26 in a probe
SFT_DEFAULTS = {"learning_rate": 1e-3, "warmup_steps": 5, "per_device_train_batch_size": 64, "max_steps": 100_000, "logging_steps": 5,
                "save_steps": 25}
GRPO_DEFAULTS = {**{k: v for k, v in ZERO_GRPO_DEFAULTS.items() if k != "max_seconds"}, "max_completion_length": 48, "save_steps": 25}
STAGE_BUDGET = "the stage's budget: cold_start_seconds, reasoning_seconds, rejection_sft_seconds, final_seconds; r1_zero their sum"
BASE_OWNED = {"output_dir": "runs_dir/name/stages/base", "seed": "the run's seed", "completion_field": "the rows' 'solution'"}
SFT_OWNED = {"output_dir": "the stage's folder, runs_dir/name/stages/<stage>", "seed": "the run's seed",
             "completion_field": "the rows' 'solution'", "max_seconds": STAGE_BUDGET}
GRPO_OWNED = {"output_dir": "the stage's folder, runs_dir/name/stages/<stage>", "seed": "the run's seed",
              "per_device_train_batch_size": "num_prompts * grpo.num_generations", "max_seconds": STAGE_BUDGET}


@dataclass
class R1Config:
    name: str = option("r1", "the run's folder under runs_dir")
    runs_dir: str = option("runs", "where run folders go")
    seed: int = option(0, "the base's initialisation and pretraining, the problems and the samples")
    stages: list[str] = field(default_factory=lambda: list(STAGES), metadata={
        "help": f"the stages to run, comma-separated, from {', '.join(STAGES)} (the R1 stages in order from cold_start)"})
    base_model: str = option("shipped", "'shipped' (the repository's two-script base), 'train' (pretrain one at the start: "
                                        "--base.*, mix, base_target_accuracy) or a saved model folder over the two-script alphabet")
    digits: int = option(3, "operand digits of the addition problems")
    mix: float = option(0.5, "the base's pretraining data: the chance that a reasoning step is in the second script")
    base_target_accuracy: float = option(0.3, "the base's pretraining stops at this greedy accuracy on the validation prompts")
    train_size: int = option(20000, "training problems (the RL stages' prompts)")
    val_size: int = option(128, "validation prompts of the base's stopping rule (test split, apart from the held-out ones)")
    eval_size: int = option(256, "held-out problems (the test split: never trained on)")
    eval_samples: int = option(4, "samples per held-out problem for pass@1 at temperature 1 and the language consistency")
    cold_start_size: int = option(2048, "readable long-CoT examples of the cold start (the reasoning all in the target script)")
    cold_start_epochs: float = option(2.0, "passes over the cold-start examples (sft.max_steps and cold_start_seconds cap them)")
    cold_start_seconds: float = option(30.0, "stage 1's budget")
    reasoning_seconds: float = option(60.0, "stage 2's budget (GRPO: accuracy, format and language consistency)")
    rejection_prompts: int = option(1024, "training problems sampled in stage 3")
    rejection_samples: int = option(4, "samples per problem in stage 3")
    length_bound: int = option(40, "stage 3 keeps samples of at most this many tokens; stage 4's length penalty starts past it")
    non_reasoning_fraction: float = option(0.2, "share of stage 3's SFT rows that are non-reasoning (script translation) rows")
    rejection_epochs: float = option(6.0, "passes over stage 3's rows (sft.max_steps and rejection_sft_seconds cap them)")
    rejection_sft_seconds: float = option(60.0, "stage 3's budget for the SFT (the sampling's seconds are counted apart)")
    final_seconds: float = option(60.0, "stage 4's budget (GRPO: the three rewards and the length penalty)")
    num_prompts: int = option(16, "prompts per GRPO step, each sampled grpo.num_generations times")
    threads: int = option(2, "torch threads")
    progress: bool = option(True, "progress bars and the table at the end")
    base: SFTConfig = field(default_factory=dict)  # the base's pretraining
    sft: SFTConfig = field(default_factory=dict)  # stages 1 and 3
    grpo: GRPOConfig = field(default_factory=dict)  # stages 2 and 4 and r1_zero

    def __post_init__(self):
        self._check_counts()
        self._check_fractions()
        if not isinstance(self.stages, (list, tuple)) or not self.stages:
            raise ValueError(f"R1Config.stages must be a non-empty list of stages from {list(STAGES)}, got {self.stages!r}")
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"R1Config.stages: unknown stage(s) {unknown}; the stages are {list(STAGES)}")
        r1 = [s for s in R1_STAGES if s in self.stages]
        if r1 != list(R1_STAGES[:len(r1)]):
            missing = next(s for s in R1_STAGES if s not in r1)
            raise ValueError(f"R1Config.stages: {r1[-1]!r} trains on top of {missing!r}, which is not in {list(self.stages)}")
        self.stages = [s for s in STAGES if s in self.stages]
        if self.base_model not in ("shipped", "train") and not os.path.isdir(self.base_model):
            raise ValueError(f"R1Config.base_model must be 'shipped', 'train' or a model folder, got {self.base_model!r} (no such folder)")
        if not self.name or "/" in self.name:
            raise ValueError(f"R1Config.name must name a folder (not empty, no '/'), got {self.name!r}")
        self._trainer_configs()

    def _check_counts(self) -> None:
        for name in ("digits", "train_size", "val_size", "eval_size", "cold_start_size", "rejection_prompts", "rejection_samples",
                     "length_bound", "num_prompts", "threads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"R1Config.{name} must be an int >= 1, got {v!r}")
        if not isinstance(self.eval_samples, int) or isinstance(self.eval_samples, bool) or self.eval_samples < 0:
            raise ValueError(f"R1Config.eval_samples must be an int >= 0, got {self.eval_samples!r}")
        if self.digits > 4:
            raise ValueError(f"R1Config.digits must be at most 4 (the model's positions), got {self.digits!r}")

    def _check_fractions(self) -> None:
        positive = ("cold_start_epochs", "rejection_epochs", *BUDGETS.values())
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0 or not math.isfinite(v):
                raise ValueError(f"R1Config.{name} must be a number > 0, got {v!r}")
        for name, hi in (("mix", 1.0), ("base_target_accuracy", 1.0), ("non_reasoning_fraction", 0.99)):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= hi:
                raise ValueError(f"R1Config.{name} must be a number in [0, {hi}], got {v!r}")

    def _trainer_configs(self) -> None:
        from r1core.recipes.r1_zero import _trainer_config

        self.base = _trainer_config("base", SFTConfig, self.base, BASE_DEFAULTS, lambda s: {
            "output_dir": A.stage_dir(self.run_dir, "base"), "seed": self.seed, "completion_field": "solution"}, BASE_OWNED, "R1Config")
        self.sft = _trainer_config("sft", SFTConfig, self.sft, SFT_DEFAULTS, lambda s: {
            "output_dir": self.run_dir, "seed": self.seed, "completion_field": "solution", "max_seconds": self.cold_start_seconds},
            SFT_OWNED, "R1Config")
        self.grpo = _trainer_config("grpo", GRPOConfig, self.grpo, GRPO_DEFAULTS, lambda g: {
            "output_dir": self.run_dir, "seed": self.seed, "per_device_train_batch_size": self.num_prompts * g["num_generations"],
            "max_seconds": self.reasoning_seconds}, GRPO_OWNED, "R1Config")

    @property
    def run_dir(self) -> str:
        return os.path.join(self.runs_dir, self.name)


@dataclass
class R1Options:
    resume: bool = option(False, "go on with runs/<name>: done stages are kept, the running one resumes from its last checkpoint")


def _run(cfg: R1Config, resume: bool = False) -> dict:
    from r1core.recipes.r1_stages import run_r1

    return run_r1(cfg, resume=resume)


def has_run(cfg: R1Config) -> bool:
    return os.path.exists(os.path.join(cfg.run_dir, "run_config.json"))


def commands(sub) -> dict[str, Command]:
    return A.study_command(
        sub, "r1", R1Config, R1Options, _run, has_run, trainers=[
            Section(SFTConfig, "base", BASE_DEFAULTS, BASE_OWNED,
                    title=f"the base's pretraining, base_model train (set by the run: {', '.join(BASE_OWNED)})"),
            Section(SFTConfig, "sft", SFT_DEFAULTS, SFT_OWNED, title=f"stages 1 and 3 (set by the run: {', '.join(SFT_OWNED)})"),
            Section(GRPOConfig, "grpo", GRPO_DEFAULTS, GRPO_OWNED,
                    title=f"stages 2 and 4 and r1_zero (set by the run: {', '.join(GRPO_OWNED)})")],
        help="the four DeepSeek-R1 stages (cold start, reasoning RL, rejection sampling + SFT, RL) vs R1-Zero at the same budget",
        description="On addition whose reasoning may be written in two scripts, from a base that mixes them: cold-start SFT on "
                    "readable examples (--sft.*), GRPO with accuracy, format and language-consistency rewards (--grpo.*), "
                    "rejection sampling mixed with non-reasoning data and SFT from the base, a last GRPO stage with a length "
                    "penalty; and R1-Zero (GRPO from the base) for the seconds the four stages trained. Writes runs/<name>/ "
                    "(metrics.jsonl, plots, summary.json, stages/<stage>/model).")


__all__ = ["STAGES", "R1_STAGES", "SHIPPED_BASE", "R1Config", "R1Options", "commands", "has_run"]
