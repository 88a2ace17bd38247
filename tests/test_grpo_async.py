"""GRPOConfig's truncated importance sampling and asynchronous rollouts through the GRPO trainer:
validation, TIS metrics and the rollout log-probs as the loss's denominator, max_staleness 0 as the
synchronous trainer, a run with a worker process (staleness 1, metrics, no orphan process at the
end or after an error), resume accounting of prefetched prompts."""

import copy
import json
import multiprocessing

import pytest
import torch

from r1core.recipes.base_model import BaseModelSpec, build_model, build_tokenizer
from r1core.rewards import accuracy_reward
from r1core.tasks import generate
from r1core.trainers import GRPOConfig, GRPOTrainer
from r1core.trainers.grpo import policy_logprobs
from r1core.trainers.grpo_config import TIS_CAP_ASYNC

TINY = BaseModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)
TIS_KEYS = ("tis_ratio_mean", "tis_ratio_max", "tis_clipped")


def length_reward(prompts, completions, completion_ids, **kw):
    return [float(len(c)) / 12 for c in completion_ids]


def make(tmp_path, seed=0, reward=accuracy_reward, **kw):
    tok = build_tokenizer()
    model = build_model(tok, TINY, seed=seed)
    rows = generate("addition", "train", 32, seed=seed)
    base = dict(num_generations=4, per_device_train_batch_size=8, max_completion_length=12, learning_rate=1e-3, max_steps=3,
                output_dir=str(tmp_path / "out"), seed=seed)
    base.update(kw)
    return GRPOTrainer(model, tok, [reward], rows, GRPOConfig(**base))


def rollout_children():
    return [p for p in multiprocessing.active_children() if p.name == "r1core-rollouts"]


@pytest.mark.parametrize("field,value", [("tis_cap", 0.0), ("tis_cap", -1.0), ("max_staleness", -1), ("tis_level", "batch")])
def test_config_rejects(field, value):
    with pytest.raises(ValueError, match=f"GRPOConfig.{field}"):
        GRPOConfig(**{field: value})


def test_config_defaults():
    assert GRPOConfig().tis_cap is None and not GRPOConfig().async_rollouts
    assert GRPOConfig(async_rollouts=True).tis_cap is None  # the clip around the sampling log-probs, not TIS
    assert GRPOConfig(async_rollouts=True, tis_cap=1.5).tis_cap == 1.5
    with pytest.raises(ValueError, match="GRPOConfig.dynamic_sampling"):
        GRPOConfig(async_rollouts=True, dynamic_sampling=True)


def test_tis_takes_the_engine_logprobs_as_rollout_and_logs_the_ratio(tmp_path):
    tr = make(tmp_path, reward=length_reward, tis_cap=2.0)
    batch, _ = tr.rollout()
    assert batch.old_logprobs is None and batch.rollout_logprobs is not None
    own = policy_logprobs(tr.model, batch, tr.config.temperature)
    m = batch.completion_mask
    torch.testing.assert_close(batch.rollout_logprobs[m], own[m], atol=2e-4, rtol=1e-4)
    records = tr.train(progress=False)
    for r in records:
        # the sampler and the trainer hold the same weights: every ratio is 1 up to rounding
        assert abs(r["tis_ratio_mean"] - 1) < 1e-3 and r["tis_ratio_max"] < 1.01 and r["tis_clipped"] == 0.0
    lines = [json.loads(x) for x in open(tmp_path / "out" / "metrics.jsonl")]
    assert all(k in lines[-1] for k in TIS_KEYS)


def test_max_staleness_zero_is_the_synchronous_trainer(tmp_path):
    sync = make(tmp_path / "a", reward=length_reward).train(progress=False)
    zero = make(tmp_path / "b", reward=length_reward, async_rollouts=True, max_staleness=0).train(progress=False)
    assert any(r["grad_norm"] > 0 for r in sync)  # the runs learn something, so equal metrics say something
    assert not rollout_children()
    skip = {"elapsed"} | {k for k in sync[0] if "seconds" in k or k == "tokens_per_second"}
    for a, b in zip(sync, zero, strict=True):
        assert {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}


@pytest.mark.parametrize("tis_cap", [None, TIS_CAP_ASYNC], ids=["clip", "tis"])
def test_async_run_trains_one_step_stale_and_stops_its_worker(tmp_path, tis_cap):
    tr = make(tmp_path, reward=length_reward, async_rollouts=True, max_steps=4, tis_cap=tis_cap)
    before = [p.detach().clone() for p in tr.model.parameters()]
    first = tr.training_step()  # generated and waited for: nothing was prefetched
    assert first["rollout_staleness"] == 0.0
    # the next step's prompts are in flight; a checkpoint now would not count them as consumed
    per = tr.config.prompts_per_step
    assert tr._async.prompts_in_flight() == per and tr.consumed == 2 * per and tr.trainer_state()["consumed"] == per
    records = tr.train(progress=False)
    assert len(records) == 3 and not rollout_children() and tr._async is None
    assert [r["rollout_staleness"] for r in records] == [1.0, 1.0, 1.0]  # sampled one update before they train
    assert all((k in r) == (tis_cap is not None) for r in records for k in TIS_KEYS) and all(r["loss"] == r["loss"] for r in records)
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))
    assert tr.consumed == 4 * per  # the prompts prefetched for a fifth step went back to the stream


def test_async_old_logprobs_are_the_sampling_weights_one_update_back(tmp_path, monkeypatch):
    tr = make(tmp_path, reward=length_reward, async_rollouts=True, max_steps=2)
    sampler = copy.deepcopy(tr.model)  # both batches are sampled from these: the first waited for, the second
    seen = []                          # prefetched before the first update
    optimize = tr.optimize

    def keep(batch):
        seen.append((batch, policy_logprobs(tr.model, batch, tr.config.temperature)))
        return optimize(batch)

    monkeypatch.setattr(tr, "optimize", keep)
    tr.train(progress=False)
    batch, trained = seen[1]
    m = batch.completion_mask
    assert batch.rollout_logprobs is None and batch.old_logprobs is not None
    torch.testing.assert_close(batch.old_logprobs[m], policy_logprobs(sampler, batch, tr.config.temperature)[m], atol=2e-4, rtol=1e-4)
    # trained one update later: the ratios that epsilon clips are off 1
    assert float((trained[m] - batch.old_logprobs[m]).abs().max()) > 1e-2
    assert not rollout_children()


def test_async_worker_is_stopped_when_the_step_fails(tmp_path, monkeypatch):
    tr = make(tmp_path, async_rollouts=True, max_steps=3)
    calls = {"n": 0}
    optimize = tr.optimize

    def failing(batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return optimize(batch)

    monkeypatch.setattr(tr, "optimize", failing)
    with pytest.raises(RuntimeError, match="boom"):
        tr.train(progress=False)
    assert not rollout_children() and tr._async is None


def test_an_error_in_the_worker_is_raised_in_the_trainer():
    from r1core.engine import SamplingParams
    from r1core.trainers.async_rollouts import RolloutWorker

    tok = build_tokenizer()
    worker = RolloutWorker(build_model(tok, TINY, seed=0), tok, {"block_size": 16, "num_blocks": 64})
    try:
        worker.submit(None, [[10**9]], [SamplingParams(n=2, max_new_tokens=4, seed=0)])  # a token beyond the vocabulary
        with pytest.raises(RuntimeError, match="rollout worker failed"):
            worker.collect()
        assert not worker.alive
    finally:
        worker.close()
    assert not rollout_children()
