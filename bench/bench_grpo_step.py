"""One GRPO optimizer step, TRL's GRPOTrainer against r1core's, in one process on the same tiny
Qwen2 (random weights, ~5M and ~30M parameters), character tokenizer, prompts, reward and settings:
num_generations 8, one prompt and its 8 completions per step, exactly 64 completion tokens (eos
suppressed in both, so both do the same work), beta 0.04 (a frozen reference model), dapo loss,
no vLLM, AdamW.

Reported per step (median over the measured steps, after one warm-up step): wall seconds
generating, for the rest (rewards, old/reference log-probs, loss, backward, optimizer) and in all;
CPU seconds of the process (a steadier measure of the work when other processes share the cores);
peak resident memory above the level before the trainer was built (each trainer in its own
process); steps/s ratio ours / TRL.

    python bench/bench_grpo_step.py            # 5M and 30M, 5 measured steps each
    python bench/bench_grpo_step.py --quick    # 5M only, 2 measured steps
    python bench/bench_grpo_step.py --bf16     # bf16 autocast in both (TRL's default)
    python bench/bench_grpo_step.py --case qwen2-151k           # the real-vocabulary case below
    python bench/bench_grpo_step.py --case qwen2-151k --quick   # its smoke run: 16-token completions, 1 step

The qwen2-151k case is the shape a user of Qwen-family models meets: a Qwen2 architecture with
Qwen's vocabulary of 151936 (random weights, hidden 256, 4 layers, tied embeddings; a character
tokenizer padded to that size with code points no prompt uses), 16 completions of 256 tokens per
prompt (eos suppressed), beta 0.04, a reward that spreads each group. There the LM head's GEMMs
dominate both sides, so each side's step is printed beside its floor: the step's GEMMs (the
linear layers' and the head's: the decode steps at 16 rows, the prompt's prefill, the reference
forward, the training forward and its two backward GEMMs per forward GEMM, the head only over
completion positions) timed in this run at their own shapes (BLAS's GEMM, or at decode rows
r1kernels.skinny_linear where faster, into reused outputs). Attention's own products (~10% of
the FLOPs at 272 positions) and everything that is not a GEMM are left out, so no real step
reaches the floor.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
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
QWEN = "qwen2-151k"  # the real-vocabulary case: its own model, tokenizer, group size and length
QWEN_VOCAB, QWEN_G, QWEN_COMPLETION = 151936, 16, 256


def shape(size: str, quick: bool = False) -> tuple[int, int]:
    """(completions per prompt, completion tokens) of a case."""
    if size == QWEN:
        return QWEN_G, (16 if quick else QWEN_COMPLETION)
    return G, COMPLETION


def make_tokenizer(size: str):
    from r1core.tasks.tokenizer import DEFAULT_ALPHABET, SPECIAL_TOKENS, TAG_TOKENS, build_tokenizer

    if size != QWEN:
        return build_tokenizer()
    # Qwen's vocabulary size with the character tokenizer's ids first; the rest are code points from
    # U+10000 on, never in a prompt but decodable, so rewards see text whatever the model samples
    n = QWEN_VOCAB - len(SPECIAL_TOKENS + TAG_TOKENS) - len(DEFAULT_ALPHABET)
    return build_tokenizer(DEFAULT_ALPHABET + "".join(chr(0x10000 + i) for i in range(n)))


def spread_reward(prompts=None, completions=None, **_):
    """Distinct rewards within a group (TRL's and r1core's signature): random weights never solve
    the task, and every advantage 0 would let a trainer skip the loss."""
    return [float(sum(map(ord, c)) % 7) for c in completions]


def make_qwen_model(seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=QWEN_VOCAB, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return Qwen2ForCausalLM(cfg)


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

    if size == QWEN:
        return make_qwen_model(seed)
    h, i, n, heads = MODELS[size]
    spec = BaseModelSpec(hidden_size=h, intermediate_size=i, num_hidden_layers=n, num_attention_heads=heads,
                         num_key_value_heads=heads, max_position_embeddings=128)
    return build_model(tok, spec, seed=seed)


def rows(n: int):
    from r1core.tasks import generate

    return generate("addition", "train", n, seed=0)


class Clock:
    """Wall and CPU seconds (all threads of the process): on a shared machine the CPU seconds
    still compare the work done when the wall clock is inflated by other processes."""

    def __init__(self):
        self.wall, self.cpu = [], []

    def wrap(self, fn):
        def timed(*a, **k):
            w, c = time.perf_counter(), time.process_time()
            r = fn(*a, **k)
            self.wall.append(time.perf_counter() - w)
            self.cpu.append(time.process_time() - c)
            return r

        return timed


def bench_ours(size: str, steps: int, bf16: bool = False, quick: bool = False) -> dict:
    from r1core.rewards import accuracy_reward
    from r1core.trainers import GRPOConfig, GRPOTrainer

    g, completion = shape(size, quick)
    tok = make_tokenizer(size)
    model = make_model(tok, size)
    reward = spread_reward if size == QWEN else accuracy_reward
    gen, step = Clock(), Clock()
    with tempfile.TemporaryDirectory() as out, PeakRSS() as mem:
        cfg = GRPOConfig(num_generations=g, per_device_train_batch_size=g, max_completion_length=completion, beta=0.04,
                         learning_rate=1e-6, ignore_eos=True, output_dir=out, max_steps=steps + 1, logging_steps=1,
                         bf16=bf16)
        tr = GRPOTrainer(model, tok, [reward], rows(64), cfg)
        tr.generate = gen.wrap(tr.generate)
        train_step = step.wrap(tr.train_step)
        for _ in range(steps + 1):
            info = train_step()
        assert info["completion_length"] == completion
    return summarize(gen, step, mem.delta)


def bench_trl(size: str, steps: int, bf16: bool = False, quick: bool = False, setup=None) -> dict:
    """setup(trainer): applied before training (bench_trl_dropins.py's drop-ins)."""
    import datasets
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from r1core.rewards import accuracy_reward

    g, completion = shape(size, quick)
    tok = make_tokenizer(size)
    model = make_model(tok, size)
    reward = spread_reward if size == QWEN else accuracy_reward
    ds = datasets.Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows(64)])
    gen, step = Clock(), Clock()

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = (time.perf_counter(), time.process_time())

        def on_step_end(self, args, state, control, **kw):
            step.wall.append(time.perf_counter() - self.t[0])
            step.cpu.append(time.process_time() - self.t[1])

    with tempfile.TemporaryDirectory() as out, PeakRSS() as mem:
        # TRL builds its reference model with from_pretrained(model.config._name_or_path)
        model.save_pretrained(os.path.join(out, "model"))
        model.config._name_or_path = os.path.join(out, "model")
        cfg = GRPOConfig(output_dir=out, use_cpu=True, report_to=[], per_device_train_batch_size=g, num_generations=g,
                         max_completion_length=completion, beta=0.04, learning_rate=1e-6, max_steps=steps + 1,
                         logging_steps=1, save_strategy="no", generation_kwargs={"min_new_tokens": completion},
                         disable_tqdm=True, seed=0,
                         dataloader_num_workers=0,
                         # TRL 1.16 defaults to bf16 autocast and gradient checkpointing; both trainers run
                         # float32 without checkpointing here, so they do the same arithmetic
                         bf16=bf16, gradient_checkpointing=False)
        trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=cfg, train_dataset=ds, processing_class=tok,
                              callbacks=[StepTimer()])
        if setup is not None:
            setup(trainer)
        trainer._generate_single_turn = gen.wrap(trainer._generate_single_turn)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.train()
    return summarize(gen, step, mem.delta)


