"""Engine against transformers on the same random Qwen2 models, in one process.

For each model (~5M and ~30M parameters), prompt length (64, 512) and G (1, 4, 16), 128 new
tokens (eos ignored), one prompt sampled G times:
  engine    r1core.engine.Engine.generate(SamplingParams(n=G, temperature=1))
  generate  model.generate(do_sample=True, num_return_sequences=G)
  gen_batch model.generate_batch([prompt] * G)  (transformers' continuous batching), where it runs
engine and generate run --repeats times each, interleaved, and the fastest run of each is kept
(the machine is shared); generate_batch runs once. Reported: generated tokens/s, wall time, the
speed-up by process CPU time (less sensitive to other processes on a shared machine than wall time),
peak RSS growth during the call, KV-cache bytes, the
matmul-bound floor of the case (every Linear of the model timed on the case's row counts in this
run: one prefill of the prompt plus one decode step per new token), and the engine's mean decode
step against the floor of one decode step.

    python bench/bench_engine.py            # the full table
    python bench/bench_engine.py --quick    # 5M model, G 1 and 16, 32 new tokens
"""

from __future__ import annotations

import argparse
import os
import threading
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM  # noqa: E402
from transformers.generation.configuration_utils import ContinuousBatchingConfig  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from r1core.engine import Engine, SamplingParams  # noqa: E402

MODELS = {
    "5M": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
               vocab_size=4096, tie_word_embeddings=False),
    "30M": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                vocab_size=8192, tie_word_embeddings=True),
}


def make_model(name: str):
    cfg = Qwen2Config(**MODELS[name], max_position_embeddings=1024, eos_token_id=None, bos_token_id=None, pad_token_id=0)
    return Qwen2ForCausalLM(cfg).eval()


