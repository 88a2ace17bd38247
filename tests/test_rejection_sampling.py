"""rejection_sample: keeps only samples that pass, the shortest first and up to per_prompt distinct
ones; the same seed gives the same rows; truncated and over-long samples are never kept; the rows
round-trip through JSONL into SFTTrainer; bad input is named."""

import json

import pytest
import torch

from r1core.data import read_jsonl, rejection_sample, write_jsonl
from r1core.engine import SamplingParams
from r1core.recipes.base_model import BaseModelSpec, build_model, build_tokenizer
from r1core.tasks import generate
from r1core.trainers import SFTConfig, SFTTrainer

TINY = BaseModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)
# a random model rarely samples eos: a digit ends a sample too (a third of the vocabulary), so most
# samples stop by themselves within max_new_tokens
DIGITS = build_tokenizer().convert_tokens_to_ids(list("0123456789"))
SAMPLING = SamplingParams(temperature=1.0, max_new_tokens=8, stop_token_ids=DIGITS)


def _setup(n_rows=6):
    tok = build_tokenizer()
    model = build_model(tok, TINY, seed=int(torch.randint(0, 10**6, ())))
    rows = generate("addition", "train", n_rows, seed=int(torch.randint(0, 10**6, ())), digits=2)
    return tok, model, rows


def odd_length(prompts, completions, **kw):
    """Passes about half of a random model's samples (odd lengths); None (not scorable) for empty ones."""
    return [None if not c else float(len(c) % 2) for c in completions]


def test_keeps_only_passing_samples_shortest_first():
    tok, model, rows = _setup()
    out = rejection_sample(model, tok, rows, [odd_length], n=6, sampling=SAMPLING, per_prompt=2, seed=3)
    every = rejection_sample(model, tok, rows, [odd_length], n=6, sampling=SAMPLING, keep="all", per_prompt=6, dedupe=False, seed=3)
    assert len(out) > 0 and 0 < out.summary["accepted"] < out.summary["samples"]
    assert any(r["reward"] == 0.0 for r in every)  # keep="all" keeps the failing ones too, "correct" never
    for r in out:  # every kept row passes, and no kept row was cut off by max_new_tokens
        assert odd_length([r["prompt"]], [r["completion"]]) == [1.0] and r["reward"] == 1.0
        assert r["completion_tokens"] <= SAMPLING.max_new_tokens
        assert r["answer"] == next(x["answer"] for x in rows if x["prompt"] == r["prompt"])  # the dataset's columns ride along
    for stat, row in zip(out.stats, rows):
        mine = [r for r in out if r["prompt"] == row["prompt"]]
        assert stat["kept"] == len(mine) <= 2 and len({r["completion"] for r in mine}) == len(mine)  # distinct
        passing = sorted((r for r in every if r["prompt"] == row["prompt"] and r["reward"] == 1.0),
                         key=lambda r: r["completion_tokens"])
        # the kept ones are the shortest passing ones that stopped by themselves
        assert [r["completion_tokens"] for r in mine] == sorted(r["completion_tokens"] for r in mine)
        if passing:
            assert mine and mine[0]["completion_tokens"] == passing[0]["completion_tokens"]
    s = out.summary
    assert s["prompts"] == len(rows) and s["samples"] == 6 * len(rows)
    assert s["acceptance_rate"] == pytest.approx(s["accepted"] / s["samples"])
    assert s["mean_length"] == pytest.approx(sum(r["completion_tokens"] for r in out) / len(out))
    assert "acceptance rate" in out.summary_line()


def test_reproducible_with_a_seed():
    tok, model, rows = _setup()
    kw = {"n": 4, "sampling": SAMPLING, "keep": "all", "per_prompt": 4, "dedupe": False}
    a = rejection_sample(model, tok, rows, [odd_length], seed=11, **kw)
    b = rejection_sample(model, tok, rows, [odd_length], seed=11, chunk_prompts=2, **kw)  # other batching, same samples
    c = rejection_sample(model, tok, rows, [odd_length], seed=12, **kw)
    assert list(a) == list(b) and a.stats == b.stats
    assert [r["completion"] for r in a] != [r["completion"] for r in c]


def test_truncated_and_too_long_are_never_kept():
    tok, model, rows = _setup(4)

    def always(p, c, **k):
        return [1.0] * len(c)

    out = rejection_sample(model, tok, rows, [always], n=4, sampling=SamplingParams(max_new_tokens=2, ignore_eos=True), seed=0)
    assert len(out) == 0 and out.summary["truncated"] == 16 and out.summary["mean_length"] is None
    out = rejection_sample(model, tok, rows, [always], n=4, sampling=SAMPLING, max_tokens=3, per_prompt=4, seed=0)
    assert all(r["completion_tokens"] <= 3 for r in out)
    assert out.summary["too_long"] + out.summary["truncated"] + sum(s["kept"] for s in out.stats) <= 16


def test_rows_round_trip_through_jsonl_into_sft(tmp_path):
    tok, model, rows = _setup(4)

    def always(p, c, **k):
        return [1.0] * len(c)

    out = rejection_sample(model, tok, rows, [always], n=2, sampling=SAMPLING, seed=0)
    path = out.to_jsonl(tmp_path / "d" / "data.jsonl")
    back = read_jsonl(path)
    assert back == list(out) and out.to_hf().to_list() == back
    tr = SFTTrainer(model, tok, path, SFTConfig(max_steps=1, per_device_train_batch_size=2, output_dir=str(tmp_path / "sft")))
    tr.train(progress=False)
    assert tr.step == 1


def test_bad_input_is_named(tmp_path):
    tok, model, rows = _setup(2)
    f = [odd_length]
    with pytest.raises(ValueError, match="dataset is empty"):
        rejection_sample(model, tok, [], f)
    with pytest.raises(ValueError, match="'prompt'"):
        rejection_sample(model, tok, [{"question": "1+1="}], f)
    with pytest.raises(ValueError, match="reward_funcs is empty"):
        rejection_sample(model, tok, rows, [])
    for kw, name in (({"n": 0}, "n must"), ({"keep": "best"}, "keep must"), ({"per_prompt": 0}, "per_prompt"),
                     ({"max_tokens": 0}, "max_tokens"), ({"min_reward": float("nan")}, "min_reward"),
                     ({"sampling": {"temperature": 1}}, "sampling must")):
        with pytest.raises(ValueError, match=name):
            rejection_sample(model, tok, rows, f, **kw)
    with pytest.raises(RuntimeError, match="'boom' raised"):
        def boom(prompts, completions, **kw):
            raise KeyError("x")

        rejection_sample(model, tok, rows, [boom], n=1, sampling=SAMPLING)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "1+1="}\n[1, 2]\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: expected a JSON object"):
        read_jsonl(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="rows\\[0\\] must be a dict"):
        write_jsonl(["x"], tmp_path / "x.jsonl")
    assert json.loads((tmp_path / "bad.jsonl").read_text().splitlines()[0]) == {"prompt": "1+1="}
