"""GRPO (DeepSeekMath / R1-Zero) with TRL's names: G samples per prompt from `r1core.engine` on the
live weights, rule-based rewards, group-relative advantages (`r1kernels.group_advantages`), the
clipped token-level surrogate fused with the LM head (`r1kernels.grpo_loss`, default loss_type
"dapo": sum over tokens / tokens in the global batch) on hidden states for which each group's
prompt ran once (`r1core.trainers.completion_states`), optional k3 KL to a frozen reference model
(beta > 0), AdamW with gradient clipping, warmup then decay, gradient accumulation; DAPO's dynamic
sampling as an option.

The loop (steps, logging, checkpoints, resume, time budget, progress) is `r1core.trainers.loop`'s;
GRPO's step, `training_step`, is one round: generate once, then `num_iterations` optimizer steps on
that batch. With num_iterations == 1 the old log-probs are the engine's sampling log-probs (in a
synchronous run equal to the policy's own forward, tested); with more they are recomputed once with
`r1kernels.token_logprobs` before the first update. `config.max_steps` counts optimizer steps.
What divides the loss (tokens or sequences, of the micro-batch or of the whole step) is
`r1core.trainers.grpo_normaliser.step_normaliser`'s to say.

Several processes (torchrun): each rank takes whole prompts, so a group never spans ranks; the
dapo normaliser is the token count summed over ranks; gradients are averaged by DDP; logged counts
(SUMMED_METRICS) are summed over ranks, the other metrics averaged.

Truncated importance sampling (config.tis_cap): the engine's sampling log-probs become the loss's
rollout_logprobs, each token's surrogate weighted by min(pi_train / pi_rollout, tis_cap); the old
log-probs are then the policy's own (TRL's vllm_importance_sampling_correction). Asynchronous
rollouts (config.async_rollouts, one process): `r1core.trainers.async_rollouts` generates the next
step's completions in a worker process while this step trains; without TIS their sampling
log-probs, one update old, are the old log-probs, and the clip bounds the step around them.

    trainer = GRPOTrainer(model, tok, [accuracy_reward], dataset, GRPOConfig(...)); trainer.train()
"""

from __future__ import annotations

import copy
import inspect
import math
import random
import time
import warnings
from dataclasses import dataclass

import torch

import r1kernels
from r1core.tasks.tokenizer import encode_prompt
from r1core.trainers import distributed as dist
from r1core.trainers.completion_states import completion_states
from r1core.trainers.grpo_config import GRPOConfig
from r1core.trainers.grpo_normaliser import Normaliser, step_normaliser
from r1core.trainers.loop import Trainer
from r1core.trainers.metrics import MetricsLogger
from r1core.trainers.optim import build_optimizer, build_scheduler, lm_head_params
from r1core.trainers.scoring import func_name as _func_name
from r1core.trainers.scoring import score_completions, total_reward

# logged counts that add up over ranks (the rest are rates or means, averaged)
SUMMED_METRICS = frozenset({"gen_tokens", "trained_samples", "dynamic_sampling_short", "tokens_per_second"})


@dataclass
class RolloutBatch:
    """Everything one optimisation needs, padded: prompts left-padded to P, completions
    right-padded to C, so completion token j of every row is predicted at column P - 1 + j."""

    input_ids: torch.Tensor  # [B, P + C]
    attention_mask: torch.Tensor  # [B, P + C]
    completion_ids: torch.Tensor  # [B, C]
    completion_mask: torch.Tensor  # [B, C] bool: real (and not masked-out) completion tokens
    advantages: torch.Tensor  # [B] float32
    old_logprobs: torch.Tensor | None  # [B, C] sampling log-probs
    ref_logprobs: torch.Tensor | None  # [B, C]
    group_ok: torch.Tensor  # [B] bool: the sample's group has distinct rewards
    prompt_len: int  # P
    rollout_logprobs: torch.Tensor | None = None  # [B, C] sampling log-probs, the TIS denominator (tis_cap set)
    prompt_groups: torch.Tensor | None = None  # [B] long: the row's prompt (a group's rows adjacent); None: no sharing

    def rows(self, idx: slice) -> "RolloutBatch":
        take = lambda t: None if t is None else t[idx]  # noqa: E731
        return RolloutBatch(take(self.input_ids), take(self.attention_mask), take(self.completion_ids), take(self.completion_mask),
                            take(self.advantages), take(self.old_logprobs), take(self.ref_logprobs), take(self.group_ok), self.prompt_len,
                            take(self.rollout_logprobs), take(self.prompt_groups))


