"""`r1core journey`: journey learning against shortcut learning on Countdown (O1 Replication
Journey part 1; Stream of Search, Gandhi et al. 2024).

Two students from the same random initialisation (a ~1M-parameter Qwen2 over the trace alphabet,
saved as runs/<name>/init): one SFT'd on **journey** traces (a depth-first search written out, its
wrong branches, their checks and the backtracks), one on **shortcut** traces (the same search's
solution path alone) of the same training problems (`r1core.tasks.countdown_traces`; the problems
whose search ran out of budget are left out of both). Each is evaluated on held-out problems, then
trained by the same GRPO budget on top (the countdown reward) and evaluated again: arms
"journey", "shortcut", "journey+grpo", "shortcut+grpo".

The study's setting is the default: 3 numbers from 1..10, targets 1..50, a search budget of 16
steps (78% of problems solved, journey traces 129 characters on average, shortcut 74), 2000
training problems, 128 held-out ones. Its budget is time, the same for both styles: each SFT arm
180 s (batches of 32 traces), each GRPO arm 60 s (8 prompts x 8 samples a step); with the four
held-out evaluations (128 problems, 4 samples and greedy, up to 256 tokens: about 10-20 s each)
the run is meant to end within 10 minutes on 2 cores. Those budgets come from arithmetic and short
measurements on a shared machine, not from a timed full run: 2 x 180 + 2 x 60 s of training, about
60 s of evaluation, 15 s of set-up and saving. A journey example costs about 3.7x a shortcut one
to train on (longer, and padded to the longest of its batch; packing saved nothing here), so at
equal seconds the journey arm sees fewer examples. A first check on one thread with 60 s of SFT
each (64 held-out problems) gave shortcut greedy 0.06 after 146 steps and journey 0.00 after 27.

    r1core journey                              # the study's setting, seed 0, runs/journey/
    r1core journey --seed 1 --name j1 --sft.max-seconds 240
    r1core journey --arms journey,shortcut      # SFT only
    r1core journey --resume                     # a killed run goes on: done arms are kept, the running one resumes
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from r1core.recipes import arms as A
from r1core.recipes.flags import Command, Section, option
from r1core.trainers import GRPOConfig, SFTConfig

ARMS = ("journey", "shortcut", "journey+grpo", "shortcut+grpo")
SFT_DEFAULTS = {"learning_rate": 2e-3, "per_device_train_batch_size": 32, "max_steps": 100_000, "max_seconds": 180.0,
                "max_seq_length": 320, "logging_steps": 10, "save_steps": 50, "warmup_steps": 10, "lr_scheduler_type": "constant"}
GRPO_DEFAULTS = {"num_generations": 8, "learning_rate": 1e-4, "warmup_steps": 5, "epsilon": 0.2, "beta": 0.0, "temperature": 1.0,
                 "loss_type": "dapo", "max_completion_length": 256, "max_steps": 100_000, "max_seconds": 60.0, "save_steps": 25,
                 "logging_steps": 1, "max_grad_norm": 1.0}
SFT_OWNED = {"output_dir": "the arm's folder, runs_dir/name/stages/<arm>", "seed": "the run's seed"}
GRPO_OWNED = {"output_dir": "the arm's folder, runs_dir/name/stages/<arm>", "seed": "the run's seed",
              "per_device_train_batch_size": "num_prompts * grpo.num_generations"}


@dataclass
class JourneyConfig(A.CountdownSetting):
    name: str = option("journey", "the run's folder under runs_dir")
    runs_dir: str = option("runs", "where run folders go")
    seed: int = option(0, "the initialisation, the problems, the traces' search order and the samples")
    train_size: int = option(2000, "training problems drawn (those whose search runs out of budget are left out of both arms)")
    arms: list[str] = field(default_factory=lambda: list(ARMS), metadata={
        "help": f"the arms to run, comma-separated, from {', '.join(ARMS)} (an arm +grpo needs its SFT arm)"})
    num_prompts: int = option(8, "prompts per GRPO step, each sampled grpo.num_generations times")
    progress: bool = option(True, "progress bars and the table at the end")
    sft: SFTConfig = field(default_factory=dict)  # both SFT arms, the same budget
    grpo: GRPOConfig = field(default_factory=dict)  # both +grpo arms, the same budget

    def __post_init__(self):
        from r1core.recipes.r1_zero import _trainer_config

        A.check_setting(self, "JourneyConfig")
        for name in ("train_size", "num_prompts"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"JourneyConfig.{name} must be an int >= 1, got {v!r}")
        if not isinstance(self.arms, (list, tuple)) or not self.arms:
            raise ValueError(f"JourneyConfig.arms must be a non-empty list of arms from {list(ARMS)}, got {self.arms!r}")
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise ValueError(f"JourneyConfig.arms: unknown arm(s) {unknown}; the arms are {list(ARMS)}")
        for a in self.arms:
            if a.endswith("+grpo") and a.split("+")[0] not in self.arms:
                raise ValueError(f"JourneyConfig.arms: {a!r} trains on top of {a.split('+')[0]!r}, which is not in {list(self.arms)}")
        self.arms = [a for a in ARMS if a in self.arms]  # SFT arms before the GRPO ones
        self.sft = _trainer_config("sft", SFTConfig, self.sft, SFT_DEFAULTS, lambda s: {"output_dir": self.run_dir, "seed": self.seed},
                                   SFT_OWNED)
        self.grpo = _trainer_config("grpo", GRPOConfig, self.grpo, {**GRPO_DEFAULTS, "max_completion_length": self.max_new_tokens},
                                    lambda g: {"output_dir": self.run_dir, "seed": self.seed,
                                               "per_device_train_batch_size": self.num_prompts * g["num_generations"]}, GRPO_OWNED)

    @property
    def run_dir(self) -> str:
        return os.path.join(self.runs_dir, self.name)


@dataclass
class JourneyOptions:
    resume: bool = option(False, "go on with runs/<name>: done arms are kept, the running one resumes from its last checkpoint")


# ---- the stages ----------------------------------------------------------------------------------
def training_traces(cfg: JourneyConfig) -> dict[str, list[dict]]:
    """{"journey": rows, "shortcut": rows} of the same problems: those the search solved within its budget."""
    from r1core.tasks.countdown_traces import trace_rows

    problems = A.countdown_problems(cfg, "train", cfg.train_size, cfg.seed)
    out = {style: trace_rows(problems, style, seed=cfg.seed, order=cfg.search_order, budget=cfg.search_budget)
           for style in ("journey", "shortcut")}
    keep = [i for i, r in enumerate(out["journey"]) if r["solved"]]
    if not keep:
        raise ValueError(f"JourneyConfig.search_budget: no training problem was solved within {cfg.search_budget} steps")
    return {style: [rows[i] for i in keep] for style, rows in out.items()}


def initial_model(cfg: JourneyConfig, traces: dict[str, list[dict]]):
    """Both students' initialisation (positions for the longest trace), kept in runs/<name>/init so a
    resumed run starts from the same one."""
    path = os.path.join(cfg.run_dir, "init")
    if os.path.isdir(path):
        return A.load(path)
    model, tok = A.new_model(cfg, traces["journey"])
    model.save_pretrained(path + ".tmp")
    tok.save_pretrained(path + ".tmp")
    os.replace(path + ".tmp", path)
    return model, tok


def sft_arm(cfg: JourneyConfig, arm: str, rows: list[dict], problems: list[dict], resume: bool) -> dict:
    """An SFT arm from the initialisation on its style's traces; returns its summary entry."""
    from r1core.trainers import SFTTrainer

    model, tok = A.load(os.path.join(cfg.run_dir, "init"))
    out = A.stage_dir(cfg.run_dir, arm)
    trainer = SFTTrainer(model, tok, rows, dataclasses.replace(cfg.sft, output_dir=out))
    trainer.metrics_file = "metrics.jsonl"
    trainer.train(resume_from_checkpoint=True if resume and A.has_checkpoint(out) else None, progress=cfg.progress)
    entry = A.evaluate_entry(cfg, arm, model, tok, problems, trainer.elapsed)
    entry.update(train_steps=trainer.global_step, train_examples=len(rows),
                 mean_trace_chars=sum(len(r["completion"]) for r in rows) / len(rows))
    A.finish_stage(cfg.run_dir, entry, model, tok)
    return entry


