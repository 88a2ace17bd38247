"""Time to accuracy: the default R1-Zero run's recipe (`r1core run`: the shipped base model and its
tokenizer, the addition task's train and held-out splits of a seed, the binary correctness reward,
16 prompts x 8 samples, temperature 1, dapo loss with epsilon 0.2, no KL, AdamW lr 1.5e-4 after
10 warmup steps decaying linearly to 0 over the time budget) trained by TRL's GRPOTrainer and by
r1core's, each for the same budget of training seconds (default the run's 430 s of GRPO), one
after the other, each in its own process.

Both are evaluated on the run's held-out problems (256, the sample seeds of `r1core run`) at 0 s,
every --eval-every seconds of training time and at the end of the budget: pass@1 of 4 samples at
temperature 1 and greedy accuracy, by the same code (r1core's evaluate through an engine on the
trainer's live weights). The training clock is paused during evaluation, so evaluation counts
neither against the budget nor in the lr decay; its seconds are reported apart.

TRL runs as its users run it: its own GRPOConfig names, its own generation (transformers'
`generate`, no vLLM), its loss and optimizer, its defaults where the recipe says nothing. The
settings that had to differ are printed at the start, each with why; any shared field whose
value still differs between the two runs is printed per run.

Output: per seed the time each trainer took to reach greedy accuracy 0.5, 0.8 and 0.9 (the
training seconds of the first evaluation at or above it) and TRL's time over r1core's; the median
over the seeds; a PNG of both curves (greedy accuracy and pass@1 against training seconds) and
every point as JSON in --out.

    python bench/bench_time_to_accuracy.py --seeds 0 1 2 --r1core-async   # the measurement, both r1core modes
    python bench/bench_time_to_accuracy.py --quick                   # smoke: 10 s per trainer, 2 points
    python bench/bench_time_to_accuracy.py --trainers trl --seeds 0 --out runs/tta/trl-0   # one side at a time, then
    python bench/bench_time_to_accuracy.py --merge runs/tta/*/time_to_accuracy.json --out runs/tta   # one table
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

THRESHOLDS = (0.5, 0.8, 0.9)
QUICK = {"budget": 10.0, "eval_every": 5.0, "eval_size": 32, "eval_samples": 2}
FULL = {"budget": 430.0, "eval_every": 30.0, "eval_size": 256, "eval_samples": 4}  # the run's GRPO cap and held-out set


def time_to(points: list[dict], threshold: float, key: str = "greedy_accuracy") -> float | None:
    """Training seconds of the first point whose `key` is at least threshold; None: never reached."""
    for p in points:
        if p.get(key) is not None and p[key] >= threshold:
            return p["seconds"]
    return None


def ratio_text(trl: float | None, ours: float | None, budget: float) -> str:
    """TRL's time over r1core's; a bound where one side never reached the threshold within the budget;
    'base' where both had it at 0 s (the base model, which both start from, is already there)."""
    if ours is None and trl is None:
        return "-"
    if ours is None:
        return f"<{trl / budget:.2f}x"
    if ours == 0:
        return "base" if trl == 0 else "inf"
    if trl is None:
        return f">{budget / ours:.2f}x"
    return f"{trl / ours:.2f}x"


def _seconds_text(t: float | None) -> str:
    return "not reached" if t is None else f"{t:.0f} s"


def summary_rows(results: list[dict], budget: float) -> list[dict]:
    """One row per (seed or 'median', r1core mode, threshold): each trainer's time and the ratio.
    The median row takes the median of each trainer's times over the seeds, a seed that never got
    there counting as beyond the budget."""
    trl = {r["seed"]: r for r in results if r["trainer"] == "trl"}
    modes = [m for m in ("r1core", "r1core-async") if any(r["trainer"] == m for r in results)]
    rows = []
    for mode in modes:
        ours = {r["seed"]: r for r in results if r["trainer"] == mode}
        seeds = sorted(set(ours) & set(trl))
        for th in THRESHOLDS:
            t_trl = {s: time_to(trl[s]["points"], th) for s in seeds}
            t_ours = {s: time_to(ours[s]["points"], th) for s in seeds}
            for s in seeds:
                rows.append({"seed": s, "r1core": mode, "threshold": th, "trl_seconds": t_trl[s], "r1core_seconds": t_ours[s],
                             "ratio": ratio_text(t_trl[s], t_ours[s], budget)})
            if len(seeds) > 1:
                med = lambda ts: statistics.median([math.inf if t is None else t for t in ts.values()])  # noqa: E731
                m_trl, m_ours = med(t_trl), med(t_ours)
                m_trl, m_ours = (None if m == math.inf else m for m in (m_trl, m_ours))
                rows.append({"seed": "median", "r1core": mode, "threshold": th, "trl_seconds": m_trl, "r1core_seconds": m_ours,
                             "ratio": ratio_text(m_trl, m_ours, budget)})
    return rows



def print_table(rows: list[dict]) -> None:
    print(f"{'seed':>6} {'r1core mode':>12} {'greedy':>6} {'TRL':>12} {'r1core':>12} {'TRL / r1core':>12}")
    for r in rows:
        print(f"{r['seed']!s:>6} {r['r1core']:>12} {r['threshold']:>6.1f} {_seconds_text(r['trl_seconds']):>12} "
              f"{_seconds_text(r['r1core_seconds']):>12} {r['ratio']:>12}")


def print_runs(results: list[dict]) -> None:
    for r in results:
        last = r["points"][-1]
        print(f"{r['trainer']:>12} seed {r['seed']}: {r['steps']} steps in {r['train_seconds']:.0f} s of training "
              f"({r['train_seconds'] / max(r['steps'], 1):.2f} s/step), evaluation {r['eval_seconds']:.0f} s apart "
              f"({len(r['points'])} points), set-up {r['setup_seconds']:.0f} s, {r['threads']} threads; final greedy "
              f"{last['greedy_accuracy']:.3f}, pass@1 {last.get('accuracy', float('nan')):.3f}")
        for k, (a, b) in (r.get("differs") or {}).items():
            print(f"{'':>12} differs from the recipe: {k} r1core {a!r}, TRL {b!r}")


def write_plot(results: list[dict], path: str) -> str:
    """Greedy accuracy and pass@1 against training seconds: a colour per trainer, a line style per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"trl": "tab:orange", "r1core": "tab:blue", "r1core-async": "tab:green"}
    styles = ["-", "--", ":", "-."]
    seeds = sorted({r["seed"] for r in results})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    for ax, key, title in zip(axes, ("greedy_accuracy", "accuracy"), ("greedy accuracy", "pass@1 at temperature 1")):
        for r in results:
            pts = [p for p in r["points"] if key in p]
            ax.plot([p["seconds"] for p in pts], [p[key] for p in pts], marker="o", markersize=3,
                    color=colours.get(r["trainer"]), linestyle=styles[seeds.index(r["seed"]) % len(styles)],
                    label=f"{r['trainer']} seed {r['seed']}")
        if key == "greedy_accuracy":
            for th in THRESHOLDS:
                ax.axhline(th, color="grey", linewidth=0.5)
        ax.set_title(f"held-out {title}")
        ax.set_xlabel("training seconds (evaluation excluded)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_child(trainer: str, seed: int, args) -> dict:
    """One trainer and seed in a fresh process (TRL's imports and the other trainer's heap stay out of
    it); its progress lines pass through on stderr, its result is the last line of its stdout."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", trainer, "--seeds", str(seed), "--budget", str(args.budget),
           "--eval-every", str(args.eval_every), "--eval-size", str(args.eval_size), "--eval-samples", str(args.eval_samples)]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{trainer} seed {seed} failed (exit status {out.returncode}); its error is above")
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="the runs' seeds (splits and samples); default 0")
    ap.add_argument("--budget", type=float, default=None, help="training seconds per trainer (default 430; --quick 10)")
    ap.add_argument("--eval-every", type=float, default=None, help="training seconds between evaluations (default 30; --quick 5)")
    ap.add_argument("--eval-size", type=int, default=None, help="held-out prompts (default the run's 256; --quick 32)")
    ap.add_argument("--eval-samples", type=int, default=None, help="samples per prompt for pass@1 (default the run's 4; --quick 2)")
    ap.add_argument("--out", default="runs/time-to-accuracy", help="folder for time_to_accuracy.png and .json")
    ap.add_argument("--quick", action="store_true", help="smoke run: 10 s per trainer, evaluation every 5 s on 32 prompts")
    ap.add_argument("--trainers", default="trl,r1core", help="comma-separated subset of trl,r1core (default both)")
    ap.add_argument("--r1core-async", action="store_true",
                    help="also r1core with GRPOConfig.async_rollouts=True (needs an r1core whose GRPOConfig has the field)")
    ap.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                    help="no training: the table, PNG and JSON of the runs in these files (earlier invocations' "
                         "time_to_accuracy.json, e.g. one trainer or one seed each)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one trainer and seed; its result as a JSON line
    args = ap.parse_args(argv)
    for k, v in (QUICK if args.quick else FULL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.budget <= 0:
        ap.error(f"--budget must be > 0 seconds, got {args.budget}")
    if args.eval_every <= 0:
        ap.error(f"--eval-every must be > 0 seconds, got {args.eval_every}")
    if args.eval_size < 1:
        ap.error(f"--eval-size must be >= 1, got {args.eval_size}")
    if args.eval_samples < 0:
        ap.error(f"--eval-samples must be >= 0, got {args.eval_samples}")
    if len(set(args.seeds)) != len(args.seeds):
        ap.error(f"--seeds must be distinct, got {args.seeds}")
    args.trainer_list = args.trainers.split(",")
    unknown = [t for t in args.trainer_list if t not in ("trl", "r1core")]
    if unknown:
        ap.error(f"--trainers: unknown {unknown}; expected a subset of trl,r1core")
    if args.r1core_async:
        from _tta import has_async_rollouts

        if not has_async_rollouts():
            ap.error("--r1core-async: this r1core's GRPOConfig has no async_rollouts field")
        args.trainer_list.append("r1core-async")
    return args


def main(argv=None):
    args = parse_args(argv)
    import torch
    from _tta import SIDES, trl_settings

    kw = dict(budget=args.budget, eval_every=args.eval_every, eval_size=args.eval_size, eval_samples=args.eval_samples)
    if args.merge:
        try:
            merge(args.merge, args.out, argv)
        except ValueError as e:
            raise SystemExit(str(e)) from None
        return
    if args.child:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the base model's loading bar on every child's stderr
        print(json.dumps(SIDES[args.child](seed=args.seeds[0], **kw)))
        return
    if "trl" in args.trainer_list:
        try:
            import trl
        except ImportError:
            raise SystemExit("TRL is not installed: pip install 'trl>=1.16,<1.17' (the bench extra)") from None
        print(f"TRL {trl.__version__}: settings that differ from TRL's defaults beyond the recipe's values, and why:")
        for line in trl_settings():
            print(f"  - {line}")
    # per trainer: imports and set-up (~25 s), the budget, and its evaluations at ~4 s for the run's 256 x (4 + 1)
    # sequences on 2 quiet cores
    evals = (args.budget // args.eval_every + 2) * 4.0 * args.eval_size * (args.eval_samples + 1) / 1280
    per_seed = len(args.trainer_list) * (25 + args.budget + evals)
    print(f"torch {torch.__version__}, seeds {args.seeds}, trainers {args.trainer_list}, budget {args.budget:g} s of training "
          f"each, evaluation every {args.eval_every:g} s on {args.eval_size} held-out prompts x {args.eval_samples} samples + greedy; "
          f"load {os.getloadavg()[0]:.1f}; about {per_seed / 60:.0f} min per seed")
    if "r1core-async" in args.trainer_list:
        print("r1core-async: the rollout worker may finish the batch it is generating while the clock is paused for an "
              "evaluation (at most one batch per evaluation point), which favours that mode by at most one generation's "
              "time per point; a larger --eval-every shrinks it")
    t0 = time.perf_counter()
    results = [run_child(trainer, seed, args) for seed in args.seeds for trainer in args.trainer_list]
    report(results, args.out, {"command": _command(argv), "args": {**kw, "seeds": args.seeds}, "trl_settings": trl_settings()})
    print(f"wall {time.perf_counter() - t0:.0f} s; load average after: {os.getloadavg()[0]:.1f}")


def _command(argv) -> str:
    return " ".join(["python", "bench/bench_time_to_accuracy.py", *(sys.argv[1:] if argv is None else argv)])


def report(results: list[dict], out: str, header: dict) -> dict:
    """The runs' lines, the table, and time_to_accuracy.png and .json in `out` (header: what the JSON
    says beside the table and the runs); returns the JSON's content."""
    budget = results[0]["budget"]
    print_runs(results)
    rows = summary_rows(results, budget)
    if rows:
        print(f"training seconds to held-out greedy accuracy (first evaluation at or above it; ratio: TRL's time over r1core's, "
              f"a bound when a side never got there in {budget:g} s)")
        print_table(rows)
    os.makedirs(out, exist_ok=True)
    png = write_plot(results, os.path.join(out, "time_to_accuracy.png"))
    path = os.path.join(out, "time_to_accuracy.json")
    content = {**header, "table": rows, "runs": results}
    with open(path, "w") as f:
        json.dump(content, f, indent=1)
    print(f"written {png} and {path}")
    return content


def merge(paths: list[str], out: str, argv) -> dict:
    """report() over the runs of earlier invocations' JSON files: one (trainer, seed) each, one budget
    and evaluation schedule, or a ValueError naming --merge."""
    results, commands = [], []
    for p in paths:
        if not os.path.isfile(p):
            raise ValueError(f"--merge: {p!r} is not a file")
        with open(p) as f:
            content = json.load(f)
        if not isinstance(content, dict) or "runs" not in content:
            raise ValueError(f"--merge: {p!r} holds no 'runs' (not a time_to_accuracy.json)")
        results += content["runs"]
        commands.append(content.get("command"))
    keys = [(r["trainer"], r["seed"]) for r in results]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"--merge: (trainer, seed) {twice} in more than one run")
    schedules = sorted({(r["budget"], r["eval_every"], r["eval_prompts"], r["eval_samples"]) for r in results})
    if len(schedules) > 1:
        raise ValueError(f"--merge: the runs differ in (budget, eval_every, eval prompts, samples): {schedules}")
    results.sort(key=lambda r: (r["seed"], r["trainer"]))
    return report(results, out, {"command": _command(argv), "merged": commands})


if __name__ == "__main__":
    main()
