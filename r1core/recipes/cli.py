"""The `r1core` command line: run | grpo | sft | eval | ttc | rejection-sample | distill | journey | star | r1 | study, each with
--help and `--config FILE` (JSON or YAML; flags on the command line win over the file). Flags and
file keys are the fields of the command's configs (r1core.recipes.flags): `sft` and `grpo` have
their trainer config's fields as flat flags beside the command's own options (task, digits, model,
...: SFTOptions, GRPOOptions); `rejection-sample` and `distill` are r1core.recipes.distill's;
`run` holds a GRPOConfig and an SFTConfig and nests them (`--grpo.learning-rate`, `--sft.max-steps`),
its older flat flags (`--learning-rate`, `--sft-max-steps`, ...) still naming the same fields.

    r1core run                                   # the default R1-Zero run (make run)
    r1core run --seed 1 --name s1 --grpo.learning-rate 1e-4
    r1core run --config my_run.yaml              # e.g. `seed: 1` and `grpo: {max_steps: 200}`
    r1core sft --max-steps 300 --save runs/sft/model
    r1core sft --max-steps 600 --save-steps 100 --resume   # continues from runs/sft's last checkpoint
    r1core grpo --model runs/sft/model --max-steps 50
    r1core eval --model runs/r1-zero/final --samples 4
    r1core ttc                                   # test-time compute on the default run's model
"""

from __future__ import annotations

import os

# Before torch is imported: with the default (active) wait policy an OpenMP worker spins on a
# busy core and a 2 ms forward of the tiny model took 200 ms on this 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Literal  # noqa: E402

from r1core.recipes.flags import Command, Given, Parser, Section, option  # noqa: E402

TASK_REWARDS = {"addition": "accuracy", "multiplication": "accuracy", "countdown": "countdown", "code": "code"}
REWARDS = ("accuracy", "format", "countdown", "scratchpad_format", "code")


def _expect(obj, name: str, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"{type(obj).__name__}.{name} must be {expected}, got {getattr(obj, name)!r}")


