"""One GRPO optimizer step, TRL's GRPOTrainer against r1core's, in one process on the same tiny
Qwen2 (random weights, ~5M and ~30M parameters), character tokenizer, prompts, reward and settings:
num_generations 8, one prompt and its 8 completions per step, exactly 64 completion tokens (eos
suppressed in both, so both do the same work), beta 0.04 (a frozen reference model), dapo loss,
no vLLM, AdamW.

Reported per step (median over the measured steps, after one warm-up step): seconds generating,
seconds for the rest (rewards, old/reference log-probs, loss, backward, optimizer), total, and the
peak resident memory above the level before the trainer was built; steps/s ratio ours / TRL.

    python bench/bench_grpo_step.py            # 5M and 30M, 5 measured steps each
    python bench/bench_grpo_step.py --quick    # 5M only, 2 measured steps
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402

MODELS = {  # name: (hidden, intermediate, layers, heads)
    "5M": (256, 1024, 5, 4),
    "30M": (512, 2048, 9, 8),
}
G, COMPLETION = 8, 64


class PeakRSS:
    """Peak resident set size (bytes) above the level at start, sampled every 2 ms."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())

    @property
    def delta(self):
        return self.peak - self.base


def make_model(tok, size: str, seed: int = 0):
    from r1core.recipes.base_model import BaseModelSpec, build_model

    h, i, n, heads = MODELS[size]
    spec = BaseModelSpec(hidden_size=h, intermediate_size=i, num_hidden_layers=n, num_attention_heads=heads,
                         num_key_value_heads=heads, max_position_embeddings=128)
    return build_model(tok, spec, seed=seed)


def rows(n: int):
    from r1core.tasks import generate

    return generate("addition", "train", n, seed=0)


def bench_ours(size: str, steps: int) -> dict:
    from r1core.recipes.base_model import build_tokenizer
    from r1core.rewards import accuracy_reward
    from r1core.trainers import GRPOConfig, GRPOTrainer

    tok = build_tokenizer()
    model = make_model(tok, size)
    with PeakRSS() as mem, tempfile.TemporaryDirectory() as out:
        cfg = GRPOConfig(num_generations=G, per_device_train_batch_size=G, max_completion_length=COMPLETION, beta=0.04,
                         learning_rate=1e-6, ignore_eos=True, output_dir=out, max_steps=steps + 1, logging_steps=1)
        tr = GRPOTrainer(model, tok, [accuracy_reward], rows(64), cfg)
        gen, total = [], []
        for s in range(steps + 1):
            info = tr.train_step()
            if s > 0:  # step 0 warms up
                gen.append(info["gen_seconds"])
                total.append(info["step_seconds"])
        assert info["completion_length"] == COMPLETION
    return summarize(gen, total, mem.delta)


def bench_trl(size: str, steps: int) -> dict:
    import datasets
    from trl import GRPOConfig, GRPOTrainer
    from transformers import TrainerCallback

    from r1core.recipes.base_model import build_tokenizer
    from r1core.rewards import accuracy_reward

    tok = build_tokenizer()
    model = make_model(tok, size)
    ds = datasets.Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows(64)])
    gen, total = [], []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()
            self.gen0 = sum(gen_all)

        def on_step_end(self, args, state, control, **kw):
            total_all.append(time.perf_counter() - self.t0)
            gen_step.append(sum(gen_all) - self.gen0)

    gen_all, total_all, gen_step = [], [], []
    with tempfile.TemporaryDirectory() as out, PeakRSS() as mem:
        # TRL builds its reference model with from_pretrained(model.config._name_or_path)
        model.save_pretrained(os.path.join(out, "model"))
        model.config._name_or_path = os.path.join(out, "model")
        cfg = GRPOConfig(output_dir=out, use_cpu=True, report_to=[], per_device_train_batch_size=G, num_generations=G,
                         max_completion_length=COMPLETION, beta=0.04, learning_rate=1e-6, max_steps=steps + 1, logging_steps=1,
                         save_strategy="no", generation_kwargs={"min_new_tokens": COMPLETION}, disable_tqdm=True, seed=0,
                         dataloader_num_workers=0)
        trainer = GRPOTrainer(model=model, reward_funcs=[accuracy_reward], args=cfg, train_dataset=ds, processing_class=tok,
                              callbacks=[StepTimer()])
        orig = trainer._generate_single_turn

        def timed(*a, **k):
            t0 = time.perf_counter()
            r = orig(*a, **k)
            gen_all.append(time.perf_counter() - t0)
            return r

        trainer._generate_single_turn = timed
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.train()
    gen, total = gen_step[1:], total_all[1:]
    return summarize(gen, total, mem.delta)


def summarize(gen, total, mem):
    g, t = statistics.median(gen), statistics.median(total)
    return {"gen_s": g, "train_s": t - g, "step_s": t, "peak_mb": mem / 2**20}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="5M model only, 2 measured steps")
    ap.add_argument("--steps", type=int, default=None, help="measured steps per trainer (default 5, --quick 2)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = args.steps or (2 if args.quick else 5)
    sizes = ["5M"] if args.quick else ["5M", "30M"]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, steps {steps} (+1 warm-up), load {os.getloadavg()[0]:.1f}")
    print(f"{'model':>6} {'trainer':>8} {'gen s':>8} {'train s':>8} {'step s':>8} {'peak MB':>8}")
    for size in sizes:
        res = {"trl": bench_trl(size, steps), "r1core": bench_ours(size, steps)}
        for name, r in res.items():
            print(f"{size:>6} {name:>8} {r['gen_s']:8.3f} {r['train_s']:8.3f} {r['step_s']:8.3f} {r['peak_mb']:8.0f}")
        print(f"{size:>6} speed-up (steps/s, r1core / TRL): {res['trl']['step_s'] / res['r1core']['step_s']:.2f}x "
              f"(generation {res['trl']['gen_s'] / res['r1core']['gen_s']:.2f}x, rest {res['trl']['train_s'] / res['r1core']['train_s']:.2f}x)")


if __name__ == "__main__":
    main()
