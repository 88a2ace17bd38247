"""What the study recipes (`r1core journey`, `r1core star`, `r1core study distill`) share: the
countdown setting they train and evaluate on, a model over the trace alphabet, the held-out
evaluation as a summary entry, the stages kept on disk for `--resume`, the run loop over stages,
the summary's one shape and the table, and the command each recipe is.

The summary of every study recipe is `{"arms" | "iterations": [entry, ...], "wall_seconds": ...}`,
each entry `{"name", "accuracy" (pass@1 of samples at temperature 1), "greedy_accuracy",
"format_rate", "mean_completion_tokens", "seconds", ...}` with accuracies as fractions of the
held-out problems.

A stage (an arm, an iteration) is done when its folder under the run directory holds
`entry.json`, written last; `--resume` skips done stages and goes on inside the one that was
running from its trainer's last checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from r1core.recipes.flags import Command, Given, Section, option

ENTRY_KEYS = ("name", "accuracy", "greedy_accuracy", "format_rate", "mean_completion_tokens", "seconds")


@dataclass
class CountdownSetting:
    """The countdown problems of a study: small numbers, so the arithmetic of a trace stays short."""

    num_numbers: int = option(3, "numbers per problem")
    max_number: int = option(10, "numbers are drawn from 1..max_number")
    max_target: int = option(50, "targets are drawn from 1..max_target (unsolvable draws are redrawn)")
    eval_size: int = option(128, "held-out problems (the test split: never in training)")
    eval_samples: int = option(4, "samples per held-out problem for pass@1 at temperature 1")
    search_budget: int = option(16, "steps a trace's search may write; problems whose search runs out are left out of SFT")
    search_order: str = option("heuristic", "the traces' search order: 'heuristic' (nearest the target first) or 'random' (seeded)")
    max_new_tokens: int = option(256, "tokens per completion at most (evaluation and sampling)")
    hidden_size: int = option(128, "the model's width (a Qwen2 over the trace alphabet, 4 heads)")
    num_hidden_layers: int = option(4, "the model's depth")
    threads: int = option(2, "torch threads")


def check_setting(cfg, cls_name: str) -> None:
    """The setting's fields: counts >= 1 (eval_samples >= 0), a known search order."""
    for name in ("num_numbers", "max_number", "max_target", "eval_size", "search_budget", "max_new_tokens", "hidden_size",
                 "num_hidden_layers", "threads"):
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{cls_name}.{name} must be an int >= 1, got {v!r}")
    if not isinstance(cfg.eval_samples, int) or isinstance(cfg.eval_samples, bool) or cfg.eval_samples < 0:
        raise ValueError(f"{cls_name}.eval_samples must be an int >= 0, got {cfg.eval_samples!r}")
    if not 2 <= cfg.num_numbers <= 4:
        raise ValueError(f"{cls_name}.num_numbers must be 2, 3 or 4 (traces of more do not fit the model), got {cfg.num_numbers!r}")
    if cfg.search_order not in ("heuristic", "random"):
        raise ValueError(f"{cls_name}.search_order must be 'heuristic' or 'random', got {cfg.search_order!r}")
    if not cfg.name or "/" in cfg.name:
        raise ValueError(f"{cls_name}.name must name a folder (not empty, no '/'), got {cfg.name!r}")


def countdown_problems(cfg, split: str, n: int, seed: int) -> list[dict]:
    from r1core.tasks import generate

    return generate("countdown", split, n, seed=seed, num_numbers=cfg.num_numbers, max_number=cfg.max_number,
                    max_target=cfg.max_target)


def held_out(cfg) -> list[dict]:
    """Distinct test-split problems (r1core.tasks splits by a hash: none is ever a training problem)."""
    seen, out = set(), []
    for r in countdown_problems(cfg, "test", 4 * cfg.eval_size, cfg.seed + 1):
        if r["prompt"] not in seen and len(out) < cfg.eval_size:
            seen.add(r["prompt"])
            out.append(r)
    if len(out) < cfg.eval_size:
        raise ValueError(f"eval_size: {cfg.eval_size} held-out problems asked, only {len(out)} distinct ones drawn; a smaller "
                         f"eval_size or a larger max_target")
    return out


