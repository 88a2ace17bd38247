"""The `r1core` command line: run | grpo | sft | eval | ttc, each with --help, one flag per config
field and `--config file.json` (flags given on the command line win over the file). A config file
holds the command's config fields (RunConfig, SFTConfig, GRPOConfig, TTCConfig) and its own options
by their flag's name (task, digits, train_size, model, rewards, ...; eval has only those); any other
key, or a value of the wrong type, is an error that names it.

    r1core run                                   # the default R1-Zero run (make run)
    r1core sft --max-steps 300 --save runs/sft/model
    r1core sft --max-steps 600 --save-steps 100 --resume   # continues from runs/sft's last checkpoint
    r1core grpo --model runs/sft/model --max-steps 50
    r1core eval --model runs/r1-zero/final --samples 4
    r1core ttc                                   # test-time compute on the default run's model
"""

from __future__ import annotations

import os

# Before torch is imported: with the default (active) wait policy an OpenMP worker spins on a
# busy core and a 2 ms forward of the tiny model took 200 ms on this 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

TASK_REWARDS = {"addition": "accuracy", "multiplication": "accuracy", "countdown": "countdown"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_list(text: str):
    text = text.strip()
    if text.startswith("["):
        return json.loads(text)
    return [t for t in text.split(",") if t]


def _field_type(f: dataclasses.Field):
    ann = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if ann.startswith("list"):
        inner = float if "float" in ann else str
        return lambda s: [inner(x) for x in _parse_list(s)]
    for name, typ in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if ann.split("|")[0].strip() == name:
            return typ
    return str


def add_dataclass_args(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    group = parser.add_argument_group(f"{cls.__name__} fields")
    parser._r1_fields = getattr(parser, "_r1_fields", frozenset()) | {f.name for f in dataclasses.fields(cls)}
    parser._r1_class = cls.__name__
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        typ = _field_type(f)
        default = f.default if f.default is not dataclasses.MISSING else None
        if typ is bool:
            group.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                               help=f"(default: {default})")
        else:
            nullable = "None" in str(f.type)

            def conv(s, typ=typ, nullable=nullable):
                return None if nullable and s.lower() == "none" else typ(s)

            group.add_argument(_flag(f.name), dest=f.name, type=conv, default=argparse.SUPPRESS, metavar=typ.__name__.upper() if hasattr(typ, "__name__") and typ.__name__ != "<lambda>" else "LIST",
                               help=f"(default: {default})")


def _read_config(path: str) -> dict:
    try:
        with open(path) as fh:
            values = json.load(fh)
    except OSError as e:
        raise SystemExit(f"error: --config {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: --config {path}: not valid JSON ({e})") from None
    if not isinstance(values, dict):
        raise SystemExit(f"error: --config {path}: expected a JSON object of names and values, got {type(values).__name__}")
    return values


def _command_options(sub: argparse.ArgumentParser) -> dict:
    """The command's own options (not its config class's fields), by dest: what a config file may set
    besides the fields."""
    fields = getattr(sub, "_r1_fields", frozenset())
    return {a.dest: a for a in sub._actions if a.dest not in fields and a.dest not in ("help", "config")}


def _option_from_file(path: str, key: str, value, action: argparse.Action):
    """A config file's value for a command option, checked as the flag would check it."""
    def bad(expected: str):
        raise SystemExit(f"error: --config {path}: {key!r} (the command's {_flag(key)} option) must be {expected}, got {value!r}")

    if action.nargs == 0:  # store_true
        if not isinstance(value, bool):
            bad("true or false")
        return value
    if value is None and action.default is None:
        return None
    if action.type is _parse_list:
        value = _parse_list(value) if isinstance(value, str) else value
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            bad("a list of names or a comma-separated string")
    elif action.type is int:
        if isinstance(value, bool) or not isinstance(value, int):
            bad("an int")
    elif action.type is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            bad("a number")
        value = float(value)
    elif action.type is None and not isinstance(value, str):
        bad("a string" + (" or null" if action.default is None else ""))
    if action.choices is not None and value not in action.choices:
        bad(f"one of {sorted(action.choices)}")
    return value


class _Parser(argparse.ArgumentParser):
    """parse_args that reads --config too: the keys that are the command's own options become their
    defaults, so flags on the command line win; the config class's fields are left to build_config."""

    def parse_args(self, args=None, namespace=None):
        first = super().parse_args(args, copy.copy(namespace))
        sub = getattr(self, "_r1_commands", {}).get(getattr(first, "command", None))
        if sub is None:
            return first
        opts = _command_options(sub)
        ns = first
        if getattr(first, "config", None):
            values = _read_config(first.config)
            unknown = sorted(set(values) - set(opts) - getattr(sub, "_r1_fields", frozenset()))
            if unknown:  # checked here, not only in build_config: eval has no config class
                cls = getattr(sub, "_r1_class", None)
                what = f"{cls} has no field(s) {unknown}, and they are not" if cls else f"{unknown} are not"
                raise SystemExit(f"error: --config {first.config}: {what} options of `r1core {first.command}` "
                                 f"(its options: {', '.join(sorted(opts))})")
            given = {k: _option_from_file(first.config, k, v, opts[k]) for k, v in values.items() if k in opts}
            if given:
                sub.set_defaults(**given)
                ns = super().parse_args(args, copy.copy(namespace))
        ns._r1_options = frozenset(opts)  # build_config leaves these keys of the file to the command
        missing = [_flag(d) for d in getattr(sub, "_r1_required", ()) if getattr(ns, d, None) is None]
        if missing:
            sub.error(f"the following arguments are required: {', '.join(missing)} (on the command line or in --config)")
        return ns


def build_config(cls, args: argparse.Namespace, extra: dict | None = None):
    """cls from --config (if given), then the flags set on the command line, then `extra`."""
    values: dict = {}
    if getattr(args, "config", None):
        values.update(_read_config(args.config))
    names = {f.name for f in dataclasses.fields(cls)}
    # the command's own options in the file (--task, --model, ...) were applied by the parser
    unknown = sorted(set(values) - names - set(getattr(args, "_r1_options", ())))
    if unknown:
        raise SystemExit(f"error: --config {args.config}: {cls.__name__} has no field(s) {unknown}, and they are not options of "
                         f"this command")
    values = {k: v for k, v in values.items() if k in names}
    values.update({k: v for k, v in vars(args).items() if k in names})
    values.update(extra or {})
    try:
        return cls(**values)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"error: {e}") from None


