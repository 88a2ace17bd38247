"""TrainerConfig, the base of GRPOConfig and SFTConfig: every field is checked by its annotation
(none left out), the config's rules add ranges, errors name the class and the field, and the
configs stay plain dataclasses that transformers' HfArgumentParser reads."""

import dataclasses
import json
from dataclasses import dataclass

import pytest

from r1core.trainers import GRPOConfig, SFTConfig
from r1core.trainers.config import TrainerConfig, at_least, within

CONFIGS = [GRPOConfig, SFTConfig]


@pytest.mark.parametrize("cls", CONFIGS)
def test_every_field_is_type_checked(cls):
    # a value of no field's type: each field must refuse it, whatever its rule
    for f in dataclasses.fields(cls):
        with pytest.raises(ValueError, match=rf"^{cls.__name__}\.{f.name} must be .*, got <object"):
            cls(**{f.name: object()})


@pytest.mark.parametrize("cls", CONFIGS)
def test_defaults_are_valid_and_round_trip(cls, tmp_path):
    cfg = cls()
    assert cls.from_dict(cfg.to_dict()) == cfg
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"seed": 3}))
    assert cls.from_json(str(path)).seed == 3
    with pytest.raises(ValueError, match=rf"{cls.__name__} has no field\(s\) \['sede'\]"):
        cls.from_dict({"sede": 1})


def test_types_and_rules_say_what_was_expected():
    with pytest.raises(ValueError, match=r"GRPOConfig.top_p must be a number in \(0, 1\], got 1.5"):
        GRPOConfig(top_p=1.5)
    with pytest.raises(ValueError, match="GRPOConfig.save_steps must be None or an int >= 1, got 0"):
        GRPOConfig(save_steps=0)
    with pytest.raises(ValueError, match="SFTConfig.max_steps must be an int >= 1, got 2.0"):
        SFTConfig(max_steps=2.0)  # a float is not an int, even a whole one
    with pytest.raises(ValueError, match="SFTConfig.learning_rate must be a number > 0, got True"):
        SFTConfig(learning_rate=True)  # a bool is not a number
    with pytest.raises(ValueError, match="GRPOConfig.stop must be None or a list of strings with none empty"):
        GRPOConfig(stop=["</a>", ""])
    assert GRPOConfig(stop=("</a>",), reward_weights=(1, 2)).stop == ["</a>"]  # tuples accepted, stored as lists
    assert GRPOConfig(reward_weights=(1, 2)).reward_weights == [1.0, 2.0]
    assert SFTConfig(learning_rate=1).learning_rate == 1  # an int is a number


def test_a_new_config_gets_the_checks_from_its_annotations():
    @dataclass
    class ToyConfig(TrainerConfig):
        steps: int = 1
        ratio: float | None = None
        names: list[str] | None = None
        rules = {"steps": at_least(1), "ratio": within(0, 1)}

    assert ToyConfig(ratio=0.5, names=["a"]).ratio == 0.5
    for kw, msg in ((dict(steps=0), "ToyConfig.steps must be an int >= 1"),
                    (dict(ratio=2.0), r"ToyConfig.ratio must be None or a number in \[0, 1\]"),
                    (dict(ratio=float("inf")), "ToyConfig.ratio"),
                    (dict(names=[1]), "ToyConfig.names must be None or a list of strings")):
        with pytest.raises(ValueError, match=msg):
            ToyConfig(**kw)

    @dataclass
    class Unchecked(TrainerConfig):
        table: dict = dataclasses.field(default_factory=dict)

    with pytest.raises(TypeError, match="no check for fields of type"):
        Unchecked()


@pytest.mark.parametrize("cls", CONFIGS)
def test_hf_argument_parser_reads_the_fields(cls):
    from transformers import HfArgumentParser

    (cfg,) = HfArgumentParser(cls).parse_args_into_dataclasses(["--learning_rate", "0.5", "--save_steps", "7", "--seed", "4"])
    assert (cfg.learning_rate, cfg.save_steps, cfg.seed) == (0.5, 7, 4)
    assert {a.dest for a in HfArgumentParser(cls)._actions} >= {f.name for f in dataclasses.fields(cls)}
