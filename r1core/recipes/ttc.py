"""`r1core ttc`: test-time compute on the default task: accuracy against generated tokens for every
method, at budgets of 1 to 64 samples, on held-out problems, with the model the default run
produced (runs/<name>/final, else runs/<name>/base) or any saved model.

Methods, all against the same verifier (default: the exact step verifier of the task, used as a
process verifier: a partial solution's score is its step scores aggregated by `aggregate`, a
finished one's also takes the answer check as its last step (`--finished-score`); `--verifier
prm` trains a small PRM on Math-Shepherd labels from the policy's own rollouts first). With an
exact verifier best-of-N reaches pass@N; what the curves compare is the tokens each method
spends to get there:
- majority, best_of_n, weighted_best_of_n: one draw of max(budgets) samples per problem; budget b
  uses the first b (so the curves share their samples);
- beam_search (budget N = candidates per round, beam width min(4, N)), dvts, mcts (budget =
  simulations, 4 children per expansion): run at every budget, the searches of all problems side
  by side (one engine batch per round).
Correctness is always the exact outcome check. Written to runs/<name>/: ttc.json (every row),
ttc.md (the table) and ttc.png (accuracy against mean generated tokens per problem, log x).

    r1core ttc                                  # after `r1core run`
    r1core ttc --model tiny --num-problems 8 --budgets 1,2,4   # a random model, in seconds
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

SAMPLING_METHODS = ("majority", "best_of_n", "weighted_best_of_n")
STEP_METHODS = ("beam_search", "dvts", "mcts")
ALL_METHODS = SAMPLING_METHODS + STEP_METHODS
VERIFIERS = ("exact", "prm")
TREE_ATTENTION = {"auto": "auto", "on": True, "off": False}  # the flag's words, the switch's values


@dataclass
class TTCConfig:
    name: str = "r1-zero"
    runs_dir: str = "runs"
    model: str | None = None  # a model folder, "tiny" (random weights), or None: the default run's model
    task: str = "addition"
    digits: int = 3
    num_problems: int = 64
    budgets: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    methods: list[str] = field(default_factory=lambda: list(ALL_METHODS))
    search_max_budget: int = 64  # step searches above this budget are skipped (their cost grows with it)
    verifier: str = "exact"
    aggregate: str = "min"
    finished_score: str = "steps_and_outcome"  # exact verifier on a finished solution: see verifier_scorer
    temperature: float = 1.0
    max_new_tokens: int = 48
    max_step_tokens: int = 16
    beam_width: int = 4
    mcts_children: int = 4
    c_puct: float = 1.0
    prm_problems: int = 64  # --verifier prm: training problems (train split), 2 solutions each
    prm_rollouts: int = 4
    prm_steps: int = 300
    prm_soft_labels: bool = False  # Math-Shepherd soft labels (share of correct rollouts) instead of hard
    tree_attention: str = "auto"  # "on" / "off" / "auto": the engine's and the PRM's tree attention (sibling steps at once)
    seed: int = 0
    threads: int = 2
    output: str = "ttc"  # file stem in runs/<name>/
    progress: bool = True

    def __post_init__(self):
        from r1core.search.verifiers import AGGREGATIONS
        from r1core.tasks import TASKS

        for name in ("digits", "num_problems", "search_max_budget", "max_new_tokens", "max_step_tokens", "beam_width",
                     "mcts_children", "prm_problems", "prm_rollouts", "prm_steps", "threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"TTCConfig.{name} must be an int >= 1, got {v!r}")
        if self.task not in TASKS:
            raise ValueError(f"TTCConfig.task must be one of {TASKS}, got {self.task!r}")
        if not self.budgets or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.budgets):
            raise ValueError(f"TTCConfig.budgets must be ints >= 1, got {self.budgets!r}")
        self.budgets = sorted(set(self.budgets))
        bad = [m for m in self.methods if m not in ALL_METHODS]
        if bad or not self.methods:
            raise ValueError(f"TTCConfig.methods must be a non-empty list from {ALL_METHODS}, got {self.methods!r}")
        if self.tree_attention not in TREE_ATTENTION:
            raise ValueError(f"TTCConfig.tree_attention must be one of {tuple(TREE_ATTENTION)}, got {self.tree_attention!r}")
        if self.verifier not in VERIFIERS:
            raise ValueError(f"TTCConfig.verifier must be one of {VERIFIERS}, got {self.verifier!r}")
        from r1core.search.scoring import FINISHED_SCORES

        if self.finished_score not in FINISHED_SCORES:
            raise ValueError(f"TTCConfig.finished_score must be one of {FINISHED_SCORES}, got {self.finished_score!r}")
        if self.aggregate not in AGGREGATIONS:
            raise ValueError(f"TTCConfig.aggregate must be one of {AGGREGATIONS}, got {self.aggregate!r}")
        if not self.temperature > 0:
            raise ValueError(f"TTCConfig.temperature must be > 0 (the methods need distinct samples), got {self.temperature!r}")
        if not self.c_puct >= 0:
            raise ValueError(f"TTCConfig.c_puct must be >= 0, got {self.c_puct!r}")
        if not self.name or "/" in self.name:
            raise ValueError(f"TTCConfig.name must be a non-empty folder name, got {self.name!r}")

    @property
    def run_dir(self) -> str:
        return os.path.join(self.runs_dir, self.name)


def exact_verifier(task: str):
    from r1core.search import ArithmeticVerifier, CountdownVerifier

    return CountdownVerifier() if task == "countdown" else ArithmeticVerifier()


def problem_columns(row: dict) -> dict:
    return {k: row[k] for k in ("numbers", "target", "answer") if k in row}


def evaluate_methods(generator, encode: Callable[[str], list[int]], rows: Sequence[dict], cfg: TTCConfig,
                     scorers: Sequence[Callable[[str, bool], float]], correct: Callable[[dict, str], bool],
                     log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """The table's rows: {"method", "budget", "accuracy", "generated_tokens" (mean per problem),
    "seconds"} (+ "pass_at_k" for the sampling methods). `generator` is any StepGenerator: its
    rollouts are the samples, its steps feed the searches; scorers[p](text, finished) scores
    problem p's solutions; correct(row, text) is the exact outcome check."""
    from r1core.search.beam import beam_search_steps, dvts_steps
    from r1core.search.curves import accuracy_by_budget
    from r1core.search.mcts import mcts_steps
    from r1core.search.step_generator import StepRequest, drive_many, serve

    prompt_ids = [encode(r["prompt"]) for r in rows]
    out: list[dict] = []
    sampling = [m for m in cfg.methods if m in SAMPLING_METHODS]
    if sampling:
        t0 = time.perf_counter()
        n = max(cfg.budgets)
        samples = serve(generator, [StepRequest(ids, n, cfg.max_new_tokens, rollout=True) for ids in prompt_ids])
        texts = [[s.text for s in ss] for ss in samples]
        counts = [[s.num_tokens for s in ss] for ss in samples]
        ok = [[bool(correct(r, t)) for t in ts] for r, ts in zip(rows, texts)]
        scores = [[float(sc(t, True)) for t in ts] for sc, ts in zip(scorers, texts)]
        secs = time.perf_counter() - t0
        for m in sampling:
            for row in accuracy_by_budget(texts, counts, ok, cfg.budgets, m, scores=None if m == "majority" else scores):
                row["seconds"] = secs * row["budget"] / n  # the share of the one draw this budget uses
                out.append(row)
                log(f"{m:>18} b={row['budget']:<3} acc={row['accuracy']:.3f} tokens={row['generated_tokens']:.0f}")
    for m in (m for m in cfg.methods if m in STEP_METHODS):
        for b in (b for b in cfg.budgets if b <= cfg.search_max_budget):
            t0 = time.perf_counter()
            common = dict(max_step_tokens=cfg.max_step_tokens)
            if m == "mcts":
                searches = [mcts_steps(ids, sc, budget=b, num_children=cfg.mcts_children, c_puct=cfg.c_puct,
                                       max_rollout_tokens=cfg.max_new_tokens, **common) for ids, sc in zip(prompt_ids, scorers)]
            else:
                fn = beam_search_steps if m == "beam_search" else dvts_steps
                searches = [fn(ids, sc, budget=b, beam_width=min(cfg.beam_width, b), **common)
                            for ids, sc in zip(prompt_ids, scorers)]
            results = drive_many(searches, generator)
            acc = sum(r.text is not None and bool(correct(row, r.text)) for r, row in zip(results, rows)) / len(rows)
            toks = sum(r.generated_tokens for r in results) / len(rows)
            out.append({"method": m, "budget": b, "accuracy": acc, "generated_tokens": toks,
                        "seconds": time.perf_counter() - t0})
            log(f"{m:>18} b={b:<3} acc={acc:.3f} tokens={toks:.0f}")
    return out


