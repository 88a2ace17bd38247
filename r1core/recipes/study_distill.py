"""`r1core study distill`: distillation against RL on a small student (DeepSeek-R1's Table 6: the
small model SFT'd on the big one's verified samples beats the small model trained by RL alone).

The setting is the one where distillation can carry something the student's own data lacks:
3-digit addition whose **student data holds answers only** (`864+394=` -> `A1258`) while the
teacher writes the column-by-column reasoning (`T4+4+0=8,6+9+0=15,8+3+1=12;A1258`). (Where the
student's data holds the scratchpad too, 90% of the teacher's correct samples equal the gold
solutions and distillation is only SFT on gold.)

The teacher: `--teacher shipped` (the default), r1core/recipes/assets/addition3-teacher, made by
`r1core run` (GRPO on the shipped base; its provenance.json says how), or `--teacher DIR`, any
model over the addition tokenizer (another tokenizer is an error that names it). The student: a
fresh, smaller Qwen2 (hidden `student_hidden_size`, `student_layers` layers) over the same
tokenizer, first SFT'd for `base_seconds` on the answers-only rows (runs/<name>/student_base; every
arm starts from it). Then, each arm from that base for the same `arm_seconds` of training:

  - rl:          GRPO on the student alone (accuracy reward, the answers-only prompts);
  - sequence:    SFT on the teacher's rejection-sampled correct samples (r1core.data.rejection_sample,
                 `sample_prompts` x `samples_per_prompt` at temperature 1, the shortest correct one
                 of each prompt; runs/<name>/teacher_data.jsonl, sampled once, its seconds counted apart);
  - logit:       offline logit distillation on those same samples (DistillTrainer, lmbda 0: the
                 teacher scores every token of the fixed sequences);
  - on_policy:   GKD: the student samples, the teacher grades each token (lmbda 1, forward-KL JSD);
  - reverse_kl:  on-policy reverse KL as a policy gradient (DistillConfig mode reverse_kl_pg);

and the teacher itself as the arm "teacher". Every arm is evaluated on `eval_size` held-out
problems: pass@1 of `eval_samples` samples at temperature 1, greedy accuracy, format rate (the
share of completions that are a well-formed scratchpad: an answers-only completion is not),
mean completion tokens.

Budget (defaults): student base 30 s, 5 arms x 110 s, the teacher's sampling (2048 prompts x 4, about
60 s on a loaded machine) and seven held-out evaluations (128 problems, 4 samples and greedy, up to
48 tokens): about 11 minutes on 2 cores by arithmetic, meant to stay under 15. On a loaded machine
(load average 8, 2 threads, 64 held-out problems) the sequence arm reached greedy 0.25 (format
0.96) after 150 s (557 steps; its loss still falling fast), 0.02 after 60 s (183 steps); the
answers-only base and the rl arm stayed at 0.00.

    r1core study distill                                  # seed 0, runs/study-distill/
    r1core study distill --seed 1 --arm-seconds 120 --name sd1
    r1core study distill --teacher runs/r1-zero/final     # another teacher over the addition tokenizer
    r1core study distill --resume                         # done arms kept, the running one resumes
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field

from r1core.recipes import arms as A
from r1core.recipes.flags import Command, Section, option
from r1core.trainers import DistillConfig, GRPOConfig, SFTConfig

ARMS = ("rl", "sequence", "logit", "on_policy", "reverse_kl")
SHIPPED_TEACHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "addition3-teacher")
ARM_OWNED = {"output_dir": "the arm's folder, runs_dir/name/stages/<arm>", "seed": "the run's seed",
             "max_seconds": "arm_seconds (base_seconds for the student's base)"}
SFT_DEFAULTS = {"learning_rate": 2e-3, "per_device_train_batch_size": 64, "max_steps": 100_000, "max_seq_length": 64,
                "logging_steps": 10, "save_steps": 50, "completion_field": "completion"}
GRPO_DEFAULTS = {"num_generations": 8, "learning_rate": 1.5e-4, "warmup_steps": 5, "epsilon": 0.2, "beta": 0.0, "temperature": 1.0,
                 "loss_type": "dapo", "max_completion_length": 48, "max_steps": 100_000, "save_steps": 25, "logging_steps": 5,
                 "max_grad_norm": 1.0}
# beta 0: the forward KL (teacher || student), the classic logit distillation: its gradient is the cross-entropy's on soft
# targets, where the JSD's (beta 0.5) flattens as the two get close (a first probe: its loss went 0.55 -> 0.46 in 75 steps)
DISTILL_DEFAULTS = {"beta": 0.0, "temperature": 1.0, "max_new_tokens": 48, "per_device_train_batch_size": 32, "learning_rate": 2e-3,
                    "max_steps": 100_000, "logging_steps": 5, "save_steps": 25, "max_seq_length": 64, "completion_field": "completion"}
DISTILL_OWNED = {**ARM_OWNED, "mode": "the arm (reverse_kl: reverse_kl_pg, else logit)", "lmbda": "the arm (logit 0, on_policy 1)"}
GRPO_OWNED = {**ARM_OWNED, "per_device_train_batch_size": "num_prompts * grpo.num_generations"}
ARM_DISTILL = {"logit": {"mode": "logit", "lmbda": 0.0}, "on_policy": {"mode": "logit", "lmbda": 1.0},
               "reverse_kl": {"mode": "reverse_kl_pg", "lmbda": 1.0}}


@dataclass
class StudyDistillConfig:
    name: str = option("study-distill", "the run's folder under runs_dir")
    runs_dir: str = option("runs", "where run folders go")
    seed: int = option(0, "the student's initialisation, the problems and the samples")
    teacher: str = option("shipped", "'shipped' (r1core/recipes/assets/addition3-teacher) or a model folder over the addition tokenizer")
    arms: list[str] = field(default_factory=lambda: list(ARMS), metadata={
        "help": f"the student arms to run, comma-separated, from {', '.join(ARMS)} (the teacher is always evaluated)"})
    digits: int = option(3, "operand digits of the addition problems")
    train_size: int = option(20000, "training problems (answers only: the student never sees a scratchpad of its own)")
    eval_size: int = option(128, "held-out problems (the test split: never trained on)")
    eval_samples: int = option(4, "samples per held-out problem for pass@1 at temperature 1")
    max_new_tokens: int = option(48, "tokens per completion at most (evaluation and the teacher's samples)")
    student_hidden_size: int = option(64, "the student's width (a Qwen2, 4 heads, MLP 4x)")
    student_layers: int = option(2, "the student's depth")
    base_seconds: float = option(30.0, "the student's base: SFT on the answers-only rows for this long (--sft.* otherwise)")
    arm_seconds: float = option(110.0, "each student arm's training budget, the same for all")
    sample_prompts: int = option(2048, "training prompts the teacher samples for the sequence and logit arms")
    samples_per_prompt: int = option(4, "teacher samples per prompt (the shortest correct one is kept)")
    num_prompts: int = option(8, "prompts per GRPO step (rl), each sampled grpo.num_generations times")
    threads: int = option(2, "torch threads")
    progress: bool = option(True, "progress bars and the table at the end")
    sft: SFTConfig = field(default_factory=dict)  # the student's base and the sequence arm
    grpo: GRPOConfig = field(default_factory=dict)  # the rl arm
    distill: DistillConfig = field(default_factory=dict)  # the logit, on_policy and reverse_kl arms

    def __post_init__(self):
        from r1core.recipes.r1_zero import _trainer_config

        for name in ("digits", "train_size", "eval_size", "max_new_tokens", "student_hidden_size", "student_layers", "sample_prompts",
                     "samples_per_prompt", "num_prompts", "threads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"StudyDistillConfig.{name} must be an int >= 1, got {v!r}")
        if not isinstance(self.eval_samples, int) or isinstance(self.eval_samples, bool) or self.eval_samples < 0:
            raise ValueError(f"StudyDistillConfig.eval_samples must be an int >= 0, got {self.eval_samples!r}")
        if self.student_hidden_size % 4:
            raise ValueError(f"StudyDistillConfig.student_hidden_size must be a multiple of 4 (4 heads), got {self.student_hidden_size!r}")
        for name in ("base_seconds", "arm_seconds"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
                raise ValueError(f"StudyDistillConfig.{name} must be a number of seconds > 0, got {v!r}")
        if not self.name or "/" in self.name:
            raise ValueError(f"StudyDistillConfig.name must name a folder (not empty, no '/'), got {self.name!r}")
        if self.teacher != "shipped" and not os.path.isdir(self.teacher):
            raise ValueError(f"StudyDistillConfig.teacher must be 'shipped' or a model folder, got {self.teacher!r} (no such folder)")
        check_teacher_tokenizer(self.teacher_dir)
        if not isinstance(self.arms, (list, tuple)) or not self.arms:
            raise ValueError(f"StudyDistillConfig.arms must be a non-empty list of arms from {list(ARMS)}, got {self.arms!r}")
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise ValueError(f"StudyDistillConfig.arms: unknown arm(s) {unknown}; the arms are {list(ARMS)}")
        self.arms = [a for a in ARMS if a in self.arms]
        mine = lambda d: {"output_dir": self.run_dir, "seed": self.seed, "max_seconds": float(self.arm_seconds)}  # noqa: E731
        self.sft = _trainer_config("sft", SFTConfig, self.sft, SFT_DEFAULTS, mine, ARM_OWNED)
        self.grpo = _trainer_config("grpo", GRPOConfig, self.grpo, {**GRPO_DEFAULTS, "max_completion_length": self.max_new_tokens},
                                    lambda g: {**mine(g), "per_device_train_batch_size": self.num_prompts * g["num_generations"]},
                                    GRPO_OWNED)
        self.distill = _trainer_config("distill", DistillConfig, self.distill, {**DISTILL_DEFAULTS, "max_new_tokens": self.max_new_tokens},
                                       lambda d: {**mine(d), "mode": "logit", "lmbda": 0.0}, DISTILL_OWNED)

    @property
    def run_dir(self) -> str:
        return os.path.join(self.runs_dir, self.name)

    @property
    def teacher_dir(self) -> str:
        return SHIPPED_TEACHER if self.teacher == "shipped" else self.teacher


@dataclass
class StudyDistillOptions:
    resume: bool = option(False, "go on with runs/<name>: done arms are kept, the running one resumes from its last checkpoint")


# ---- data and models -----------------------------------------------------------------------------
def problems(cfg: StudyDistillConfig) -> tuple[list[dict], list[dict]]:
    """(training rows with answers only: prompt and answer, no solution; held-out rows)."""
    import types

    from r1core.recipes.r1_zero import make_splits

    train, _, held = make_splits(types.SimpleNamespace(train_size=cfg.train_size, val_size=0, eval_size=cfg.eval_size, seed=cfg.seed,
                                                       digits=cfg.digits))
    return [{"prompt": r["prompt"], "answer": r["answer"]} for r in train], held


def check_teacher_tokenizer(path: str) -> None:
    """A teacher over another tokenizer than the addition task's (the student's) is an error naming it."""
    from r1core.recipes.base_model import build_tokenizer
    from r1core.trainers.distill import tokenizer_mismatch

    if any(os.path.exists(os.path.join(path, n)) for n in ("tokenizer.json", "tokenizer_config.json")):
        from transformers import AutoTokenizer

        why = tokenizer_mismatch(build_tokenizer(), AutoTokenizer.from_pretrained(path))
        if why:
            raise ValueError(f"StudyDistillConfig.teacher: {path!r} has a tokenizer that differs from the student's (the addition "
                             f"task's: {why}); distillation needs one tokenizer")


def load_teacher(cfg: StudyDistillConfig):
    from r1core.recipes.base_model import load_model

    return load_model(cfg.teacher_dir, cfg.seed)


def student_base(cfg: StudyDistillConfig, train: list[dict], resume: bool) -> str:
    """runs/<name>/student_base: a fresh small student SFT'd for base_seconds on the answers-only rows."""
    from r1core.recipes.base_model import BaseModelSpec, build_model, build_tokenizer
    from r1core.trainers import SFTTrainer

    path = os.path.join(cfg.run_dir, "student_base")
    if os.path.isdir(path):
        return path
    tok = build_tokenizer()
    spec = BaseModelSpec(hidden_size=cfg.student_hidden_size, intermediate_size=4 * cfg.student_hidden_size,
                         num_hidden_layers=cfg.student_layers,
                         max_position_embeddings=16 * -(-(cfg.max_new_tokens + 2 * cfg.digits + 4) // 16))
    model = build_model(tok, spec, seed=cfg.seed)
    out = os.path.join(cfg.run_dir, "student_sft")
    rows = [{"prompt": r["prompt"], "completion": "A" + r["answer"]} for r in train]
    trainer = SFTTrainer(model, tok, rows, dataclasses.replace(cfg.sft, output_dir=out, max_seconds=float(cfg.base_seconds)))
    trainer.train(resume_from_checkpoint=True if resume and A.has_checkpoint(out) else None, progress=cfg.progress)
    model.save_pretrained(path + ".tmp")
    tok.save_pretrained(path + ".tmp")
    os.replace(path + ".tmp", path)
    return path


def teacher_data(cfg: StudyDistillConfig, teacher, tok, train: list[dict]) -> tuple[list[dict], dict]:
    """The teacher's correct samples on sample_prompts training prompts (prompt, completion, answer),
    kept in runs/<name>/teacher_data.jsonl with their statistics; read back when there."""
    from r1core.data import read_jsonl, rejection_sample, write_jsonl
    from r1core.engine import SamplingParams
    from r1core.rewards import accuracy_reward

    path, stats_path = (os.path.join(cfg.run_dir, f) for f in ("teacher_data.jsonl", "teacher_data_summary.json"))
    if os.path.exists(path) and os.path.exists(stats_path):
        with open(stats_path) as f:
            return read_jsonl(path), json.load(f)
    t0 = time.perf_counter()
    data = rejection_sample(teacher, tok, train[:cfg.sample_prompts], [accuracy_reward], n=cfg.samples_per_prompt,
                            sampling=SamplingParams(temperature=1.0, max_new_tokens=cfg.max_new_tokens), seed=cfg.seed,
                            progress=cfg.progress)
    if not data:
        raise ValueError(f"StudyDistillConfig.teacher: {cfg.teacher_dir!r} passed none of its {data.summary['samples']} samples: nothing "
                         "to distil (a stronger teacher, or more sample_prompts / samples_per_prompt)")
    rows = [{"prompt": r["prompt"], "completion": r["completion"], "answer": r["answer"]} for r in data]
    write_jsonl(rows, path + ".tmp")
    stats = {**data.summary, "seconds": time.perf_counter() - t0}
    with open(stats_path, "w") as f:
        json.dump(stats, f, indent=1)
    os.replace(path + ".tmp", path)
    return rows, stats


# ---- the arms ------------------------------------------------------------------------------------
def _engine(model, tok):
    from r1core.engine import Engine

    return Engine(model, tokenizer=tok, num_blocks=1024)


def evaluate_entry(cfg: StudyDistillConfig, name: str, model, tok, held: list[dict], seconds: float, engine=None) -> dict:
    from r1core.rewards import accuracy_reward, scratchpad_format_reward

    return A.evaluate_entry(cfg, name, model, tok, held, seconds, engine=engine or _engine(model, tok), reward_func=accuracy_reward,
                            format_func=scratchpad_format_reward)


def train_arm(cfg: StudyDistillConfig, arm: str, base: str, teacher, train: list[dict], data: list[dict], resume: bool):
    """The arm's student trained from the base for arm_seconds; (model, tokenizer, trainer, engine)."""
    from r1core.trainers import DistillTrainer, GRPOTrainer, SFTTrainer

    model, tok = A.load(base)
    out = A.stage_dir(cfg.run_dir, arm)
    again = True if resume and A.has_checkpoint(out) else None
    engine = None
    if arm == "rl":
        from r1core.rewards import accuracy_reward

        engine = _engine(model, tok)
        trainer = GRPOTrainer(model, tok, [accuracy_reward], train, dataclasses.replace(cfg.grpo, output_dir=out), engine=engine)
    elif arm == "sequence":
        trainer = SFTTrainer(model, tok, data, dataclasses.replace(cfg.sft, output_dir=out))
        trainer.metrics_file = "metrics.jsonl"
    else:
        rows = data if arm == "logit" else train
        trainer = DistillTrainer(model, teacher, tok, rows, dataclasses.replace(cfg.distill, output_dir=out, **ARM_DISTILL[arm]))
    trainer.train(resume_from_checkpoint=again, progress=cfg.progress)
    if engine is not None:
        engine.weights_updated()
    return model, tok, trainer, engine


def run_arm(cfg: StudyDistillConfig, arm: str, base: str, teacher, teacher_tok, train: list[dict], data: list[dict], held: list[dict],
            resume: bool) -> dict:
    if arm == "teacher":
        t0 = time.perf_counter()
        entry = evaluate_entry(cfg, arm, teacher, teacher_tok, held, 0.0)
        entry["seconds"] = time.perf_counter() - t0
    else:
        model, tok, trainer, engine = train_arm(cfg, arm, base, teacher, train, data, resume)
        entry = evaluate_entry(cfg, arm, model, tok, held, trainer.elapsed, engine=engine)
        entry.update(train_steps=trainer.global_step)
    A.finish_stage(cfg.run_dir, entry)
    return entry


def run_study_distill(cfg: StudyDistillConfig, resume: bool = False) -> dict:
    """The whole study; returns the summary written to runs/<name>/summary.json."""
    from r1core.recipes.base_model import num_parameters

    teacher, teacher_tok = load_teacher(cfg)
    t0 = A.begin_run(cfg, resume, "student_base", "student_sft")
    if not resume:  # the old run's teacher samples are not this run's
        for f in ("teacher_data.jsonl", "teacher_data_summary.json"):
            if os.path.exists(os.path.join(cfg.run_dir, f)):
                os.remove(os.path.join(cfg.run_dir, f))
    train, held = problems(cfg)
    data, data_stats = ([], None) if not {"sequence", "logit"} & set(cfg.arms) else teacher_data(cfg, teacher, teacher_tok, train)
    base = student_base(cfg, train, resume)
    base_entry = A.done_entry(cfg.run_dir, "student_base") if resume else None
    if base_entry is None:
        model, tok = A.load(base)
        base_entry = evaluate_entry(cfg, "student_base", model, tok, held, 0.0)
        A.finish_stage(cfg.run_dir, base_entry)
    entries = list(A.each_stage(cfg.run_dir, [*cfg.arms, "teacher"], resume,
                                lambda arm: run_arm(cfg, arm, base, teacher, teacher_tok, train, data, held, resume)))
    return A.finish_run(cfg, "arms", entries, t0, f"distillation vs RL on a {cfg.student_hidden_size}-wide student (held-out "
                                                   f"{cfg.digits}-digit addition, answers-only student data)",
                        {"reward": ["reward", "accuracy", "completion_length", "grad_norm"], "loss": ["loss", "grad_norm"]},
                        seed=cfg.seed, teacher=cfg.teacher_dir, student_base=base_entry, teacher_data=data_stats,
                        student_parameters=num_parameters(A.load(base)[0]), teacher_parameters=num_parameters(teacher),
                        arm_seconds=cfg.arm_seconds, eval_prompts=len(held), eval_samples=cfg.eval_samples)


def has_run(cfg: StudyDistillConfig) -> bool:
    return os.path.exists(os.path.join(cfg.run_dir, "run_config.json"))


# ---- the command ---------------------------------------------------------------------------------
def commands(sub) -> dict[str, Command]:
    def trainer(cls, prefix, defaults, owned, what):
        return Section(cls, prefix, defaults, owned, title=f"{what} (set by the run: {', '.join(owned)})")

    return A.study_command(
        sub, "distill", StudyDistillConfig, StudyDistillOptions, run_study_distill, has_run, what="distillation study", trainers=[
            trainer(SFTConfig, "sft", SFT_DEFAULTS, ARM_OWNED, "the student's base and the sequence arm's SFT"),
            trainer(GRPOConfig, "grpo", GRPO_DEFAULTS, GRPO_OWNED, "the rl arm's GRPO"),
            trainer(DistillConfig, "distill", DISTILL_DEFAULTS, DISTILL_OWNED, "the logit, on_policy and reverse_kl arms")],
        help="distillation vs RL on a small student: rl, sequence, logit, on_policy, reverse_kl arms and the teacher",
        description="A small student SFT'd on answers-only addition, then each arm for the same --arm-seconds: GRPO alone (rl), SFT on "
                    "the teacher's rejection-sampled reasoning (sequence), offline logit distillation on it (logit), on-policy GKD "
                    "(on_policy), on-policy reverse KL (reverse_kl); the teacher (--teacher, shipped by default) evaluated beside "
                    "them; writes runs/<name>/ (metrics.jsonl, plots, summary.json).")


__all__ = ["ARMS", "SHIPPED_TEACHER", "StudyDistillConfig", "StudyDistillOptions", "commands", "run_study_distill"]
