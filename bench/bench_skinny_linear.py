"""r1kernels.skinny_linear against F.linear (BLAS: MKL in the CPU torch wheel) on the projections
of a decode step: M rows (sequences or beams) through the weight shapes of the engine benchmark's
5M and 30M Qwen2 models, float32, in one process, alternating the two.

Two weight regimes: "hot" calls one weight again and again (it stays in L2), "cold" cycles through
copies of the weight totalling 80 MB, more than this machine's 32 MB L3, as a decode step of a
larger model reads its weights from memory. Reported: microseconds per call (median of rounds),
GFLOP/s, and the speed-up; the two results agree to float32 rounding (max abs difference printed).

    python bench/bench_skinny_linear.py
    python bench/bench_skinny_linear.py --rows 1 8 --threads 1
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from r1kernels import skinny_linear  # noqa: E402
from r1kernels._library import has_cpp_kernel  # noqa: E402

SHAPES = {  # (K, N): in_features, out_features
    "5M q/o (256->256)": (256, 256),
    "5M gate/up (256->1024)": (256, 1024),
    "5M down (1024->256)": (1024, 256),
    "30M q/o (512->512)": (512, 512),
    "30M gate/up (512->2048)": (512, 2048),
    "30M down (2048->512)": (2048, 512),
}


def per_call_us(fn, x, weights, rounds: int) -> float:
    fn(x, weights[0])
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        for w in weights:
            fn(x, w)
        times.append((time.perf_counter() - t) / len(weights) * 1e6)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    if not has_cpp_kernel("skinny_linear"):
        raise SystemExit("r1kernels._C is not built: skinny_linear would be F.linear itself")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
          f"load {os.getloadavg()[0]:.1f}")
    print("| weights | rows | regime | F.linear us | skinny us | F.linear GFLOP/s | skinny GFLOP/s | speed-up | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    ratios = []
    with torch.inference_mode():
        for name, (K, N) in SHAPES.items():
            cold = [torch.randn(N, K) for _ in range(max(2, 80_000_000 // (4 * N * K)))]
            for M in args.rows:
                x = torch.randn(M, K)
                diff = (skinny_linear(x, cold[0]) - F.linear(x, cold[0])).abs().max().item()
                for regime, ws in (("hot", cold[:1] * 64), ("cold", cold)):
                    blas = per_call_us(F.linear, x, ws, args.rounds)
                    ours = per_call_us(skinny_linear, x, ws, args.rounds)
                    flop = 2 * M * K * N / 1e3  # per microsecond -> GFLOP/s
                    ratios.append(blas / ours)
                    print(f"| {name} | {M} | {regime} | {blas:.1f} | {ours:.1f} | {flop / blas:.1f} | {flop / ours:.1f} | "
                          f"{blas / ours:.2f}x | {diff:.1e} |")
    print(f"geometric mean speed-up {statistics.geometric_mean(ratios):.2f}x over {len(ratios)} cases; load after {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