def _completion_states(base, b: RolloutBatch, bf16: bool = False) -> torch.Tensor:
    """[B, C, H] float32: the states that predict b's completion tokens, each group's prompt run once."""
    return completion_states(base, b.input_ids, b.attention_mask, b.prompt_len, b.prompt_groups, bf16)


class _PolicyLoss(torch.nn.Module):
    """The fused GRPO loss as a module, so DDP wraps the whole forward (its gradient hooks then
    cover the LM head used outside the base model too)."""

    def __init__(self, model, config: GRPOConfig):
        super().__init__()
        self.model = model
        self.config = config

    def forward(self, b: RolloutBatch, normaliser: Normaliser | None = None):
        """The loss of micro-batch b, normalised as `normaliser` says (`step_normaliser`); None:
        by the micro-batch's own count, as the kernel does for config.loss_type."""
        cfg = self.config
        norm = normaliser or Normaliser(cfg.loss_type)
        base, weight, bias = lm_head_params(self.model)
        hidden = _completion_states(base, b, cfg.bf16)  # [B, C, H]
        loss, stats = r1kernels.grpo_loss(
            hidden, weight, b.completion_ids, b.advantages, mask=b.completion_mask, old_logprobs=b.old_logprobs,
            ref_logprobs=b.ref_logprobs, bias=bias, beta=cfg.beta, epsilon_low=cfg.epsilon, epsilon_high=cfg.epsilon_high,
            delta=cfg.delta, temperature=cfg.temperature, loss_type=norm.loss_type,
            importance_sampling=cfg.importance_sampling_level, num_items=norm.num_items, rollout_logprobs=b.rollout_logprobs,
            tis_cap=None if b.rollout_logprobs is None else cfg.tis_cap, tis_level=cfg.tis_level,
        )
        return norm.rescale(loss, b.completion_ids.shape[0]), stats


def policy_logprobs(model, b: RolloutBatch, temperature: float, bf16: bool = False) -> torch.Tensor:
    """Log-probs [B, C] of the completion tokens under model (no gradient)."""
    base, weight, bias = lm_head_params(model)
    with torch.no_grad():
        hidden = _completion_states(base, b, bf16)
        return r1kernels.token_logprobs(hidden, weight, b.completion_ids, bias=bias, temperature=temperature)


def _required_keywords(f) -> list[str]:
    """The parameters of reward function f with no default beyond the two positional ones
    (prompts, completions) and completion_ids: the dataset columns it cannot run without."""
    try:
        params = list(inspect.signature(f).parameters.values())
    except (TypeError, ValueError):  # no signature to read: the first step will tell
        return []
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:2]
    return [p.name for p in params if p.default is inspect.Parameter.empty and p not in positional
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "completion_ids"]


