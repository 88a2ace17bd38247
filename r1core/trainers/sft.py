"""SFT: next-token loss on the completion tokens only (prompt tokens are context, never targets),
through the fused `r1kernels.token_logprobs` on the last hidden states and the LM head, so the
[tokens, vocab] logits never exist in full; optional packing.

Rows are dicts with a prompt and a completion (columns named by `prompt_field`/`completion_field`),
or the path of a JSON Lines file of them (`r1core.data.write_jsonl`); each example is
`encode_prompt(prompt) + completion + eos`. The loss is the mean over the completion (and eos)
tokens of the batch.

Packing concatenates examples into rows of `max_seq_length` tokens with position ids restarting
at each example and no attention mask: transformers then builds a block-diagonal causal mask from
the position ids (masking_utils' packed-sequence detection), so packed examples never see each
other. A row holds whole examples only; an example longer than max_seq_length is an error.

The loop (logging to `sft_metrics.jsonl`, checkpoints every `save_steps`, resume, the time
budget, progress) is `r1core.trainers.loop`'s; SFT's step is one batch, and its checkpoints add
the data position (what is left of the epoch's order and the order's own RNG), so
`train(resume_from_checkpoint=True)` ends where an uninterrupted run ends (tested).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from typing import Callable

import torch

import r1kernels
from r1core.tasks.tokenizer import check_no_unknown, encode_prompt
from r1core.trainers import distributed as dist
from r1core.trainers.config import NOT_EMPTY, TRAINING_RULES, TrainerConfig, at_least
from r1core.trainers.loop import Trainer
from r1core.trainers.optim import build_optimizer, build_scheduler, lm_head_params


@dataclass
class SFTConfig(TrainerConfig):
    learning_rate: float = 2e-3
    per_device_train_batch_size: int = 64  # examples per step (packed rows when packing=True)
    max_steps: int = 1000
    max_seconds: float | None = None
    max_seq_length: int = 512
    packing: bool = False
    warmup_steps: int = 0
    lr_scheduler_type: str = "constant"
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    add_eos: bool = True
    logging_steps: int = 10
    save_steps: int | None = None
    save_total_limit: int | None = 2
    output_dir: str = "runs/sft"
    report_to: list[str] | None = None  # ["tensorboard"]: the metrics also to <output_dir>/tensorboard
    seed: int = 0
    max_bad_steps: int = 3  # NaN/inf loss or gradient: skipped steps in a row before the run stops (as GRPOConfig)

    rules = {**TRAINING_RULES, "max_seq_length": at_least(1), "prompt_field": NOT_EMPTY, "completion_field": NOT_EMPTY}


def tokenize_example(tokenizer, prompt: str, completion: str, add_eos: bool = True) -> tuple[list[int], list[bool]]:
    """(token ids, loss mask): the mask is True on completion (and eos) tokens."""
    p = encode_prompt(tokenizer, prompt)
    c = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    check_no_unknown(tokenizer, completion, c, what="completion")
    if add_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("add_eos=True but the tokenizer has no eos_token_id")
        c.append(tokenizer.eos_token_id)
    return p + c, [False] * len(p) + [True] * len(c)


def collate(examples: list[tuple[list[int], list[bool]]], pad_id: int, packing: bool, max_len: int):
    """Rows of input_ids [R, T], position_ids [R, T], loss mask [R, T] (True where the token is a
    target), attention_mask [R, T] or None when packed."""
    if packing:
        rows, cur = [], []
        for ids, m in examples:
            if cur and sum(len(e[0]) for e in cur) + len(ids) > max_len:
                rows.append(cur)
                cur = []
            cur.append((ids, m))
        if cur:
            rows.append(cur)
    else:
        rows = [[e] for e in examples]
    T = max(sum(len(e[0]) for e in row) for row in rows)
    R = len(rows)
    input_ids = torch.full((R, T), pad_id, dtype=torch.long)
    position_ids = torch.zeros((R, T), dtype=torch.long)
    loss_mask = torch.zeros((R, T), dtype=torch.bool)
    attn = torch.zeros((R, T), dtype=torch.long)
    for r, row in enumerate(rows):
        off = 0
        for ids, m in row:
            n = len(ids)
            input_ids[r, off:off + n] = torch.tensor(ids)
            position_ids[r, off:off + n] = torch.arange(n)
            loss_mask[r, off:off + n] = torch.tensor(m)
            attn[r, off:off + n] = 1
            off += n
        # pad positions keep counting so a packed row's padding never looks like a new document
        # that attends to nothing
        position_ids[r, off:] = torch.arange(off, T) - (off - len(row[-1][0]))
    return input_ids, position_ids, loss_mask, (None if packing else attn)


def completion_logprobs(model, input_ids, position_ids, loss_mask, attention_mask=None):
    """Log-probs [N] (float32) of the target tokens (where loss_mask is True; the first token of a
    row is never a target) under model, through the fused kernel."""
    base, weight, bias = lm_head_params(model)
    out = base(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=False)
    hidden = out.last_hidden_state  # [R, T, H]
    sel = loss_mask[:, 1:]  # [R, T-1]: token t+1 is predicted from position t
    h = hidden[:, :-1][sel]  # [N, H]
    targets = input_ids[:, 1:][sel]  # [N]
    return r1kernels.token_logprobs(h, weight, targets, bias=bias)


class _CompletionLoss(torch.nn.Module):
    """SFT's loss as a module, so DDP or FSDP wraps the whole forward (the LM head is read outside
    the base model's forward). The loss is the sum over this rank's target tokens divided by the
    step's count over all ranks, times the world size: DDP and FSDP average the gradients, so the
    step's gradient is that of the mean over every target token of the global batch."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, loss_mask, attention_mask, num_items: float, world_size: int):
        logp = completion_logprobs(self.model, input_ids, position_ids, loss_mask, attention_mask)  # [N]
        loss = -logp.mean() if world_size == 1 else -logp.sum() * (world_size / num_items)
        return loss, int(logp.numel())


