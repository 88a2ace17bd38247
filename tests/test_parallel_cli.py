"""The commands under torchrun: `r1core grpo --fsdp --bf16` as 2 nodes of 1 process (two launchers sharing
a c10d rendezvous on localhost, as on a real cluster), `r1core distill` at 2 processes with DDP
and with FSDP. Tiny model, 1-2 steps: the launchers' start is most of the time."""

import json
import os
import subprocess
import sys

import pytest
import torch

from r1core.recipes.base_model import build_model, build_tokenizer
from tests.test_distributed import TINY, _free_port


def _env() -> dict:
    return {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args, "-m", "r1core.recipes.cli"]


def _wait(procs, timeout=120) -> list[str]:
    outs, timed_out = [], False
    for p in procs:
        try:
            outs.append(p.communicate(timeout=1 if timed_out else timeout)[0])
        except subprocess.TimeoutExpired:  # kill it and go on: every launcher's output goes into the message
            timed_out = True
            p.kill()
            outs.append(p.communicate()[0])
    report = "\n".join(f"--- launcher {j} (exit {p.returncode}):\n{o[-3000:]}" for j, (p, o) in enumerate(zip(procs, outs)))
    assert not timed_out, f"a launcher ran past {timeout} s\n{report}"
    for p in procs:  # every launcher's end: the first failure is often another's crash
        assert p.returncode == 0, report
    return outs


def test_grpo_fsdp_on_two_nodes(tmp_path):
    port, out = _free_port(), tmp_path / "grpo"
    # the rendezvous store lives in this process, as on a cluster's head node: a launcher that hosted it would
    # take it down on exit while the other launcher may still be closing the rendezvous through it
    store = torch.distributed.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    # --bf16: MixedPrecisionPolicy in training, rollouts on the gathered bf16 weights
    args = ["grpo", "--model", "tiny", "--fsdp", "--bf16", "--max-steps", "2", "--save-steps", "1", "--train-size", "16",
            "--num-generations", "2", "--per-device-train-batch-size", "4", "--max-completion-length", "4", "--threads", "1",
            "--output-dir", str(out)]
    procs = [subprocess.Popen(_torchrun("--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(n), "--rdzv-backend", "c10d",
                                        "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "r1core-test",
                                        "--rdzv-conf", "is_host=false") + args,
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for n in range(2)]
    outs = _wait(procs)
    del store
    assert any("world size 2, mode fsdp" in o for o in outs), outs
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2]
    assert (out / "checkpoint-2" / "shards" / ".metadata").exists() and (out / "final" / "model.safetensors").exists()
    # the consolidated checkpoint loads as `r1core eval --model` loads a model
    from r1core.recipes.base_model import load_model

    model, _ = load_model(str(out / "checkpoint-2"), 0)
    assert all(bool(p.isfinite().all()) for p in model.parameters())


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_distill_under_torchrun(tmp_path, fsdp):
    tok = build_tokenizer()
    teacher = tmp_path / "teacher"
    build_model(tok, TINY, seed=1).save_pretrained(teacher)
    tok.save_pretrained(teacher)
    args = ["distill", "--teacher", str(teacher), "--student", "tiny", "--mode", "on-policy", "--runs-dir", str(tmp_path), "--name", "d",
            "--train-size", "32", "--eval-size", "2", "--eval-samples", "1", "--threads", "1", "--no-progress",
            "--distill.max-steps", "2", "--distill.per-device-train-batch-size", "2", "--distill.max-new-tokens", "4"]
    args += ["--distill.fsdp"] if fsdp else []
    proc = subprocess.Popen(_torchrun("--nproc-per-node", "2", "--master-port", str(_free_port())) + args,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait([proc])
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["train_steps"] == 2
    recs = [json.loads(x) for x in (tmp_path / "d" / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["step"] == 2 and recs[-1]["on_policy"] == 1.0
    assert (tmp_path / "d" / "final" / "model.safetensors").exists()


def test_fsdp_flag_without_torchrun_names_it(tmp_path):
    from r1core.recipes.cli import main

    tok = build_tokenizer()
    teacher = tmp_path / "teacher"
    build_model(tok, TINY, seed=1).save_pretrained(teacher)
    tok.save_pretrained(teacher)
    with pytest.raises(SystemExit, match=r"--distill.fsdp: FSDP needs a process group: start the run with torchrun"):
        main(["distill", "--teacher", str(teacher), "--student", "tiny", "--runs-dir", str(tmp_path), "--distill.fsdp"])
    with pytest.raises(SystemExit, match=r"SFTConfig.fsdp=True needs a process group"):
        main(["sft", "--fsdp", "--max-steps", "1", "--train-size", "8", "--output-dir", str(tmp_path / "sft")])
