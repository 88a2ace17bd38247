"""The command line's bad paths and empty choices (issue 17, items 2, 4, 5, 7): checked before any
work, one line naming the flag; `eval` loads a `checkpoint-N/` folder."""

import json
import os

import pytest

from r1core.recipes.cli import main


def _one_line_error(argv, pattern):
    with pytest.raises(SystemExit, match=pattern) as e:
        main(argv)
    assert isinstance(e.value.code, str) and "\n" not in e.value.code


@pytest.fixture
def afile(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    return f


def test_bad_output_paths_are_named_before_any_work(tmp_path, afile, monkeypatch):
    import r1core.recipes.cli as cli

    def no_work(*a, **kw):
        raise AssertionError("a model was loaded before the paths were checked")

    monkeypatch.setattr(cli, "_load", no_work)
    _one_line_error(["eval", "--model", "tiny", "--output", str(afile / "x.json")], r"error: --output: cannot write into '.*afile'")
    _one_line_error(["eval", "--model", "tiny", "--output", str(tmp_path)], r"error: --output: '.*' is a folder; expected a file name")
    _one_line_error(["sft", "--model", "tiny", "--save", str(afile / "model"), "--output-dir", str(tmp_path / "s")],
                    r"error: --save: cannot write into '.*afile/model' \(Not a directory\)")
    _one_line_error(["sft", "--model", "tiny", "--output-dir", str(afile / "o")], r"error: --save: cannot write into '.*afile/o/model'")


def test_output_dir_into_a_file_is_one_line(tmp_path, afile):
    _one_line_error(["grpo", "--model", "tiny", "--max-steps", "1", "--output-dir", str(afile / "o")],
                    r"error: GRPOConfig.output_dir: cannot write into '.*afile/o' \(Not a directory\)")


def test_empty_rewards_are_refused(tmp_path):
    _one_line_error(["grpo", "--model", "tiny", "--rewards", "", "--output-dir", str(tmp_path / "g")],
                    r"--rewards: GRPOOptions.rewards must be none or a list of names .*, at least one, got \[\]")
    assert not (tmp_path / "g").exists()


def test_resume_of_a_run_that_never_ran(tmp_path):
    _one_line_error(["run", "--resume", "--name", "nothere", "--runs-dir", str(tmp_path)],
                    r"error: --resume: '.*nothere' holds no run to resume .*check --name")
    assert not (tmp_path / "nothere").exists()


def test_eval_loads_a_checkpoint_folder(tmp_path):
    out = tmp_path / "sft"
    assert main(["sft", "--model", "tiny", "--max-steps", "2", "--save-steps", "1", "--per-device-train-batch-size", "4",
                 "--output-dir", str(out), "--train-size", "16"]) == 0
    result = tmp_path / "eval.json"
    assert main(["eval", "--model", str(out / "checkpoint-2"), "--n", "2", "--samples", "0", "--output", str(result)]) == 0
    assert "greedy_accuracy" in json.loads(result.read_text())
    assert os.path.exists(out / "checkpoint-2" / "tokenizer.json")