def _count(v, low: int = 1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


@dataclass
class TaskOptions:
    """The generated task a command trains or evaluates on, and its threads."""

    task: Literal["addition", "code", "countdown", "multiplication"] = option("addition", "generated task")
    digits: int = option(3, "operand digits for arithmetic tasks")
    threads: int = option(2, "torch threads")

    def __post_init__(self):
        _expect(self, "task", self.task in TASK_REWARDS, f"one of {sorted(TASK_REWARDS)}")
        for name in ("digits", "threads"):
            _expect(self, name, _count(getattr(self, name)), "an int >= 1")


@dataclass
class TrainOptions(TaskOptions):
    train_size: int = option(20000, "generated training rows")
    resume: bool = option(False, "continue from the last checkpoint in --output-dir (written every --save-steps)")

    def __post_init__(self):
        super().__post_init__()
        _expect(self, "train_size", _count(self.train_size), "an int >= 1")
        _expect(self, "resume", isinstance(self.resume, bool), "true or false")


@dataclass
class SFTOptions(TrainOptions):
    model: str = option("tiny", "a model folder (save_pretrained) or 'tiny' for a fresh ~1M-parameter Qwen2")
    save: str | None = option(None, "where to save the trained model; none: <output_dir>/model")

    def __post_init__(self):
        super().__post_init__()
        _expect(self, "model", isinstance(self.model, str) and self.model != "", "a model folder or 'tiny'")
        _expect(self, "save", self.save is None or isinstance(self.save, str), "a folder or none")


@dataclass
class GRPOOptions(TrainOptions):
    model: str | None = option(None, "a model folder (save_pretrained), e.g. from `r1core sft` (required, here or in --config)")
    rewards: list[str] | None = option(None, f"reward names ({', '.join(REWARDS)}), comma-separated; none: the task's")

    def __post_init__(self):
        super().__post_init__()
        _expect(self, "model", isinstance(self.model, str) and self.model != "", "a model folder or 'tiny'")
        # an empty list (`--rewards ""`) fell back to the task's rewards: a slip, not a choice
        _expect(self, "rewards", self.rewards is None or (isinstance(self.rewards, list) and self.rewards != []
                                                          and all(r in REWARDS for r in self.rewards)),
                f"none or a list of names from {REWARDS}, at least one")


@dataclass
class EvalOptions(TaskOptions):
    model: str | None = option(None, "a model folder (save_pretrained) or 'tiny' (required, here or in --config)")
    split: Literal["train", "test"] = option("test", "the task split the prompts come from")
    n: int = option(256, "prompts")
    samples: int = option(4, "samples per prompt at --temperature")
    temperature: float = option(1.0, "sampling temperature")
    max_new_tokens: int = option(48, "tokens per completion at most")
    seed: int = option(0, "the prompts' and samples' seed")
    output: str | None = option(None, "also write the JSON result here")

    def __post_init__(self):
        super().__post_init__()
        _expect(self, "model", isinstance(self.model, str) and self.model != "", "a model folder or 'tiny'")
        _expect(self, "split", self.split in ("train", "test"), "'train' or 'test'")
        for name in ("n", "max_new_tokens"):
            _expect(self, name, _count(getattr(self, name)), "an int >= 1")
        _expect(self, "samples", _count(self.samples, 0), "an int >= 0")
        _expect(self, "temperature", isinstance(self.temperature, (int, float)) and not isinstance(self.temperature, bool)
                and self.temperature >= 0, "a number >= 0")
        _expect(self, "seed", isinstance(self.seed, int) and not isinstance(self.seed, bool), "an int")
        _expect(self, "output", self.output is None or isinstance(self.output, str), "a file name or none")


@dataclass
class RunOptions:
    resume: bool = option(False, "reuse runs/<name>/base and continue GRPO from the last checkpoint")

    def __post_init__(self):
        _expect(self, "resume", isinstance(self.resume, bool), "true or false")


def _load(path: str, seed: int, task: str = "addition"):
    from r1core.recipes.base_model import BaseModelSpec, build_model, load_model
    from r1core.tasks import CODE_TASKS
    from r1core.tasks.tokenizer import build_tokenizer

    try:
        if path == "tiny" and task in CODE_TASKS:  # prose and code: every printable character, longer sequences
            tok = build_tokenizer()
            return build_model(tok, BaseModelSpec(max_position_embeddings=512), seed=seed), tok
        return load_model(path, seed)
    except ValueError as e:
        raise SystemExit(f"error: --model: {e}") from None


def _check_dir(path: str, flag: str) -> None:
    """One line naming the flag unless `path` is (or can be made) a writable folder: checked before
    any training or evaluation, so a bad path costs no work."""
    from r1core.trainers.checkpoint import check_writable_dir

    try:
        check_writable_dir(path, flag)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def _rows(task: str, split: str, n: int, seed: int, digits: int):
    from r1core.tasks import generate

    kwargs = {"digits": digits} if task in ("addition", "multiplication") else {}
    return generate(task, split, n, seed=seed, **kwargs)


def _user_rows(given: Given, tok, **kw):
    """The rows of --dataset (r1core.recipes.user_data), or None for the generated task."""
    from r1core.recipes.user_data import DataOptions, load_rows

    opts = given.build(DataOptions)
    if opts.dataset is None:
        return None
    try:
        return load_rows(opts, tok, **kw)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def _reward_funcs(names: list[str]):
    import r1core.rewards as R

    table = {"accuracy": R.accuracy_reward, "format": R.format_reward, "countdown": R.countdown_reward,
             "scratchpad_format": R.scratchpad_format_reward, "code": R.code_reward}
    bad = [n for n in names if n not in table]
    if bad:
        raise SystemExit(f"error: --rewards: unknown reward(s) {bad}; choose from {sorted(table)}")
    return [table[n] for n in names]


def cmd_run(given: Given) -> int:
    from r1core.recipes.r1_zero import RunConfig, has_run, run

    cfg, resume = given.build(RunConfig), given.build(RunOptions).resume
    if resume and not has_run(cfg):
        raise SystemExit(f"error: --resume: {cfg.run_dir!r} holds no run to resume (no base model, no checkpoint); "
                         f"check --name, or start the run without --resume")
    summary = run(cfg, resume=resume)
    return 0 if summary["final_accuracy"] is not None else 1


def cmd_sft(given: Given) -> int:
    import torch

    from r1core.trainers import SFTConfig, SFTTrainer
    from r1core.trainers import distributed as dist

    opts = given.build(SFTOptions)
    torch.set_num_threads(opts.threads)
    cfg = given.build(SFTConfig)
    _check_dir(opts.save or os.path.join(cfg.output_dir, "model"), "--save")
    dist.init_from_env(single=cfg.fsdp)  # torchrun: DDP, or FSDP2 with --fsdp (docs/parallel.md)
    model, tok = _load(opts.model, cfg.seed, opts.task)
    model.to(dist.device_for_rank())
    rows = _user_rows(given, tok, prompt_field=cfg.prompt_field, completion_field=cfg.completion_field)
    rows = rows or _rows(opts.task, "train", opts.train_size, cfg.seed, opts.digits)
    try:
        trainer = SFTTrainer(model, tok, rows, cfg)
        trainer.train(resume_from_checkpoint=True if opts.resume else None)
    except ValueError as e:  # bad data, or nothing to resume: the message names it
        raise SystemExit(f"error: {e}") from None
    save = opts.save or os.path.join(cfg.output_dir, "model")
    if cfg.fsdp:  # the shards gathered into one model.safetensors (every rank takes part)
        trainer.save_model(save)
    elif dist.is_main():
        model.save_pretrained(save)
        tok.save_pretrained(save)
    if dist.is_main():
        print(f"saved the model to {save}/")
    return 0


def cmd_grpo(given: Given) -> int:
    import torch

    from r1core.trainers import GRPOConfig, GRPOTrainer
    from r1core.trainers import distributed as dist

    opts = given.build(GRPOOptions)
    torch.set_num_threads(opts.threads)
    cfg = given.build(GRPOConfig)
    dist.init_from_env(single=cfg.fsdp)
    model, tok = _load(opts.model, cfg.seed, opts.task)
    model.to(dist.device_for_rank())
    rows = _user_rows(given, tok) or _rows(opts.task, "train", opts.train_size, cfg.seed, opts.digits)
    names = opts.rewards or [TASK_REWARDS[opts.task]]
    try:
        trainer = GRPOTrainer(model, tok, _reward_funcs(names), rows, cfg)
        trainer.train(resume_from_checkpoint=True if opts.resume else None)
    except ValueError as e:  # bad data or rewards, or nothing to resume: the message names it
        raise SystemExit(f"error: {e}") from None
    trainer.save_model(os.path.join(cfg.output_dir, "final"))
    if dist.is_main():
        from r1core.recipes.r1_zero import write_plots

        write_plots(cfg.output_dir)
    return 0


def cmd_eval(given: Given) -> int:
    import torch

    from r1core.engine import Engine
    from r1core.recipes.evaluate import evaluate
    from r1core.rewards import format_reward, scratchpad_format_reward

    o = given.build(EvalOptions)
    torch.set_num_threads(o.threads)
    if o.output:  # before the evaluation, not after it
        if os.path.isdir(o.output):
            raise SystemExit(f"error: --output: {o.output!r} is a folder; expected a file name")
        _check_dir(os.path.dirname(os.path.abspath(o.output)), "--output")
    model, tok = _load(o.model, o.seed, o.task)
    rows = _user_rows(given, tok, need_answer=True, limit=o.n) or _rows(o.task, o.split, o.n, o.seed, o.digits)
    reward = _reward_funcs([TASK_REWARDS[o.task]])[0]
    fmt = {"countdown": format_reward, "code": None}.get(o.task, scratchpad_format_reward)
    res = evaluate(Engine(model, tokenizer=tok), tok, rows, reward_func=reward, format_func=fmt, samples=o.samples,
                   temperature=o.temperature, max_new_tokens=o.max_new_tokens, seed=o.seed)
    text = json.dumps(res, indent=1)
    print(text)
    if o.output:
        with open(o.output, "w") as fh:
            fh.write(text + "\n")
    return 0


def cmd_ttc(given: Given) -> int:
    from r1core.recipes.ttc import TTCConfig, run_ttc

    try:
        run_ttc(given.build(TTCConfig))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    return 0


# `r1core run`'s flat flags from before its config held a GRPOConfig and an SFTConfig: field -> old name.
RUN_GRPO_ALIASES = {n: (n,) for n in ("num_generations", "learning_rate", "lr_scheduler_type", "warmup_steps", "epsilon", "beta",
                                      "temperature", "loss_type", "max_completion_length", "max_steps", "max_seconds", "save_steps")}
RUN_SFT_ALIASES = {"learning_rate": ("sft_learning_rate",), "per_device_train_batch_size": ("sft_batch_size",),
                   "logging_steps": ("sft_check_every",), "max_steps": ("sft_max_steps",), "max_seconds": ("sft_max_seconds",),
                   "save_steps": ("sft_save_steps",)}


def _commands(sub) -> dict[str, Command]:
    from r1core.recipes.distill import commands as distill_commands
    from r1core.recipes.journey import commands as journey_commands
    from r1core.recipes.r1 import commands as r1_commands
    from r1core.recipes.r1_zero import GRPO_DEFAULTS, GRPO_OWNED, SFT_DEFAULTS, SFT_OWNED, RunConfig
    from r1core.recipes.star import commands as star_commands
    from r1core.recipes.study import commands as study_commands
    from r1core.recipes.ttc import TTCConfig
    from r1core.recipes.user_data import DataOptions
    from r1core.trainers import GRPOConfig, SFTConfig

    data = Section(DataOptions, title="dataset options (a data file or saved datasets folder instead of --task)")

    run = RunConfig()
    p = sub.add_parser("run", help=f"the default R1-Zero run: a tiny SFT base model, then GRPO on {run.digits}-digit addition",
                       description=f"Take the ~1M-parameter base model shipped in the repository (--base-model shipped; made by SFT "
                                   f"until greedy accuracy {run.sft_target_accuracy:.2f} on validation prompts) or SFT one the same way "
                                   f"first (--base-model train, --sft-target-accuracy, --sft.*), GRPO it (--grpo.*), evaluate before "
                                   "and after; writes runs/<name>/ (metrics.jsonl, plots, summary.json).",
                       epilog="Parallel modes (docs/parallel.md): this recipe runs in one process. `r1core sft`, `r1core grpo` and "
                              "`r1core distill` run in one process, under torchrun with DDP (torchrun --nproc-per-node N -m "
                              "r1core.recipes.cli grpo ...), with FSDP2 (add --fsdp; --distill.fsdp for distill), and on several "
                              "nodes (torchrun --nnodes M --rdzv-backend c10d --rdzv-endpoint HOST:PORT ... on each node).")
    commands = {"run": Command(p, [
        Section(RunConfig, title="RunConfig fields"),
        Section(RunOptions, title="run options"),
        Section(GRPOConfig, "grpo", GRPO_DEFAULTS, GRPO_OWNED, RUN_GRPO_ALIASES,
                title=f"GRPO (RunConfig.grpo, a GRPOConfig; set by the run: {', '.join(GRPO_OWNED)})"),
        Section(SFTConfig, "sft", SFT_DEFAULTS, SFT_OWNED, RUN_SFT_ALIASES,
                title="the base model's SFT with --base-model train "
                      f"(RunConfig.sft, an SFTConfig; set by the run: {', '.join(SFT_OWNED)})"),
    ], func=cmd_run)}

    p = sub.add_parser("sft", help="SFT on a generated task's gold completions (loss on completion tokens only)")
    commands["sft"] = Command(p, [Section(SFTOptions, title="sft options"), data,
                                  Section(SFTConfig, defaults={"completion_field": "solution"}, title="SFTConfig fields")], func=cmd_sft)

    p = sub.add_parser("grpo", help="GRPO with rule-based rewards on a generated task (torchrun for several processes)")
    commands["grpo"] = Command(p, [Section(GRPOOptions, title="grpo options"), data,
                                   Section(GRPOConfig, title="GRPOConfig fields")],
                               required=("model",), func=cmd_grpo)

    p = sub.add_parser("eval", help="held-out accuracy (pass@1 of samples, greedy), format rate, completion length")
    commands["eval"] = Command(p, [Section(EvalOptions, title="eval options"), data], required=("model",),
                               func=cmd_eval)

    p = sub.add_parser("ttc", help="test-time compute: majority, best-of-N, weighted best-of-N, beam search, DVTS, MCTS at budgets 1..64",
                       description="Accuracy against generated tokens for every method on held-out problems with the default run's model "
                                   "(runs/<name>/final) or --model DIR; writes runs/<name>/ttc.json, ttc.md and ttc.png.")
    commands["ttc"] = Command(p, [Section(TTCConfig, title="TTCConfig fields")], func=cmd_ttc)
    commands.update(distill_commands(sub))  # rejection-sample, distill
    commands.update(journey_commands(sub))
    commands.update(star_commands(sub))
    commands.update(r1_commands(sub))
    commands.update(study_commands(sub))  # study distill, study all
    return commands


def build_parser() -> tuple[Parser, dict[str, Command]]:
    parser = Parser(prog="r1core", description="R1-style reasoning: GRPO, SFT and evaluation on generated tasks.")
    sub = parser.add_subparsers(dest="command", required=True)
    return parser, _commands(sub)


def parse(argv: list[str] | None = None) -> Given:
    """What the command line (and its --config file) gives the command it names."""
    parser, commands = build_parser()
    ns = parser.parse_args(argv)
    return commands[ns.command].read(ns)


def main(argv: list[str] | None = None) -> int:
    given = parse(argv)
    return given.command.func(given)


if __name__ == "__main__":
    sys.exit(main())
