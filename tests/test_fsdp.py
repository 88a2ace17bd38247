"""FSDP2 over gloo: two CPU processes give the loss, gradients and weights of one process on the
same global batch after 3 optimizer steps, for GRPO and SFT (PyTorch issue 162338 reported FSDP2
over gloo summing gradients where it should average them: this test catches it whichever way
PyTorch goes); sharded checkpoints (torch.distributed.checkpoint) written at 2 processes resume at
1 and the other way round, ending with the weights of an uninterrupted run; rollouts read whole
parameters. Tiny model, few steps: the processes' start is most of the time."""

import os

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from r1core.recipes.base_model import build_model, build_tokenizer
from r1core.trainers import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer
from tests.test_distributed import TINY, _free_port, _global_batch

B, G, C = 8, 4, 7
STEPS = 3


def _sft_rows() -> list[dict]:
    return [{"prompt": f"{i:02d}+{i:02d}=", "completion": str(2 * i) * (1 + i % 3)} for i in range(24)]


def _sft(seed: int, world: int, out: str, fsdp: bool, save_steps: int | None = None) -> SFTTrainer:
    tok = build_tokenizer()
    cfg = SFTConfig(per_device_train_batch_size=B // world, max_steps=STEPS, learning_rate=1e-2, logging_steps=1, output_dir=out,
                    seed=seed, fsdp=fsdp, save_steps=save_steps, max_grad_norm=1e9)
    return SFTTrainer(build_model(tok, TINY, seed=seed), tok, _sft_rows(), cfg)


def _grpo(seed: int, world: int, fsdp: bool) -> GRPOTrainer:
    tok = build_tokenizer()
    rows = [{"prompt": f"{i:03d}+{i:03d}=", "answer": str(2 * i)} for i in range(16)]
    cfg = GRPOConfig(num_generations=G, per_device_train_batch_size=B // world, max_completion_length=C, beta=0.04, learning_rate=1e-2,
                     output_dir="/tmp/unused", seed=seed, fsdp=fsdp, max_grad_norm=1e9)
    return GRPOTrainer(build_model(tok, TINY, seed=seed), tok, [lambda p, c, **k: [0.0] * len(c)], rows, cfg, engine=object())


def _full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


def _grads_and_weights(model) -> tuple[dict, dict]:
    params = dict(model.named_parameters())
    return {n: _full(p.grad) for n, p in params.items()}, {n: _full(p) for n, p in params.items()}


def _grpo_steps(tr: GRPOTrainer, batch) -> dict:
    losses = []
    for _ in range(STEPS):
        losses.append(tr.optimize(batch)["loss"])
    grads, weights = _grads_and_weights(tr.model)
    return {"losses": losses, "grads": grads, "weights": weights}


def _sft_steps(tr: SFTTrainer) -> dict:
    recs = tr.train(progress=False)
    grads, weights = _grads_and_weights(tr.model)
    return {"losses": [r["loss"] for r in recs], "grads": grads, "weights": weights}


