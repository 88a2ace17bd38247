"""Distillation loss at both LM heads, forward + backward, on the CPU: r1kernels.distill_loss (fused
C++ op) against Liger-Kernel's LigerFusedLinearJSDLoss and TRL's materialised generalized_jsd_loss,
on the same inputs in one process.

  TRL:   student logits = hidden @ W.T (full [N, V] fp32, with grad), teacher logits the same under
         no_grad, then GKDTrainer.generalized_jsd_loss (labels with -100, "batchmean"), eager PyTorch,
         autograd backward.
  Liger: LigerFusedLinearJSDLoss(weight_hard_loss=0, weight_soft_loss=1, compiled=False: eager
         chunks of 1024 rows; --liger-compiled for torch.compile).
  ours:  r1kernels.distill_loss: the loss and the student's gradients in one chunked pass.

Same loss for all: the generalised JSD at beta 0.5, temperature 1, soft loss only, mean over the
positions whose label is not -100 (about 10% are). Student: Qwen2.5-0.5B's head (H 896,
V 151936); teacher H 1536 (Qwen2.5-1.5B's width) over the same vocabulary; and a 32k vocabulary.
Times: median of alternating runs. Memory: peak RSS growth of one forward + backward in a fresh
subprocess per case (as bench_grpo_loss.py: VmHWM reset through /proc/self/clear_refs once the inputs
exist and the path has run on tiny shapes; student hidden.grad and weight.grad included).
Floor: the four GEMMs the math needs (student logits, teacher logits, the student's grad_hidden
and grad_weight: 2 N V (3 Hs + Ht) flops) at the best fp32 GEMM rate of the student's
hidden @ W.T over 5 runs in this run.

    python bench/bench_distill_loss.py                                 # 1024 and 8192 positions (long)
    python bench/bench_distill_loss.py --positions 1024 --repeats 3    # one size
    python bench/bench_distill_loss.py --quick                         # small shapes, seconds
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from _memory import measure_in_child, print_peak_growth

HEADS = {
    # name: (student H, teacher H, V)
    "qwen2.5-0.5b": (896, 1536, 151936),
    "vocab-32k": (896, 1536, 32000),
}
QUICK_HEADS = {"quick-8k": (64, 96, 8000), "quick-32k": (128, 192, 32000)}
QUICK_POSITIONS = (128,)
IMPLS = ("ours", "liger", "trl")
BETA = 0.5


def make_inputs(N, Hs, Ht, V, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, V, (N,), generator=g)
    labels[torch.rand(N, generator=g) < 0.1] = -100
    return dict(
        student_hidden=torch.randn(N, Hs, generator=g),
        student_weight=torch.randn(V, Hs, generator=g) * (2.0 / Hs**0.5),
        teacher_hidden=torch.randn(N, Ht, generator=g),
        teacher_weight=torch.randn(V, Ht, generator=g) * (2.0 / Ht**0.5),
        labels=labels,
    )


def trl_loss(sh, sw, inp):
    from trl.experimental.gkd.gkd_trainer import GKDTrainer

    student_logits = sh @ sw.T
    with torch.no_grad():
        teacher_logits = inp["teacher_hidden"] @ inp["teacher_weight"].T
    # [1, N, V]: TRL's loss takes batched logits
    return GKDTrainer.generalized_jsd_loss(student_logits[None], teacher_logits[None], inp["labels"][None], beta=BETA)


def make_runner(impl, inp, liger_compiled=False):
    """A function running one forward + backward on fresh leaves of the student's hidden and weight."""
    import r1kernels

    if impl == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        liger = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=BETA, compiled=liger_compiled)

    def run():
        sh = inp["student_hidden"].detach().requires_grad_()
        sw = inp["student_weight"].detach().requires_grad_()
        if impl == "ours":
            loss = r1kernels.distill_loss(sh, sw, inp["teacher_hidden"], inp["teacher_weight"], inp["labels"], beta=BETA)
        elif impl == "liger":
            loss = liger(sh, sw, inp["teacher_hidden"], inp["teacher_weight"], inp["labels"])
        else:
            loss = trl_loss(sh, sw, inp)
        loss.backward()
        return float(loss.detach()), sh.grad, sw.grad

    return run


def gemm_rate(inp, reps=5):
    """Best fp32 GEMM rate of the student's hidden @ W.T (the fastest of a few runs is the one least
    disturbed by other work on a shared machine)."""
    h, w = inp["student_hidden"], inp["student_weight"]
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        z = h @ w.T
        times.append(time.perf_counter() - t)
        del z
    return 2 * h.shape[0] * h.shape[1] * w.shape[0] / min(times)


def estimated_peak_bytes(impl, N, Hs, Ht, V):
    """A path's peak memory, scaled from what this machine measured at 1024 positions of the Qwen2.5
    head (TRL 7.4 GB: about 12 floats per logit; Liger 9.9 GB: about 16 per logit of one 1024-row
    chunk); ours holds two chunk buffers and the weight's gradient."""
    if impl == "trl":
        return 12 * 4 * N * V
    if impl == "liger":
        return 16 * 4 * min(N, 1024) * V
    return 4 * (2 * min(N, 331) * V + V * Hs + N * Hs)


