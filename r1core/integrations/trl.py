"""r1core's Engine as the generator inside TRL's GRPOTrainer.

    from r1core.integrations.trl import use_r1core_engine
    from r1kernels.integrations.trl import use_r1kernels_grpo_loss

    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=GRPOConfig(...), train_dataset=data)
    use_r1core_engine(trainer)           # rollouts from the paged-KV engine on the live weights
    use_r1kernels_grpo_loss(trainer)     # and the fused loss (independent of this one)

`use_r1core_engine(trainer, **engine_kwargs)` replaces the place where TRL calls `generate` or
vLLM for one turn (`_generate_single_turn`) with `Engine.generate` on the trainer's own model:
the engine reads the parameters the optimizer updates, as r1core's own trainer does, so there is
no weight copy and no weight sync (the engine sees each update through the parameters' version
counters and drops its prefix cache). TRL's sampling settings map onto `SamplingParams`
(temperature, top_p, top_k, min_p, max_completion_length; `generation_kwargs={"do_sample": False}`
is greedy, `min_new_tokens` equal to max_completion_length is `ignore_eos`). The completions keep
their EOS token, as TRL's own generation does. What the engine does not do (images and other
multimodal inputs, a repetition penalty, TRL's own logit processors through `generation_kwargs`)
runs TRL's generation for that turn instead, with a warning naming it once.

The engine is built on the first rollout, so the model is the one the trainer ended up with
(after PEFT or device placement); pass Engine's arguments (num_blocks, max_num_seqs, ...) as
keywords.
"""

from __future__ import annotations

import warnings
from types import MethodType

from r1core.engine import Engine, SamplingParams

# generation_kwargs keys that SamplingParams expresses (the rest need TRL's own generation)
_MAPPED_GENERATION_KWARGS = {
    "max_new_tokens",
    "do_sample",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "cache_implementation",
    "min_new_tokens",
}


def use_r1core_engine(trainer, **engine_kwargs):
    """Make `trainer` (TRL's GRPOTrainer) generate its rollouts with r1core's Engine. Returns it."""
    if getattr(trainer, "_r1core_engine_patched", False):
        return trainer
    if not hasattr(trainer, "_generate_single_turn"):
        raise TypeError(
            f"trainer: expected TRL's GRPOTrainer (a `_generate_single_turn` method), got {type(trainer).__name__}"
        )
    trainer._r1core_trl_generate = trainer._generate_single_turn
    trainer._generate_single_turn = MethodType(_generate_single_turn, trainer)
    trainer._r1core_engine_kwargs = engine_kwargs
    trainer._r1core_engine = None
    trainer._r1core_engine_patched = True
    trainer._r1core_warned = set()
    return trainer


def _unsupported(trainer, images, multimodal_fields) -> str | None:
    if images is not None or multimodal_fields:
        return "images and other multimodal inputs"
    if getattr(trainer, "repetition_penalty", 1.0) not in (None, 1.0):
        return f"repetition_penalty={trainer.repetition_penalty}"
    kwargs = getattr(trainer, "generation_kwargs", None) or {}
    extra = sorted(set(kwargs) - _MAPPED_GENERATION_KWARGS)
    if extra:
        return f"generation_kwargs {extra}"
    if 0 < (kwargs.get("min_new_tokens") or 0) < trainer.max_completion_length:
        n = kwargs["min_new_tokens"]
        return f"min_new_tokens={n} below max_completion_length (only eos suppressed throughout maps)"
    return None


def sampling_params(trainer) -> SamplingParams:
    """TRL's sampling settings as the engine's SamplingParams (one completion per prompt: TRL
    repeats each prompt num_generations times itself)."""
    config = getattr(trainer, "generation_config", None)
    greedy = config is not None and config.do_sample is False
    # min_new_tokens == max_completion_length: eos is never sampled, the engine's ignore_eos
    ignore_eos = bool((getattr(trainer, "generation_kwargs", None) or {}).get("min_new_tokens"))
    return SamplingParams(
        n=1,
        temperature=0.0 if greedy else float(trainer.temperature),
        top_p=float(trainer.top_p or 1.0),
        top_k=int(trainer.top_k or 0),
        min_p=float(trainer.min_p or 0.0),
        max_new_tokens=int(trainer.max_completion_length),
        ignore_eos=ignore_eos,
        skip_special_tokens=False,
        logprobs=False,
    )


def _engine(trainer) -> Engine:
    if trainer._r1core_engine is None:
        model = trainer.accelerator.unwrap_model(trainer.model)
        trainer._r1core_engine = Engine(model, tokenizer=trainer.processing_class, **trainer._r1core_engine_kwargs)
    return trainer._r1core_engine


def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
    reason = _unsupported(self, images, multimodal_fields)
    if reason is not None:
        if reason not in self._r1core_warned:
            self._r1core_warned.add(reason)
            warnings.warn(
                f"r1core.integrations.trl: the engine does not handle {reason}; TRL's generation runs instead",
                stacklevel=2,
            )
        return self._r1core_trl_generate(prompt_ids, images, multimodal_fields, num_generations, has_tool_images)
    engine = _engine(self)
    was_training = engine.model.training
    engine.model.eval()
    try:
        outputs = engine.generate([list(p) for p in prompt_ids], sampling_params(self))
    finally:
        engine.model.train(was_training)
    # logprobs None, as TRL's own generation returns: TRL recomputes what it needs
    return [list(o.outputs[0].token_ids) for o in outputs], None


__all__ = ["use_r1core_engine", "sampling_params"]
