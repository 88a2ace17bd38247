"""Trainer: the training loop every trainer shares; each trainer supplies its step.

The loop runs steps until `max_steps` optimizer steps, the time budget `max_seconds` (checked
after each step, counting the seconds before a resume too), a trainer's own stop (GRPO's collapse
detector with `stop_on_collapse`) or the caller's `stop(record)`. After each step it logs a record
(`{"step", **metrics, "elapsed", **callback metrics}`) every `logging_steps`, at `max_steps` and
whenever the callback added metrics, to `<output_dir>/<metrics_file>` (main process only), moves
the progress bar, and writes `checkpoint-<step>` every `save_steps`. `train(resume_from_checkpoint=
True | path)` restores weights, optimizer, scheduler, RNGs, the step, the clock and the trainer's
own position first, so a run killed and resumed ends with the weights and metrics of one that ran
through.

A trainer subclasses Trainer, sets `optimizer` and `scheduler` in its __init__, and supplies

    training_step() -> dict           one step of its own (GRPO: a rollout and num_iterations
                                      updates; SFT: one batch), each update through
                                      `optimizer_step()`; returns this process's metrics
    trainer_state() -> dict           the JSON position a resumed run needs beyond the step and
                                      the clock (data order, consumed prompts, ...)
    restore_trainer_state(js, path)   its inverse; a ValueError naming the checkpoint when js holds
                                      no such state (another trainer wrote it)

and may override `end_of_step(record, log) -> bool` (True stops the run after the step's
checkpoint). `backward_micro_batches` is gradient accumulation for trainers that split a step.
Its config needs the fields the loop reads: max_steps, max_seconds, logging_steps, save_steps,
save_total_limit, output_dir, max_grad_norm.

Faults: output_dir is checked writable before the first step; `resume_from_checkpoint=True` skips
a checkpoint with a truncated or corrupt file (a warning names it) for the one before; a resume
whose `resume_fixed` settings changed (batch shape, seed) is refused, other changes are warned
about; a step whose loss or gradient norm is NaN or inf skips its update (counted, warned) and
`max_bad_steps` of them in a row raise `NumericalFault` before any checkpoint of them is written.

Several processes (torchrun): rank 0's clock is every rank's (the schedule and the stop must
agree), only rank 0 logs and writes checkpoints (under FSDP each rank adds its shards), and the
logged metrics are the whole step's: `summed_metrics` added over ranks, the others averaged. A
trainer wraps its loss module with `wrap_loss` (DDP, or FSDP2 with config.fsdp) and runs its
rollouts inside `full_weights()` (docs/parallel.md).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from typing import Callable, Iterable

import torch

from r1core.trainers import distributed as dist
from r1core.trainers.checkpoint import (
    CorruptCheckpoint,
    check_writable_dir,
    list_checkpoints,
    load_checkpoint,
    read_state,
    save_checkpoint,
    tied_duplicates,
)
from r1core.trainers.metrics import MetricsLogger
from r1core.trainers.sharded_checkpoint import load_sharded, save_sharded

# settings a resumed run may change without a word: how long it runs and what it writes where
RESUME_FREE = frozenset({"max_steps", "max_seconds", "logging_steps", "save_steps", "save_total_limit", "output_dir"})


class NumericalFault(RuntimeError, ValueError):
    """max_bad_steps optimizer steps in a row had a NaN or inf loss or gradient. A ValueError too:
    a setting (learning_rate, max_grad_norm, bf16) is the usual cause, and the command line reports
    ValueErrors as one line that names it."""


def is_maximum(metric: str) -> bool:
    """A logged maximum (tis_ratio_max): over micro-batches and ranks it is the largest value, not the mean."""
    return metric.endswith("_max")


class Trainer:
    name = "train"  # the progress bar's label
    metrics_file = "metrics.jsonl"
    progress_keys: tuple[str, ...] = ("loss",)  # metrics shown beside the progress bar
    summed_metrics: frozenset[str] = frozenset()  # logged counts that add up over ranks (the rest are averaged)
    global_metrics: frozenset[str] = frozenset({"loss", "grad_norm", "lr"})  # the same on every rank already
    # config fields a resumed run must keep (they shape the data stream or the batch: a change would
    # silently train on something else than the checkpoint's run); a change of any other field but
    # RESUME_FREE is allowed with a warning that names it
    resume_fixed: tuple[str, ...] = ()

    def __init__(self, model: torch.nn.Module, tokenizer, config):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.rank, self.world_size = dist.world()
        self.device = next(model.parameters()).device
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.global_step = 0  # optimizer steps
        self.bad_steps = 0  # optimizer steps skipped for a NaN/inf loss or gradient, in the whole run
        self.bad_in_a_row = 0  # ... since the last good one
        self.elapsed = 0.0  # seconds of training so far, resumed runs included: the time budget's clock
        self.fsdp = bool(getattr(config, "fsdp", False))
        if self.fsdp and not dist.is_initialized():
            raise ValueError(f"{type(config).__name__}.fsdp=True needs a process group: start the run with torchrun "
                             f"(`torchrun --nproc-per-node N ...`; N=1 for one process), or set fsdp=False")
        self.sharded_root: torch.nn.Module | None = None  # the FSDP root (the loss module) once wrap_loss sharded it

    # ---- what a trainer supplies ---------------------------------------------------------------
    def training_step(self) -> dict:
        raise NotImplementedError

    def trainer_state(self) -> dict:
        return {}

    def restore_trainer_state(self, js: dict, path: str) -> None:
        pass

    def end_of_step(self, record: dict, log: MetricsLogger) -> bool:
        """After a step is logged; True stops the run (after the step's checkpoint)."""
        return False

    # ---- parallelism ---------------------------------------------------------------------------
    def wrap_loss(self, module: torch.nn.Module, bf16: bool = False) -> torch.nn.Module:
        """The trainer's loss module (which holds self.model) for this run's mode: FSDP2 with
        config.fsdp (each decoder layer and the module itself sharded, the optimizer pointed at the
        shards; bf16: MixedPrecisionPolicy), DDP under a process group of several, else as it is."""
        if not self.fsdp:
            return dist.wrap_ddp(module)
        from r1core.trainers import fsdp

        before = dict(self.model.named_parameters())
        fsdp.shard(module, self.model, bf16=bf16)
        if self.optimizer is not None:
            fsdp.retarget_optimizer(self.optimizer, before, dict(self.model.named_parameters()))
        self.sharded_root = module
        return module

    def full_weights(self):
        """A context in which self.model's parameters are whole (for a rollout or a no-grad pass
        outside the loss module); under FSDP every rank must enter it together."""
        from r1core.trainers import fsdp

        return fsdp.full_weights(self.sharded_root)

    # ---- pieces of a step ----------------------------------------------------------------------
    def backward_micro_batches(self, micro_batches: Iterable, loss_fn: Callable, mean_over: int | None = None) -> tuple[float, dict]:
        """Zeroes the gradients, then backward over each micro-batch's `loss_fn(mb) -> (loss,
        stats)`, so the gradients are the whole step's. mean_over None: each loss is that
        micro-batch's share of one sum over the step (all micro-batches and ranks); DDP averages
        gradients over ranks, hence x world_size. mean_over n: each loss is a mean of its own and
        the step's loss is their mean over n micro-batches (and over ranks, as DDP averages).
        Returns the step's loss (global) and the stats averaged over the micro-batches (maxima,
        named *_max, are the largest of them)."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, stats_sum, passes = 0.0, {}, 0
        for mb in micro_batches:
            loss, stats = loss_fn(mb)
            if mean_over is None:
                (loss * self.world_size).backward()
                loss_sum += loss.item()
            else:
                (loss / mean_over).backward()
                loss_sum += loss.item() / mean_over
            passes += 1
            for k, v in stats.items():
                if is_maximum(k):
                    stats_sum[k] = max(stats_sum.get(k, -math.inf), float(v))
                else:
                    stats_sum[k] = stats_sum.get(k, 0.0) + float(v)
        loss_t = torch.tensor([loss_sum])
        loss_global = dist.all_reduce_sum(loss_t) if mean_over is None else dist.all_reduce_mean(loss_t)
        return loss_global.item(), {k: v if is_maximum(k) else v / passes for k, v in stats_sum.items()}

    def optimizer_step(self, loss: float | None = None) -> dict:
        """Clips the gradients, steps AdamW and the scheduler: one more optimizer step. When the
        gradient norm (or the step's `loss`) is NaN or inf the update is skipped, with a warning:
        the weights and AdamW's moments stay as they were, the step and the schedule still advance,
        and the record gets `skipped_steps: 1`; `max_bad_steps` of them in a row stop the run."""
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm or float("inf"))
        grad_norm = (norm.full_tensor() if hasattr(norm, "full_tensor") else norm).item()  # FSDP: a DTensor
        if loss is not None and not math.isfinite(loss):
            bad = f"loss is {loss}"
        elif not math.isfinite(grad_norm):
            bad = f"gradient norm is {grad_norm}"
        else:
            bad = None
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_steps += 1
            self.bad_in_a_row += 1
            warnings.warn(f"step {self.global_step + 1}: {bad}: update skipped ({self.bad_in_a_row} in a row, "
                          f"{self.bad_steps} in the run)", RuntimeWarning, stacklevel=2)
        else:
            self.optimizer.step()
            self.bad_in_a_row = 0
        with warnings.catch_warnings():
            # torch warns when the schedule steps before any optimizer step: a skipped first update is one
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()` before", category=UserWarning)
            self.scheduler.step()
        self.global_step += 1
        out = {"grad_norm": grad_norm, "lr": self.scheduler.get_last_lr()[0]}
        return {**out, "skipped_steps": 1} if bad else out

    def budget_spent(self) -> float:
        """The share of max_seconds spent so far (a scheduler may decay with it)."""
        return self.elapsed / self.config.max_seconds

    # ---- the loop ------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, progress: bool = True, *,
              callback: Callable[[int], dict | None] | None = None, every: int = 10,
              stop: Callable[[dict], bool] | None = None) -> list[dict]:
        """Runs until max_steps, max_seconds, the trainer's own stop, or `stop(record)` is true at
        a callback step; returns the logged records (of the resumed run too).

        resume_from_checkpoint: a checkpoint folder, or True for the last one in output_dir.
        callback(step) -> dict of extra metrics (e.g. held-out accuracy), every `every` steps."""
        cfg = self.config
        if dist.is_main():  # before any work: a bad output_dir would otherwise fail at the first log or save
            check_writable_dir(cfg.output_dir, f"{type(cfg).__name__}.output_dir")
        if resume_from_checkpoint is True:
            self._resume_latest()
        elif resume_from_checkpoint:
            self.load_state(resume_from_checkpoint)
        # report_to: GRPO, SFT and distillation configs have it; a TrainerConfig subclass without it logs to metrics.jsonl only
        log = MetricsLogger(cfg.output_dir, enabled=dist.is_main(), filename=self.metrics_file, total=cfg.max_steps, desc=self.name,
                            initial=self.global_step, progress=progress, max_seconds=cfg.max_seconds,
                            report_to=getattr(cfg, "report_to", None))
        line = dist.describe(self.model, self.fsdp)
        if progress and dist.is_main():
            print(f"{self.name}: {line}", flush=True)
        self._clock_start = time.perf_counter() - self.elapsed
        try:
            while self.global_step < cfg.max_steps:
                if self._run_step(log, callback, every, stop):
                    break
        finally:
            log.close()
        return log.records

    def _clock(self) -> float:
        # rank 0's clock for every rank: the schedule and the stop must agree across processes
        return dist.broadcast_object(time.perf_counter() - self._clock_start)

    def _run_step(self, log: MetricsLogger, callback, every: int, stop) -> bool:
        """One step, its record, log line, hooks and checkpoint; True when the run should stop."""
        cfg = self.config
        before = self.global_step
        info = self._reduce_info(self.training_step())
        self._check_bad_steps()
        self.elapsed = self._clock()
        record = {"step": self.global_step, **info, "elapsed": self.elapsed}
        extra = callback(self.global_step) if callback is not None and self.global_step % every == 0 else None
        if extra:
            record.update(extra)
        if self.global_step % cfg.logging_steps == 0 or self.global_step >= cfg.max_steps or extra:
            log.log(record, postfix={k: record[k] for k in (*self.progress_keys, *(extra or ())) if k in record})
        log.advance(self.global_step - before, elapsed=record["elapsed"])
        halt = self.end_of_step(record, log)
        # no checkpoint right after a skipped update: what the checkpoints hold is always a good step's
        if cfg.save_steps and self.global_step % cfg.save_steps == 0 and not self.bad_in_a_row:
            self.elapsed = self._clock()  # the callback's evaluation counts too
            self.save_state()
        if halt or (extra and stop is not None and stop(record)):
            return True
        return cfg.max_seconds is not None and record["elapsed"] >= cfg.max_seconds

    def _check_bad_steps(self) -> None:
        limit = getattr(self.config, "max_bad_steps", 3)  # a trainer's own config may not have the field
        if self.bad_in_a_row >= limit:
            last = list_checkpoints(self.config.output_dir)
            where = f"the last good checkpoint is {last[-1][1]!r}" if last else "no checkpoint was written"
            raise NumericalFault(f"{self.bad_in_a_row} optimizer steps in a row (up to step {self.global_step}) had a NaN or inf "
                                 f"loss or gradient (max_bad_steps={limit}); {where}. Try a lower learning_rate, "
                                 f"max_grad_norm, or bf16=False")

    def _reduce_info(self, info: dict) -> dict:
        """The logged metrics of the whole step: counts (summed_metrics) summed over ranks, maxima
        (*_max) the largest, rates and means averaged (every rank holds the same number of samples,
        so the mean of the ranks' means is the global mean); global_metrics are left alone."""
        if self.world_size == 1:
            return info
        keys = [k for k, v in info.items() if isinstance(v, (int, float)) and k not in self.global_metrics]
        maxima = [k for k in keys if is_maximum(k)]
        keys = [k for k in keys if not is_maximum(k)]
        summed = dist.all_reduce_sum(torch.tensor([float(info[k]) for k in keys], dtype=torch.float64))
        out = dict(info)
        if maxima:
            out.update(zip(maxima, dist.all_reduce_max(torch.tensor([float(info[k]) for k in maxima], dtype=torch.float64)).tolist()))
        for k, v in zip(keys, summed.tolist()):
            if k in self.summed_metrics:
                out[k] = int(round(v)) if isinstance(info[k], int) else v
            else:
                out[k] = v / self.world_size
        return out

    # ---- checkpoints ---------------------------------------------------------------------------
    def save_state(self) -> str | None:
        """<output_dir>/checkpoint-<step>: everything a resumed run needs, written by the main
        process (under FSDP every rank writes its shards too, r1core.trainers.sharded_checkpoint);
        returns its path there (None on the other ranks)."""
        cfg = self.config
        state = {"global_step": self.global_step, **self.trainer_state(), "elapsed": self.elapsed, "config": cfg.to_dict(),
                 "world_size": self.world_size, "bad_steps": self.bad_steps}
        if self.sharded_root is not None:  # every rank writes its shards (torch.distributed.checkpoint)
            return save_sharded(cfg.output_dir, self.global_step, self.model, self.optimizer, self.scheduler, state,
                                cfg.save_total_limit, tokenizer=self.tokenizer)
        path = None
        if dist.is_main():
            path = save_checkpoint(cfg.output_dir, self.global_step, self.model, self.optimizer, self.scheduler, state,
                                   cfg.save_total_limit, tokenizer=self.tokenizer)
        dist.barrier()
        return path

    def _resume_latest(self) -> None:
        """Load the newest checkpoint of output_dir whose files are whole; a corrupt one (a disk that
        filled up, a copy cut short) is skipped with a warning naming the file."""
        ckpts = list_checkpoints(self.config.output_dir)
        if not ckpts:
            raise ValueError(f"resume_from_checkpoint=True but {self.config.output_dir!r} holds no checkpoint")
        for step, path in reversed(ckpts):
            try:
                self.load_state(path)
                return
            except CorruptCheckpoint as e:
                warnings.warn(f"{e}: falling back to the checkpoint before it", RuntimeWarning, stacklevel=3)
        raise ValueError(f"resume_from_checkpoint=True but no checkpoint in {self.config.output_dir!r} is complete "
                         f"(tried steps {[s for s, _ in ckpts]}; the warnings name the broken files)")

    def _check_unsharded_fits(self, js: dict, path: str) -> None:
        """A checkpoint of whole tensors (a run without fsdp) loads only into a run like it."""
        if self.fsdp:
            raise ValueError(f"checkpoint {path!r} was written by a run without fsdp (whole tensors, no shards/): resume it with "
                             f"fsdp=False; the checkpoints of an fsdp=True run load at any world size")
        if js.get("world_size", 1) != self.world_size:
            raise ValueError(f"checkpoint {path!r} was written by {js.get('world_size')} processes; this run has {self.world_size}: "
                             f"resume with {js.get('world_size')} (a run without fsdp writes whole tensors; only the checkpoints "
                             f"of an fsdp=True run reshard to another world size)")

    def _check_resume_config(self, js: dict, path: str) -> None:
        """Refuse a resume whose resume_fixed fields changed; warn about any other change. A sharded
        checkpoint resumed at another world size may change per_device_train_batch_size so that the
        global batch (per device x processes) stays the same."""
        old = js.get("config")
        if not isinstance(old, dict):
            return
        new = json.loads(json.dumps(self.config.to_dict()))  # as the checkpoint holds it (tuples as lists)
        key, before = "per_device_train_batch_size", js.get("world_size", 1)
        if js.get("sharded") and key in old and key in new and old[key] * before == new[key] * self.world_size:
            old = {**old, key: new[key]}
        changed = {k: (old[k], new[k]) for k in new if k in old and old[k] != new[k] and k not in RESUME_FREE}
        fixed = {k: v for k, v in changed.items() if k in self.resume_fixed}
        if fixed:
            what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in fixed.items())
            raise ValueError(f"checkpoint {path!r} was written with other settings: {what}; resume with the "
                             f"checkpoint's values, or start a new run (another output_dir)")
        if changed:
            what = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items())
            warnings.warn(f"resuming {path!r} with changed settings: {what}", RuntimeWarning, stacklevel=4)

    def load_state(self, path: str) -> None:
        """Restore everything `save_state` wrote; the files are checked before anything is loaded
        (`CorruptCheckpoint` names a broken one), then the settings (`resume_fixed`)."""
        js = read_state(path)
        self._check_resume_config(js, path)
        if js.get("sharded"):  # DCP reshards: any world size, FSDP or not
            load_sharded(path, js, self.model, self.optimizer, self.scheduler)
        else:
            self._check_unsharded_fits(js, path)
            js = load_checkpoint(path, self.model, self.optimizer, self.scheduler)
        self.restore_trainer_state(js, path)
        self.global_step = js["global_step"]
        self.elapsed = js.get("elapsed", 0.0)
        self.bad_steps, self.bad_in_a_row = js.get("bad_steps", 0), 0  # a checkpoint follows a good step

    def save_model(self, path: str) -> None:
        """The weights (model.safetensors), the model's config.json and the tokenizer, from the
        main process."""
        from safetensors.torch import save_file, save_model

        full = None
        if self.sharded_root is not None:  # gathered on every rank, kept on rank 0
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if dist.is_main():
            check_writable_dir(path, "save_model path")
            if full is None:
                save_model(self.model, os.path.join(path, "model.safetensors"))
            else:
                drop = tied_duplicates(self.model)
                save_file({k: v.contiguous() for k, v in full.items() if k not in drop}, os.path.join(path, "model.safetensors"),
                          metadata={"format": "pt"})
            self.model.config.to_json_file(os.path.join(path, "config.json"))
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(path)


__all__ = ["NumericalFault", "Trainer"]