class GRPOTrainer(Trainer):
    name = "grpo"
    progress_keys = ("reward", "accuracy", "completion_length")
    summed_metrics = SUMMED_METRICS
    resume_fixed = ("num_generations", "per_device_train_batch_size", "gradient_accumulation_steps", "seed", "shuffle_dataset")

    def __init__(self, model, tokenizer, reward_funcs, train_dataset, config: GRPOConfig | None = None, ref_model=None,
                 engine=None, accuracy_func: int | str = 0):
        super().__init__(model, tokenizer, config or GRPOConfig())
        cfg = self.config
        self.reward_funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        if not self.reward_funcs:
            raise ValueError("reward_funcs is empty: GRPO needs at least one reward function")
        for i, f in enumerate(self.reward_funcs):
            if not callable(f):
                raise ValueError(f"reward_funcs[{i}] is not callable: {f!r}")
        self.reward_names = [_func_name(f) for f in self.reward_funcs]
        if cfg.reward_weights is not None and len(cfg.reward_weights) != len(self.reward_funcs):
            raise ValueError(f"GRPOConfig.reward_weights has {len(cfg.reward_weights)} entries "
                             f"for {len(self.reward_funcs)} reward functions")
        self.reward_weights = torch.tensor(cfg.reward_weights or [1.0] * len(self.reward_funcs), dtype=torch.float32)
        # the function whose reward >= 1 counts as a correct sample in the logged `accuracy`
        if isinstance(accuracy_func, str) and accuracy_func not in self.reward_names:
            raise ValueError(f"accuracy_func {accuracy_func!r} names no reward function (have {self.reward_names})")
        self.accuracy_index = self.reward_names.index(accuracy_func) if isinstance(accuracy_func, str) else int(accuracy_func)
        if not 0 <= self.accuracy_index < len(self.reward_funcs):
            raise ValueError(f"accuracy_func must index reward_funcs (0..{len(self.reward_funcs) - 1}), got {accuracy_func!r}")

        self.rows = list(train_dataset)
        if not self.rows:
            raise ValueError("train_dataset is empty")
        if "prompt" not in self.rows[0]:
            raise ValueError(f"train_dataset rows need a 'prompt' column (columns: {sorted(self.rows[0])})")
        columns = set(self.rows[0])
        # the reward functions get every column as a keyword beside these
        reserved = sorted(columns & {"prompts", "completions", "completion_ids"})
        if reserved:
            raise ValueError(f"train_dataset columns {reserved} clash with the reward functions' own arguments: rename them")
        self.prompt_ids = []
        for i, r in enumerate(self.rows):
            if set(r) != columns:
                raise ValueError(f"train_dataset row {i} has columns {sorted(r)}, row 0 has {sorted(columns)}")
            if not isinstance(r["prompt"], str):
                raise ValueError(f"train_dataset row {i}: 'prompt' must be a string, got {type(r['prompt']).__name__}")
            ids = encode_prompt(tokenizer, r["prompt"])
            if not ids:
                raise ValueError(f"train_dataset row {i}: the prompt {r['prompt']!r} encodes to no tokens")
            if cfg.max_prompt_length is not None and len(ids) > cfg.max_prompt_length:
                raise ValueError(f"train_dataset row {i}: the prompt has {len(ids)} tokens, "
                                 f"more than max_prompt_length={cfg.max_prompt_length}")
            self.prompt_ids.append(ids)
        self._check_reward_columns(columns)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

        if cfg.beta > 0:
            self.ref_model = ref_model if ref_model is not None else copy.deepcopy(model)
            self.ref_model.eval().requires_grad_(False)
        else:
            self.ref_model = None
        if engine is None:
            from r1core.engine import Engine

            engine = Engine(model, tokenizer=tokenizer, **self._engine_kwargs())
        self.engine = engine
        self._async = None  # the AsyncRollouts pipeline, started by the first rollout
        if cfg.async_rollouts and cfg.max_staleness > 0 and self.world_size > 1:
            raise ValueError(f"GRPOConfig.async_rollouts runs on one process (world size {self.world_size} here): "
                             "each rank would need its own rollout worker")
        self.optimizer = build_optimizer(model, cfg.learning_rate, (cfg.adam_beta1, cfg.adam_beta2), cfg.weight_decay)
        budget = self.budget_spent if cfg.max_seconds is not None else None
        self.scheduler = build_scheduler(self.optimizer, cfg.lr_scheduler_type, cfg.num_warmup_steps(), cfg.max_steps, budget)
        self.loss_module = self.wrap_loss(_PolicyLoss(model, cfg), bf16=cfg.bf16)  # DDP, FSDP2 (cfg.fsdp) or as it is

        self.consumed = 0  # prompts taken from the data stream (all ranks)
        self.best_reward = -math.inf
        self.low_reward_steps = 0
        self.collapsed = False
        self.unscorable_steps = 0  # steps in a row in which no sample could be scored
        self._silent_rewards: list[str] = []  # the last step's reward functions that scored no sample

    def _check_reward_columns(self, columns: set) -> None:
        """Every reward function's dataset columns exist, before the first step: a missing one would
        make every sample unscorable (loss 0, nothing learnt) without an error. A function declares
        its columns as `required_columns` (accuracy_reward: answer); otherwise its parameters
        without a default are the columns it needs."""
        for name, f in zip(self.reward_names, self.reward_funcs):
            needs = getattr(f, "required_columns", None)
            if needs is None:
                needs = _required_keywords(f)
            missing = [c for c in needs if c not in columns]
            if missing:
                raise ValueError(f"reward function {name!r} reads the column(s) {missing}, which train_dataset lacks "
                                 f"(columns: {sorted(columns)}): every sample would be unscorable and nothing learnt")

    # ---- data --------------------------------------------------------------------------------
    def _prompt_index(self, k: int) -> int:
        """Row of the k-th prompt of the stream: epochs of seeded permutations."""
        n = len(self.rows)
        epoch, pos = divmod(k, n)
        if getattr(self, "_order_epoch", None) != epoch:
            self._order = list(range(n))
            if self.config.shuffle_dataset:
                random.Random(self.config.seed * 7919 + epoch).shuffle(self._order)
            self._order_epoch = epoch
        return self._order[pos]

    def _next_prompts(self) -> list[int]:
        """This rank's share of the next prompts_per_step * world_size prompts of the stream."""
        per = self.config.prompts_per_step
        start = self.consumed + self.rank * per
        self.consumed += per * self.world_size
        return [self._prompt_index(k) for k in range(start, start + per)]

    # ---- rollout and reward ------------------------------------------------------------------
    def _engine_kwargs(self) -> dict:
        # a cache sized for one step's sequences (not the engine's default share of free RAM,
        # which takes seconds to allocate and that much memory): prompts x G, whole blocks
        cfg, block = self.config, 16
        per_seq = -(-(max(len(p) for p in self.prompt_ids) + cfg.max_completion_length) // block) + 1
        return {"block_size": block, "num_blocks": cfg.prompts_per_step * cfg.num_generations * per_seq + 16}

    def _sampling_params(self, seed: int):
        from r1core.engine import SamplingParams

        cfg = self.config
        return SamplingParams(n=cfg.num_generations, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, min_p=cfg.min_p,
                              max_new_tokens=cfg.max_completion_length, stop=cfg.stop, ignore_eos=cfg.ignore_eos, seed=seed, logprobs=True)

    def generation_request(self, idx: list[int]) -> tuple[list[list[int]], list]:
        """(prompt ids, SamplingParams) for the rows idx just taken from the stream: per-prompt seeds
        derived from the run's seed and the step, so a resumed run samples what an uninterrupted
        one would."""
        base = (self.config.seed * 1_000_003 + self.consumed * 8191) % (2**31)
        params = [self._sampling_params((base + j * 104_729) % (2**31)) for j in range(len(idx))]
        return [self.prompt_ids[i] for i in idx], params

    def generate(self, idx: list[int]):
        """G completions for each row in idx, from the live weights."""
        prompts, params = self.generation_request(idx)
        with self.full_weights():  # FSDP: the engine reads whole parameters, gathered once for the generation
            outs = self.engine.generate(prompts, params)
        return [c for o in outs for c in o.outputs]  # B = len(idx) * G, groups contiguous

    def _generation_round(self) -> tuple[list[int], list, dict]:
        """The next prompts and their completions: generated now, or with async rollouts the ones
        the worker generated during the previous step (and the next ones started)."""
        cfg = self.config
        if not (cfg.async_rollouts and cfg.max_staleness > 0):
            idx = self._next_prompts()
            return idx, self.generate(idx), {}
        if self._async is None:
            from r1core.trainers.async_rollouts import AsyncRollouts

            self._async = AsyncRollouts(self, self._engine_kwargs())
        return self._async.round()

    def score(self, idx: list[int], completions: list) -> torch.Tensor:
        """Rewards [B, F] float32; None -> NaN (not scorable)."""
        G = self.config.num_generations
        prompts = [self.rows[i]["prompt"] for i in idx for _ in range(G)]
        columns = {k: [self.rows[i][k] for i in idx for _ in range(G)] for k in self.rows[0] if k != "prompt"}
        return score_completions(self.reward_funcs, prompts, [c.text for c in completions], [c.token_ids for c in completions],
                                 columns, self.reward_names)

    def _total_reward(self, rewards: torch.Tensor) -> torch.Tensor:
        """Weighted sum over functions, NaN only where no function could score the sample."""
        return total_reward(rewards, self.reward_weights)

    def _build_batch(self, idx, completions, advantages, zero_std) -> RolloutBatch:
        cfg, G = self.config, self.config.num_generations
        prompts = [self.prompt_ids[i] for i in idx for _ in range(G)]
        P = max(len(p) for p in prompts)
        C = max(1, max(len(c.token_ids) for c in completions))
        B = len(completions)
        input_ids = torch.full((B, P + C), self.pad_id, dtype=torch.long)
        attn = torch.zeros((B, P + C), dtype=torch.long)
        cmask = torch.zeros((B, C), dtype=torch.bool)
        old = torch.zeros((B, C), dtype=torch.float32)
        for b, (p, c) in enumerate(zip(prompts, completions)):
            n = len(c.token_ids)
            input_ids[b, P - len(p):P] = torch.tensor(p)
            input_ids[b, P:P + n] = torch.tensor(c.token_ids, dtype=torch.long)
            attn[b, P - len(p):P + n] = 1
            truncated = c.finish_reason == "length"
            cmask[b, :n] = not (cfg.mask_truncated_completions and truncated)
            if c.logprobs is not None:
                old[b, :n] = torch.tensor(c.logprobs, dtype=torch.float32)
        dev = self.device
        # with TIS the sampling log-probs are the weight's denominator and the PPO ratio's old
        # log-probs are the policy's own (recomputed for num_iterations > 1), as in TRL
        rollout = old.to(dev) if cfg.tis_cap is not None else None
        return RolloutBatch(input_ids.to(dev), attn.to(dev), input_ids[:, P:].to(dev), cmask.to(dev), advantages.float().to(dev),
                            None if rollout is not None else old.to(dev), None, (~zero_std).repeat_interleave(G).to(dev), P, rollout,
                            torch.arange(len(idx), device=dev).repeat_interleave(G))

    def rollout(self) -> tuple[RolloutBatch, dict]:
        """Prompts, G samples each, rewards, advantages; dynamic sampling refills dead groups."""
        cfg, G = self.config, self.config.num_generations
        need = cfg.prompts_per_step
        kept, dead = [], []  # (prompt row, its G completions, rewards [G, F])
        rounds, gen_time, gen_cpu, gen_tokens = 0, 0.0, 0.0, 0
        while True:
            t0, c0 = time.perf_counter(), time.process_time()
            idx, comps, async_info = self._generation_round()
            gen_time += time.perf_counter() - t0
            gen_cpu += time.process_time() - c0
            gen_tokens += sum(len(c.token_ids) for c in comps)
            rewards = self.score(idx, comps)  # [B, F]
            total = self._total_reward(rewards)
            _, gstats = r1kernels.group_advantages(total, G, scale=cfg.scale_rewards, return_stats=True)
            for g, i in enumerate(idx):
                item = (i, comps[g * G:(g + 1) * G], rewards[g * G:(g + 1) * G])
                (dead if (cfg.dynamic_sampling and bool(gstats.zero_std[g])) else kept).append(item)
            rounds += 1
            if not cfg.dynamic_sampling or rounds >= cfg.max_dynamic_sampling_rounds:
                break
            # every rank must agree to go on: they draw their prompts from one shared stream
            if int(dist.all_reduce_sum(torch.tensor([float(len(kept) < need)])).item()) == 0:
                break
        short = max(0, need - len(kept))
        groups = (kept + dead[:short])[:need] if cfg.dynamic_sampling else kept
        idx = [g[0] for g in groups]
        comps = [c for g in groups for c in g[1]]
        rewards = torch.cat([g[2] for g in groups])  # [B, F]
        total = self._total_reward(rewards)
        adv, gstats = r1kernels.group_advantages(total, G, scale=cfg.scale_rewards, return_stats=True)
        batch = self._build_batch(idx, comps, adv, gstats.zero_std)
        acc = rewards[:, self.accuracy_index]
        self._silent_rewards = [n for j, n in enumerate(self.reward_names) if bool(torch.isnan(rewards[:, j]).all())]
        info = {
            "reward": torch.nanmean(total).item(),
            "reward_std": float(torch.nan_to_num(gstats.std).mean()),
            **{f"rewards/{n}": torch.nanmean(rewards[:, j]).item() for j, n in enumerate(self.reward_names)},
            "accuracy": torch.nan_to_num(acc, nan=0.0).ge(1.0).float().mean().item(),
            "unscorable": torch.isnan(total).float().mean().item(),
            "zero_std_frac": gstats.zero_std.float().mean().item(),
            "completion_length": sum(len(c.token_ids) for c in comps) / len(comps),
            "truncated_frac": sum(c.finish_reason == "length" for c in comps) / len(comps),
            "gen_seconds": gen_time,
            "gen_cpu_seconds": gen_cpu,  # CPU seconds of this process: steadier than wall time on a shared machine
            "gen_tokens": gen_tokens,
        }
        if cfg.dynamic_sampling:
            info.update(dynamic_sampling_rounds=rounds, dynamic_sampling_short=short)
        info.update(async_info)
        return batch, info

    # ---- optimisation --------------------------------------------------------------------------
    def accumulate_gradients(self, batch: RolloutBatch) -> dict:
        """Zeroes the gradients, then backward over batch in gradient_accumulation_steps
        micro-batches; returns the (global) loss, the samples that carried gradient and the loss's
        stats. No clipping, no update: `optimize` adds those, tests compare these gradients."""
        cfg = self.config
        norm = step_normaliser(cfg.loss_type, cfg.exclude_zero_std_from_normalizer, batch.completion_mask, batch.group_ok)
        if norm.step_wide and cfg.beta == 0 and self.world_size == 1:
            # with no KL term a sample of advantage 0 adds nothing to a loss whose normaliser is
            # fixed for the step: skip its forward and backward (dead groups are common, more so as
            # accuracy rises). Not under DDP, whose ranks must run equal passes.
            keep = batch.advantages != 0
            if not bool(keep.all()):
                batch = batch.rows(keep if bool(keep.any()) else slice(0, 1))
        mb = cfg.per_device_train_batch_size
        parts = (batch.rows(slice(s, s + mb)) for s in range(0, batch.completion_ids.shape[0], mb))
        loss, stats = self.backward_micro_batches(parts, lambda part: self.loss_module(part, norm),
                                                  mean_over=None if norm.step_wide else cfg.gradient_accumulation_steps)
        return {"loss": loss, "trained_samples": batch.completion_ids.shape[0], **stats}  # stats: over the samples that carry gradient

    def optimize(self, batch: RolloutBatch) -> dict:
        """One optimizer step over batch: gradients, clipping, AdamW, the scheduler."""
        out = self.accumulate_gradients(batch)
        opt = self.optimizer_step(out["loss"])
        if hasattr(self.engine, "weights_updated"):
            self.engine.weights_updated()
        return {**out, **opt}

    def training_step(self) -> dict:
        """One generation round: rollout, reward, advantage, (old/ref log-probs), num_iterations x
        (loss, backward, step); returns this process's metrics (the loop reduces them over ranks)."""
        cfg = self.config
        t0, c0 = time.perf_counter(), time.process_time()
        batch, info = self.rollout()
        if cfg.num_iterations > 1:
            with self.full_weights():
                batch.old_logprobs = policy_logprobs(self.model, batch, cfg.temperature, cfg.bf16)
        if self.ref_model is not None:
            batch.ref_logprobs = policy_logprobs(self.ref_model, batch, cfg.temperature, cfg.bf16)
        t1 = time.perf_counter()
        for _ in range(cfg.num_iterations):
            opt = self.optimize(batch)
        info.update(opt, train_seconds=time.perf_counter() - t1, step_seconds=time.perf_counter() - t0,
                    step_cpu_seconds=time.process_time() - c0)
        info["tokens_per_second"] = info["gen_tokens"] / max(info["gen_seconds"], 1e-9)
        return info

    train_step = training_step  # the name bench/bench_grpo_step.py times

    def _check_collapse(self, reward: float, log: MetricsLogger) -> None:
        cfg = self.config
        if not math.isfinite(reward):
            return
        self.best_reward = max(self.best_reward, reward)
        if self.best_reward >= 2 * cfg.collapse_threshold and reward <= cfg.collapse_threshold:
            self.low_reward_steps += 1
        else:
            self.low_reward_steps = 0
        if self.low_reward_steps == cfg.collapse_patience and not self.collapsed:
            self.collapsed = True
            msg = (f"POLICY COLLAPSE at step {self.global_step}: mean reward {reward:.3f} for {cfg.collapse_patience} steps after "
                   f"reaching {self.best_reward:.3f}. learning_rate={cfg.learning_rate:g} is likely too high (try 3-10x lower).")
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            log.write("!" * 20 + " " + msg)

    def _check_unscorable(self, record: dict, log: MetricsLogger) -> bool:
        """Warn when a reward function scored no sample of the step; True (stop) after
        collapse_patience steps in a row in which no sample could be scored at all: every advantage
        is 0, so the run learns nothing."""
        cfg = self.config
        some_scored = len(self._silent_rewards) < len(self.reward_names)
        for name in self._silent_rewards if some_scored else ():
            msg = (f"step {self.global_step}: reward function {name!r} scored none of the step's samples (all None/NaN): "
                   f"check the dataset columns it reads")
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
        self.unscorable_steps = self.unscorable_steps + 1 if record.get("unscorable", 0.0) >= 1.0 else 0
        if not self.unscorable_steps:
            return False
        msg = (f"NOTHING TO LEARN at step {self.global_step}: no sample could be scored by any reward function "
               f"({self.unscorable_steps} step(s) in a row; every advantage is 0)")
        stop = self.unscorable_steps >= cfg.collapse_patience
        if stop:
            msg += f"; stopping after collapse_patience={cfg.collapse_patience} such steps"
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        log.write("!" * 20 + " " + msg)
        return stop

    def end_of_step(self, record: dict, log: MetricsLogger) -> bool:
        self._check_collapse(record["reward"], log)
        stop_unscorable = self._check_unscorable(record, log)
        return (self.collapsed and self.config.stop_on_collapse) or stop_unscorable

    # ---- the run ---------------------------------------------------------------------------------
    def train(self, *args, **kwargs) -> list[dict]:
        """Trainer.train; with async rollouts the worker is stopped when the run ends or fails (its
        prefetched prompts go back to the stream)."""
        try:
            return super().train(*args, **kwargs)
        finally:
            self.close_rollouts()

    def close_rollouts(self) -> None:
        """Stops the asynchronous rollout worker, if any; the prompts it took for a step not trained
        go back to the stream."""
        if self._async is not None:
            self.consumed -= self._async.prompts_in_flight()
            self._async.close()
            self._async = None

    # ---- checkpoints ---------------------------------------------------------------------------
    def trainer_state(self) -> dict:
        # prompts prefetched for a step not trained yet are not consumed: a resumed run takes them again
        in_flight = self._async.prompts_in_flight() if self._async is not None else 0
        return {"consumed": self.consumed - in_flight, "best_reward": self.best_reward if math.isfinite(self.best_reward) else None,
                "low_reward_steps": self.low_reward_steps, "collapsed": self.collapsed, "unscorable_steps": self.unscorable_steps}

    def restore_trainer_state(self, js: dict, path: str) -> None:
        if "consumed" not in js:
            raise ValueError(f"checkpoint {path!r} holds no GRPO state (consumed prompts): not written by GRPOTrainer")
        self.consumed = js["consumed"]
        self.best_reward = -math.inf if js["best_reward"] is None else js["best_reward"]
        self.low_reward_steps = js["low_reward_steps"]
        self.collapsed = js["collapsed"]
        self.unscorable_steps = js.get("unscorable_steps", 0)  # absent from checkpoints written before it was counted
        if hasattr(self.engine, "weights_updated"):
            self.engine.weights_updated()
