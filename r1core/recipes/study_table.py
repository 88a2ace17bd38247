"""The table of `r1core study all`: each finding of the studies beside its source's claim (the
claims as issue 13 states them), measured as medians over seeds, with each seed's value.

A row: {"finding", "claim", "source", "measured": {label: median}, "per_seed": {label: [values]},
"holds": true | false | None (not measured: a recipe skipped, failed or too short)}.
"""

from __future__ import annotations

import json
import os
import statistics

CLAIMS = {
    "journey_sft": ("O1 Replication Journey part 1; Stream of Search (Gandhi et al., 2024)",
                    "SFT on search traces with backtracking beats SFT on the shortest path held-out (at this scale a first "
                    "measurement had shortcut far ahead, 0.30 against 0.02: the gap is reported as measured)"),
    "journey_grpo": ("Stream of Search", "after the same GRPO budget on top, journey at least level with shortcut on held-out accuracy "
                                         "(search-trained models gain more from self-improvement)"),
    "star_rises": ("STaR (Zelikman et al., 2022)", "held-out accuracy rises over at least 3 iterations"),
    "star_rationalization": ("STaR", "rationalisation at or above no rationalisation"),
    "r1_vs_zero": ("DeepSeek-R1", "the four R1 stages end at least 0.10 above R1-Zero (GRPO from the same base, same budget) on "
                                  "held-out greedy accuracy"),
    "r1_language": ("DeepSeek-R1", "language consistency of the final model at least 0.99 where R1-Zero's is measurably lower"),
    "distill": ("DeepSeek-R1, Table 6", "the small model SFT'd on the big one's verified samples beats the small model trained by RL "
                                        "alone: sequence-level distillation at least 0.15 above the student's GRPO on held-out greedy"),
    "ttc": ("test-time compute (r1core ttc)", "accuracy rises with the test-time budget for every method (with an exact verifier "
                                              "best-of-N reaches pass@N; the curves compare the tokens each method spends)"),
}