def _load_model_and_tokenizer(path: str | None, seed: int = 0):
    from r1core.recipes.base_model import build_model, build_tokenizer

    if path is None or path == "tiny":
        tok = build_tokenizer()
        return build_model(tok, seed=seed), tok
    if not os.path.isdir(path):
        raise SystemExit(f"error: --model {path!r} is not a folder (write one with `r1core sft --save DIR`)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa")
    has_tok = any(os.path.exists(os.path.join(path, n)) for n in ("tokenizer.json", "tokenizer_config.json"))
    tok = AutoTokenizer.from_pretrained(path) if has_tok else build_tokenizer()
    return model, tok


def _rows(task: str, split: str, n: int, seed: int, digits: int):
    from r1core.tasks import generate

    kwargs = {"digits": digits} if task in ("addition", "multiplication") else {}
    return generate(task, split, n, seed=seed, **kwargs)


def _reward_funcs(names: list[str]):
    import r1core.rewards as R

    table = {"accuracy": R.accuracy_reward, "format": R.format_reward, "countdown": R.countdown_reward,
             "scratchpad_format": R.scratchpad_format_reward}
    bad = [n for n in names if n not in table]
    if bad:
        raise SystemExit(f"error: --rewards: unknown reward(s) {bad}; choose from {sorted(table)}")
    return [table[n] for n in names]