class PeakRSS:
    """Peak growth of the process's resident memory while the block runs (sampled every 2 ms)."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _poll(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.bytes = self.peak - self.base


def linear_floor_s(model, rows: int, repeats: int) -> float:
    """Seconds for every Linear of the model (lm_head included) on `rows` input rows, through BLAS
    (torch.mm) or, for a few rows, r1kernels.skinny_linear where that is faster (what the engine
    runs): the 10th percentile of `repeats` timed passes of each, so that other processes on the
    machine inflate it little; the smaller of the two."""
    from r1kernels import skinny_linear
    from r1kernels._library import has_cpp_kernel
    from r1kernels.skinny_linear import MAX_ROWS

    lins = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    xs = [torch.randn(rows, m.in_features) for m in lins]
    paths = [lambda x, w: torch.mm(x, w.T)]
    if rows <= MAX_ROWS and has_cpp_kernel("skinny_linear"):
        paths.append(skinny_linear)
    best = float("inf")
    with torch.inference_mode():
        for fn in paths:
            times = []
            for i in range(repeats + 1):
                t = time.perf_counter()
                for m, x in zip(lins, xs):
                    fn(x, m.weight)
                if i:  # the first pass warms up
                    times.append(time.perf_counter() - t)
            best = min(best, sorted(times)[len(times) // 10])
    return best


def kv_bytes_per_token(model) -> int:
    c = model.config
    return 2 * c.num_hidden_layers * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 4


def run_engine(engine, prompt, G, new_tokens):
    step_times = []
    orig_step = engine._step

    def timed_step():
        t = time.perf_counter()
        batch_holder = {}
        orig_schedule = engine.scheduler.schedule

        def schedule():
            batch_holder["b"] = orig_schedule()
            return batch_holder["b"]

        engine.scheduler.schedule = schedule
        try:
            out = orig_step()
        finally:
            engine.scheduler.schedule = orig_schedule
        b = batch_holder["b"]
        if b.num_tokens == len(b) == G:
            step_times.append(time.perf_counter() - t)
        return out

    engine._step = timed_step
    engine.block_manager.peak_used_blocks = engine.block_manager.num_used_blocks
    try:
        with PeakRSS() as mem:
            t, c = time.perf_counter(), time.process_time()
            outs = engine.generate([prompt], SamplingParams(n=G, temperature=1.0, max_new_tokens=new_tokens, ignore_eos=True, seed=0))
            wall, cpu = time.perf_counter() - t, time.process_time() - c
    finally:
        del engine._step
    assert all(len(c.token_ids) == new_tokens for c in outs[0].outputs)
    kv = engine.block_manager.peak_used_blocks * engine.model_runner.block_bytes
    step = sorted(step_times)[len(step_times) // 2] if step_times else float("nan")
    return wall, mem.bytes, kv, step, cpu


def run_generate(model, prompt, G, new_tokens):
    ids = torch.tensor([prompt])
    with PeakRSS() as mem, torch.inference_mode():
        t, c = time.perf_counter(), time.process_time()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, num_return_sequences=G, temperature=1.0,
                             top_k=0, top_p=1.0, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
    assert out.shape == (G, len(prompt) + new_tokens)
    return wall, mem.bytes, G * (len(prompt) + new_tokens) * kv_bytes_per_token(model), cpu


def run_generate_batch(model, prompt, G, new_tokens, num_blocks):
    cfg = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new_tokens, eos_token_id=-1,
                           pad_token_id=0)
    # the same cache geometry as the engine's (its default sizes the cache from free memory: 9.7 GB here)
    cb = ContinuousBatchingConfig(block_size=16, num_blocks=num_blocks, max_batch_tokens=2048)
    with PeakRSS() as mem:
        t = time.perf_counter()
        out = model.generate_batch([prompt] * G, generation_config=cfg, continuous_batching_config=cb, progress_bar=False,
                                   warmup=False)
        wall = time.perf_counter() - t
    n = sum(len(o.generated_tokens) for o in out.values())
    return wall, mem.bytes, n


def fmt_mb(b):
    return f"{b / 2**20:.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="5M model, G 1 and 16, 32 new tokens")
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--prompts", nargs="*", type=int, default=[64, 512])
    ap.add_argument("--groups", nargs="*", type=int, default=None)
    ap.add_argument("--new-tokens", type=int, default=None)
    ap.add_argument("--no-generate-batch", action="store_true")
    ap.add_argument("--repeats", type=int, default=2, help="engine and generate runs per case, interleaved; the best is kept")
    args = ap.parse_args()
    models = args.models or (["5M"] if args.quick else ["5M", "30M"])
    groups = args.groups or ([1, 16] if args.quick else [1, 4, 16])
    new_tokens = args.new_tokens or (32 if args.quick else 128)
    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    print(f"torch threads {torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, load average {os.getloadavg()}")
    rows = []
    for name in models:
        model = make_model(name)
        params = sum(p.numel() for p in model.parameters())
        engine = Engine(model, block_size=16, num_blocks=max(groups) * (max(args.prompts) + new_tokens) // 16 + 64)
        engine.generate([[1, 2, 3]], SamplingParams(max_new_tokens=4))  # warm-up
        model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2, do_sample=False, pad_token_id=0)
        for P in args.prompts:
            prefill_floor = linear_floor_s(model, P, 10)
            for G in groups:
                decode_floor = linear_floor_s(model, G, 100)
                floor = prefill_floor + new_tokens * decode_floor
                e_best = g_best = None
                for _ in range(args.repeats):  # interleaved, best of each: other processes' load hits both alike
                    prompt = torch.randint(1, model.config.vocab_size, (P,)).tolist()  # fresh: no prefix-cache help
                    e = run_engine(engine, prompt, G, new_tokens)
                    g = run_generate(model, prompt, G, new_tokens)
                    e_best = e if e_best is None or e[0] < e_best[0] else e_best
                    g_best = g if g_best is None or g[0] < g_best[0] else g_best
                (e_wall, e_mem, e_kv, e_step, e_cpu), (g_wall, g_mem, g_kv, g_cpu) = e_best, g_best
                gb = None
                if not (args.quick or args.no_generate_batch):
                    try:
                        gb = run_generate_batch(model, prompt, G, new_tokens, engine.block_manager.num_blocks)
                    except Exception as e:  # noqa: BLE001  report, do not fail the table
                        gb = repr(e)[:60]
                toks = G * new_tokens
                rows.append(dict(model=f"{name} ({params / 1e6:.1f}M)", P=P, G=G, e_tps=toks / e_wall, g_tps=toks / g_wall,
                                 gb_tps=(toks / gb[0]) if isinstance(gb, tuple) else None, gb_err=gb if isinstance(gb, str) else None,
                                 e_wall=e_wall, g_wall=g_wall, gb_wall=gb[0] if isinstance(gb, tuple) else None,
                                 e_mem=e_mem, g_mem=g_mem, gb_mem=gb[1] if isinstance(gb, tuple) else None, e_kv=e_kv, g_kv=g_kv,
                                 floor_tps=toks / floor, e_step=e_step, step_floor=decode_floor, e_cpu=e_cpu, g_cpu=g_cpu))
                r = rows[-1]
                print(f"{r['model']:>12} P={P:<4} G={G:<3} engine {r['e_tps']:8.1f} tok/s ({e_wall:6.2f}s)  generate {r['g_tps']:8.1f} "
                      f"tok/s ({g_wall:6.2f}s)  x{r['e_tps'] / r['g_tps']:.2f} (CPU time x{g_cpu / e_cpu:.2f})  "
                      f"decode step {e_step * 1e3:.1f} ms "
                      f"(floor {decode_floor * 1e3:.1f} ms)", flush=True)
    print()
    print("| model | prompt | G | engine tok/s | generate tok/s | generate_batch tok/s | engine / generate "
          "| wall s (engine / generate / batch) | by CPU time | peak RSS MB (engine / generate / batch) "
          "| KV MB (engine / generate) | matmul floor tok/s | engine decode step ms (floor) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        gb_tps = f"{r['gb_tps']:.1f}" if r["gb_tps"] else (f"error: {r['gb_err']}" if r["gb_err"] else "-")
        gb_wall = f"{r['gb_wall']:.2f}" if r["gb_wall"] else "-"
        gb_mem = fmt_mb(r["gb_mem"]) if r["gb_mem"] is not None else "-"
        print(f"| {r['model']} | {r['P']} | {r['G']} | {r['e_tps']:.1f} | {r['g_tps']:.1f} | {gb_tps} | {r['e_tps'] / r['g_tps']:.2f}x "
              f"| {r['e_wall']:.2f} / {r['g_wall']:.2f} / {gb_wall} | {r['g_cpu'] / r['e_cpu']:.2f}x "
              f"| {fmt_mb(r['e_mem'])} / {fmt_mb(r['g_mem'])} / {gb_mem} "
              f"| {fmt_mb(r['e_kv'])} / {fmt_mb(r['g_kv'])} | {r['floor_tps']:.0f} "
              f"| {r['e_step'] * 1e3:.1f} ({r['step_floor'] * 1e3:.1f}) |")


if __name__ == "__main__":
    main()
