"""TRL's GRPOTrainer step as shipped, with r1core's drop-ins, and r1core's own trainer, in one process
on the same model, prompts, reward and settings as bench_grpo_step.py (beta 0.04, dapo, AdamW, eos
suppressed so every side generates the same number of tokens):

    trl               TRL's GRPOTrainer as shipped (its generate, its chunked log-prob head)
    trl+loss          + use_r1kernels_grpo_loss (r1kernels.integrations.trl): the fused GRPO loss
    trl+loss+engine   + use_r1core_engine (r1core.integrations.trl): rollouts from r1core's engine
    r1core            r1core.trainers.GRPOTrainer

Per side, each in its own process: seconds per step (median after a warm-up step; generation and
the rest), CPU seconds, peak resident memory above the level before the trainer was built, and
steps/s and memory against TRL.

    python bench/bench_trl_dropins.py                       # the 5M model, 5 measured steps
    python bench/bench_trl_dropins.py --case qwen2-151k     # Qwen's vocabulary, 16 x 256 tokens
    python bench/bench_trl_dropins.py --quick               # smoke: 5M, 1 measured step
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402

import torch  # noqa: E402
from bench_grpo_step import QWEN, bench_ours, bench_trl  # noqa: E402


def loss_dropin(trainer):
    from r1kernels.integrations.trl import use_r1kernels_grpo_loss

    use_r1kernels_grpo_loss(trainer)


def both_dropins(trainer):
    from r1core.integrations.trl import use_r1core_engine

    loss_dropin(trainer)
    use_r1core_engine(trainer)


SIDES = {
    "trl": lambda size, steps, bf16, quick: bench_trl(size, steps, bf16, quick),
    "trl+loss": lambda size, steps, bf16, quick: bench_trl(size, steps, bf16, quick, setup=loss_dropin),
    "trl+loss+engine": lambda size, steps, bf16, quick: bench_trl(size, steps, bf16, quick, setup=both_dropins),
    "r1core": bench_ours,
}


def run_side(name: str, args, steps: int) -> dict:
    """One side in a fresh process: peak RSS above a baseline means little in a process whose heap
    an earlier side already grew (freed pages stay resident and are reused without growing it)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--case", args.case, "--steps", str(steps),
           "--threads", str(args.threads)] + (["--bf16"] if args.bf16 else []) + (["--quick"] if args.quick else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit status {out.returncode}"
        raise SystemExit(f"side {name} failed: {tail}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: 1 measured step (qwen2-151k: 16-token completions)"
    )
    ap.add_argument("--case", choices=["5M", "30M", QWEN], default="5M")
    ap.add_argument("--steps", type=int, default=None, help="measured steps per side (default 5, --quick 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--bf16", action="store_true", help="bf16 autocast on every side's training forward (TRL's default)"
    )
    ap.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated subset of {','.join(SIDES)}")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one side, its result as a JSON line
    args = ap.parse_args()
    steps = args.steps or (1 if args.quick else 5)
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(SIDES[args.child](args.case, steps, args.bf16, args.quick)))
        return
    sides = args.sides.split(",")
    unknown = [s for s in sides if s not in SIDES]
    if unknown:
        ap.error(f"--sides: unknown {unknown}; expected a subset of {list(SIDES)}")
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, case {args.case}, steps {steps} (+1 warm-up), "
        f"load {os.getloadavg()[0]:.1f}; each side in its own process"
    )
    res = {name: run_side(name, args, steps) for name in sides}
    base = res.get("trl")
    print(
        f"{'side':>16} {'gen s':>8} {'train s':>8} {'step s':>8} {'step cpu':>8} {'peak MB':>8} "
        f"{'x TRL':>7} {'mem/TRL':>7}"
    )
    for name, r in res.items():
        speed = f"{base['step_s'] / r['step_s']:7.2f}" if base else f"{'-':>7}"
        mem = f"{r['peak_mb'] / max(base['peak_mb'], 1e-9):7.2f}" if base else f"{'-':>7}"
        print(
            f"{name:>16} {r['gen_s']:8.3f} {r['train_s']:8.3f} {r['step_s']:8.3f} {r['step_cpu']:8.3f} "
            f"{r['peak_mb']:8.0f} {speed} {mem}"
        )
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