def _add_task_args(p: argparse.ArgumentParser, train_size: int | None) -> None:
    p.add_argument("--task", default="addition", choices=sorted(TASK_REWARDS), help="generated task (default: addition)")
    p.add_argument("--digits", type=int, default=3, help="operand digits for arithmetic tasks (default: 3)")
    if train_size is not None:
        p.add_argument("--train-size", dest="train_size", type=int, default=train_size, help=f"generated training rows (default: {train_size})")


def cmd_run(args) -> int:
    from r1core.recipes.r1_zero import RunConfig, run

    cfg = build_config(RunConfig, args)
    summary = run(cfg, resume=args.resume)
    ok = summary["final_accuracy"] is not None
    return 0 if ok else 1


def cmd_sft(args) -> int:
    import torch

    from r1core.trainers import SFTConfig, SFTTrainer

    torch.set_num_threads(args.threads)
    cfg = build_config(SFTConfig, args, {"completion_field": "solution"} if "completion_field" not in vars(args) else None)
    model, tok = _load_model_and_tokenizer(args.model, cfg.seed)
    rows = _rows(args.task, "train", args.train_size, cfg.seed, args.digits)
    try:
        trainer = SFTTrainer(model, tok, rows, cfg)
        trainer.train(resume_from_checkpoint=True if args.resume else None)
    except ValueError as e:  # bad data, or nothing to resume: the message names it
        raise SystemExit(f"error: {e}") from None
    save = args.save or os.path.join(cfg.output_dir, "model")
    model.save_pretrained(save)
    tok.save_pretrained(save)
    print(f"saved the model to {save}/")
    return 0


def cmd_grpo(args) -> int:
    import torch

    from r1core.trainers import GRPOConfig, GRPOTrainer
    from r1core.trainers import distributed as dist

    torch.set_num_threads(args.threads)
    dist.init_from_env()
    cfg = build_config(GRPOConfig, args)
    model, tok = _load_model_and_tokenizer(args.model, cfg.seed)
    model.to(dist.device_for_rank())
    rows = _rows(args.task, "train", args.train_size, cfg.seed, args.digits)
    names = args.rewards or [TASK_REWARDS[args.task]]
    try:
        trainer = GRPOTrainer(model, tok, _reward_funcs(names), rows, cfg)
        trainer.train(resume_from_checkpoint=True if args.resume else None)
    except ValueError as e:  # bad data or rewards, or nothing to resume: the message names it
        raise SystemExit(f"error: {e}") from None
    trainer.save_model(os.path.join(cfg.output_dir, "final"))
    if dist.is_main():
        from r1core.recipes.r1_zero import _plots

        _plots(cfg.output_dir)
    return 0


def cmd_eval(args) -> int:
    import torch

    from r1core.engine import Engine
    from r1core.recipes.evaluate import evaluate
    from r1core.rewards import format_reward, scratchpad_format_reward

    torch.set_num_threads(args.threads)
    model, tok = _load_model_and_tokenizer(args.model, args.seed)
    rows = _rows(args.task, args.split, args.n, args.seed, args.digits)
    reward = _reward_funcs([TASK_REWARDS[args.task]])[0]
    fmt = scratchpad_format_reward if args.task != "countdown" else format_reward
    res = evaluate(Engine(model, tokenizer=tok), tok, rows, reward_func=reward, format_func=fmt, samples=args.samples,
                   temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed)
    text = json.dumps(res, indent=1)
    print(text)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text + "\n")
    return 0


def cmd_ttc(args) -> int:
    from r1core.recipes.ttc import TTCConfig, run_ttc

    extra = {"budgets": [int(b) for b in args.budgets]} if "budgets" in vars(args) else None
    cfg = build_config(TTCConfig, args, extra)
    try:
        run_ttc(cfg)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    return 0


