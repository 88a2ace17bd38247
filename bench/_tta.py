"""The two sides of bench_time_to_accuracy.py: the default run's recipe (r1core.recipes.r1_zero)
trained by r1core's GRPOTrainer and by TRL's, each for a budget of training seconds, evaluated on
the run's held-out problems every `eval_every` training seconds with the clock paused.

Both sides start from the same base (the shipped one), train on the same split, and are evaluated
by the same code: r1core's `evaluate` through an engine on the trainer's live weights, the held-out
problems and sample seeds of the run (`evaluate_policy`), so only the training differs.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import tempfile
import time
import warnings

import torch

# TRL's GRPOConfig fields the recipe sets, from r1core's GRPOConfig of the run (same names, same meaning)
RECIPE_FIELDS = ("num_generations", "per_device_train_batch_size", "learning_rate", "warmup_steps", "epsilon", "beta",
                 "temperature", "loss_type", "max_completion_length", "max_grad_norm", "seed")
# fields both configs have that the recipe leaves at r1core's defaults: TRL's defaults must agree, or the
# side says so (compare_configs)
SHARED_DEFAULTS = ("top_p", "top_k", "min_p", "epsilon_high", "delta", "num_iterations", "scale_rewards",
                   "importance_sampling_level", "mask_truncated_completions", "gradient_accumulation_steps",
                   "adam_beta1", "adam_beta2", "weight_decay", "shuffle_dataset")
# TRL settings that differ from TRL's defaults beyond the recipe's own values, and why
TRL_OVERRIDES = {
    "use_cpu": (True, "both trainers on the CPU, where the recipe runs (TRL's default bf16 also refuses a machine "
                      "without a GPU unless use_cpu is set)"),
    "bf16": (False, "the recipe trains in float32 (r1core's GRPOConfig bf16=False); TRL's default bf16 autocast "
                    "would change the arithmetic, not only the speed"),
    "activation_checkpointing": (False, "the recipe recomputes no activations; TRL's default checkpointing "
                                        "(gradient_checkpointing) would add a forward per step to TRL's time only"),
    "save_strategy": ("no", "the recipe writes no checkpoint during GRPO (save_steps None)"),
    "max_steps": (10000, "the recipe's cap; the time budget ends both runs first (TRL has no time budget: a "
                         "TrainerCallback stops it after the step that passes the budget, as r1core's loop does)"),
    "disable_tqdm": (True, "output only: the benchmark prints its own line per evaluation"),
}
TRL_NOTES = (
    "lr schedule: TRL's linear warmup over warmup_steps, then a linear decay to 0 over the training clock's "
    "budget (the recipe's decay); TRL's own linear schedule counts steps to max_steps, which a time budget "
    "does not fix, so the scheduler is passed through GRPOTrainer(optimizers=...) with TRL's own optimizer "
    "(GRPOTrainer.get_optimizer_cls_and_kwargs: adamw_torch_fused)",
    "prompts: the dataset's prompt text starts with the tokenizer's bos_token '<s>': TRL tokenizes plain-text "
    "prompts with the tokenizer, which adds no bos, and the base was trained with a leading bos (r1core's "
    "encode_prompt adds it)",
)


class TrainClock:
    """Seconds of training: wall time since start() less the time spent in pause() blocks."""

    def __init__(self):
        self.t0 = None
        self.paused = 0.0

    def start(self) -> None:
        self.t0, self.paused = time.perf_counter(), 0.0

    def elapsed(self) -> float:
        return 0.0 if self.t0 is None else time.perf_counter() - self.t0 - self.paused


class Evaluator:
    """Held-out points at 0 s, whenever training time passes the next multiple of `every`, and at
    the step that ends the budget; each point is {seconds, step, accuracy, greedy_accuracy, ...}."""

    def __init__(self, cfg, policy, held_out: list[dict], every: float, budget: float, label: str):
        self.cfg, self.policy, self.held_out = cfg, policy, held_out
        self.every, self.budget, self.label = every, budget, label
        self.next_mark = every
        self.points: list[dict] = []
        self.seconds = 0.0  # evaluation seconds, outside the budget
        self.lr = None  # () -> the trainer's learning rate now, recorded with each point (both decay by training time)

    def due(self, elapsed: float) -> bool:
        return elapsed >= self.next_mark or elapsed >= self.budget

    def evaluate(self, elapsed: float, step: int) -> float:
        """One point; returns the seconds it took (the caller pauses its training clock by them)."""
        from r1core.recipes.r1_zero import evaluate_policy

        t0 = time.perf_counter()
        model = self.policy.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                r = evaluate_policy(self.cfg, self.policy, self.held_out)
        finally:
            model.train(was_training)
        while self.next_mark <= elapsed:
            self.next_mark += self.every
        dt = time.perf_counter() - t0
        self.seconds += dt
        point = {"seconds": elapsed,  # unrounded: a step just short of the budget must not round onto it
                 "step": step, "eval_seconds": round(dt, 3),
                 **({"lr": self.lr()} if self.lr is not None else {}),
                 **{k: r[k] for k in ("accuracy", "greedy_accuracy", "format_rate", "completion_length") if k in r}}
        self.points.append(point)
        print(f"[{self.label}] {elapsed:6.1f} s  step {step:4d}  greedy {point['greedy_accuracy']:.3f}  "
              f"pass@1 {point.get('accuracy', float('nan')):.3f}  (eval {dt:.1f} s)", file=sys.stderr, flush=True)
        return dt


def recipe_config(seed: int, budget: float, out_dir: str, name: str, eval_size: int, eval_samples: int,
                  run: dict | None = None, grpo: dict | None = None):
    """The default run's RunConfig for a seed, GRPO capped at `budget` training seconds; `run` and
    `grpo` change RunConfig's and its GRPOConfig's fields (the tests' smaller runs)."""
    from r1core.recipes.r1_zero import RunConfig

    return RunConfig(name=name, runs_dir=out_dir, seed=seed, eval_size=eval_size, eval_samples=eval_samples, progress=False,
                     grpo={"max_seconds": budget, **(grpo or {})}, **(run or {}))


def _start(cfg):
    """Threads and seed as the run sets them, its splits and the shipped base (model, tokenizer, engine)."""
    from r1core.recipes.r1_zero import SHIPPED_BASE, load_base, make_splits, start_run

    start_run(cfg)
    train, _, held_out = make_splits(cfg)
    return train, held_out, load_base(cfg, SHIPPED_BASE)


def _result(trainer: str, cfg, ev: Evaluator, steps: int, train_seconds: float, setup_seconds: float, t_setup: float,
            **extra) -> dict:
    """wall_seconds: from the start of the set-up to now (set-up, training and evaluation are disjoint parts of it)."""
    return {"trainer": trainer, "seed": cfg.seed, "budget": ev.budget, "eval_every": ev.every, "steps": steps,
            "train_seconds": round(train_seconds, 3), "eval_seconds": round(ev.seconds, 3), "setup_seconds": round(setup_seconds, 3),
            "wall_seconds": round(time.perf_counter() - t_setup, 3),
            "threads": torch.get_num_threads(), "eval_prompts": len(ev.held_out), "eval_samples": cfg.eval_samples,
            "points": ev.points, **extra}


def run_r1core(seed: int, budget: float, eval_every: float, eval_size: int, eval_samples: int,
               run: dict | None = None, grpo: dict | None = None, label: str = "r1core") -> dict:
    """r1core's GRPOTrainer on the recipe (as `r1core run` trains it), evaluated through the loop's
    callback, which runs after every step; the loop's clock is moved on by each evaluation's
    seconds, so neither the budget nor the time-based lr decay counts them."""
    from r1core.rewards import accuracy_reward
    from r1core.trainers import GRPOTrainer

    t_setup = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        cfg = recipe_config(seed, budget, out, "r1core", eval_size, eval_samples, run, grpo)
        train, held_out, policy = _start(cfg)
        ev = Evaluator(cfg, policy, held_out, eval_every, budget, f"{label} seed {seed}")
        ev.evaluate(0.0, 0)
        trainer = GRPOTrainer(policy.model, policy.tokenizer, [accuracy_reward], train, cfg.grpo, engine=policy.engine)
        ev.lr = lambda: trainer.scheduler.get_last_lr()[0]

        def callback(step: int):
            if ev.due(trainer.elapsed):
                # the loop's clock is perf_counter() - _clock_start: starting it later by the evaluation's
                # seconds pauses it (the loop has no public pause)
                trainer._clock_start += ev.evaluate(trainer.elapsed, step)
            return None

        setup = time.perf_counter() - t_setup - ev.seconds
        t_train, eval_before = time.perf_counter(), ev.seconds
        trainer.train(progress=False, callback=callback, every=1)
        wall = time.perf_counter() - t_train - (ev.seconds - eval_before)
        if trainer.elapsed > wall + 1.0:  # the loop's clock ran through the evaluations: its budget and lr decay too
            raise RuntimeError(f"r1core's training clock counted evaluation time ({trainer.elapsed:.1f} s against "
                               f"{wall:.1f} s of training): moving Trainer._clock_start no longer pauses it")
        if not ev.points or ev.points[-1]["step"] != trainer.global_step:  # stopped by something other than the budget
            ev.evaluate(trainer.elapsed, trainer.global_step)
        return _result(label, cfg, ev, trainer.global_step, trainer.elapsed, setup, t_setup, collapsed=trainer.collapsed)


def trl_config(cfg, out_dir: str):
    """TRL's GRPOConfig for the recipe: the recipe's values under TRL's names, TRL_OVERRIDES, TRL's
    defaults for everything else."""
    from trl import GRPOConfig

    g = cfg.grpo
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return GRPOConfig(output_dir=out_dir, report_to=[], **{k: getattr(g, k) for k in RECIPE_FIELDS},
                          **{k: v for k, (v, _) in TRL_OVERRIDES.items()})


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(float(a), float(b))
    return a == b


def compare_configs(r1, trl) -> dict[str, tuple]:
    """{field: (r1core's value, TRL's value)} for the shared fields where the two runs differ, TRL's
    spellings read as r1core's (None top_k or min_p: off; None epsilon_high: epsilon)."""
    spelled = {"top_k": lambda v: v or 0, "min_p": lambda v: v or 0.0,
               "epsilon_high": lambda v: trl.epsilon if v is None else v}
    out = {}
    for k in RECIPE_FIELDS + SHARED_DEFAULTS:
        if not hasattr(trl, k):
            continue
        a, b = getattr(r1, k), spelled.get(k, lambda v: v)(getattr(trl, k))
        if not _same(a, b):
            out[k] = (a, b)
    return out


def time_lambda(warmup_steps: int, clock: TrainClock, budget: float):
    """The lr factor: TRL's linear warmup (step / warmup_steps), then 1 - training seconds / budget."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / max(1, warmup_steps)
        return max(0.0, 1.0 - clock.elapsed() / budget)

    return factor


def _trl_callback(ev: Evaluator, clock: TrainClock, budget: float):
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        """Starts the training clock, evaluates when due with the clock paused, stops at the budget."""

        def on_train_begin(self, args, state, control, **kw):
            clock.start()

        def on_step_end(self, args, state, control, **kw):
            elapsed = clock.elapsed()
            if ev.due(elapsed):
                clock.paused += ev.evaluate(elapsed, state.global_step)
            if elapsed >= budget:
                control.should_training_stop = True

    return TimeBudget()


def run_trl(seed: int, budget: float, eval_every: float, eval_size: int, eval_samples: int,
            run: dict | None = None, label: str = "trl") -> dict:
    """TRL's GRPOTrainer on the recipe: TRL's generation (transformers' generate, no vLLM), its loss
    and optimizer, the settings of trl_config; evaluated by the same code as r1core's side."""
    import datasets
    from transformers import PrinterCallback
    from trl import GRPOTrainer

    from r1core.rewards import accuracy_reward

    t_setup = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        cfg = recipe_config(seed, budget, out, "trl", eval_size, eval_samples, run)
        train, held_out, policy = _start(cfg)
        tok = policy.tokenizer
        ev = Evaluator(cfg, policy, held_out, eval_every, budget, f"{label} seed {seed}")
        ev.evaluate(0.0, 0)
        args = trl_config(cfg, out)
        clock = TrainClock()
        opt_cls, opt_kwargs = GRPOTrainer.get_optimizer_cls_and_kwargs(args, policy.model)
        optimizer = opt_cls([p for p in policy.model.parameters() if p.requires_grad], **opt_kwargs)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, time_lambda(args.warmup_steps, clock, budget))
        ev.lr = lambda: scheduler.get_last_lr()[0]
        data = datasets.Dataset.from_list([{**r, "prompt": tok.bos_token + r["prompt"]} for r in train])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = GRPOTrainer(model=policy.model, reward_funcs=[accuracy_reward], args=args, train_dataset=data,
                                  processing_class=tok, callbacks=[_trl_callback(ev, clock, budget)],
                                  optimizers=(optimizer, scheduler))
            trainer.remove_callback(PrinterCallback)  # disable_tqdm prints every log dict otherwise
            setup = time.perf_counter() - t_setup - ev.seconds
            trainer.train()
        steps, elapsed = trainer.state.global_step, clock.elapsed()
        if not ev.points or ev.points[-1]["step"] != steps:
            ev.evaluate(elapsed, steps)
        return _result(label, cfg, ev, steps, elapsed, setup, t_setup, differs=compare_configs(cfg.grpo, args))


def trl_settings() -> list[str]:
    """Every TRL setting that differs from TRL's defaults beyond the recipe's values, and why."""
    lines = [f"{k}={v!r}: {why}" for k, (v, why) in TRL_OVERRIDES.items()]
    return lines + list(TRL_NOTES)


def has_async_rollouts() -> bool:
    """Whether r1core's GRPOConfig has the asynchronous-rollouts switch (`async_rollouts`)."""
    from r1core.trainers import GRPOConfig

    return any(f.name == "async_rollouts" for f in dataclasses.fields(GRPOConfig))


SIDES = {
    "trl": lambda **kw: run_trl(**kw),
    "r1core": lambda **kw: run_r1core(**kw),
    "r1core-async": lambda **kw: run_r1core(grpo={"async_rollouts": True}, label="r1core-async", **kw),
}
