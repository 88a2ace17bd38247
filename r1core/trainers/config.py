"""TrainerConfig: the base of every trainer's config, which checks each field on construction.

The configs stay plain dataclasses with typed fields and defaults (transformers' HfArgumentParser
builds the command line from those fields). Checking a field takes two steps, in field order:
its annotation (`int`, `float`, `bool`, `str`, `list[...]`, `X | None`) says what type it holds,
with no field left out; then the config's `rules` add what the type cannot say (a range, a set of
choices). The error names the class, the field, what was expected and what came:

    GRPOConfig.top_p must be a number in (0, 1], got 1.5

A number is an int or a float, never a bool, and finite. A subclass may override `_normalise`
(alternative spellings to the canonical one, before the checks) and `_check_together` (checks
across fields and conversions, after them).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from r1core.trainers.optim import LR_SCHEDULERS


@dataclass(frozen=True)
class Rule:
    """A condition on a field's value beyond its type; `says` follows the type's phrase."""

    test: Callable[[Any], bool]
    says: str


def at_least(low, why: str = "") -> Rule:
    return Rule(lambda v: v >= low, f">= {low}{f' ({why})' if why else ''}")


def above(low) -> Rule:
    return Rule(lambda v: v > low, f"> {low}")


def within(low, high, *, low_open: bool = False, high_open: bool = False) -> Rule:
    def test(v):
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    return Rule(test, f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}")


def one_of(choices) -> Rule:
    choices = tuple(choices)
    return Rule(lambda v: v in choices, f"in {choices}")


NOT_EMPTY = Rule(lambda v: len(v) > 0, "that is not empty")
NONE_EMPTY = Rule(lambda v: all(len(x) > 0 for x in v), "with none empty")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_SCALARS = {int: (_is_int, "an int", "ints"), float: (_is_number, "a number", "numbers"),
            bool: (lambda v: isinstance(v, bool), "True or False", "booleans"), str: (lambda v: isinstance(v, str), "a string", "strings")}


def type_check(annotation) -> tuple[Callable[[Any], bool], str, bool]:
    """(test, phrase, optional) for a field's annotation: `X | None` is optional X; lists may be
    given as tuples."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if len(inner) != 1 or len(args) != 2:
            raise TypeError(f"TrainerConfig fields may be X or X | None, not {annotation}")
        test, phrase, _ = type_check(inner[0])
        return test, phrase, True
    if annotation in _SCALARS:
        test, phrase, _ = _SCALARS[annotation]
        return test, phrase, False
    if typing.get_origin(annotation) is list and len(args) == 1 and args[0] in _SCALARS:
        item, _, plural = _SCALARS[args[0]]
        return (lambda v: isinstance(v, (list, tuple)) and all(item(x) for x in v)), f"a list of {plural}", False
    raise TypeError(f"TrainerConfig has no check for fields of type {annotation}")


@functools.cache
def _field_checks(cls) -> tuple:
    hints = typing.get_type_hints(cls)
    return tuple((f.name, *type_check(hints[f.name])) for f in dataclasses.fields(cls))


@dataclass
class TrainerConfig:
    # per field, the condition beyond its type (see the module docstring)
    rules: ClassVar[dict[str, Rule]] = {}
    # FSDP2 under torchrun: each decoder layer and the loss module sharded over the processes, checkpoints
    # through torch.distributed.checkpoint (docs/parallel.md); False: one process, or DDP under torchrun
    fsdp: bool = dataclasses.field(default=False, metadata={"help": "shard the model, gradients and optimizer over the torchrun "
                                                                      "processes (FSDP2; docs/parallel.md); needs torchrun"})

    def __post_init__(self):
        self._normalise()
        for name, test, phrase, optional in _field_checks(type(self)):
            v = getattr(self, name)
            if optional and v is None:
                continue
            rule = self.rules.get(name)
            expected = ("None or " if optional else "") + phrase + (f" {rule.says}" if rule else "")
            self._require(test(v) and (rule is None or rule.test(v)), name, expected)
        self._check_together()

    def _normalise(self) -> None:
        """Alternative spellings (TRL's older ones) to the canonical value, before the checks."""

    def _check_together(self) -> None:
        """Checks across fields, and conversions that need valid fields, after the checks."""

    def _require(self, ok: bool, name: str, expected: str) -> None:
        if not ok:
            raise ValueError(f"{type(self).__name__}.{name} must be {expected}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        # the settable fields only: a field a subclass fixes (init=False) is not a setting to save or restore
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{cls.__name__} has no field(s) {unknown}")
        return cls(**d)

    @classmethod
    def from_json(cls, path: str):
        with open(path) as f:
            return cls.from_dict(json.load(f))


# the rules of the fields every trainer's config has: the loop's (steps, time budget, logging,
# checkpoints) and the optimiser's
REPORT_TO = ("none", "tensorboard")  # where metrics go beside metrics.jsonl (transformers' and TRL's report_to)

TRAINING_RULES: dict[str, Rule] = {
    "report_to": Rule(lambda v: all(x in REPORT_TO for x in v), f"with entries from {REPORT_TO}"),
    "learning_rate": above(0),
    "lr_scheduler_type": one_of(LR_SCHEDULERS),
    "weight_decay": at_least(0),
    "warmup_steps": at_least(0),
    "max_grad_norm": above(0),
    "per_device_train_batch_size": at_least(1),
    "max_steps": at_least(1),
    "max_seconds": above(0),
    "logging_steps": at_least(1),
    "save_steps": at_least(1),
    "save_total_limit": at_least(1),
    "output_dir": NOT_EMPTY,
    "max_bad_steps": at_least(1),
}

__all__ = ["NONE_EMPTY", "NOT_EMPTY", "Rule", "TRAINING_RULES", "TrainerConfig", "above", "at_least", "one_of", "type_check", "within"]
