"""GRPO loss at the LM head, forward + backward, on the CPU: r1kernels.grpo_loss (fused C++ op)
against TRL's path and Liger-Kernel's LigerFusedLinearGRPOLoss, on the same inputs in one process.

  TRL:   logits = hidden @ W.T (full [N, V] fp32) / temperature -> trl selective_log_softmax, TRL's
         entropy_from_logits (no grad), then TRL's _compute_loss math (clipped ratios, k3 KL, "grpo"
         aggregation), eager PyTorch, autograd backward.
  Liger: LigerFusedLinearGRPOLoss(compiled=False: eager chunks; --liger-compiled for torch.compile).
  ours:  r1kernels.grpo_loss: loss and all gradients in one chunked pass (three GEMMs of the head).

Same loss for all: loss_type "grpo", token-level ratios, epsilon 0.2 / 0.28, beta 0.04 with
reference log-probs, old log-probs given (ratios near 1), temperature 1, a random completion mask.
Times: median of alternating runs. Memory: peak RSS growth of one forward + backward in a fresh
subprocess per case: the kernel's peak-RSS mark (VmHWM) is reset through /proc/self/clear_refs once
the inputs exist and the path has run on tiny shapes (thread pools and allocator arenas are not
counted), then peak minus the RSS before the run; where clear_refs cannot be written, ru_maxrss
growth. weight.grad and hidden.grad are included.
Floor: three GEMMs of the head's size (2 N H V flops each) at the best fp32 GEMM rate of
hidden @ W.T over 5 runs in this run.

    python bench/bench_grpo_loss.py             # both shapes (minutes)
    python bench/bench_grpo_loss.py --quick     # small shapes (seconds)
    python bench/bench_grpo_loss.py --case qwen2.5-0.5b --reps 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from _memory import measure_in_child, print_peak_growth

CASES = {
    # name: (B, T, H, V)
    "qwen2.5-0.5b": (8, 256, 896, 151936),  # Qwen2.5-0.5B's head, 2048 completion tokens
    "vocab-32k": (8, 256, 2048, 32000),  # a 32k-vocabulary head (TinyLlama-1.1B's shape)
}
QUICK = {"quick-8k": (2, 64, 128, 8000), "quick-32k": (2, 32, 256, 32000)}
IMPLS = ("ours", "trl", "liger")
OPTS = dict(beta=0.04, epsilon_low=0.2, epsilon_high=0.28, temperature=1.0)


def make_inputs(B, T, H, V, seed=0):
    import r1kernels

    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=g)
    weight = torch.randn(V, H, generator=g) * (2.0 / H**0.5)
    targets = torch.randint(0, V, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) < 0.9
    advantages = torch.randn(B, generator=g)
    with torch.no_grad():  # the chunked op, so the inputs never hold full logits either
        lp = r1kernels.token_logprobs(hidden, weight, targets)
    old = lp + 0.1 * torch.randn(B, T, generator=g)
    ref = lp + 0.1 * torch.randn(B, T, generator=g)
    return dict(hidden=hidden, weight=weight, targets=targets, mask=mask, advantages=advantages, old=old, ref=ref)


def trl_loss(hidden, weight, inp):
    """TRL's GRPOTrainer path on full logits (trl.trainer.grpo_trainer._compute_loss semantics)."""
    from trl.trainer.utils import entropy_from_logits, selective_log_softmax

    logits = hidden @ weight.T  # [B, T, V]
    logits = logits / OPTS["temperature"]
    logps = selective_log_softmax(logits, inp["targets"])
    with torch.no_grad():
        entropies = entropy_from_logits(logits)
    mask, adv = inp["mask"].float(), inp["advantages"].unsqueeze(1)
    coef_1 = torch.exp(logps - inp["old"])
    coef_2 = torch.clamp(coef_1, 1 - OPTS["epsilon_low"], 1 + OPTS["epsilon_high"])
    per_token_loss = -torch.min(coef_1 * adv, coef_2 * adv)
    d = inp["ref"] - logps
    per_token_loss = per_token_loss + OPTS["beta"] * (torch.exp(d) - d - 1)
    loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    return loss, entropies


def make_runner(impl, inp, liger_compiled=False):
    """A function running one forward + backward on fresh leaves of hidden and weight."""
    import r1kernels

    if impl == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

        liger = LigerFusedLinearGRPOLoss(beta=OPTS["beta"], compiled=liger_compiled, use_ref_model=True, epsilon_low=OPTS["epsilon_low"],
                                         epsilon_high=OPTS["epsilon_high"], loss_type="grpo", temperature=OPTS["temperature"])

    def run():
        hidden = inp["hidden"].detach().requires_grad_()
        weight = inp["weight"].detach().requires_grad_()
        if impl == "ours":
            loss, _ = r1kernels.grpo_loss(hidden, weight, inp["targets"], inp["advantages"], mask=inp["mask"], old_logprobs=inp["old"],
                                          ref_logprobs=inp["ref"], loss_type="grpo", **OPTS)
        elif impl == "trl":
            loss, _ = trl_loss(hidden, weight, inp)
        else:
            loss, _ = liger(hidden, weight, inp["targets"], inp["mask"].long(), inp["advantages"], ref_per_token_logps=inp["ref"],
                            old_per_token_logps=inp["old"])
        loss.backward()
        return float(loss.detach()), hidden.grad, weight.grad

    return run


