"""The shapes the suite runs: a small set of model shapes, and the shapes the end-to-end benchmarks
(bench/*.py) use, marked `large` (`--micro-shapes all`)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Model:
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


MODELS = {
    "tiny-1M": Model(128, 512, 4, 4, 107),  # the default run's base model (character vocabulary)
    "5M": Model(256, 1024, 4, 4, 107),  # bench_grpo_step.py's 5M model
    "qwen2-151k": Model(256, 1024, 4, 2, 151936),  # bench_grpo_step.py --case qwen2-151k
    "qwen2.5-0.5b": Model(896, 4864, 14, 2, 151936),  # bench_grpo_loss.py's head
}
SMALL = {"tiny-1M", "5M"}

# loss ops: (model, completions B, tokens T)
LOSS_SHAPES = [("tiny-1M", 8, 64), ("5M", 8, 64), ("qwen2-151k", 16, 256), ("qwen2.5-0.5b", 8, 256)]
# attention and decode ops: (model, sequences, context length)
ATTN_SHAPES = [("tiny-1M", 16, 128), ("5M", 16, 256), ("qwen2.5-0.5b", 16, 1024)]


def params(shapes):
    """pytest params with an id and the `large` mark on the benchmarks' shapes."""
    return [pytest.param(s, id="-".join(map(str, s)), marks=() if s[0] in SMALL else pytest.mark.large) for s in shapes]
