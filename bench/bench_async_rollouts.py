"""Synchronous against asynchronous GRPO steps (GRPOConfig.async_rollouts, max_staleness 1: the next
step's completions generated in a worker process while this step trains) on this CPU, steps/s.

Cases:
  default   the default run's GRPO settings (`r1core run`: the shipped ~1M-parameter addition base,
            16 prompts x 8 samples, 48-token completions, dapo, no KL, lr 1.5e-4), real prompts
  30M       bench_grpo_step.py's 30M model (random weights), 1 prompt x 8 samples, exactly 64
            completion tokens, beta 0.04 (a frozen reference model)

Each trainer runs in its own process with --threads torch threads (the asynchronous one's worker
has one more of its own); steps/s is measured over the steps after the first two (the worker's start and the
first, unoverlapped, generation). Both sides run the same loss (no TIS, GRPOConfig's default; the
asynchronous side's clip acts on its one-update-old sampling log-probs), so they do the same work.

    python bench/bench_async_rollouts.py            # both cases, 8 measured steps each (~3 min on 2 cores)
    python bench/bench_async_rollouts.py --quick    # smoke: the default case, 2 measured steps, short completions
    python bench/bench_async_rollouts.py --quick --case 30M   # the 30M case's smoke

The default run itself, synchronous then asynchronous (accuracy and wall time in each summary.json;
about 8 min each):
    r1core run --name sync
    r1core run --name async --grpo.async-rollouts
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

WARMUP = 2  # steps not timed: the worker's start, and the first step's generation that nothing overlaps


def _default_case(quick: bool):
    from r1core.recipes.base_model import load_model
    from r1core.recipes.r1_zero import GRPO_DEFAULTS, SHIPPED_BASE
    from r1core.tasks import generate

    model, tok = load_model(SHIPPED_BASE)
    rows = generate("addition", "train", 2000, seed=0)
    fields = {k: v for k, v in GRPO_DEFAULTS.items() if k not in ("max_seconds", "max_steps", "save_steps", "logging_steps")}
    fields.update(per_device_train_batch_size=16 * fields["num_generations"])
    if quick:
        fields.update(max_completion_length=16)
    return model, tok, rows, fields


def _30m_case(quick: bool):
    from bench_grpo_step import COMPLETION, G, make_model, make_tokenizer
    from bench_grpo_step import rows as step_rows

    tok = make_tokenizer("30M")
    model = make_model(tok, "30M")
    fields = dict(num_generations=G, per_device_train_batch_size=G, max_completion_length=16 if quick else COMPLETION, beta=0.04,
                  learning_rate=1e-6, ignore_eos=True)
    return model, tok, step_rows(64), fields


def bench_side(case: str, mode: str, steps: int, quick: bool) -> dict:
    from r1core.rewards import accuracy_reward
    from r1core.trainers import GRPOConfig, GRPOTrainer

    model, tok, rows, fields = (_default_case if case == "default" else _30m_case)(quick)
    asynchronous = mode == "async"
    with tempfile.TemporaryDirectory() as out:
        cfg = GRPOConfig(**fields, output_dir=out, max_steps=steps + WARMUP, logging_steps=1, seed=0,
                         async_rollouts=asynchronous, max_staleness=1)
        tr = GRPOTrainer(model, tok, [accuracy_reward], rows, cfg)
        stamps = []
        records = tr.train(progress=False, callback=lambda step: stamps.append(time.perf_counter()) or None, every=1)
    timed = stamps[WARMUP - 1:]
    seconds = (timed[-1] - timed[0]) / (len(timed) - 1)
    acc = [r["accuracy"] for r in records[WARMUP:]]
    return {"step_s": seconds, "steps_per_s": 1.0 / seconds, "accuracy": sum(acc) / len(acc),
            "wait_s": sum(r.get("rollout_wait_seconds", r["gen_seconds"]) for r in records[WARMUP:]) / len(acc)}


def run_side(case: str, mode: str, steps: int, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--child-case", case, "--steps", str(steps),
           "--threads", str(args.threads)] + (["--quick"] if args.quick else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{mode} on {case} failed:\n{out.stderr.strip()[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 measured steps, 16-token completions, the default case unless --case names one")
    ap.add_argument("--case", choices=["default", "30M", "all"], default="all")
    ap.add_argument("--steps", type=int, default=None, help="measured steps per side (default 8; --quick 2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", choices=["sync", "async"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-case", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(bench_side(args.child_case, args.child, args.steps, args.quick)))
        return
    steps = args.steps or (2 if args.quick else 8)
    cases = ["default", "30M"] if args.case == "all" else [args.case]
    if args.quick and args.case == "all":
        cases = ["default"]
    print(f"torch {torch.__version__}, threads {args.threads}, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
          f"steps {steps} (+{WARMUP} not timed), load {os.getloadavg()[0]:.1f}")
    print(f"{'case':>8} {'mode':>6} {'step s':>8} {'steps/s':>8} {'wait s':>8} {'accuracy':>8}")
    for case in cases:
        res = {mode: run_side(case, mode, steps, args) for mode in ("sync", "async")}
        for mode, r in res.items():
            print(f"{case:>8} {mode:>6} {r['step_s']:8.3f} {r['steps_per_s']:8.3f} {r['wait_s']:8.3f} {r['accuracy']:8.3f}")
        print(f"{case:>8} async / sync steps/s: {res['async']['steps_per_s'] / res['sync']['steps_per_s']:.2f}x (goal >= 1.3x)")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
