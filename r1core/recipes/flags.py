"""Command-line flags and config files for config dataclasses.

transformers' HfArgumentParser turns each field into its flag, with the conventions TRL users know
(`--learning_rate` or `--learning-rate`, `--bf16` or `--bf16 false`, a list as several values);
r1core's own spellings are kept beside them (`--no-bf16`, `none` for an optional field, a
comma-separated list: `--budgets 1,2,4`). A command of one trainer has its config's fields as flat
flags; a recipe whose config holds several configs nests each under the field that holds it
(`--grpo.learning-rate`; `grpo: {learning_rate: ...}` or `grpo.learning_rate: ...` in a file), and
may keep older flat names of nested fields as aliases.

Every command takes `--config FILE`: JSON (.json) or YAML of the same names. Flags on the command
line win over the file, the file over the defaults. A key no section has, a flag's bad value, or a
value the config rejects is a one-line error that names the flag or key.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import yaml


def option(default, help: str):
    """A dataclass field with its --help text (HfArgumentParser reads it from the metadata, as TRL's configs write it)."""
    return field(default=default, metadata={"help": help})


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line that names the flag (the usage block is in --help)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


@dataclass(frozen=True)
class Section:
    """A config dataclass's fields as a command's flags and config-file keys."""

    cls: type
    prefix: str = ""  # "": --NAME; "grpo": --grpo.NAME, `grpo:` in a file, the flat config's field `grpo`
    defaults: Mapping = field(default_factory=dict)  # the command's defaults where they differ from cls's
    owned: Mapping = field(default_factory=dict)  # field -> why the command sets it itself (no flag, no key)
    aliases: Mapping = field(default_factory=dict)  # field -> the flat names it was known by before
    title: str = ""

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _spellings(key: str) -> list[str]:
    return [flag(key)] + ([f"--{key}"] if "_" in key else [])  # r1core's dashes first, HfArgumentParser's underscores too


def _split_list(text: str) -> list:
    return json.loads(text) if text.lstrip().startswith("[") else [t for t in text.split(",") if t]


def _value_type(convert: Callable, optional: bool, is_list: bool) -> Callable[[str], typing.Any]:
    """HfArgumentParser's converter for one value, plus `none` for an optional field and a list as
    one comma-separated (or JSON) value."""

    def parse(text: str):
        if optional and text.strip().lower() in ("none", "null"):
            return None
        if is_list:  # JSON items are converted from their JSON text: int("1.5") fails, int(1.5) would truncate
            return [convert(x if isinstance(x, str) else json.dumps(x)) for x in _split_list(text)]
        return convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")  # argparse says "invalid int value: 'x'"
    return parse


def _field_defaults(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads `1e-4` as a number (YAML 1.2 does; PyYAML's 1.1 rules
    want a dot and a signed exponent, so `1e-4` would be the string '1e-4')."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def read_config_file(path: str) -> dict:
    """The mapping in a JSON (.json) or YAML file."""
    kind = "JSON" if path.endswith(".json") else "YAML"
    try:
        with open(path) as fh:
            values = json.load(fh) if kind == "JSON" else yaml.load(fh, Loader=_YamlLoader)  # a SafeLoader
    except OSError as e:
        raise SystemExit(f"error: --config {path}: {e.strerror or e}") from None
    except (ValueError, yaml.YAMLError) as e:
        raise SystemExit(f"error: --config {path}: not valid {kind} ({' '.join(str(e).split())})") from None
    if values is None:  # an empty YAML file
        return {}
    if not isinstance(values, dict):
        raise SystemExit(f"error: --config {path}: expected a mapping of names to values (a JSON object), got {type(values).__name__}")
    return values


@dataclass
class Given:
    """What a command was given: values by key (`seed`, `grpo.learning_rate`) from the file and the flags."""

    command: Command
    values: dict
    source: dict  # key -> "--flag" or "--config FILE"

    def of(self, section: Section) -> dict:
        """The section's fields: its command defaults, then the file, then the flags."""
        given = {name: self.values[key] for key, (s, name) in self.command.keys.items() if s is section and key in self.values}
        return {**section.defaults, **given}

    def build(self, cls):
        """cls from its flat section, each nested section passed as a dict to the field it names;
        a value cls rejects exits with a line that names its flag or config key."""
        flat = next(s for s in self.command.sections if s.cls is cls and not s.prefix)
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = self.of(flat)
        kwargs.update({s.prefix: self.of(s) for s in self.command.sections if s.prefix in names})
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise SystemExit(f"error: {self._where(str(e))}{e}") from None

    def _where(self, message: str) -> str:
        """'--grpo.temperature: ' for a message about GRPOConfig.temperature (or RunConfig.grpo.temperature)."""
        classes = {s.cls.__name__: s for s in self.command.sections}
        for m in re.finditer(r"\b(\w+)\.(\w+)(?:\.(\w+))?", message):
            s = classes.get(m.group(1))
            if s is None:
                continue
            key = f"{m.group(2)}.{m.group(3)}" if m.group(3) else s.key(m.group(2))
            if key in self.command.keys:
                return f"{self.source.get(key, flag(key))}: "
        return ""


class Command:
    """A command's sections as flags of its parser (and --config); `read` gives what it was given."""

    def __init__(self, parser: argparse.ArgumentParser, sections: list[Section], required: tuple[str, ...] = (),
                 func: Callable[[Given], int] | None = None):
        self.parser, self.sections, self.required, self.func = parser, sections, required, func
        self.keys: dict[str, tuple[Section, str]] = {}  # key -> (section, field)
        self.aliases: dict[str, str] = {}  # an older flat name -> its key
        self.owned: dict[str, str] = {}  # key -> why the command sets it
        self.types: dict[str, Callable] = {}  # key of a list field -> its converter (a file may give "a,b" too)
        parser.add_argument("--config", metavar="FILE", help="a JSON (.json) or YAML file of the fields below by name "
                            "(a nested section as a mapping: `grpo: {learning_rate: 1e-4}`); flags given here win")
        prefixes = {s.prefix for s in sections if s.prefix}
        for s in sections:
            self._add_section(s, skip=() if s.prefix else prefixes)

    def _add_section(self, s: Section, skip) -> None:
        from transformers import HfArgumentParser
        from transformers.hf_argparser import string_to_bool

        hints = typing.get_type_hints(s.cls)
        fields = [f for f in dataclasses.fields(s.cls) if f.init and f.name not in skip and f.name not in s.owned]
        self.owned.update({s.key(n): why for n, why in s.owned.items()})
        # HfArgumentParser makes each field's flag from its type (and help from its metadata); a copy of
        # the dataclass with resolved types and no defaults (ours are shown in the help) leaves the real one untouched
        view = dataclasses.make_dataclass(s.cls.__name__, [(f.name, hints[f.name], field(default=None, metadata=f.metadata))
                                                           for f in fields])
        defaults = {**_field_defaults(s.cls), **s.defaults}
        group = self.parser.add_argument_group(s.title or f"{s.cls.__name__} fields")
        for a in HfArgumentParser(view, add_help=False)._actions:
            name, key = a.dest, s.key(a.dest)
            is_list, is_bool = a.nargs == "+", a.type is string_to_bool
            old = [flag(o) for o in s.aliases.get(name, ())]
            convert = _value_type(a.type, type(None) in typing.get_args(hints[name]), is_list)
            metavar = None if a.choices else getattr(a.type, "__name__", "value").replace("string_to_bool", "bool").upper()
            shown = str(defaults.get(name)).replace("%", "%%")
            group.add_argument(*_spellings(key), *old, dest=key, type=convert, nargs=a.nargs, const=a.const, choices=a.choices,
                               metavar=metavar, default=argparse.SUPPRESS, help=f"{a.help or ''} (default: {shown})".strip())
            if is_bool:
                group.add_argument(*_spellings(s.key("no_" + name)), *[f"--no-{o[2:]}" for o in old], dest=key,
                                   action="store_false", default=argparse.SUPPRESS, help=f"= {flag(key)} false")
            self.keys[key] = (s, name)
            self.aliases.update({o: key for o in s.aliases.get(name, ())})
            if is_list:
                self.types[key] = convert

    def read(self, ns: argparse.Namespace) -> Given:
        values, source = {}, {}
        path = getattr(ns, "config", None)
        if path:
            values = self._from_file(path)
            source = {k: f"--config {path}: {k}" for k in values}
        for key, v in vars(ns).items():
            if key in self.keys:
                if key in self.types and isinstance(v, list):  # `--budgets 1,2 4`: one list of the values
                    if None in v and len(v) > 1:
                        self.parser.error(f"argument {flag(key)}: 'none' stands alone, got {len(v)} values")
                    v = None if v == [None] else [x for part in v for x in part]
                values[key], source[key] = v, flag(key)
        for key in self.required:
            if values.get(key) is None:
                self.parser.error(f"the following arguments are required: {flag(key)} (on the command line or in --config)")
        return Given(self, values, source)

    def _from_file(self, path: str) -> dict:
        prefixes = {s.prefix for s in self.sections if s.prefix}
        out: dict = {}
        for k, v in read_config_file(path).items():
            if k in prefixes:
                if not isinstance(v, dict):
                    raise SystemExit(f"error: --config {path}: {k!r} must be a mapping of {k}'s fields, got {v!r}")
                items = [(f"{k}.{sub}", x) for sub, x in v.items()]
            else:
                items = [(self.aliases.get(k, k), v)]
            for key, x in items:
                if key in out:
                    raise SystemExit(f"error: --config {path}: {key!r} is given twice (as {key!r} and as an older name of it)")
                try:
                    out[key] = self.types[key](x) if key in self.types and isinstance(x, str) else x
                except ValueError as e:
                    raise SystemExit(f"error: --config {path}: {key}: {x!r} is not a list of {self.types[key].__name__} ({e})") from None
        bad = sorted(k for k in out if k not in self.keys)
        for key in bad:
            if key in self.owned:
                raise SystemExit(f"error: --config {path}: {key!r} is set by `{self.parser.prog}` ({self.owned[key]})")
        if bad:
            near = {k: difflib.get_close_matches(k, list(self.keys) + list(self.aliases), n=1) for k in bad}
            hint = "; ".join(f"{k!r}: did you mean {m[0]!r}?" for k, m in near.items() if m)
            raise SystemExit(f"error: --config {path}: unknown key(s) {bad} for `{self.parser.prog}`"
                             f"{' (' + hint + ')' if hint else ''}; `{self.parser.prog} --help` lists them")
        return out
