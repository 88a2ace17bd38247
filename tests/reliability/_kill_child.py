"""The child process of test_kill_and_resume.py: a tiny GRPO or SFT run that resumes from its
latest checkpoint when there is one and SIGKILLs itself at one point of one step. The test forks
`run` from a forkserver that imported this module (and so torch) once; by hand:

    python _kill_child.py grpo|sft OUTPUT_DIR [generate|optimizer|save:K STEP]

generate: in the middle of the step's generation (GRPO; SFT: in its forward); optimizer: inside
the optimizer step, after AdamW updated the weights, before the step is counted; save:K: while
the step's checkpoint is written, after K of its files (0: before the first is complete)."""

import os
import signal
import sys

import torch

# imported here, not lazily in each child: the forkserver that imports this module pays them once
from tokenizers import Tokenizer  # noqa: F401
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM  # noqa: F401

from r1core.recipes.base_model import BaseModelSpec, build_model, build_tokenizer
from r1core.rewards import accuracy_reward
from r1core.tasks import generate
from r1core.trainers import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer
from r1core.trainers import checkpoint as ckpt

TINY = BaseModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)
STEPS = 6


def make(kind: str, out: str):
    tok = build_tokenizer()
    model = build_model(tok, TINY, seed=11)
    if kind == "grpo":
        rows = generate("addition", "train", 16, seed=3, digits=1)
        cfg = GRPOConfig(num_generations=4, per_device_train_batch_size=8, max_completion_length=8, learning_rate=3e-3,
                         max_steps=STEPS, save_steps=1, save_total_limit=2, output_dir=out, seed=5)
        return GRPOTrainer(model, tok, [accuracy_reward], rows, cfg)
    rows = [{"prompt": r["prompt"], "completion": r["solution"]} for r in generate("addition", "train", 16, seed=3, digits=2)]
    cfg = SFTConfig(per_device_train_batch_size=4, max_steps=STEPS, save_steps=1, save_total_limit=2, output_dir=out,
                    logging_steps=1, seed=5)
    return SFTTrainer(model, tok, rows, cfg)


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def arm(tr, point: str, step: int) -> None:
    in_step = lambda: tr.global_step + 1 == step  # noqa: E731
    if point == "generate":
        target = tr.engine if hasattr(tr, "engine") else None
        if target is not None:
            real_step, calls = target._step, [0]

            def step_then_maybe_die():
                out = real_step()
                calls[0] += in_step()
                if calls[0] == 2:
                    die()
                return out

            target._step = step_then_maybe_die
        else:  # SFT: in its forward (the base model's: the LM head is the fused loss's)
            base = tr.model.model
            real_forward = base.forward

            def forward_then_die(*a, **kw):
                out = real_forward(*a, **kw)
                if in_step():
                    die()
                return out

            base.forward = forward_then_die
    elif point == "optimizer":
        real = tr.optimizer_step

        def optimizer_step(*a, **kw):
            if not in_step():
                return real(*a, **kw)
            tr.optimizer.step()  # the update lands in memory, the step is never counted
            die()

        tr.optimizer_step = optimizer_step
    elif point.startswith("save:"):
        k, real_write, done = int(point.split(":")[1]), ckpt._atomic_write, [0]

        def write(path, fn):
            if tr.global_step == step:
                if done[0] == k:
                    real_fn = fn

                    def half(p):  # the file half written, then killed
                        real_fn(p)
                        with open(p, "r+b") as f:
                            f.truncate(os.path.getsize(p) // 2)
                        die()

                    fn = half
                done[0] += 1
            real_write(path, fn)

        ckpt._atomic_write = write
    else:
        raise SystemExit(f"unknown kill point {point!r}")


def run(kind: str, out: str, point: str | None = None, step: int | None = None) -> None:
    torch.set_num_threads(1)
    tr = make(kind, out)
    if point is not None:
        arm(tr, point, step)
    tr.train(resume_from_checkpoint=ckpt.latest_checkpoint(out) is not None, progress=False)
    ckpt.save_checkpoint(os.path.join(out, "final"), tr.global_step, tr.model)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], *(sys.argv[3:4] + [int(a) for a in sys.argv[4:5]]))