class SFTTrainer(Trainer):
    """SFT on (prompt, completion) rows; `train(resume_from_checkpoint=True)` continues from the
    last checkpoint in output_dir (weights, AdamW, scheduler, RNGs, step and the data order), so a
    run stopped and resumed ends where an uninterrupted one ends."""

    name = "sft"
    metrics_file = "sft_metrics.jsonl"
    summed_metrics = frozenset({"tokens"})
    global_metrics = Trainer.global_metrics | {"skipped_steps"}
    resume_fixed = ("per_device_train_batch_size", "packing", "max_seq_length", "seed", "add_eos", "prompt_field", "completion_field")

    def __init__(self, model, tokenizer, train_dataset, config: SFTConfig | None = None):
        super().__init__(model, tokenizer, config or SFTConfig())
        cfg = self.config
        if isinstance(train_dataset, (str, os.PathLike)):  # a JSON Lines file (`r1core rejection-sample` writes them)
            from r1core.data.jsonl import read_jsonl

            train_dataset = read_jsonl(train_dataset)
        rows = list(train_dataset)
        if not rows:
            raise ValueError("train_dataset is empty")
        for f in (cfg.prompt_field, cfg.completion_field):
            if f not in rows[0]:
                raise ValueError(f"train_dataset rows have no {f!r} column (columns: {sorted(rows[0])})")
        self.examples = []
        text_cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        positions = getattr(text_cfg, "max_position_embeddings", None)
        for i, r in enumerate(rows):
            for f in (cfg.prompt_field, cfg.completion_field):
                if not isinstance(r.get(f), str):
                    raise ValueError(f"train_dataset row {i}: {f!r} must be a string, got {type(r.get(f)).__name__}")
            ex = tokenize_example(tokenizer, r[cfg.prompt_field], r[cfg.completion_field], cfg.add_eos)
            if len(ex[0]) > cfg.max_seq_length:
                raise ValueError(f"train_dataset row {i} has {len(ex[0])} tokens, more than max_seq_length={cfg.max_seq_length}")
            if positions is not None and len(ex[0]) > positions:  # positions past the model's table: garbage or an index error
                raise ValueError(f"train_dataset row {i} has {len(ex[0])} tokens, more than the model's {positions} positions "
                                 f"(max_position_embeddings)")
            if not any(ex[1][1:]):  # the first token is never a target
                raise ValueError(f"train_dataset row {i}: the completion is empty and add_eos is False: nothing to learn")
            self.examples.append(ex)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.optimizer = build_optimizer(model, cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, cfg.lr_scheduler_type, cfg.warmup_steps, cfg.max_steps)
        self.loss_module = self.wrap_loss(_CompletionLoss(model))
        self.rng = random.Random(cfg.seed)
        self.order: list[int] = []  # what is left of this epoch's order, taken from the end

    @property
    def step(self) -> int:
        """Optimizer steps so far (the loop's global_step)."""
        return self.global_step

    @step.setter
    def step(self, value: int) -> None:
        self.global_step = value

    def _next_batch(self):
        """This rank's share of the step's per_device_train_batch_size x world_size examples (every
        rank draws the same order and keeps its own slice)."""
        cfg = self.config
        per = cfg.per_device_train_batch_size
        picked = []
        while len(picked) < per * self.world_size:
            if not self.order:  # a new epoch in a fresh seeded order
                self.order = list(range(len(self.examples)))
                self.rng.shuffle(self.order)
            picked.append(self.examples[self.order.pop()])
        t = collate(picked[self.rank * per:(self.rank + 1) * per], self.pad_id, cfg.packing, cfg.max_seq_length)
        return tuple(x.to(self.device) if x is not None else None for x in t)

    def training_step(self) -> dict:
        self.model.train()
        input_ids, position_ids, loss_mask, attn = self._next_batch()
        n_local = int(loss_mask[:, 1:].sum())
        num_items = float(dist.all_reduce_sum(torch.tensor([float(n_local)])).item()) if self.world_size > 1 else float(n_local)
        loss, tokens = self.loss_module(input_ids, position_ids, loss_mask, attn, num_items, self.world_size)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loss_value = loss.item() if self.world_size == 1 else float(dist.all_reduce_mean(loss.detach().reshape(1)).item())
        opt = self.optimizer_step(loss_value)
        return {"loss": loss_value, "grad_norm": opt["grad_norm"], "tokens": tokens, **opt}

    def train(self, callback: Callable[[int], dict | None] | None = None, every: int = 10, progress: bool = True,
              stop: Callable[[dict], bool] | None = None, resume_from_checkpoint: str | bool | None = None) -> list[dict]:
        """Runs until max_steps, max_seconds, or `stop(metrics)` is true at a callback step.

        callback(step) -> dict of extra metrics (e.g. held-out accuracy) runs every `every` steps.
        resume_from_checkpoint: a checkpoint folder, or True for the last one in output_dir; the
        time budget (max_seconds) counts the seconds spent before the checkpoint too."""
        return super().train(resume_from_checkpoint, progress, callback=callback, every=every, stop=stop)

    def trainer_state(self) -> dict:
        version, internal, gauss = self.rng.getstate()
        return {"data_order": list(self.order), "data_rng": [version, list(internal), gauss], "num_examples": len(self.examples)}

    def restore_trainer_state(self, js: dict, path: str) -> None:
        if "data_rng" not in js:
            raise ValueError(f"checkpoint {path!r} holds no SFT state (data_rng): not written by SFTTrainer")
        if js["num_examples"] != len(self.examples):
            raise ValueError(f"checkpoint {path!r} was written for {js['num_examples']} training examples; "
                             f"this run has {len(self.examples)}")
        self.order = list(js["data_order"])
        version, internal, gauss = js["data_rng"]
        self.rng.setstate((version, tuple(internal), gauss))

    def save_model(self, path: str) -> None:
        """The loop's (weights, config.json, tokenizer) and this run's sft_config.json."""
        super().save_model(path)
        if dist.is_main():
            with open(os.path.join(path, "sft_config.json"), "w") as f:
                json.dump(self.config.to_dict(), f, indent=1)
