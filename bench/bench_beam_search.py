"""Engine beam search against transformers' beam search on the same random Qwen2, in one process.

One prompt of 512 random tokens, 128 new tokens (the model has no eos, so every beam runs to the
end), beam widths 4 and 8:
  engine    Engine.beam_search(prompt, beam_width=k, max_new_tokens=N)
  generate  model.generate(num_beams=k, do_sample=False, max_new_tokens=N)
each run --repeats times, interleaved, the fastest run kept (the machine is shared). Reported: wall
time, beam tokens/s (k x N tokens decoded per call), peak RSS growth during a call (the largest of
the runs), the engine's KV-cache bytes, the speed-up, whether both returned the same best
hypothesis, and the matmul floor of the case (every Linear of the model timed in this run on one
prefill of the prompt plus N decode steps of k rows): no implementation of the same search on the
same weights is faster than that floor.

    python bench/bench_beam_search.py            # 30M model, 512-token prompt, 128 new tokens
    python bench/bench_beam_search.py --quick    # 5M model, 64-token prompt, 16 new tokens
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from bench_engine import PeakRSS, linear_floor_s, make_model  # noqa: E402

from r1core.engine import Engine  # noqa: E402


def run_engine(engine, prompt, k, n):
    return engine.beam_search(prompt, beam_width=k, max_new_tokens=n)[0].hypotheses[0].token_ids


def run_generate(model, prompt, k, n):
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), num_beams=k, do_sample=False, max_new_tokens=n,
                             pad_token_id=0)
    return out[0, len(prompt):].tolist()


def timed(fn):
    with PeakRSS() as mem:
        t = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t
    return dt, mem.bytes, result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    name, plen, n = ("5M", 64, 16) if args.quick else ("30M", 512, 128)
    torch.manual_seed(0)
    model = make_model(name)
    params = sum(p.numel() for p in model.parameters())
    prompt = torch.randint(2, model.config.vocab_size, (plen,)).tolist()
    print(f"Qwen2 {name} ({params / 1e6:.1f}M params), prompt {plen} tokens, {n} new tokens, "
          f"{args.threads} threads, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, best of {args.repeats}, load {os.getloadavg()[0]:.1f}")
    print("| beams | engine s | generate s | engine beam tok/s | generate beam tok/s | speed-up "
          "| engine peak RSS MiB | generate peak RSS MiB | KV cache MiB | same best | matmul floor s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for k in (4, 8):
        bs = 16
        blocks = plen // bs + k * (-(-(plen + n) // bs) - plen // bs)
        engine = Engine(model, block_size=bs, num_blocks=blocks)
        best = {"engine": None, "generate": None}
        peak = {"engine": 0, "generate": 0}  # over all runs: the first touches the engine's cache pages
        for _ in range(args.repeats):
            for key, fn in (("engine", lambda: run_engine(engine, prompt, k, n)),
                            ("generate", lambda: run_generate(model, prompt, k, n))):
                r = timed(fn)
                peak[key] = max(peak[key], r[1])
                if best[key] is None or r[0] < best[key][0]:
                    best[key] = r
        (te, _, oe), (tg, _, og) = best["engine"], best["generate"]
        me, mg = peak["engine"], peak["generate"]
        kv = engine.model_runner.kv_cache_bytes / 2**20
        floor = linear_floor_s(model, plen, 5) + n * linear_floor_s(model, k, 20)
        print(f"| {k} | {te:.2f} | {tg:.2f} | {k * n / te:.0f} | {k * n / tg:.0f} | {tg / te:.2f}x "
              f"| {me / 2**20:.0f} | {mg / 2**20:.0f} | {kv:.1f} | {oe == og} | {floor:.2f} |")


if __name__ == "__main__":
    main()