def _median(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _entry(summary: dict | None, key: str, name: str) -> dict | None:
    if not summary:
        return None
    return next((e for e in summary.get(key, []) if e.get("name") == name), None)


def _value(summary, key, name, metric="greedy_accuracy"):
    e = _entry(summary, key, name)
    return None if e is None else e.get(metric)


def _row(kind: str, per_seed: dict[str, list], holds) -> dict:
    source, claim = CLAIMS[kind]
    return {"finding": kind, "source": source, "claim": claim, "measured": {k: _median(v) for k, v in per_seed.items()},
            "per_seed": per_seed, "holds": holds}


def _cmp(a, b, margin=0.0):
    return None if a is None or b is None else a >= b + margin


def findings(results: dict[str, dict[int, dict | None]], seeds: list[int]) -> list[dict]:
    """The rows of the table from each recipe's per-seed summaries (a recipe not run has no rows)."""
    rows = []

    def per(recipe, fn):
        return [fn(results[recipe].get(s)) for s in seeds]

    if "journey" in results:
        sft = {a: per("journey", lambda s, a=a: _value(s, "arms", a)) for a in ("journey", "shortcut")}
        rows.append(_row("journey_sft", sft, _cmp(_median(sft["journey"]), _median(sft["shortcut"]))))
        grpo = {a: per("journey", lambda s, a=a: _value(s, "arms", a)) for a in ("journey+grpo", "shortcut+grpo")}
        rows.append(_row("journey_grpo", grpo, _cmp(_median(grpo["journey+grpo"]), _median(grpo["shortcut+grpo"]))))
    for recipe in ("star", "star_norat"):
        if recipe in results:
            n = max((len((s or {}).get("iterations", [])) for s in results[recipe].values()), default=0)
            its = {f"{recipe} iteration {i}": per(recipe, lambda s, i=i: _value(s, "iterations", str(i))) for i in range(n)}
            med = [_median(v) for v in its.values()]
            rises = None if len(med) < 4 or None in med else all(b >= a for a, b in zip(med, med[1:])) and med[-1] > med[0]
            if recipe == "star":
                rows.append(_row("star_rises", its, rises))
    if "star" in results and "star_norat" in results:
        last = {r: per(r, lambda s: ((s or {}).get("iterations") or [{}])[-1].get("greedy_accuracy")) for r in ("star", "star_norat")}
        rows.append(_row("star_rationalization", {"rationalisation (last iteration)": last["star"],
                                                  "no rationalisation (last iteration)": last["star_norat"]},
                         _cmp(_median(last["star"]), _median(last["star_norat"]))))
    if "r1" in results:
        def final(s, metric):
            stages = [e for e in (s or {}).get("stages", []) if e.get("name") != "r1_zero"]
            return stages[-1].get(metric) if stages else None

        greedy = {"r1 final": per("r1", lambda s: final(s, "greedy_accuracy")),
                  "r1_zero": per("r1", lambda s: _value(s, "stages", "r1_zero"))}
        rows.append(_row("r1_vs_zero", greedy, _cmp(_median(greedy["r1 final"]), _median(greedy["r1_zero"]), 0.10)))
        lang = {"r1 final": per("r1", lambda s: final(s, "language_consistency")),
                "r1_zero": per("r1", lambda s: _value(s, "stages", "r1_zero", "language_consistency"))}
        f, z = _median(lang["r1 final"]), _median(lang["r1_zero"])
        rows.append(_row("r1_language", lang, None if f is None or z is None else f >= 0.99 and z < f))
    if "distill" in results:
        arms = ("rl", "sequence", "logit", "on_policy", "reverse_kl", "teacher")
        vals = {a: per("distill", lambda s, a=a: _value(s, "arms", a)) for a in arms}
        rows.append(_row("distill", vals, _cmp(_median(vals["sequence"]), _median(vals["rl"]), 0.15)))
    if "ttc" in results:
        rows.append(_ttc_row(results["ttc"], seeds))
    return rows


def _ttc_row(by_seed: dict, seeds: list[int]) -> dict:
    per_seed, rises = {}, []
    methods = []
    for s in seeds:
        for r in (by_seed.get(s) or {}).get("rows", []):
            if r["method"] not in methods:
                methods.append(r["method"])
    for m in methods:
        budgets = sorted({r["budget"] for s in seeds for r in (by_seed.get(s) or {}).get("rows", []) if r["method"] == m})
        for b in (budgets[0], budgets[-1]):
            per_seed[f"{m} b={b}"] = [next((r["accuracy"] for r in (by_seed.get(s) or {}).get("rows", [])
                                            if r["method"] == m and r["budget"] == b), None) for s in seeds]
        lo, hi = _median(per_seed[f"{m} b={budgets[0]}"]), _median(per_seed[f"{m} b={budgets[-1]}"])
        rises.append(_cmp(hi, lo) if len(budgets) > 1 else None)
    holds = None if not rises or None in rises else all(rises)
    return _row("ttc", per_seed, holds)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def markdown(table: dict) -> str:
    lines = [f"# Study table ({'quick smoke, ' if table['quick'] else ''}seeds {', '.join(map(str, table['seeds']))})", "",
             f"Regenerate: `{table['command']}`. Measured: medians over seeds of held-out greedy accuracy (language consistency where "
             "named; ttc: accuracy at the smallest and largest budget), each seed's value in brackets.", "",
             "| finding | source's claim | measured here | holds |", "|---|---|---|---|"]
    for r in table["rows"]:
        measured = "; ".join(f"{k} {_fmt(v)} [{', '.join(_fmt(x) for x in r['per_seed'][k])}]" for k, v in r["measured"].items())
        holds = {True: "yes", False: "no", None: "not measured"}[r["holds"]]
        lines.append(f"| {r['finding']} | {r['claim']} ({r['source']}) | {measured} | {holds} |")
    lines += ["", "| recipe | median wall (min) | goal (min) |", "|---|---:|---:|"]
    for recipe, minutes in table["wall_minutes"].items():
        lines.append(f"| {recipe} | {_fmt(minutes)} | {table['goal_minutes'].get(recipe, '-')} |")
    for recipe, why in table["skipped"].items():
        lines.append(f"\nskipped {recipe}: {why}")
    for run, why in table["failed"].items():
        lines.append(f"\nfailed {run}: {why}")
    return "\n".join(lines) + "\n"


def write_table(run_dir: str, table: dict, progress: bool = True) -> None:
    """table.json and table.md in run_dir (the markdown printed too with progress)."""
    with open(os.path.join(run_dir, "table.json"), "w") as f:
        json.dump(table, f, indent=1)
    text = markdown(table)
    with open(os.path.join(run_dir, "table.md"), "w") as f:
        f.write(text)
    if progress:
        print(text)
        print(f"written to {run_dir}/table.md and table.json")


__all__ = ["CLAIMS", "findings", "markdown", "write_table"]