def grpo_arm(cfg: JourneyConfig, arm: str, problems_train: list[dict], problems: list[dict], resume: bool) -> dict:
    """GRPO (the countdown reward) on top of the arm's SFT model; returns its summary entry."""
    from r1core.rewards import countdown_reward
    from r1core.trainers import GRPOTrainer

    model, tok = A.load(A.stage_model(cfg.run_dir, arm.split("+")[0]))
    out = A.stage_dir(cfg.run_dir, arm)
    engine = A.engine_for(model, tok, cfg, batch=2 * cfg.grpo.per_device_train_batch_size)
    trainer = GRPOTrainer(model, tok, [countdown_reward], problems_train, dataclasses.replace(cfg.grpo, output_dir=out), engine=engine)
    trainer.train(resume_from_checkpoint=True if resume and A.has_checkpoint(out) else None, progress=cfg.progress)
    engine.weights_updated()
    entry = A.evaluate_entry(cfg, arm, model, tok, problems, trainer.elapsed, engine=engine)
    entry.update(train_steps=trainer.global_step)
    A.finish_stage(cfg.run_dir, entry, model, tok)
    return entry


def run_journey(cfg: JourneyConfig, resume: bool = False) -> dict:
    """The whole study; returns the summary written to runs/<name>/summary.json."""
    t0 = A.begin_run(cfg, resume, "init")
    traces = training_traces(cfg)
    problems = A.held_out(cfg)
    initial_model(cfg, traces)

    def run_arm(arm: str) -> dict:
        if arm.endswith("+grpo"):
            plain = [{k: r[k] for k in ("prompt", "numbers", "target")} for r in traces["journey"]]
            return grpo_arm(cfg, arm, plain, problems, resume)
        return sft_arm(cfg, arm, traces[arm], problems, resume)

    entries = list(A.each_stage(cfg.run_dir, cfg.arms, resume, run_arm))
    return A.finish_run(cfg, "arms", entries, t0, "journey vs shortcut on Countdown (held-out)",
                        {"reward": ["reward", "accuracy", "completion_length", "kl", "grad_norm"], "loss": ["loss", "grad_norm"]},
                        seed=cfg.seed, train_problems=len(traces["journey"]), train_problems_drawn=cfg.train_size,
                        eval_prompts=len(problems), eval_samples=cfg.eval_samples)