def new_model(cfg, rows: list[dict] = ()):
    """(model, tokenizer): a fresh Qwen2 over the trace alphabet, seeded by cfg.seed, with positions
    for a prompt and cfg.max_new_tokens and for the longest of the SFT `rows` (prompt, completion)."""
    from r1core.recipes.base_model import BaseModelSpec, build_model
    from r1core.tasks.countdown_traces import TRACE_ALPHABET
    from r1core.tasks.tokenizer import build_tokenizer

    tok = build_tokenizer(TRACE_ALPHABET)
    from r1core.trainers.sft import tokenize_example

    longest = max([4 * cfg.num_numbers + 8 + cfg.max_new_tokens]  # a prompt (with a hint) and a completion
                  + [len(tokenize_example(tok, r["prompt"], r["completion"])[0]) for r in rows])
    positions = 16 * -(-longest // 16)
    spec = BaseModelSpec(hidden_size=cfg.hidden_size, intermediate_size=4 * cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
                         max_position_embeddings=positions)
    return build_model(tok, spec, seed=cfg.seed), tok


def load(path: str):
    from r1core.recipes.base_model import load_model

    return load_model(path)


def engine_for(model, tok, cfg, batch: int = 256):
    from r1core.engine import Engine

    per_seq = -(-(4 * cfg.num_numbers + 8 + cfg.max_new_tokens) // 16) + 1
    return Engine(model, tokenizer=tok, num_blocks=batch * per_seq + 16)


def evaluate_entry(cfg, name: str, model, tok, problems: list[dict], seconds: float, engine=None, reward_func=None,
                   format_func=None) -> dict:
    """The summary entry of a model: held-out pass@1 of cfg.eval_samples samples at temperature 1,
    greedy accuracy, format rate, mean completion tokens; `seconds` is the stage's (the evaluation's
    added). The reward and format check are countdown's unless given."""
    from r1core.recipes.evaluate import evaluate
    from r1core.rewards import countdown_reward, format_reward

    model.eval()
    ev = evaluate(engine or engine_for(model, tok, cfg), tok, problems, reward_func=reward_func or countdown_reward,
                  format_func=format_func or format_reward, samples=cfg.eval_samples, temperature=1.0,
                  max_new_tokens=cfg.max_new_tokens, seed=cfg.seed + 17)
    return {"name": name, "accuracy": ev.get("accuracy"), "greedy_accuracy": ev["greedy_accuracy"],
            "format_rate": ev.get("format_rate", ev.get("greedy_format_rate")),
            "mean_completion_tokens": ev.get("completion_length", ev.get("greedy_completion_length")),
            "seconds": seconds + ev["eval_seconds"], "eval": ev}


# ---- stages on disk ------------------------------------------------------------------------------
def stage_dir(run_dir: str, name: str) -> str:
    return os.path.join(run_dir, "stages", name.replace("+", "_"))


def done_entry(run_dir: str, name: str) -> dict | None:
    path = os.path.join(stage_dir(run_dir, name), "entry.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def finish_stage(run_dir: str, entry: dict, model=None, tok=None) -> None:
    """Saves the stage's model (model/) and then its entry: a stage with an entry is complete."""
    d = stage_dir(run_dir, entry["name"])
    os.makedirs(d, exist_ok=True)
    if model is not None:
        tmp, final = os.path.join(d, "model.tmp"), os.path.join(d, "model")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    with open(os.path.join(d, "entry.json.tmp"), "w") as f:
        json.dump(entry, f, indent=1)
    os.replace(os.path.join(d, "entry.json.tmp"), os.path.join(d, "entry.json"))


def clear_stages(run_dir: str, *more: str) -> None:
    """A fresh run under an old name: its stages (and the folders named in `more`) are removed, so
    nothing of the old run is resumed or reported later."""
    for d in ("stages", *more):
        shutil.rmtree(os.path.join(run_dir, d), ignore_errors=True)


def stage_model(run_dir: str, name: str) -> str:
    return os.path.join(stage_dir(run_dir, name), "model")


def has_checkpoint(path: str) -> bool:
    from r1core.trainers.checkpoint import latest_checkpoint

    return os.path.isdir(path) and latest_checkpoint(path) is not None


# ---- the run loop --------------------------------------------------------------------------------
def begin_run(cfg, resume: bool, *more: str) -> float:
    """The run's start (its perf_counter): a fresh run clears the old stages (and `more`), then the
    threads, the seed and run_config.json."""
    from r1core.recipes.r1_zero import start_run

    t0 = time.perf_counter()
    if not resume:
        clear_stages(cfg.run_dir, *more)
    start_run(cfg)
    return t0


def each_stage(run_dir: str, names: list[str], resume: bool, run_stage: Callable[[str], dict]) -> Iterator[dict]:
    """Each stage's entry in order: a done one's from disk on --resume, else run_stage(name)'s; the
    caller's loop body runs before the next stage starts."""
    for name in names:
        entry = done_entry(run_dir, name) if resume else None
        yield entry if entry is not None else run_stage(name)


def finish_run(cfg, key: str, entries: list[dict], t0: float, title: str, plot_keys: dict[str, list[str]],
               extra: tuple[str, ...] = (), more_plots: Callable[[list[dict]], list[str]] | None = None, **more) -> dict:
    """summary.json, metrics.jsonl and the plots of a run whose stages are done; the table on the terminal."""
    wall = time.perf_counter() - t0
    summary = write_summary(cfg.run_dir, key, entries, wall, **more)
    summary["plots"] = write_plots(cfg.run_dir, entries, plot_keys) + (more_plots(entries) if more_plots else [])
    if cfg.progress:
        print_entries(title, entries, extra=extra)
        print(f"wall {wall:.0f} s; written to {cfg.run_dir}/")
    return summary


# ---- the command ---------------------------------------------------------------------------------
def study_command(sub, name: str, config: type, options: type, run: Callable, has_run: Callable, trainers: list[Section],
                  help: str, description: str, what: str = "") -> dict[str, Command]:
    """The command of a study recipe: `config`'s fields, `options` (with `resume`) and the nested
    trainer sections as flags; it runs run(cfg, resume=) and turns a ValueError into one line (exit
    status 1 where run's result names sub-runs that "failed"). A
    --resume where has_run(cfg) is false is refused before any work (naming `what`, "<name> run" unless given)."""
    def cmd(given: Given) -> int:
        try:
            cfg, resume = given.build(config), given.build(options).resume
            if resume and not has_run(cfg):
                raise SystemExit(f"error: --resume: {cfg.run_dir!r} holds no {what or name + ' run'} to resume; check --name, "
                                 "or start without --resume")
            out = run(cfg, resume=resume)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
        return 1 if isinstance(out, dict) and out.get("failed") else 0  # a study whose sub-runs failed says so

    p = sub.add_parser(name, help=help, description=description)
    sections = [Section(config, title=f"{config.__name__} fields"), Section(options, title=f"{name} options"), *trainers]
    return {name: Command(p, sections, func=cmd)}


# ---- the report ----------------------------------------------------------------------------------
def write_summary(run_dir: str, key: str, entries: list[dict], wall: float, **more) -> dict:
    """summary.json: {key: entries, "wall_seconds": wall, **more}; and metrics.jsonl, every stage's
    trainer records in order, each with its stage's name."""
    summary = {key: entries, "wall_seconds": wall, **more}
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    from r1core.trainers.metrics import read_jsonl

    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for e in entries:
            records = read_jsonl(os.path.join(stage_dir(run_dir, e["name"]), "metrics.jsonl"))
            f.writelines(json.dumps({"stage": e["name"], **rec}) + "\n" for rec in records)
    return summary


def write_plots(run_dir: str, entries: list[dict], keys: dict[str, list[str]]) -> list[str]:
    """plots/<stage>.png per stage that trained (keys: the metrics to plot, by trainer kind: the
    first key of a stage's records that matches picks the list)."""
    from r1core.trainers.metrics import plot_metrics, read_jsonl

    out = []
    for e in entries:
        recs = read_jsonl(os.path.join(stage_dir(run_dir, e["name"]), "metrics.jsonl"))
        kind = next((k for k in keys if any(k in r for r in recs)), None)
        if kind is None:
            continue
        p = plot_metrics(recs, keys[kind], os.path.join(run_dir, "plots", f"{e['name'].replace('+', '_')}.png"), title=e["name"])
        if p:
            out.append(p)
    return out


def print_entries(title: str, entries: list[dict], extra: tuple[str, ...] = ()) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    cols = ("name", "accuracy", "greedy_accuracy", "format_rate", "mean_completion_tokens", *extra, "seconds")
    labels = {"accuracy": "pass@1 (T=1)", "greedy_accuracy": "greedy", "format_rate": "format", "mean_completion_tokens": "tokens",
              "solved_fraction": "solved (train)"}
    for c in cols:
        t.add_column(labels.get(c, c.replace("_", " ")), justify="left" if c == "name" else "right", no_wrap=True)
    for e in entries:
        cells = []
        for c in cols:
            v = e.get(c)
            cells.append("-" if v is None else str(v) if isinstance(v, str) else f"{v:.0f}" if c == "seconds"
                         else f"{v:.1f}" if c == "mean_completion_tokens" else f"{v:.3f}")
        t.add_row(*cells)
    Console().print(t)
