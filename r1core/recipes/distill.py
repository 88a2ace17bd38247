"""Distillation on the command line: `r1core rejection-sample` (the data step) and `r1core distill`
(a whole run, with the run directory of `r1core run`).

`r1core distill --teacher DIR --student DIR|tiny|--student-config FILE --mode M` on 3-digit addition
(the default run's task and splits):
  - sequence:   DeepSeek-R1's distillation: `rejection_sample` from the teacher on the training
                prompts (the correct samples, the shortest of each prompt), then SFT (--sft.*) of
                the student on what it kept (runs/<name>/distill_data.jsonl);
  - logit:      `DistillTrainer` on the task's gold completions, the teacher scoring them (--distill.*,
                lmbda 0 unless given);
  - on-policy:  GKD: the student samples (lmbda 1 unless given) and is distilled on its samples;
  - reverse-kl: on-policy distillation as a policy gradient (DistillConfig mode reverse_kl_pg).
`--dataset FILE|DIR` (JSONL, JSON, Parquet, CSV or a saved `datasets` folder; the columns named by
--prompt-column, --answer-column and, where logit mode trains on them, --completion-column) replaces
the addition task: --eval-size of its rows, drawn by the seed, are held out, the rest are trained on,
and the held-out format rate is R1's think/answer tags.
The teacher and the student are evaluated on held-out problems before, the student again after
(pass@1 of samples and greedy accuracy, `r1core.recipes.evaluate`); runs/<name>/ gets
run_config.json, metrics.jsonl (the trainer's), plots/distill.png, summary.json, final/ and a table
on the terminal. The stages are r1_zero's where they are the same (start_run, make_splits, the
trainer configs' nesting and its checks).

`--student-config FILE`: a fresh student of random weights over the teacher's tokenizer, from a JSON
or YAML file of either a transformers config (with `model_type`) or BaseModelSpec's fields
(hidden_size, num_hidden_layers, ...).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import types
from dataclasses import dataclass, field
from typing import Literal

from r1core.recipes.flags import Command, Given, Section, option, read_config_file
from r1core.trainers import DistillConfig, SFTConfig
from r1core.trainers import distributed as dist

MODES = {"sequence": None, "logit": "logit", "on-policy": "logit", "reverse-kl": "reverse_kl_pg"}  # --mode -> DistillConfig.mode
DEFAULT_LMBDA = {"logit": 0.0, "on-policy": 1.0}

# the recipe's trainer settings where they differ from the configs' defaults
DISTILL_DEFAULTS = dict(temperature=1.0, max_new_tokens=48, per_device_train_batch_size=32, learning_rate=1e-3, max_steps=300,
                        logging_steps=5, max_seq_length=64)
SFT_DEFAULTS = dict(learning_rate=2e-3, per_device_train_batch_size=64, max_steps=300, logging_steps=5, max_seq_length=64)
DISTILL_OWNED = {"mode": "--mode", "output_dir": "the run's folder, runs_dir/name", "seed": "the run's seed",
                 "completion_field": "the task rows' 'solution'"}
SFT_OWNED = {"output_dir": "the run's folder, runs_dir/name", "seed": "the run's seed"}


def _fail(name: str, expected: str, got) -> None:
    raise ValueError(f"DistillRunConfig.{name} must be {expected}, got {got!r}")


@dataclass
class DistillRunConfig:
    teacher: str | None = option(None, "the teacher: a model folder (save_pretrained), e.g. runs/r1-zero/final (required)")
    student: str | None = option(None, "the student: a model folder or 'tiny' (a fresh ~1M-parameter Qwen2); or --student-config")
    student_config: str | None = option(
        None, "a fresh student from a JSON/YAML file: a transformers config (model_type) or BaseModelSpec fields")
    mode: Literal["sequence", "logit", "on-policy", "reverse-kl"] = option("logit", "sequence | logit | on-policy | reverse-kl")
    name: str = option("distill", "the run's folder under runs_dir")
    runs_dir: str = option("runs", "where run folders go")
    seed: int = option(0, "training and held-out problems, samples, the student's initialisation")
    digits: int = option(3, "operand digits of the addition problems")
    train_size: int = option(20000, "training problems")
    sample_prompts: int = option(512, "sequence mode: training prompts rejection-sampled from the teacher")
    samples_per_prompt: int = option(4, "sequence mode: teacher samples per prompt")
    eval_size: int = option(256, "held-out prompts for the accuracies before and after")
    eval_samples: int = option(4, "samples per held-out prompt for pass@1 at distill.temperature")
    threads: int = option(2, "torch threads")
    progress: bool = option(True, "progress bars and the table at the end")
    distill: DistillConfig = field(default_factory=dict)
    sft: SFTConfig = field(default_factory=dict)  # sequence mode's SFT on the kept samples

    def __post_init__(self):
        from r1core.recipes.r1_zero import _trainer_config

        if not isinstance(self.teacher, str) or not os.path.isdir(self.teacher):
            _fail("teacher", "a model folder (save_pretrained)", self.teacher)
        if (self.student is None) == (self.student_config is None):
            _fail("student", "a model folder or 'tiny', or else student_config a file (exactly one of the two)", self.student)
        if self.student_config is not None and not os.path.isfile(self.student_config):
            _fail("student_config", "a JSON or YAML file", self.student_config)
        if self.mode not in MODES:
            _fail("mode", f"one of {list(MODES)}", self.mode)
        for name in ("digits", "train_size", "sample_prompts", "samples_per_prompt", "eval_size", "threads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                _fail(name, "an int >= 1", v)
        if not isinstance(self.eval_samples, int) or isinstance(self.eval_samples, bool) or self.eval_samples < 0:
            _fail("eval_samples", "an int >= 0", self.eval_samples)
        if not self.name or "/" in self.name:
            _fail("name", "a folder name (not empty, no '/')", self.name)
        given = self.distill if isinstance(self.distill, dict) else {}
        mode_lmbda = {"lmbda": DEFAULT_LMBDA[self.mode]} if self.mode in DEFAULT_LMBDA and "lmbda" not in given else {}
        defaults = {**DISTILL_DEFAULTS, **mode_lmbda}
        mode = MODES[self.mode] or "logit"
        self.distill = _trainer_config("distill", DistillConfig, self.distill, defaults, lambda d: {
            "mode": mode, "output_dir": self.run_dir, "seed": self.seed, "completion_field": "solution"}, DISTILL_OWNED)
        self.sft = _trainer_config("sft", SFTConfig, self.sft, SFT_DEFAULTS, lambda s: {"output_dir": self.run_dir, "seed": self.seed},
                                   SFT_OWNED)

    @property
    def run_dir(self) -> str:
        return os.path.join(self.runs_dir, self.name)


@dataclass
class DistillOptions:
    resume: bool = option(
        False, "continue the run's training from its last checkpoint (written every --distill.save-steps / --sft.save-steps)")


# ---- the models ----------------------------------------------------------------------------------
def load_student(cfg: DistillRunConfig, teacher_tokenizer):
    """(student, tokenizer): a folder or 'tiny', or a fresh model from cfg.student_config over the
    teacher's tokenizer."""
    from r1core.recipes.base_model import BaseModelSpec, build_model, load_model

    if cfg.student is not None:
        return load_model(cfg.student, cfg.seed)
    spec = read_config_file(cfg.student_config)
    if "model_type" in spec:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        ids = {k: getattr(teacher_tokenizer, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        config = AutoConfig.for_model(**{"vocab_size": len(teacher_tokenizer), **ids, **spec})
        if config.vocab_size != len(teacher_tokenizer):
            raise ValueError(f"--student-config {cfg.student_config}: vocab_size {config.vocab_size} is not the teacher's tokenizer's "
                             f"{len(teacher_tokenizer)}: distillation needs one tokenizer for both")
        config._attn_implementation = "sdpa"
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            return AutoModelForCausalLM.from_config(config), teacher_tokenizer
    fields = {f.name for f in dataclasses.fields(BaseModelSpec)}
    unknown = sorted(set(spec) - fields)
    if unknown:
        raise ValueError(f"--student-config {cfg.student_config}: unknown key(s) {unknown}: a transformers config needs 'model_type', "
                         f"else the keys are BaseModelSpec's {sorted(fields)}")
    return build_model(teacher_tokenizer, BaseModelSpec(**spec), seed=cfg.seed), teacher_tokenizer


def _engine(model, tok):
    from r1core.engine import Engine

    return Engine(model, tokenizer=tok, num_blocks=1024)


# ---- the stages ----------------------------------------------------------------------------------
def evaluate_model(cfg: DistillRunConfig, engine, tok, held_out: list[dict], user_data: bool = False) -> dict:
    """Held-out pass@1 of cfg.eval_samples samples at distill.temperature, greedy accuracy, format
    (the addition scratchpad's, or R1's think/answer tags on a user's --dataset), length."""
    from r1core.recipes.evaluate import evaluate
    from r1core.rewards import accuracy_reward, format_reward, scratchpad_format_reward

    engine.model.eval()
    fmt = format_reward if user_data else scratchpad_format_reward
    return evaluate(engine, tok, held_out, reward_func=accuracy_reward, format_func=fmt,
                    samples=cfg.eval_samples, max_new_tokens=cfg.distill.max_new_tokens, temperature=cfg.distill.temperature,
                    seed=cfg.seed + 17)


def splits(cfg: DistillRunConfig, tok, data=None) -> tuple[list[dict], list[dict]]:
    """(train, held-out): the addition task's (as `r1core run` draws them), or the rows of a user's
    --dataset (`r1core.recipes.user_data.DataOptions`) with eval_size of them, drawn by the seed, held out."""
    import random

    from r1core.recipes.r1_zero import make_splits
    from r1core.recipes.user_data import load_rows

    if data is None or data.dataset is None:
        train, _, held_out = make_splits(types.SimpleNamespace(train_size=cfg.train_size, val_size=0, eval_size=cfg.eval_size,
                                                               seed=cfg.seed, digits=cfg.digits))
        return train, held_out
    # the dataset's completions are trained on only where some steps read them (logit mode's off-policy steps)
    completions = cfg.mode != "sequence" and cfg.distill.needs_dataset_completions
    rows = load_rows(data, tok, completion_field="solution" if completions else None, need_answer=True)
    if len(rows) <= cfg.eval_size:
        raise ValueError(f"--dataset {data.dataset!r}: its {len(rows)} rows leave none to train on once --eval-size "
                         f"{cfg.eval_size} are held out")
    order = random.Random(cfg.seed).sample(range(len(rows)), len(rows))
    return [rows[i] for i in order[cfg.eval_size:]], [rows[i] for i in order[:cfg.eval_size]]


def sequence_data(cfg: DistillRunConfig, teacher, tok, train: list[dict], resume: bool):
    """Sequence mode's data: the teacher's correct samples on cfg.sample_prompts training prompts,
    kept in runs/<name>/distill_data.jsonl (a --resume reads it back) with its statistics."""
    from r1core.data import read_jsonl, rejection_sample
    from r1core.engine import SamplingParams
    from r1core.rewards import accuracy_reward

    path = os.path.join(cfg.run_dir, "distill_data.jsonl")
    stats_path = os.path.join(cfg.run_dir, "distill_data_summary.json")
    if resume and os.path.exists(path) and os.path.exists(stats_path):
        with open(stats_path) as f:
            return read_jsonl(path), json.load(f)
    data = rejection_sample(teacher, tok, train[:cfg.sample_prompts], [accuracy_reward], n=cfg.samples_per_prompt,
                            sampling=SamplingParams(temperature=cfg.distill.temperature, max_new_tokens=cfg.distill.max_new_tokens),
                            seed=cfg.seed, progress=cfg.progress)
    data.to_jsonl(path)
    with open(stats_path, "w") as f:
        json.dump(data.summary, f, indent=1)
    if cfg.progress:
        print("rejection sampling: " + data.summary_line())
    if not data:
        raise ValueError(f"the teacher passed none of its {data.summary['samples']} samples: nothing to distil "
                         f"(a stronger teacher, more --samples-per-prompt or --sample-prompts)")
    return list(data), data.summary


def train_student(cfg: DistillRunConfig, student, teacher, tok, teacher_tok, train: list[dict], resume: bool):
    """The training stage of cfg.mode; returns the trainer (its records are in metrics.jsonl) and
    the data summary of sequence mode (None otherwise)."""
    from r1core.recipes.r1_zero import trainer_has_checkpoint
    from r1core.trainers import DistillTrainer, SFTTrainer

    again = resume and trainer_has_checkpoint(cfg.run_dir)
    if cfg.mode == "sequence":
        rows, data_summary = sequence_data(cfg, teacher, tok, train, resume)
        trainer = SFTTrainer(student, tok, rows, cfg.sft)
        trainer.metrics_file = "metrics.jsonl"  # the run directory's one metrics file, as `r1core run`'s
    else:
        data_summary = None
        trainer = DistillTrainer(student, teacher, tok, train, cfg.distill, teacher_tokenizer=teacher_tok)
    trainer.train(resume_from_checkpoint=True if again else None, progress=cfg.progress)
    return trainer, data_summary


def write_plots(cfg: DistillRunConfig) -> list[str]:
    from r1core.trainers.metrics import plot_metrics, read_jsonl

    recs = read_jsonl(os.path.join(cfg.run_dir, "metrics.jsonl"))
    p = plot_metrics(recs, ["loss", "reverse_kl", "on_policy", "completion_length", "grad_norm", "lr"],
                     os.path.join(cfg.run_dir, "plots", "distill.png"), title=f"distillation ({cfg.mode}) per step")
    return [p] if p else []


def print_table(cfg: DistillRunConfig, before: dict, after: dict, teacher: dict, seconds: float, dataset: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"distillation ({cfg.mode}) on {dataset or f'{cfg.digits}-digit addition'} (held-out)")
    for col, justify in (("metric", "left"), ("student before", "right"), ("student after", "right"), ("teacher", "right")):
        t.add_column(col, justify=justify)
    for key, label in (("accuracy", "accuracy (pass@1)"), ("greedy_accuracy", "greedy accuracy"), ("format_rate", "format rate"),
                       ("completion_length", "mean completion length")):
        if key in before and key in after:
            fmt = "{:.1f}" if key == "completion_length" else "{:.3f}"
            t.add_row(label, fmt.format(before[key]), fmt.format(after[key]), fmt.format(teacher[key]) if key in teacher else "-")
    Console().print(t)
    print(f"wall {seconds:.0f} s; written to {cfg.run_dir}/")


def summarize(cfg: DistillRunConfig, before: dict, after: dict, teacher_eval: dict, trainer, data_summary, student, teacher,
              seconds: dict, dataset: str | None = None) -> dict:
    from r1core.recipes.base_model import num_parameters

    summary = {
        "mode": cfg.mode, "dataset": dataset, "base_accuracy": before.get("accuracy"), "final_accuracy": after.get("accuracy"),
        "base_greedy_accuracy": before["greedy_accuracy"], "final_greedy_accuracy": after["greedy_accuracy"],
        "teacher_accuracy": teacher_eval.get("accuracy"), "teacher_greedy_accuracy": teacher_eval["greedy_accuracy"],
        "wall_seconds": seconds["wall"], "train_seconds": seconds["train"], "train_steps": trainer.global_step, "seed": cfg.seed,
        "teacher": cfg.teacher, "student": cfg.student or cfg.student_config, "student_parameters": num_parameters(student),
        "teacher_parameters": num_parameters(teacher), "eval_prompts": cfg.eval_size, "eval_samples": cfg.eval_samples,
        "rejection_sampling": data_summary, "base": before, "final": after, "teacher_eval": teacher_eval,
    }
    with open(os.path.join(cfg.run_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def run_distill(cfg: DistillRunConfig, resume: bool = False, data=None) -> dict:
    """The whole run; returns the summary written to runs/<name>/summary.json. data: a user's
    --dataset (`r1core.recipes.user_data.DataOptions`) instead of the addition task."""
    from r1core.recipes.base_model import load_model
    from r1core.recipes.r1_zero import start_run
    from r1core.trainers.distill import tokenizer_mismatch

    t0 = time.perf_counter()
    start_run(cfg)
    dataset = data.dataset if data is not None else None
    teacher, teacher_tok = load_model(cfg.teacher, cfg.seed)
    train, held_out = splits(cfg, teacher_tok, data)
    student, tok = load_student(cfg, teacher_tok)
    teacher.to(dist.device_for_rank())  # torchrun on GPUs: this rank's device
    student.to(dist.device_for_rank())
    why = tokenizer_mismatch(tok, teacher_tok)
    if why:  # sequence mode's SFT would train on the teacher's token ids read with another vocabulary
        raise ValueError(f"--student {cfg.student}: its tokenizer differs from the teacher's ({why}); distillation needs one tokenizer")
    teacher_eval = evaluate_model(cfg, _engine(teacher, teacher_tok), teacher_tok, held_out, dataset is not None)
    student_engine = _engine(student, tok)
    before = evaluate_model(cfg, student_engine, tok, held_out, dataset is not None)
    t_train = time.perf_counter()
    trainer, data_summary = train_student(cfg, student, teacher, tok, teacher_tok, train, resume)
    train_seconds = time.perf_counter() - t_train
    trainer.save_model(os.path.join(cfg.run_dir, "final"))
    student_engine.weights_updated()
    with trainer.full_weights():  # FSDP: the student whole for its evaluation
        after = evaluate_model(cfg, student_engine, tok, held_out, dataset is not None)
    wall = time.perf_counter() - t0
    if not dist.is_main():  # under torchrun the other ranks trained and evaluated alongside; rank 0 writes the run's files
        return {}
    summary = summarize(cfg, before, after, teacher_eval, trainer, data_summary, student, teacher, {"wall": wall, "train": train_seconds},
                        dataset)
    summary["plots"] = write_plots(cfg)
    if cfg.progress:
        print_table(cfg, before, after, teacher_eval, wall, dataset)
    return summary


# ---- rejection-sample --------------------------------------------------------------------------
@dataclass
class RejectionSampleOptions:
    model: str | None = option(None, "the model that samples: a folder (save_pretrained) or 'tiny' (required)")
    out: str | None = option(None, "the JSONL file of kept prompt/completion rows (required); its summary goes beside it")
    task: Literal["addition", "countdown", "multiplication"] = option("addition", "generated task")
    digits: int = option(3, "operand digits for arithmetic tasks")
    split: Literal["train", "test"] = option("train", "the task split the prompts come from")
    num_prompts: int = option(256, "prompts")
    n: int = option(8, "samples per prompt")
    temperature: float = option(1.0, "sampling temperature")
    max_new_tokens: int = option(48, "tokens per sample at most (a sample cut off there is never kept)")
    keep: Literal["correct", "all"] = option("correct", "'correct': samples with total reward >= min_reward; 'all': no reward filter")
    per_prompt: int = option(1, "kept samples per prompt at most, the shortest first")
    dedupe: bool = option(True, "keep distinct completions only")
    min_reward: float = option(1.0, "the total reward a sample needs to pass")
    max_tokens: int | None = option(None, "never keep a completion longer than this many tokens; none: no limit")
    rewards: list[str] | None = option(None, "reward names, comma-separated; none: the task's")
    seed: int = option(0, "the prompts' and samples' seed")
    threads: int = option(2, "torch threads")


def cmd_rejection_sample(given: Given) -> int:
    import torch

    from r1core.data import rejection_sample
    from r1core.engine import SamplingParams
    from r1core.recipes.cli import TASK_REWARDS, _load, _reward_funcs, _rows, _user_rows

    o = given.build(RejectionSampleOptions)
    torch.set_num_threads(o.threads)
    model, tok = _load(o.model, o.seed)
    rows = _user_rows(given, tok, limit=o.num_prompts) or _rows(o.task, o.split, o.num_prompts, o.seed, o.digits)
    try:
        data = rejection_sample(model, tok, rows, _reward_funcs(o.rewards or [TASK_REWARDS[o.task]]), n=o.n,
                                sampling=SamplingParams(temperature=o.temperature, max_new_tokens=o.max_new_tokens), keep=o.keep,
                                per_prompt=o.per_prompt, dedupe=o.dedupe, min_reward=o.min_reward, max_tokens=o.max_tokens,
                                seed=o.seed, progress=True)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    data.to_jsonl(o.out)
    stem = o.out[:-len(".jsonl")] if o.out.endswith(".jsonl") else o.out
    with open(stem + ".summary.json", "w") as f:
        json.dump({**data.summary, "per_prompt_stats": data.stats}, f, indent=1)
    print(data.summary_line())
    print(f"wrote {len(data)} rows to {o.out}")
    return 0


def cmd_distill(given: Given) -> int:
    try:
        from r1core.recipes.user_data import DataOptions

        cfg = given.build(DistillRunConfig)
        dist.init_from_env(single=cfg.distill.fsdp or cfg.sft.fsdp)  # torchrun: DDP, or FSDP2 with --distill.fsdp/--sft.fsdp
        if (cfg.distill.fsdp or cfg.sft.fsdp) and not dist.is_initialized():  # before the evaluations, not after them
            flag = "--distill.fsdp" if cfg.distill.fsdp else "--sft.fsdp"
            raise ValueError(f"{flag}: FSDP needs a process group: start the run with torchrun (`torchrun --nproc-per-node N -m "
                             f"r1core.recipes.cli distill ...`; N=1 for one process), or leave it off")
        run_distill(cfg, resume=given.build(DistillOptions).resume, data=given.build(DataOptions))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    return 0


def commands(sub) -> dict[str, Command]:
    """The `rejection-sample` and `distill` commands of the r1core parser."""
    p = sub.add_parser("rejection-sample", help="sample a model n times per prompt, keep the correct samples as SFT data (JSONL)",
                       description="Generate --n samples per prompt of a generated task with --model, score them with the task's "
                                   "reward, keep the passing ones (the shortest first, --per-prompt per prompt) and write them as "
                                   "prompt/completion rows to --out, with a summary beside it.")
    from r1core.recipes.user_data import DataOptions

    data = Section(DataOptions, title="dataset options (a data file or saved datasets folder instead of --task)")
    out = {"rejection-sample": Command(p, [Section(RejectionSampleOptions, title="rejection-sample options"), data],
                                       required=("model", "out"),
                                       func=cmd_rejection_sample)}
    p = sub.add_parser("distill",
                       help="distil a teacher into a student: sequence (rejection sampling + SFT), logit, on-policy or reverse-kl",
                       description="Evaluate the teacher and the student on held-out addition problems (or on rows of --dataset "
                                   "held out by the seed), train the student by --mode "
                                   "(--distill.* for logit, on-policy and reverse-kl; --sft.* for sequence), evaluate it again; writes "
                                   "runs/<name>/ (metrics.jsonl, plots, summary.json, final/).")
    out["distill"] = Command(p, [
        Section(DistillRunConfig, title="DistillRunConfig fields"),
        Section(DistillOptions, title="distill options"), data,
        Section(DistillConfig, "distill", DISTILL_DEFAULTS, DISTILL_OWNED,
                title=f"the DistillTrainer (modes logit, on-policy, reverse-kl; set by the run: {', '.join(DISTILL_OWNED)})"),
        Section(SFTConfig, "sft", SFT_DEFAULTS, SFT_OWNED, title=f"sequence mode's SFT (set by the run: {', '.join(SFT_OWNED)})"),
    ], required=("teacher",), func=cmd_distill)
    return out


__all__ = ["DistillOptions", "DistillRunConfig", "RejectionSampleOptions", "commands", "run_distill"]