def _resolve_model(cfg: TTCConfig) -> str:
    if cfg.model is not None:
        return cfg.model
    for sub in ("final", "base"):
        path = os.path.join(cfg.run_dir, sub)
        if os.path.isdir(path):
            return path
    raise ValueError(f"TTCConfig.model: no model in {cfg.run_dir}/final or {cfg.run_dir}/base; run `r1core run` "
                     f"first, or pass --model DIR (or --model tiny for random weights)")


def _train_prm(cfg: TTCConfig, generator, encode, correct, tok, log):
    from r1core.search.reward_models import ProcessRewardModel, build_reward_model, shepherd_examples, train_reward_model
    from r1core.tasks import arithmetic, countdown, generate

    kwargs = {"digits": cfg.digits} if cfg.task != "countdown" else {}
    train = generate(cfg.task, "train", cfg.prm_problems, seed=cfg.seed + 7, **kwargs)
    t0 = time.perf_counter()
    exs = shepherd_examples(generator, train, encode, correct, solutions_per_row=2, rollouts=cfg.prm_rollouts,
                            soft=cfg.prm_soft_labels,
                            max_step_tokens=cfg.max_step_tokens, max_tokens=cfg.max_new_tokens)
    if not exs:
        raise ValueError("verifier prm: the policy finished no solution to label; use --verifier exact")
    model = build_reward_model(tok, seed=cfg.seed)
    losses = train_reward_model(model, tok, exs, kind="prm", max_steps=cfg.prm_steps, seed=cfg.seed)
    pos = sum(sum(e.labels) for e in exs) / sum(len(e.labels) for e in exs)
    log(f"PRM: {len(exs)} solutions, {pos:.2f} of step labels positive, loss {losses[0]:.3f} -> "
        f"{sum(losses[-10:]) / min(10, len(losses)):.3f}, {time.perf_counter() - t0:.0f} s")
    split = countdown.split_completion if cfg.task == "countdown" else arithmetic.split_completion
    prm = ProcessRewardModel(model, tok, split=split, separator=",", tree_attention=TREE_ATTENTION[cfg.tree_attention])
    return prm, {"examples": len(exs), "positive_fraction": pos, "first_loss": losses[0], "last_loss": losses[-1]}


