"""The sandbox's overhead: wall time of a trivial program (`pass`) run through r1core.sandbox,
against the floor of starting the same interpreter once (`python -I -S -c pass` through
subprocess.run), and how many runs a second code_reward gets through with max_workers sandboxes.

  python -I -S       subprocess.run([python, "-I", "-S", "-c", "pass"]): one interpreter start
  sandboxed          run_python("pass"): namespaces, mounts, three forks, rlimits (the default)
  sandboxed + site   run_python("pass", site_packages=True): the environment's packages importable
  unsandboxed        the allow_unsandboxed path (rlimits and a temp directory only), forced here
  code_reward xW     16 completions x 4 test cases, W sandboxes at once: runs per second

The goal (issue 16): under 50 ms per sandboxed run of a trivial program. Each row times `--runs`
runs one after the other (after 3 untimed ones) and reports the median and the 90th percentile.

    python bench/bench_sandbox.py              # 100 runs per row
    python bench/bench_sandbox.py --runs 20
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from r1core.rewards import make_code_reward
from r1core.sandbox import SandboxLimits, run_python, sandbox_available
from r1core.sandbox import run as sandbox_run

GOAL_MS = 50.0


def _times(fn, runs: int) -> list[float]:
    for _ in range(3):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _unsandboxed():
    workdir = tempfile.mkdtemp(prefix="r1core-bench-")
    try:
        res = sandbox_run._run("pass", "", SandboxLimits(), False, workdir, False)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    assert res.ok, res


def _checked(**kwargs):
    def fn():
        res = run_python("pass", **kwargs)
        assert res.ok, res
    return fn


def _reward_rate(workers: int, completions: int = 16, cases: int = 4) -> float:
    reward = make_code_reward(max_workers=workers)
    code = ["```python\nprint(sum(map(int, input().split())))\n```"] * completions
    tests = [[{"input": f"{i} {i}\n", "output": f"{2 * i}\n"} for i in range(cases)]] * completions
    t0 = time.perf_counter()
    assert reward(None, code, test_cases=tests) == [1.0] * completions
    return completions * cases / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=100, help="timed runs per row")
    args = p.parse_args(argv)
    if not sandbox_available():
        raise SystemExit("error: the kernel refuses the sandbox's namespaces here; nothing to time")
    rows = [
        ("python -I -S", _times(lambda: subprocess.run([sys.executable, "-I", "-S", "-c", "pass"], check=True),
                                args.runs)),
        ("sandboxed", _times(_checked(), args.runs)),
        ("sandboxed + site", _times(_checked(site_packages=True), args.runs)),
        ("unsandboxed", _times(_unsandboxed, args.runs)),
    ]
    print(f"trivial program, {args.runs} runs each (ms per run; goal for sandboxed: < {GOAL_MS:.0f})\n")
    print(f"| {'setting':<18} | {'median':>8} | {'p90':>8} | {'min':>8} | {'over python -I -S':>18} |")
    print(f"|{'-' * 20}|{'-' * 9}:|{'-' * 9}:|{'-' * 9}:|{'-' * 19}:|")
    floor = statistics.median(rows[0][1])
    for name, t in rows:
        med, p90 = statistics.median(t), statistics.quantiles(t, n=10)[-1]
        print(f"| {name:<18} | {med:8.1f} | {p90:8.1f} | {min(t):8.1f} | {med - floor:+18.1f} |")
    print("\ncode_reward, 16 completions x 4 test cases\n")
    print(f"| {'max_workers':>11} | {'runs/s':>8} |")
    print(f"|{'-' * 12}:|{'-' * 9}:|")
    for workers in (1, 2, 4):
        print(f"| {workers:>11} | {_reward_rate(workers):8.1f} |")
    sandboxed = statistics.median(rows[1][1])
    verdict = "within" if sandboxed < GOAL_MS else "OVER"
    print(f"\nsandboxed median {sandboxed:.1f} ms: {verdict} the {GOAL_MS:.0f} ms goal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