def _best_seconds(fn, reps: int = 4) -> float:
    """The fastest of reps calls after a warm-up: a floor is what the machine can do, and on a shared
    machine the fastest run is the one least disturbed."""
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _mm_seconds(rows: int, weight: torch.Tensor, max_out_bytes: int = 64 << 20) -> float:
    """Seconds of x [rows, in] @ weight.T in row chunks whose output stays under max_out_bytes, as the
    fused kernels chunk the head; decode-sized rows also try the engine's skinny GEMM and keep the
    faster."""
    import r1kernels

    out_features, in_features = weight.shape
    chunk = max(1, min(rows, max_out_bytes // (4 * out_features)))
    x = torch.randn(chunk, in_features)
    out = torch.empty(chunk, out_features)  # reused, as the kernels reuse theirs: a fresh one would time page faults
    best = _best_seconds(lambda: torch.mm(x, weight.t(), out=out))
    if chunk <= 32:
        best = min(best, _best_seconds(lambda: r1kernels.skinny_linear(x, weight)))
    full, rest = divmod(rows, chunk)
    return full * best + (_mm_seconds(rest, weight, max_out_bytes) if rest else 0.0)


def gemm_floor(size: str, quick: bool = False) -> dict:
    """Seconds of one step's GEMMs at their shapes, timed now: generation (prefill of the prompt, then
    one decode step per completion token at G rows, head included) and training (the reference
    forward, the training forward, and backward as two GEMMs per forward GEMM, the head only over
    the completion positions)."""
    from r1core.tasks.tokenizer import encode_prompt

    g, completion = shape(size, quick)
    tok = make_tokenizer(size)
    model = make_model(tok, size)
    prompt = len(encode_prompt(tok, rows(1)[0]["prompt"]))
    lm_head = model.get_output_embeddings()
    head = lm_head.weight.detach()
    linears = [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not lm_head]
    with torch.no_grad():
        decode = sum(_mm_seconds(g, w) for w in linears) + _mm_seconds(g, head)
        prefill = sum(_mm_seconds(g * prompt, w) for w in linears) + _mm_seconds(g, head)
        forward = sum(_mm_seconds(g * (prompt + completion), w) for w in linears) + _mm_seconds(g * completion, head)
    gen = prefill + completion * decode
    train = (1 + 1 + 2) * forward  # reference forward, forward, backward (grad input + grad weight)
    return {"gen_s": gen, "train_s": train, "step_s": gen + train}


def summarize(gen: Clock, step: Clock, mem: int) -> dict:
    """Medians over the steps after the first (warm-up)."""
    med = lambda xs: statistics.median(xs[1:])  # noqa: E731
    return {"gen_s": med(gen.wall), "train_s": med(step.wall) - med(gen.wall), "step_s": med(step.wall),
            "gen_cpu": med(gen.cpu), "step_cpu": med(step.cpu), "peak_mb": mem / 2**20}


def run_side(name: str, size: str, steps: int, args) -> dict:
    """One trainer in a fresh process: peak RSS above a baseline means little in a process whose heap
    the other trainer already grew (freed pages stay resident and are reused without growing it)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name, "--child-size", size, "--steps", str(steps),
           "--threads", str(args.threads)] + (["--bf16"] if args.bf16 else []) + (["--quick"] if args.quick else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit status {out.returncode}"
        raise SystemExit(f"{name} on {size} failed: {tail}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="5M model only (qwen2-151k: 16-token completions), 2 measured steps (qwen2-151k: 1)")
    ap.add_argument("--case", choices=["tiny", QWEN], default="tiny",
                    help=f"tiny: the 5M and 30M models of the character vocabulary; {QWEN}: Qwen's vocabulary, "
                         "16 completions of 256 tokens")
    ap.add_argument("--steps", type=int, default=None,
                    help="measured steps per trainer (default 5; --quick 2; qwen2-151k 3, with --quick 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast in both trainers' training side (TRL's default)")
    ap.add_argument("--child", choices=["trl", "r1core"], default=None, help=argparse.SUPPRESS)  # one trainer, JSON out
    ap.add_argument("--child-size", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        bench = bench_trl if args.child == "trl" else bench_ours
        print(json.dumps(bench(args.child_size, args.steps, args.bf16, args.quick)))
        return
    if args.case == QWEN:
        sizes, steps = [QWEN], args.steps or (1 if args.quick else 3)
    else:
        sizes, steps = (["5M"] if args.quick else ["5M", "30M"]), args.steps or (2 if args.quick else 5)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, steps {steps} (+1 warm-up), load {os.getloadavg()[0]:.1f}")
    cols = ("gen s", "train s", "step s", "gen cpu", "step cpu", "peak MB", "x floor")
    print(f"{'model':>10} {'trainer':>8} " + " ".join(f"{c:>8}" for c in cols))
    for size in sizes:
        res = {name: run_side(name, size, steps, args) for name in ("trl", "r1core")}
        floor = gemm_floor(size, args.quick)
        for name, r in res.items():
            vals = (r["gen_s"], r["train_s"], r["step_s"], r["gen_cpu"], r["step_cpu"])
            print(f"{size:>10} {name:>8} " + " ".join(f"{v:8.3f}" for v in vals)
                  + f" {r['peak_mb']:8.0f} {r['step_s'] / floor['step_s']:8.2f}")
        vals = (floor["gen_s"], floor["train_s"], floor["step_s"])
        print(f"{size:>10} {'GEMMs':>8} " + " ".join(f"{v:8.3f}" for v in vals)
              + f" {'':>8} {'':>8} {'':>8} {1.0:8.2f}")
        t, o = res["trl"], res["r1core"]
        print(f"{size:>10} speed-up r1core / TRL in steps/s: {t['step_s'] / o['step_s']:.2f}x wall "
              f"(generation {t['gen_s'] / o['gen_s']:.2f}x, rest {t['train_s'] / o['train_s']:.2f}x); "
              f"{t['step_cpu'] / o['step_cpu']:.2f}x in CPU seconds; "
              f"peak memory r1core / TRL {o['peak_mb'] / max(t['peak_mb'], 1e-9):.2f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