def gemm_rate(inp, reps=5):
    """Best fp32 GEMM rate of hidden @ W.T: the floor must be what the machine can do, and on a
    shared machine the fastest of a few runs is the one least disturbed by other work."""
    h = inp["hidden"].reshape(-1, inp["hidden"].shape[-1])
    w = inp["weight"]
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        z = h @ w.T
        times.append(time.perf_counter() - t)
        del z
    n, hd = h.shape
    return 2 * n * hd * w.shape[0] / min(times)


def measure_memory(case, shape, impl, liger_compiled):
    """Peak RSS growth (MB) of one forward + backward, in a fresh subprocess."""
    return measure_in_child(__file__, impl, shape, liger_compiled)


def mem_child(impl, shape, liger_compiled):
    B, T, H, V = shape
    make_runner(impl, make_inputs(2, 4, 16, 64), liger_compiled)()  # warm-up: pools, arenas, imports
    inp = make_inputs(B, T, H, V)
    run = make_runner(impl, inp, liger_compiled)
    print_peak_growth(run)



def bench_case(name, shape, reps, impls, liger_compiled, check):
    B, T, H, V = shape
    inp = make_inputs(B, T, H, V)
    runners = {impl: make_runner(impl, inp, liger_compiled) for impl in impls}
    results = {impl: runners[impl]() for impl in impls}  # warm-up, and the results to compare
    if check:
        ref_loss, ref_gh, ref_gw = results["ours"]
        for impl, (loss, gh, gw) in [(k, v) for k, v in results.items() if k != "ours"]:
            err = max(abs(loss - ref_loss), float((gh - ref_gh).abs().max()), float((gw - ref_gw).abs().max()))
            print(f"  {name}: {impl} vs ours, max abs difference of loss and gradients {err:.2e}")
    del results
    times = {impl: [] for impl in impls}
    for _ in range(reps):
        for impl in impls:  # alternating, so load changes hit every path alike
            t = time.perf_counter()
            runners[impl]()
            times[impl].append(time.perf_counter() - t)
    rate = gemm_rate(inp)
    floor = 3 * 2 * B * T * H * V / rate
    return {impl: statistics.median(ts) for impl, ts in times.items()}, rate, floor


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small shapes, seconds")
    ap.add_argument("--case", choices=list(CASES) + list(QUICK), action="append", help="run only this case (repeatable)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--impl", choices=IMPLS, action="append", help="run only these paths (repeatable)")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-case memory subprocesses")
    ap.add_argument("--liger-compiled", action="store_true", help="LigerFusedLinearGRPOLoss(compiled=True)")
    ap.add_argument("--mem-child", choices=IMPLS, help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mem_child:
        return mem_child(args.mem_child, tuple(int(x) for x in args.shape.split(",")), args.liger_compiled)

    pool = {**CASES, **QUICK}
    names = args.case or (list(QUICK) if args.quick else list(CASES))
    impls = tuple(args.impl or IMPLS)
    if "ours" not in impls:
        impls = ("ours",) + impls
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f} (1 min), "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    rows = []
    for name in names:
        shape = pool[name]
        med, rate, floor = bench_case(name, shape, args.reps, impls, args.liger_compiled, check=True)
        mem = {impl: (float("nan"), "") if args.no_memory else measure_memory(name, shape, impl, args.liger_compiled) for impl in impls}
        rows.append((name, shape, med, rate, floor, mem))

    print()
    print("| case (B, T, H, V) | path | fwd+bwd s (median) | ours / path | x GEMM floor | peak extra MB | ours / path (memory) |")
    print("|---|---|---|---|---|---|---|")
    for name, shape, med, rate, floor, mem in rows:
        for impl in impls:
            m, why = mem[impl]
            mem_ratio = mem["ours"][0] / m if m == m and m > 0 else float("nan")
            print(f"| {name} {shape} | {impl} | {med[impl]:.3f} | {med['ours'] / med[impl]:.2f} | {med[impl] / floor:.2f} | "
                  f"{m:.0f}{' (' + why + ')' if why else ''} | {mem_ratio:.2f} |")
        print(f"| {name} {shape} | floor: 3 GEMMs at {rate / 1e9:.0f} GFLOP/s | {floor:.3f} | | 1.00 | | |")
    print(f"\nload after: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