def has_run(cfg: JourneyConfig) -> bool:
    return os.path.isdir(os.path.join(cfg.run_dir, "init"))


# ---- the command ---------------------------------------------------------------------------------
def commands(sub) -> dict[str, Command]:
    return A.study_command(
        sub, "journey", JourneyConfig, JourneyOptions, run_journey, has_run, trainers=[
            Section(SFTConfig, "sft", SFT_DEFAULTS, SFT_OWNED, title=f"the SFT arms (set by the run: {', '.join(SFT_OWNED)})"),
            Section(GRPOConfig, "grpo", GRPO_DEFAULTS, GRPO_OWNED, title=f"the +grpo arms (set by the run: {', '.join(GRPO_OWNED)})")],
        help="journey vs shortcut learning on Countdown: SFT on search traces vs solution paths, then GRPO",
        description="Two students from one initialisation, SFT'd on journey traces (search with backtracking) and on shortcut traces "
                    "(the solution path) of the same problems (--sft.*), evaluated on held-out problems, then GRPO'd by the same "
                    "budget (--grpo.*) and evaluated again; writes runs/<name>/ (metrics.jsonl, plots, summary.json, "
                    "stages/<arm>/model).")


__all__ = ["ARMS", "JourneyConfig", "JourneyOptions", "commands", "run_journey"]
