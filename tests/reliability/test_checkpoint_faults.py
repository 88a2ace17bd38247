"""Checkpoints under faults (issue 17, items 2 and 5): every checkpoint and saved model holds the
tokenizer and config (from_pretrained and load_model read it back); a truncated or corrupt file is
an error naming that file, raised before anything is loaded; resume_from_checkpoint=True falls
back to the last complete checkpoint; a resume with changed batch settings is refused with what
changed, other changes are named in a warning."""

import json
import os

import pytest
import torch

from r1core.recipes.base_model import BaseModelSpec, build_model, build_tokenizer, load_model
from r1core.rewards import accuracy_reward
from r1core.tasks import generate
from r1core.tasks.tokenizer import encode_prompt
from r1core.trainers import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer
from r1core.trainers.checkpoint import CorruptCheckpoint, list_checkpoints, read_state

TINY = BaseModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)
ROWS = [{"prompt": r["prompt"], "completion": r["solution"]} for r in generate("addition", "train", 16, seed=2, digits=2)]


def sft(out, model_seed=0, **kw):
    tok = build_tokenizer()
    cfg = dict(per_device_train_batch_size=4, max_steps=4, save_steps=1, save_total_limit=None, output_dir=str(out), logging_steps=1)
    cfg.update(kw)
    return SFTTrainer(build_model(tok, TINY, seed=model_seed), tok, ROWS, SFTConfig(**cfg))


def _weights(tr):
    return [p.detach().clone() for p in tr.model.parameters()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step SFT run with a checkpoint every step, its final weights and a saved model."""
    out = tmp_path_factory.mktemp("sft")
    tr = sft(out / "run")
    tr.train(progress=False)
    tr.save_model(str(out / "final"))
    return out, _weights(tr)


def test_checkpoints_and_models_load_with_their_tokenizer(run):
    from transformers import AutoTokenizer

    out, _ = run
    tok = build_tokenizer()
    text = ROWS[0]["prompt"]
    for folder in (out / "final", out / "run" / "checkpoint-4"):
        loaded = AutoTokenizer.from_pretrained(str(folder))
        assert encode_prompt(loaded, text) == encode_prompt(tok, text) and loaded(text)["input_ids"]
        model, tok2 = load_model(str(folder))  # what `r1core eval --model checkpoint-4/` loads
        assert encode_prompt(tok2, text) == encode_prompt(tok, text)
        assert model.config.vocab_size == len(tok)


def _copy_run(run, tmp_path):
    import shutil

    out, _ = run
    shutil.copytree(out / "run", tmp_path / "run")
    return tmp_path / "run"


def _truncate(file):
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def _garble(file):
    file.write_bytes(b"\x00garbage" * 4)


@pytest.mark.parametrize("name", ["model.safetensors", "trainer_state.safetensors", "trainer_state.json"])
@pytest.mark.parametrize("damage", [_truncate, _garble])
def test_corrupt_file_is_named_and_resume_falls_back(run, tmp_path, name, damage):
    out, final = run
    d = _copy_run(run, tmp_path)
    damage(d / "checkpoint-4" / name)
    with pytest.raises(CorruptCheckpoint, match=f"checkpoint file '.*checkpoint-4/{name}' is"):
        read_state(str(d / "checkpoint-4"))
    tr = sft(d, model_seed=7)
    before = _weights(tr)
    with pytest.raises(CorruptCheckpoint, match=name):  # a named checkpoint: no guessing, nothing loaded
        tr.train(resume_from_checkpoint=str(d / "checkpoint-4"), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(tr)))
    # the latest: a warning naming the file, then checkpoint-3, and one more step ends as the run did
    tr = sft(d, model_seed=7)
    with pytest.warns(RuntimeWarning, match=f"checkpoint-4/{name}.*falling back"):
        tr.train(resume_from_checkpoint=True, progress=False)
    assert tr.global_step == 4
    for a, b in zip(final, _weights(tr)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_missing_file_is_named(run, tmp_path):
    d = _copy_run(run, tmp_path)
    os.remove(d / "checkpoint-4" / "trainer_state.safetensors")
    with pytest.raises(CorruptCheckpoint, match="trainer_state.safetensors' is missing"):
        read_state(str(d / "checkpoint-4"))


def test_no_complete_checkpoint_left(run, tmp_path):
    d = _copy_run(run, tmp_path)
    for _, path in list_checkpoints(str(d)):
        _truncate(d / os.path.basename(path) / "model.safetensors")
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="no checkpoint in .* is complete"):
        sft(d).train(resume_from_checkpoint=True, progress=False)


@pytest.mark.parametrize("field,value", [("per_device_train_batch_size", 2), ("packing", True), ("seed", 5), ("max_seq_length", 100)])
def test_resume_with_changed_batch_settings_is_refused(run, tmp_path, field, value):
    d = _copy_run(run, tmp_path)
    with pytest.raises(ValueError, match=f"other settings: {field} .* -> {value!r}"):
        sft(d, **{field: value}).train(resume_from_checkpoint=True, progress=False)


def test_resume_with_other_changes_warns_and_longer_runs_are_quiet(run, tmp_path, recwarn):
    d = _copy_run(run, tmp_path)
    with pytest.warns(RuntimeWarning, match=r"changed settings: learning_rate 0.002 -> 0.001"):
        sft(d, learning_rate=1e-3, max_steps=5).train(resume_from_checkpoint=True, progress=False)
    d = _copy_run(run, tmp_path / "again")
    sft(d, max_steps=5, logging_steps=2).train(resume_from_checkpoint=True, progress=False)
    assert not [w for w in recwarn.list if "changed settings" in str(w.message)]


def test_grpo_resume_with_changed_num_generations_is_refused(tmp_path):
    tok = build_tokenizer()
    rows = generate("addition", "train", 8, seed=1, digits=1)
    base = dict(num_generations=4, per_device_train_batch_size=8, max_completion_length=4, max_steps=1, save_steps=1,
                output_dir=str(tmp_path))
    GRPOTrainer(build_model(tok, TINY), tok, [accuracy_reward], rows, GRPOConfig(**base)).train(progress=False)
    assert json.loads((tmp_path / "checkpoint-1" / "trainer_state.json").read_text())["config"]["num_generations"] == 4
    changed = GRPOConfig(**{**base, "num_generations": 2, "max_steps": 2})
    with pytest.raises(ValueError, match="other settings: num_generations 4 -> 2"):
        GRPOTrainer(build_model(tok, TINY), tok, [accuracy_reward], rows, changed).train(resume_from_checkpoint=True, progress=False)
