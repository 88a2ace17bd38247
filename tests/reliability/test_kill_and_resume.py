"""Kill and resume, anywhere (issue 17's suite): a GRPO and an SFT run are SIGKILLed three times,
at points drawn at random (in the middle of a step's generation or forward, inside the optimizer
step, while a checkpoint is written, half a file on disk), each time resumed from the latest
checkpoint; after every kill no checkpoint on disk is partial, and the run ends with the weights
and the metrics of an uninterrupted one. The children run _kill_child.run, forked from a
forkserver that imported torch and r1core once (a fresh interpreter per child cost ~5 s each)."""

import json
import multiprocessing
import os
import random
import re

import pytest
import torch
from safetensors.torch import load_file

from r1core.trainers import checkpoint as ckpt

TIMING = {"elapsed", "gen_seconds", "train_seconds", "step_seconds", "tokens_per_second", "gen_cpu_seconds", "step_cpu_seconds"}


@pytest.fixture(scope="module")
def forkserver():
    """A forkserver that imported _kill_child (torch, transformers, r1core) once, with one thread
    per child. Python 3.11's forkserver ignores the parent's sys.path, hence PYTHONPATH while it
    starts (an import that fails in the preload is silently skipped: each child would import)."""
    from multiprocessing import forkserver as fs

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["reliability._kill_child"])
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "OMP_NUM_THREADS")}
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (tests, saved["PYTHONPATH"]) if p)
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        fs.ensure_running()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return ctx


def _run_child(ctx, *args) -> int:
    from reliability._kill_child import run

    proc = ctx.Process(target=run, args=tuple(str(a) if i < 2 else a for i, a in enumerate(args)))
    proc.start()
    proc.join(300)
    if proc.is_alive():
        proc.kill()
        raise AssertionError(f"child {args} ran for 5 minutes")
    if proc.exitcode not in (0, -9):
        raise AssertionError(f"child {args} failed with exit code {proc.exitcode} (its traceback is above)")
    return proc.exitcode


def _metrics(out) -> list[dict]:
    name = "metrics.jsonl" if os.path.exists(os.path.join(out, "metrics.jsonl")) else "sft_metrics.jsonl"
    with open(os.path.join(out, name)) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f if line.strip()]


def _final_weights(out) -> dict:
    (path,) = [p for _, p in ckpt.list_checkpoints(os.path.join(out, "final"))]
    return load_file(os.path.join(path, ckpt.MODEL_FILE))


def _assert_no_partial_checkpoint(out) -> None:
    names = [n for n in os.listdir(out) if re.match(r"^checkpoint-\d+$", n)]
    assert names, "no checkpoint at all"
    for name in names:
        ckpt.read_state(os.path.join(out, name))  # every file whole (CorruptCheckpoint otherwise)


@pytest.mark.parametrize("kind", ["grpo", "sft"])
def test_killed_anywhere_and_resumed_equals_uninterrupted(kind, tmp_path, _fresh_seed, forkserver):
    rng = random.Random(_fresh_seed)
    a = rng.randint(2, 3)
    b = rng.randint(a, 4)
    c = rng.randint(b, 5)
    kills = [("generate", a), ("optimizer", b), (f"save:{rng.randint(0, 2)}", c)]
    killed = tmp_path / "killed"
    for point, step in kills:
        assert _run_child(forkserver, kind, killed, point, step) == -9, (point, step)
        _assert_no_partial_checkpoint(killed)
        assert ckpt.list_checkpoints(str(killed))[-1][0] == step - 1, (point, step)  # the step's own checkpoint never landed
    assert _run_child(forkserver, kind, killed) == 0
    full = tmp_path / "full"
    assert _run_child(forkserver, kind, full) == 0
    want, got = _final_weights(full), _final_weights(killed)
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=0, rtol=0, msg=f"{k} after kills at {kills}")
    assert _metrics(killed) == _metrics(full), kills
    assert [r["step"] for r in _metrics(full)] == list(range(1, 7))
    assert not [n for n in os.listdir(killed) if n.startswith(".checkpoint-")]  # a later save removed the half-written folder
