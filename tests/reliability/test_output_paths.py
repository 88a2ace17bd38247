"""Output paths are checked before any work (issue 17, item 4, the trainers' side): an output_dir
inside a file or under /proc was a raw NotADirectoryError at the first log; save_model into a file
likewise. `check_writable_dir` is what the command line checks its paths with before training."""

import pytest

from r1core.recipes.base_model import BaseModelSpec, build_model, build_tokenizer
from r1core.rewards import accuracy_reward
from r1core.tasks import generate
from r1core.trainers import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer
from r1core.trainers.checkpoint import check_writable_dir

TINY = BaseModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)


def _trainers(out):
    tok = build_tokenizer()
    rows = generate("addition", "train", 8, seed=1, digits=1)
    sft_rows = [{"prompt": r["prompt"], "completion": r["solution"]} for r in rows]
    yield SFTTrainer(build_model(tok, TINY), tok, sft_rows, SFTConfig(output_dir=out, max_steps=1, per_device_train_batch_size=2))
    yield GRPOTrainer(build_model(tok, TINY), tok, [accuracy_reward], rows,
                      GRPOConfig(output_dir=out, max_steps=1, num_generations=2, per_device_train_batch_size=2, max_completion_length=4))


@pytest.mark.parametrize("where", ["file", "proc"])
def test_bad_output_dir_is_named_before_any_step(tmp_path, where):
    afile = tmp_path / "afile"
    afile.write_text("x")
    out = str(afile / "run") if where == "file" else "/proc/r1core-run"
    for tr in _trainers(out):
        with pytest.raises(ValueError, match=rf"{type(tr.config).__name__}.output_dir: cannot write into '{out}'"):
            tr.train(progress=False)
        assert tr.global_step == 0


def test_save_model_into_a_file_is_named(tmp_path):
    (tmp_path / "afile").write_text("x")
    tr = next(_trainers(str(tmp_path / "out")))
    with pytest.raises(ValueError, match="save_model path: cannot write into .*afile/model"):
        tr.save_model(str(tmp_path / "afile" / "model"))
    tr.save_model(str(tmp_path / "fine" / "model"))  # a folder that can be made is made


def test_check_writable_dir(tmp_path):
    check_writable_dir(str(tmp_path / "a" / "b"), "x")
    assert (tmp_path / "a" / "b").is_dir() and not list((tmp_path / "a" / "b").iterdir())  # the probe file is gone
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match=r"--output: cannot write into '.*f' \(File exists\)"):
        check_writable_dir(str(tmp_path / "f"), "--output")