def build_parser() -> argparse.ArgumentParser:
    from r1core.recipes.r1_zero import RunConfig
    from r1core.trainers.grpo_config import GRPOConfig
    from r1core.trainers.sft import SFTConfig

    parser = _Parser(prog="r1core", description="R1-style reasoning: GRPO, SFT and evaluation on generated tasks.")
    sub = parser.add_subparsers(dest="command", required=True)
    parser._r1_commands = sub.choices

    p = sub.add_parser("run", help=f"the default R1-Zero run: a tiny SFT base model, then GRPO on {RunConfig.digits}-digit addition",
                       description=f"Take the ~1M-parameter base model shipped in the repository (--base-model shipped; made by SFT "
                                   f"until greedy accuracy {RunConfig.sft_target_accuracy:.2f} on validation prompts) or SFT one the same way "
                                   f"first (--base-model train, --sft-target-accuracy), GRPO it, evaluate before and after; "
                                   "writes runs/<name>/ (metrics.jsonl, plots, summary.json).")
    p.add_argument("--config", help="a JSON file of RunConfig fields (and resume)")
    p.add_argument("--resume", action="store_true", help="reuse runs/<name>/base and continue GRPO from the last checkpoint")
    add_dataclass_args(p, RunConfig)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sft", help="SFT on a generated task's gold completions (loss on completion tokens only)")
    p.add_argument("--config", help="a JSON file of SFTConfig fields and of this command's options (task, digits, train_size, model, ...)")
    p.add_argument("--model", default="tiny", help="a model folder (save_pretrained) or 'tiny' for a fresh ~1M-parameter Qwen2 (default)")
    p.add_argument("--save", default=None, help="where to save the trained model (default: <output_dir>/model)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir (written every --save-steps)")
    p.add_argument("--threads", type=int, default=2)
    _add_task_args(p, 20000)
    add_dataclass_args(p, SFTConfig)
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("grpo", help="GRPO with rule-based rewards on a generated task (torchrun for several processes)")
    p.add_argument("--config", help="a JSON file of GRPOConfig fields and of this command's options (task, digits, train_size, model, rewards, ...)")
    p.add_argument("--model", default=None, help="a model folder (save_pretrained), e.g. from `r1core sft` (required, here or in --config)")
    p._r1_required = ("model",)
    p.add_argument("--rewards", type=_parse_list, default=None, help="comma-separated: accuracy, format, countdown, scratchpad_format (default: the task's)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --output-dir")
    p.add_argument("--threads", type=int, default=2)
    _add_task_args(p, 20000)
    add_dataclass_args(p, GRPOConfig)
    p.set_defaults(func=cmd_grpo)

    p = sub.add_parser("eval", help="held-out accuracy (pass@1 of samples, greedy), format rate, completion length")
    p.add_argument("--config", help="a JSON file of this command's options by name (model, task, digits, split, n, samples, ...)")
    p.add_argument("--model", default=None, help="a model folder (save_pretrained) or 'tiny' (required, here or in --config)")
    p._r1_required = ("model",)
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--n", type=int, default=256, help="prompts (default: 256)")
    p.add_argument("--samples", type=int, default=4, help="samples per prompt at --temperature (default: 4)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="also write the JSON result here")
    p.add_argument("--threads", type=int, default=2)
    _add_task_args(p, None)
    p.set_defaults(func=cmd_eval)

    from r1core.recipes.ttc import TTCConfig

    p = sub.add_parser("ttc", help="test-time compute: majority, best-of-N, weighted best-of-N, beam search, DVTS, MCTS at budgets 1..64",
                       description="Accuracy against generated tokens for every method on held-out problems with the default run's model "
                                   "(runs/<name>/final) or --model DIR; writes runs/<name>/ttc.json, ttc.md and ttc.png.")
    p.add_argument("--config", help="a JSON file of TTCConfig fields")
    add_dataclass_args(p, TTCConfig)
    p.set_defaults(func=cmd_ttc)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