def _worker(rank, world, port, seed, tmp, resume_from):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), OMP_WAIT_POLICY="PASSIVE")
    torch.set_num_threads(1)
    from r1core.trainers import distributed as dist

    assert dist.init_from_env(backend="gloo", single=True)
    try:
        if world == 2:
            tr = _grpo(seed, world, fsdp=True)
            batch = _global_batch(seed, len(build_tokenizer()), _grpo(seed, 1, False).model).rows(slice(rank * B // 2, (rank + 1) * B // 2))
            res = _grpo_steps(tr, batch)
            # the correction for a gloo that sums (issue 162338): FSDP sums, then divides by the world
            # size; on a gloo that averages it must give the same
            from r1core.trainers import fsdp

            real, fsdp.average_sums = fsdp.average_sums, lambda: True
            try:
                res["corrected"] = _grpo_steps(_grpo(seed, world, fsdp=True), batch)
            finally:
                fsdp.average_sums = real
            res["sft"] = _sft_steps(_sft(seed, world, os.path.join(tmp, "sft2"), fsdp=True, save_steps=2))
            if rank == 0:
                torch.save(res, os.path.join(tmp, "two.pt"))
        else:
            _sft(seed, world, os.path.join(tmp, "sft1"), fsdp=True, save_steps=2).train(progress=False)
            # whole tensors (a run without fsdp) do not load into an fsdp run
            tr = _sft(seed, world, os.path.join(tmp, "refused"), fsdp=True)
            with pytest.raises(ValueError, match="written by a run without fsdp"):
                tr.train(progress=False, resume_from_checkpoint=os.path.join(tmp, "ref", "checkpoint-2"))
        if resume_from:  # a checkpoint written at the other world size, to the end of the run
            tr = _sft(seed, world, os.path.join(tmp, f"resumed{world}"), fsdp=True)
            tr.train(progress=False, resume_from_checkpoint=os.path.join(tmp, resume_from, "checkpoint-2"))
            weights = _grads_and_weights(tr.model)[1]
            if rank == 0:
                torch.save(weights, os.path.join(tmp, f"resumed{world}.pt"))
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def test_fsdp_two_processes_equal_one_and_checkpoints_reshard(tmp_path):
    seed = int(torch.randint(0, 10**6, ()))
    tmp = str(tmp_path)
    # SFT without FSDP in one process: the uninterrupted run the resumed ones must end as
    want_sft = _sft_steps(_sft(seed, 1, str(tmp_path / "ref"), fsdp=False, save_steps=2))
    mp.spawn(_worker, args=(1, _free_port(), seed, tmp, None), nprocs=1, join=True)  # a sharded checkpoint at 1 process
    mp.spawn(_worker, args=(2, _free_port(), seed, tmp, "sft1"), nprocs=2, join=True)
    two = torch.load(tmp_path / "two.pt")

    # GRPO: one process, the whole batch, no FSDP
    ref = _grpo(seed, 1, fsdp=False)
    want = _grpo_steps(ref, _global_batch(seed, len(build_tokenizer()), _grpo(seed, 1, False).model))
    for name, got, exp in (("grpo", two, want), ("grpo, sum then divide", two["corrected"], want), ("sft", two["sft"], want_sft)):
        assert got["losses"] == pytest.approx(exp["losses"], rel=1e-5, abs=1e-6), name
        for n in exp["weights"]:
            torch.testing.assert_close(got["grads"][n], exp["grads"][n], atol=1e-6, rtol=1e-4, msg=lambda m: f"{name} grad {n}: {m}")
            if "k_proj.bias" in n:
                # softmax ignores what a key bias adds to every score of a query: its gradient is 0 up
                # to rounding, which AdamW's normalisation turns into steps of +-lr either way
                continue
            # AdamW divides each gradient by its own running size, so rounding in the smallest ones
            # moves weights by more than rounding: 2% of one step (lr 1e-2) still catches a shard
            # stepped wrong or not at all
            torch.testing.assert_close(got["weights"][n], exp["weights"][n], atol=2e-4, rtol=1e-3,
                                       msg=lambda m: f"{name} weight {n}: {m}")

    # checkpoint-2 of the 2-process run resumed by one process without a process group or FSDP
    tr = _sft(seed, 1, str(tmp_path / "resumed_plain"), fsdp=False)
    tr.train(progress=False, resume_from_checkpoint=str(tmp_path / "sft2" / "checkpoint-2"))
    assert tr.global_step == STEPS
    resumed = {"1 process from 2 (no FSDP)": _grads_and_weights(tr.model)[1], "2 processes from 1": torch.load(tmp_path / "resumed2.pt")}
    for what, weights in resumed.items():
        for n, w in want_sft["weights"].items():
            if "k_proj.bias" in n:  # as above
                continue
            torch.testing.assert_close(weights[n], w, atol=2e-4, rtol=1e-3, msg=lambda m: f"{what} {n}: {m}")

    # the consolidated weights load as a model (from_pretrained, as `r1core eval` does)
    from transformers import AutoModelForCausalLM

    ckpt = tmp_path / "sft2" / "checkpoint-2"
    assert (ckpt / "shards" / ".metadata").exists() and not list(tmp_path.glob("sft2/.checkpoint-*"))
    m = AutoModelForCausalLM.from_pretrained(str(ckpt))
    sd = load_file(str(ckpt / "model.safetensors"))
    for n, p in m.named_parameters():
        if n in sd:
            torch.testing.assert_close(p.detach(), sd[n])


def test_fsdp_without_a_process_group_names_the_field(tmp_path):
    with pytest.raises(ValueError, match=r"SFTConfig.fsdp=True needs a process group: start the run with torchrun"):
        _sft(0, 1, str(tmp_path), fsdp=True)
    with pytest.raises(ValueError, match=r"GRPOConfig.fsdp=True needs a process group"):
        _grpo(0, 1, fsdp=True)