def available_bytes():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return float("inf")


def floor_flops(N, Hs, Ht, V):
    return 2 * N * V * (3 * Hs + Ht)


def measure_memory(shape, impl, liger_compiled):
    """Peak RSS growth (MB) of one forward + backward, in a fresh subprocess."""
    return measure_in_child(__file__, impl, shape, liger_compiled)



def mem_child(impl, shape, liger_compiled):
    make_runner(impl, make_inputs(8, 16, 24, 64), liger_compiled)()  # warm-up: pools, arenas, imports
    run = make_runner(impl, make_inputs(*shape), liger_compiled)
    print_peak_growth(run)


def bench_case(name, shape, repeats, impls, liger_compiled):
    """(median seconds per path, GEMM rate, floor seconds); a path whose estimated peak memory does
    not fit in 80% of the available memory is left out (median nan) rather than killing the run."""
    room = 0.8 * available_bytes()
    skipped = {impl for impl in impls if impl != "ours" and estimated_peak_bytes(impl, *shape) > room}
    for impl in sorted(skipped):
        print(f"  {name} {shape}: {impl} left out, it needs about {estimated_peak_bytes(impl, *shape) / 1e9:.0f} GB "
              f"and {room / 1e9:.0f} GB are free")
    impls = tuple(i for i in impls if i not in skipped)
    inp = make_inputs(*shape)
    runners = {impl: make_runner(impl, inp, liger_compiled) for impl in impls}
    results = {impl: runners[impl]() for impl in impls}  # warm-up, and the results to compare
    ref_loss, ref_gh, ref_gw = results["ours"]
    for impl, (loss, gh, gw) in results.items():
        if impl != "ours":
            err = max(abs(loss - ref_loss), float((gh - ref_gh).abs().max()), float((gw - ref_gw).abs().max()))
            print(f"  {name} {shape}: {impl} vs ours, max abs difference of loss and gradients {err:.2e}")
    del results
    times = {impl: [] for impl in impls}
    for _ in range(repeats):
        for impl in impls:  # alternating, so load changes hit every path alike
            t = time.perf_counter()
            runners[impl]()
            times[impl].append(time.perf_counter() - t)
    rate = gemm_rate(inp)
    med = {impl: statistics.median(ts) for impl, ts in times.items()}
    med.update({impl: float("nan") for impl in skipped})
    return med, rate, floor_flops(*shape) / rate


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes, seconds (a smoke test)")
    ap.add_argument("--positions", type=int, nargs="+", help="positions N per case (default 1024 8192; --quick 128)")
    ap.add_argument("--head", choices=list(HEADS) + list(QUICK_HEADS), action="append", help="run only this head (repeatable)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per path (median reported)")
    ap.add_argument("--impl", choices=IMPLS, action="append", help="run only these paths (repeatable; ours always runs)")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-case memory subprocesses")
    ap.add_argument("--liger-compiled", action="store_true", help="LigerFusedLinearJSDLoss(compiled=True)")
    ap.add_argument("--mem-child", choices=IMPLS, help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mem_child:
        return mem_child(args.mem_child, tuple(int(x) for x in args.shape.split(",")), args.liger_compiled)

    heads = {**HEADS, **QUICK_HEADS}
    names = args.head or (list(QUICK_HEADS) if args.quick else list(HEADS))
    positions = args.positions or (QUICK_POSITIONS if args.quick else (1024, 8192))
    impls = tuple(args.impl or IMPLS)
    if "ours" not in impls:
        impls = ("ours",) + impls
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f} (1 min), "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, beta {BETA}")
    rows = []
    for name in names:
        for n in positions:
            shape = (n, *heads[name])
            med, rate, floor = bench_case(name, shape, args.repeats, impls, args.liger_compiled)
            mem = {impl: (float("nan"), "") if args.no_memory or med[impl] != med[impl]
                   else measure_memory(shape, impl, args.liger_compiled) for impl in impls}
            rows.append((name, shape, med, rate, floor, mem))

    print()
    print("| case (N, Hs, Ht, V) | path | fwd+bwd s (median) | ours / path | x GEMM floor | peak extra MB | ours / path (memory) |")
    print("|---|---|---|---|---|---|---|")
    for name, shape, med, rate, floor, mem in rows:
        for impl in impls:
            m, why = mem[impl]
            mem_ratio = mem["ours"][0] / m if m == m and m > 0 else float("nan")
            print(f"| {name} {shape} | {impl} | {med[impl]:.3f} | {med['ours'] / med[impl]:.2f} | {med[impl] / floor:.2f} | "
                  f"{m:.0f}{' (' + why + ')' if why else ''} | {mem_ratio:.2f} |")
        print(f"| {name} {shape} | floor: 4 GEMMs at {rate / 1e9:.0f} GFLOP/s | {floor:.3f} | | 1.00 | | |")
    print(f"\nload after: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
