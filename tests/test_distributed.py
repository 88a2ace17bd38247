"""Two CPU processes (gloo, DDP) give the loss and gradients of one process on the same global
batch; prompts are dealt whole, so a group never spans ranks."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from r1core.recipes.base_model import BaseModelSpec, build_model, build_tokenizer
from r1core.trainers import GRPOConfig, GRPOTrainer, RolloutBatch
from r1core.trainers.grpo import policy_logprobs

TINY = BaseModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)
B, P, C, G = 8, 5, 7, 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_batch(seed: int, vocab: int, model) -> RolloutBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(9, vocab, (B, P + C), generator=g)
    attn = torch.ones(B, P + C, dtype=torch.long)
    lens = torch.randint(1, C + 1, (B,), generator=g)
    cmask = torch.arange(C)[None] < lens[:, None]  # [B, C]
    attn[:, P:] = cmask.long()
    attn[:4, :2] = 0  # left padding in some prompts
    adv = torch.randn(B, generator=g)
    group_ok = torch.arange(B) < G  # the second group dead (used by exclude_zero_std_from_normalizer): rank 1 holds no live group
    batch = RolloutBatch(ids, attn, ids[:, P:].clone(), cmask, adv, None, None, group_ok, P)
    lp = policy_logprobs(model, batch, 1.0)
    batch.old_logprobs = lp + 0.3 * torch.randn(B, C, generator=g)  # ratios away from 1: some clip
    batch.ref_logprobs = lp + 0.1 * torch.randn(B, C, generator=g)
    return batch


def _trainer(seed: int, loss_type: str, per_device: int):
    """loss_type "x+exclude": loss_type x with exclude_zero_std_from_normalizer."""
    tok = build_tokenizer()
    model = build_model(tok, TINY, seed=seed)
    rows = [{"prompt": f"{i:03d}+{i:03d}=", "answer": str(2 * i)} for i in range(16)]
    name, _, option = loss_type.partition("+")
    cfg = GRPOConfig(num_generations=G, per_device_train_batch_size=per_device, max_completion_length=C, loss_type=name,
                     beta=0.04, learning_rate=1e-3, output_dir="/tmp/unused", seed=seed,
                     exclude_zero_std_from_normalizer=option == "exclude")
    tr = GRPOTrainer(model, tok, [lambda p, c, **k: [0.0] * len(c)], rows, cfg, engine=object())
    return tr, tok


def _run(tr, batch):
    out = tr.accumulate_gradients(batch)  # compare gradients, not updates
    return out["loss"], {n: p.grad.clone() for n, p in tr.model.named_parameters()}, tr._next_prompts()


def _rank_info(rank: int) -> dict:
    """Logged metrics as one rank sees them: counts, rates and means that differ per rank."""
    return {"gen_tokens": 10 * (rank + 1), "trained_samples": 4 + rank, "dynamic_sampling_short": rank,
            "tokens_per_second": 100.0 * (rank + 1),
            "reward": float(rank), "zero_std_frac": 0.5 * rank, "completion_length": 3.0 + rank, "kl": 0.1 * rank,
            "loss": 1.5, "grad_norm": 2.0, "lr": 0.1}


def _worker(rank, world, port, seed, loss_types, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), OMP_WAIT_POLICY="PASSIVE")
    torch.set_num_threads(1)
    from r1core.trainers import distributed as dist

    assert dist.init_from_env(backend="gloo")
    try:
        for loss_type in loss_types:
            tr, tok = _trainer(seed, loss_type, B // world)
            assert tr.world_size == world and tr.rank == rank
            batch = _global_batch(seed, len(tok), tr.model).rows(slice(rank * B // world, (rank + 1) * B // world))
            loss, grads, prompts = _run(tr, batch)
            torch.save({"loss": loss, "grads": grads, "prompts": prompts}, os.path.join(result_dir, f"{loss_type}{rank}.pt"))
        torch.save(tr._reduce_info(_rank_info(rank)), os.path.join(result_dir, f"info{rank}.pt"))
        # rank 0 hosts the TCP store: it must not tear it down while rank 1 still talks to it (seen
        # as "terminate called without an active exception", SIGABRT, in about one run in five)
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_equal_one(tmp_path):
    seed = int(torch.randint(0, 10**6, ()))
    # dapo: token count summed over ranks; grpo: mean over sequences; +exclude: the live groups'
    # sequences (grpo) or tokens (bnpo) counted over both ranks
    loss_types = ["dapo", "grpo", "grpo+exclude", "bnpo+exclude"]
    # one spawn for both: starting the processes costs more than the checks
    mp.spawn(_worker, args=(2, _free_port(), seed, loss_types, str(tmp_path)), nprocs=2, join=True)
    for loss_type in loss_types:
        tr, tok = _trainer(seed, loss_type, B)
        want_loss, want_grads, want_prompts = _run(tr, _global_batch(seed, len(tok), tr.model))
        res = [torch.load(tmp_path / f"{loss_type}{r}.pt") for r in range(2)]
        for r in res:  # every rank logs the global loss
            assert r["loss"] == pytest.approx(want_loss, rel=1e-5, abs=1e-7), loss_type
            for n, g in want_grads.items():
                torch.testing.assert_close(r["grads"][n], g, atol=1e-6, rtol=1e-4, msg=lambda m: f"{loss_type} {n}: {m}")
        # the two ranks' prompts are the single process's prompts, dealt whole and in order
        assert res[0]["prompts"] + res[1]["prompts"] == want_prompts
    # logged metrics: counts summed over ranks, rates and means averaged, global values left alone
    infos = [torch.load(tmp_path / f"info{r}.pt") for r in range(2)]
    assert infos[0] == infos[1]
    per_rank = [_rank_info(r) for r in range(2)]
    got = infos[0]
    for k in ("gen_tokens", "trained_samples", "dynamic_sampling_short", "tokens_per_second"):
        assert got[k] == pytest.approx(sum(p[k] for p in per_rank)), k
    assert isinstance(got["gen_tokens"], int) and got["gen_tokens"] == 30
    for k in ("reward", "zero_std_frac", "completion_length", "kl"):
        assert got[k] == pytest.approx(sum(p[k] for p in per_rank) / 2), k
    assert (got["loss"], got["grad_norm"], got["lr"]) == (1.5, 2.0, 0.1)
