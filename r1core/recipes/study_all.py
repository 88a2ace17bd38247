"""`r1core study all`: every study recipe over seeds, and one table of findings, each beside the
claim of its source (issue 13; the articles r1core follows).

Sub-runs, each its recipe's own command with its defaults (or `--quick`'s budgets), in
runs/<name>/<recipe>-s<seed>/: `r1core journey`, `r1core star` (rationalisation), `r1core star
--no-rationalization` (star_norat), `r1core r1` (when the command exists: it is looked up in the
CLI's registry, and a recipe that is not there is reported as skipped), `r1core study distill`,
and `r1core ttc` on the shipped teacher (a GRPO'd model of the default task: the curves `r1core
ttc` makes after `r1core run`). Then runs/<name>/table.md and table.json: per finding, the source's
claim, the medians over seeds (and each seed's value) and whether it holds here; and each recipe's
median wall time against its goal.

`--quick` shrinks every budget for a smoke (the fields a recipe has among QUICK: seconds to 2,
held-out problems to 8, one STaR iteration, ...; ttc at budgets 1 and 2 on 4 problems): the table
regenerates from one command in about a minute a seed. `--resume` keeps the sub-runs that
finished (their summary is there) and resumes the one that was running.

    r1core study all                       # seeds 0 1 2, runs/study/table.md
    r1core study all --quick --seeds 0     # a smoke
    r1core study all --recipes distill,ttc --resume
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass, field

from r1core.recipes import arms as A
from r1core.recipes.flags import Command, option

RECIPES = ("journey", "star", "star_norat", "r1", "distill", "ttc")
# recipe -> (the command's words, extra arguments)
COMMANDS = {"journey": (["journey"], []), "star": (["star"], []), "star_norat": (["star"], ["--no-rationalization"]),
            "r1": (["r1"], []), "distill": (["study", "distill"], []), "ttc": (["ttc"], [])}
GOAL_MINUTES = {"journey": 10, "star": 15, "star_norat": 15, "r1": 15, "distill": 15}
QUICK_SECONDS = 2.0
QUICK = {"eval_size": 8, "eval_samples": 1, "train_size": 64, "base_size": 128, "val_size": 8, "iterations": 1, "sample_prompts": 64,
         "cold_start_size": 64, "rejection_prompts": 64}


@dataclass
class StudyAllConfig:
    name: str = option("study", "the study's folder under runs_dir (each sub-run in <recipe>-s<seed> inside it)")
    runs_dir: str = option("runs", "where run folders go")
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "the seeds every recipe runs with"})
    recipes: list[str] = field(default_factory=lambda: list(RECIPES), metadata={
        "help": f"the recipes to run, comma-separated, from {', '.join(RECIPES)}"})
    quick: bool = option(False, "shrink every budget for a smoke (seconds, held-out problems, iterations; see QUICK)")
    ttc_budgets: list[int] = field(default_factory=lambda: [1, 4, 16], metadata={"help": "r1core ttc's budgets"})
    ttc_problems: int = option(64, "r1core ttc's held-out problems")
    threads: int = option(2, "torch threads of every sub-run")
    progress: bool = option(True, "the sub-runs' progress bars and tables, and the table at the end")

    def __post_init__(self):
        if not isinstance(self.seeds, (list, tuple)) or not self.seeds or any(
                not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in self.seeds):
            raise ValueError(f"StudyAllConfig.seeds must be a non-empty list of ints >= 0, got {self.seeds!r}")
        if not isinstance(self.recipes, (list, tuple)) or not self.recipes:
            raise ValueError(f"StudyAllConfig.recipes must be a non-empty list from {list(RECIPES)}, got {self.recipes!r}")
        unknown = [r for r in self.recipes if r not in RECIPES]
        if unknown:
            raise ValueError(f"StudyAllConfig.recipes: unknown recipe(s) {unknown}; the recipes are {list(RECIPES)}")
        if not self.ttc_budgets or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in self.ttc_budgets):
            raise ValueError(f"StudyAllConfig.ttc_budgets must be ints >= 1, got {self.ttc_budgets!r}")
        for name in ("ttc_problems", "threads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"StudyAllConfig.{name} must be an int >= 1, got {v!r}")
        if not self.name or "/" in self.name:
            raise ValueError(f"StudyAllConfig.name must name a folder (not empty, no '/'), got {self.name!r}")
        self.seeds = sorted(set(self.seeds))
        self.recipes = [r for r in RECIPES if r in self.recipes]

    @property
    def run_dir(self) -> str:
        return os.path.join(self.runs_dir, self.name)


@dataclass
class StudyAllOptions:
    resume: bool = option(False, "keep the sub-runs that finished, resume the one that was running")


# ---- the sub-runs --------------------------------------------------------------------------------
def sub_dir(cfg: StudyAllConfig, recipe: str, seed: int) -> str:
    return os.path.join(cfg.run_dir, f"{recipe}-s{seed}")


def result_file(cfg: StudyAllConfig, recipe: str, seed: int) -> str:
    return os.path.join(sub_dir(cfg, recipe, seed), "ttc.json" if recipe == "ttc" else "summary.json")


def quick_args(command: Command) -> list[str]:
    """The flags that shrink a recipe's budgets: each of its fields named in QUICK, and every
    field (flat or a trainer's) whose name ends in `seconds`."""
    out = []
    for key, (_, name) in command.keys.items():
        if name.endswith("seconds"):
            out += ["--" + key.replace("_", "-"), str(QUICK_SECONDS)]
        elif name in QUICK:
            out += ["--" + key.replace("_", "-"), str(QUICK[name])]
    return out


def sub_argv(cfg: StudyAllConfig, recipe: str, seed: int, commands: dict) -> list[str]:
    """The command line of one sub-run."""
    from r1core.recipes.study_distill import SHIPPED_TEACHER

    words, extra = COMMANDS[recipe]
    argv = [*words, "--runs-dir", cfg.run_dir, "--name", f"{recipe}-s{seed}", "--seed", str(seed), "--threads", str(cfg.threads), *extra]
    if not cfg.progress:
        argv.append("--no-progress")
    if recipe == "ttc":
        budgets, problems = ([1, 2], 4) if cfg.quick else (cfg.ttc_budgets, cfg.ttc_problems)
        return argv + ["--model", SHIPPED_TEACHER, "--budgets", ",".join(map(str, budgets)), "--num-problems", str(problems)]
    if cfg.quick:
        command = commands[words[0]]
        command = command.commands[words[1]] if len(words) > 1 else command
        argv += quick_args(command)
    return argv


def run_sub(cfg: StudyAllConfig, recipe: str, seed: int, resume: bool, commands: dict) -> dict:
    """One sub-run through the CLI; {"seconds"} and {"error"} where it failed (a one-line message)."""
    from r1core.recipes.cli import main

    argv = sub_argv(cfg, recipe, seed, commands)
    again = resume and recipe != "ttc" and os.path.exists(os.path.join(sub_dir(cfg, recipe, seed), "run_config.json"))
    t0 = time.perf_counter()
    try:
        try:
            code = main(argv + (["--resume"] if again else []))
        except SystemExit as e:
            if not (again and "--resume:" in str(e.code)):  # killed before the recipe could resume: start it again
                raise
            code = main(argv)
    except SystemExit as e:
        code = e.code
    status = {"argv": ["r1core", *argv], "seconds": time.perf_counter() - t0}
    if code not in (0, None):
        status["error"] = code if isinstance(code, str) else f"exit status {code}"
    return status


def run_study_all(cfg: StudyAllConfig, resume: bool = False) -> dict:
    """Every sub-run (the finished ones kept on --resume), then the table; returns table.json's content."""
    from r1core.recipes.cli import build_parser

    t0 = time.perf_counter()
    os.makedirs(cfg.run_dir, exist_ok=True)
    with open(os.path.join(cfg.run_dir, "run_config.json"), "w") as f:
        json.dump({k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, f, indent=1)
    _, commands = build_parser()
    skipped = {r: f"`r1core {' '.join(COMMANDS[r][0])}` is not a command of this r1core" for r in cfg.recipes
               if COMMANDS[r][0][0] not in commands}
    status_path = os.path.join(cfg.run_dir, "status.json")
    status = {}
    if resume and os.path.exists(status_path):
        with open(status_path) as f:
            status = json.load(f)
    for seed in cfg.seeds:
        for recipe in cfg.recipes:
            key = f"{recipe}-s{seed}"
            if recipe in skipped or (resume and os.path.exists(result_file(cfg, recipe, seed)) and "error" not in status.get(key, {})):
                continue
            status[key] = run_sub(cfg, recipe, seed, resume, commands)
            with open(status_path, "w") as f:
                json.dump(status, f, indent=1)
    results = {r: {s: read_result(cfg, r, s) for s in cfg.seeds} for r in cfg.recipes if r not in skipped}
    from r1core.recipes.study_table import findings, write_table

    table = {"seeds": cfg.seeds, "quick": cfg.quick, "rows": findings(results, cfg.seeds), "skipped": skipped,
             "failed": {k: v["error"] for k, v in status.items() if "error" in v},
             "wall_minutes": {r: _median([(res or {}).get("wall_seconds", (res or {}).get("seconds")) for res in by.values()], 60)
                              for r, by in results.items()},
             "goal_minutes": {r: GOAL_MINUTES[r] for r in results if r in GOAL_MINUTES},
             "command": "r1core study all" + (" --quick" if cfg.quick else "") + f" --seeds {','.join(map(str, cfg.seeds))}",
             "wall_seconds": time.perf_counter() - t0}
    write_table(cfg.run_dir, table, progress=cfg.progress)
    return table


def read_result(cfg: StudyAllConfig, recipe: str, seed: int) -> dict | None:
    path = result_file(cfg, recipe, seed)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _median(values: list, scale: float = 1.0) -> float | None:
    vals = [v / scale for v in values if v is not None]
    return statistics.median(vals) if vals else None


def has_run(cfg: StudyAllConfig) -> bool:
    return os.path.exists(os.path.join(cfg.run_dir, "run_config.json"))


def commands(sub) -> dict[str, Command]:
    return A.study_command(
        sub, "all", StudyAllConfig, StudyAllOptions, run_study_all, has_run, what="study", trainers=[],
        help="every study recipe over seeds (journey, star with and without rationalisation, r1, study distill, ttc) and one table",
        description="Run each study recipe for each seed in runs/<name>/<recipe>-s<seed>/ (r1 only where the command exists; what "
                    "is skipped is said), then write runs/<name>/table.md and table.json: each finding, medians over seeds, beside "
                    "its source's claim. --quick shrinks every budget for a smoke.")


__all__ = ["COMMANDS", "QUICK", "RECIPES", "StudyAllConfig", "StudyAllOptions", "commands", "run_study_all"]

