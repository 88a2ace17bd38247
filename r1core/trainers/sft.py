"""SFT: next-token loss on the completion tokens only (prompt tokens are context, never targets),
through the fused `r1kernels.token_logprobs` on the last hidden states and the LM head, so the
[tokens, vocab] logits never exist in full; optional packing.

Rows are dicts with a prompt and a completion (columns named by `prompt_field`/`completion_field`);
each example is `encode_prompt(prompt) + completion + eos`. The loss is the mean over the
completion (and eos) tokens of the batch.

Packing concatenates examples into rows of `max_seq_length` tokens with position ids restarting
at each example and no attention mask: transformers then builds a block-diagonal causal mask from
the position ids (masking_utils' packed-sequence detection), so packed examples never see each
other. A row holds whole examples only; an example longer than max_seq_length is an error.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass
from typing import Callable

import torch

import r1kernels
from r1core.trainers.checkpoint import save_checkpoint
from r1core.trainers.metrics import MetricsLogger
from r1core.trainers.optim import build_optimizer, build_scheduler, encode_prompt, lm_head_params


@dataclass
class SFTConfig:
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
    output_dir: str = "runs/sft"
    seed: int = 0

    def __post_init__(self):
        for name in ("per_device_train_batch_size", "max_steps", "max_seq_length", "logging_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"SFTConfig.{name} must be an int >= 1, got {v!r}")
        if not (isinstance(self.learning_rate, (int, float)) and math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"SFTConfig.learning_rate must be a number > 0, got {self.learning_rate!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"SFTConfig.warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if self.lr_scheduler_type not in ("linear", "cosine", "constant"):
            raise ValueError(f"SFTConfig.lr_scheduler_type must be 'linear', 'cosine' or 'constant', got {self.lr_scheduler_type!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"SFTConfig.max_grad_norm must be None or > 0, got {self.max_grad_norm!r}")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise ValueError(f"SFTConfig.max_seconds must be None or > 0, got {self.max_seconds!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def tokenize_example(tokenizer, prompt: str, completion: str, add_eos: bool = True) -> tuple[list[int], list[bool]]:
    """(token ids, loss mask): the mask is True on completion (and eos) tokens."""
    p = encode_prompt(tokenizer, prompt)
    c = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
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
    hidden = base(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state  # [R, T, H]
    sel = loss_mask[:, 1:]  # [R, T-1]: token t+1 is predicted from position t
    h = hidden[:, :-1][sel]  # [N, H]
    targets = input_ids[:, 1:][sel]  # [N]
    return r1kernels.token_logprobs(h, weight, targets, bias=bias)


class SFTTrainer:
    def __init__(self, model, tokenizer, train_dataset, config: SFTConfig | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or SFTConfig()
        cfg = self.config
        rows = list(train_dataset)
        if not rows:
            raise ValueError("train_dataset is empty")
        for f in (cfg.prompt_field, cfg.completion_field):
            if f not in rows[0]:
                raise ValueError(f"train_dataset rows have no {f!r} column (columns: {sorted(rows[0])})")
        self.examples = [tokenize_example(tokenizer, r[cfg.prompt_field], r[cfg.completion_field], cfg.add_eos) for r in rows]
        too_long = [i for i, (ids, _) in enumerate(self.examples) if len(ids) > cfg.max_seq_length]
        if too_long:
            raise ValueError(f"train_dataset row {too_long[0]} has {len(self.examples[too_long[0]][0])} tokens, more than max_seq_length={cfg.max_seq_length}")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.device = next(model.parameters()).device
        self.optimizer = build_optimizer(model, cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, cfg.lr_scheduler_type, cfg.warmup_steps, cfg.max_steps)
        self.rng = random.Random(cfg.seed)
        self.order: list[int] = []
        self.step = 0

    def _next_batch(self):
        cfg = self.config
        picked = []
        while len(picked) < cfg.per_device_train_batch_size:
            if not self.order:  # a new epoch in a fresh seeded order
                self.order = list(range(len(self.examples)))
                self.rng.shuffle(self.order)
            picked.append(self.examples[self.order.pop()])
        t = collate(picked, self.pad_id, cfg.packing, cfg.max_seq_length)
        return tuple(x.to(self.device) if x is not None else None for x in t)

    def training_step(self) -> dict:
        self.model.train()
        input_ids, position_ids, loss_mask, attn = self._next_batch()
        logp = completion_logprobs(self.model, input_ids, position_ids, loss_mask, attn)  # [N]
        loss = -logp.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm or float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return {"loss": loss.item(), "grad_norm": gn.item(), "tokens": int(logp.numel()), "lr": self.scheduler.get_last_lr()[0]}

    def train(self, callback: Callable[[int], dict | None] | None = None, every: int = 10, progress: bool = True,
              stop: Callable[[dict], bool] | None = None) -> list[dict]:
        """Runs until max_steps, max_seconds, or `stop(metrics)` is true at a callback step.

        callback(step) -> dict of extra metrics (e.g. held-out accuracy) runs every `every` steps."""
        cfg = self.config
        log = MetricsLogger(cfg.output_dir, filename="sft_metrics.jsonl", total=cfg.max_steps, desc="sft", progress=progress)
        t0 = time.perf_counter()
        try:
            while self.step < cfg.max_steps:
                rec = {"step": self.step + 1, **self.training_step(), "elapsed": time.perf_counter() - t0}
                extra = callback(self.step) if callback is not None and self.step % every == 0 else None
                if extra:
                    rec.update(extra)
                if self.step % cfg.logging_steps == 0 or extra:
                    log.log(rec, postfix={k: rec[k] for k in ("loss",) + tuple(extra or ())})
                log.advance()
                if cfg.save_steps and self.step % cfg.save_steps == 0:
                    save_checkpoint(cfg.output_dir, self.step, self.model, self.optimizer, self.scheduler,
                                    {"config": cfg.to_dict(), "data_order": self.order})
                if extra and stop is not None and stop(rec):
                    break
                if cfg.max_seconds is not None and rec["elapsed"] >= cfg.max_seconds:
                    break
        finally:
            log.close()
        return log.records

    def save_model(self, path: str) -> None:
        from safetensors.torch import save_model

        os.makedirs(path, exist_ok=True)
        save_model(self.model, os.path.join(path, "model.safetensors"))
        self.model.config.to_json_file(os.path.join(path, "config.json"))
        with open(os.path.join(path, "sft_config.json"), "w") as f:
            json.dump(self.config.to_dict(), f, indent=1)