def write_outputs(rows: list[dict], run_dir: str, stem: str, title: str, meta: dict) -> dict:
    """ttc.json, ttc.md (a markdown table) and ttc.png in run_dir; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(run_dir, exist_ok=True)
    paths = {k: os.path.join(run_dir, f"{stem}.{k}") for k in ("json", "md", "png")}
    with open(paths["json"], "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=1)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    budgets = sorted({r["budget"] for r in rows})
    lines = [f"# {title}", "", "accuracy (mean generated tokens per problem)", "",
             "| method | " + " | ".join(f"b={b}" for b in budgets) + " |", "|---|" + "---:|" * len(budgets)]
    for m in methods:
        by = {r["budget"]: r for r in rows if r["method"] == m}
        cells = [f"{by[b]['accuracy']:.3f} ({by[b]['generated_tokens']:.0f})" if b in by else "-" for b in budgets]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    with open(paths["md"], "w") as f:
        f.write("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in methods:
        rs = sorted((r for r in rows if r["method"] == m), key=lambda r: r["budget"])
        ax.plot([max(r["generated_tokens"], 1e-9) for r in rs], [r["accuracy"] for r in rs], marker="o", label=m)
    ax.set_xscale("log")
    ax.set_xlabel("generated tokens per problem (mean)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=120)
    plt.close(fig)
    return paths


def print_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    budgets = sorted({r["budget"] for r in rows})
    t = Table(title=title + ": accuracy (generated tokens per problem)")
    t.add_column("method")
    for b in budgets:
        t.add_column(f"b={b}", justify="right")
    for m in dict.fromkeys(r["method"] for r in rows):
        by = {r["budget"]: r for r in rows if r["method"] == m}
        t.add_row(m, *[f"{by[b]['accuracy']:.3f} ({by[b]['generated_tokens']:.0f})" if b in by else "-" for b in budgets])
    Console().print(t)


def run_ttc(cfg: TTCConfig) -> dict:
    """The whole comparison; returns {"rows", "paths", ...} (also written to runs/<name>/ttc.json)."""
    import torch

    from r1core.engine import Engine
    from r1core.recipes.base_model import load_model
    from r1core.search.scoring import verifier_scorer
    from r1core.search.step_generator import BranchStepGenerator
    from r1core.tasks import generate
    from r1core.tasks.tokenizer import encode_prompt

    t_start = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    log = print if cfg.progress else (lambda s: None)
    model_path = _resolve_model(cfg)
    try:
        model, tok = load_model(model_path, cfg.seed)
    except ValueError as e:
        raise ValueError(f"TTCConfig.model: {e}") from None
    engine = Engine(model, tokenizer=tok, tree_attention=TREE_ATTENTION[cfg.tree_attention])
    generator = BranchStepGenerator(engine, ",", end_marker=";A", temperature=cfg.temperature, seed=cfg.seed)
    kwargs = {"digits": cfg.digits} if cfg.task != "countdown" else {}
    rows = generate(cfg.task, "test", cfg.num_problems, seed=cfg.seed + 101, **kwargs)
    exact = exact_verifier(cfg.task)

    def encode(text: str) -> list[int]:
        return encode_prompt(tok, text)

    def correct(row: dict, text: str) -> bool:
        return exact.outcome(row["prompt"], text, **problem_columns(row)) >= 1.0

    meta: dict[str, Any] = {"config": dataclasses.asdict(cfg), "model": model_path, "problems": len(rows)}
    if cfg.verifier == "prm":
        prm, meta["prm"] = _train_prm(cfg, generator, encode, correct, tok, log)
        scorers = [prm.scorer(r["prompt"], cfg.aggregate) for r in rows]
    else:
        scorers = [verifier_scorer(exact, r["prompt"], problem_columns(r), cfg.aggregate, finished=cfg.finished_score)
                   for r in rows]
    table = evaluate_methods(generator, encode, rows, cfg, scorers, correct, log=log)
    title = f"test-time compute, {cfg.task} ({cfg.num_problems} held-out problems, {cfg.verifier} verifier)"
    meta["seconds"] = time.perf_counter() - t_start
    paths = write_outputs(table, cfg.run_dir, cfg.output, title, meta)
    if cfg.progress:
        print_table(table, title)
        print(f"{meta['seconds']:.0f} s; written to {paths['md']}, {paths['png']}")
    return {**meta, "rows": table, "paths": paths}
