"""The shared trainer loop (r1core.trainers.loop.Trainer) on a toy trainer whose step is a
least-squares fit on seeded random batches: it stops at max_steps, at the time budget (counting
the seconds before a resume) and at a hook's or the caller's stop; it logs every logging_steps and
the last step; it checkpoints every save_steps keeping save_total_limit; a run killed after a
checkpoint and resumed, from the latest or a named checkpoint, ends with the weights and metrics of
an uninterrupted one; gradient accumulation gives the gradient of one batch."""

import json
import os
from dataclasses import dataclass

import pytest
import torch

from r1core.trainers import loop as loop_module
from r1core.trainers.checkpoint import list_checkpoints, save_checkpoint
from r1core.trainers.config import TRAINING_RULES, TrainerConfig
from r1core.trainers.loop import Trainer
from r1core.trainers.optim import build_optimizer, build_scheduler


@dataclass
class ToyConfig(TrainerConfig):
    learning_rate: float = 0.05
    lr_scheduler_type: str = "linear"
    warmup_steps: int = 1
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0
    per_device_train_batch_size: int = 8
    max_steps: int = 6
    max_seconds: float | None = None
    logging_steps: int = 1
    save_steps: int | None = None
    save_total_limit: int | None = None
    output_dir: str = "runs/toy"
    seed: int = 0

    rules = TRAINING_RULES


class ToyTrainer(Trainer):
    """y = x @ w on batches drawn from a generator seeded by (seed, batch index): the batch index
    is the data position a checkpoint must carry."""

    name = "toy"
    seconds_per_step = 0.0  # a fake clock's advance per step (set with fake_clock)

    def __init__(self, config: ToyConfig, model_seed: int = 0):
        torch.manual_seed(model_seed)
        super().__init__(torch.nn.Linear(4, 1), None, config)
        self.optimizer = build_optimizer(self.model, config.learning_rate)
        self.scheduler = build_scheduler(self.optimizer, config.lr_scheduler_type, config.warmup_steps, config.max_steps,
                                         self.budget_spent if config.max_seconds is not None else None)
        self.batches = 0
        self.target = torch.tensor([[1.0, -2.0, 3.0, 0.5]])

    def batch(self):
        g = torch.Generator().manual_seed(self.config.seed * 1000 + self.batches)
        self.batches += 1
        x = torch.randn(self.config.per_device_train_batch_size, 4, generator=g)
        return x, x @ self.target.T

    def training_step(self) -> dict:
        x, y = self.batch()
        loss, _ = self.backward_micro_batches([(x, y)], lambda b: (torch.nn.functional.mse_loss(self.model(b[0]), b[1]), {}), mean_over=1)
        fake_clock.now += self.seconds_per_step
        return {"loss": loss, **self.optimizer_step(), "noise": torch.rand(()).item()}  # noise: the RNG must resume too

    def trainer_state(self) -> dict:
        return {"batches": self.batches}

    def restore_trainer_state(self, js: dict, path: str) -> None:
        if "batches" not in js:
            raise ValueError(f"checkpoint {path!r} holds no toy state")
        self.batches = js["batches"]


class fake_clock:
    now = 0.0


@pytest.fixture
def clock(monkeypatch):
    """time.perf_counter of the loop: advances 1 s per toy step, and when a test moves it."""
    fake_clock.now = 1000.0
    monkeypatch.setattr(loop_module.time, "perf_counter", lambda: fake_clock.now)
    monkeypatch.setattr(ToyTrainer, "seconds_per_step", 1.0)
    return fake_clock


def _metrics(out, drop=("elapsed",)):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in f]


def _weights(tr):
    return [p.detach().clone() for p in tr.model.parameters()]


def test_max_steps_logging_and_checkpoints(tmp_path):
    tr = ToyTrainer(ToyConfig(max_steps=7, logging_steps=3, save_steps=2, save_total_limit=2, output_dir=str(tmp_path)))
    records = tr.train(progress=False)
    assert tr.global_step == 7 and tr.batches == 7
    assert [r["step"] for r in records] == [r["step"] for r in _metrics(tmp_path)] == [3, 6, 7]  # every 3 steps and the last
    assert {"loss", "grad_norm", "lr", "elapsed"} <= records[0].keys()
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [4, 6]  # every 2 steps, the last 2 kept
    js = json.loads((tmp_path / "checkpoint-6" / "trainer_state.json").read_text())
    assert (js["global_step"], js["batches"], js["world_size"], js["config"]["max_steps"]) == (6, 6, 1, 7)
    assert records[-1]["loss"] < records[0]["loss"]


@pytest.mark.parametrize("resume_from", ["latest", "named"])
def test_killed_and_resumed_equals_uninterrupted(tmp_path, resume_from):
    cfg = dict(max_steps=7, save_steps=2, seed=int(torch.randint(0, 10**6, ())))
    full = ToyTrainer(ToyConfig(output_dir=str(tmp_path / "full"), **cfg))
    full.train(progress=False)

    killed = ToyTrainer(ToyConfig(output_dir=str(tmp_path / "killed"), **cfg))
    orig = killed.save_state

    def save_then_die():
        orig()
        if killed.global_step == 4:
            raise KeyboardInterrupt

    killed.save_state = save_then_die
    with pytest.raises(KeyboardInterrupt):
        killed.train(progress=False)
    assert [s for s, _ in list_checkpoints(str(tmp_path / "killed"))] == [2, 4]
    torch.manual_seed(999)  # the resumed process starts from other RNG states and other weights
    resumed = ToyTrainer(ToyConfig(output_dir=str(tmp_path / "killed"), **cfg), model_seed=1)
    if resume_from == "named":  # an older checkpoint than the latest: the log's later lines are dropped
        resumed.train(resume_from_checkpoint=str(tmp_path / "killed" / "checkpoint-2"), progress=False)
    else:
        resumed.train(resume_from_checkpoint=True, progress=False)
    assert resumed.global_step == 7
    for a, b in zip(_weights(full), _weights(resumed)):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert _metrics(tmp_path / "killed") == _metrics(tmp_path / "full")
    assert [r["step"] for r in _metrics(tmp_path / "full")] == list(range(1, 8))


def test_resume_errors_name_the_problem(tmp_path):
    tr = ToyTrainer(ToyConfig(output_dir=str(tmp_path / "empty")))
    with pytest.raises(ValueError, match="holds no checkpoint"):
        tr.train(resume_from_checkpoint=True, progress=False)
    foreign = save_checkpoint(str(tmp_path / "foreign"), 1, tr.model, tr.optimizer, tr.scheduler, {"global_step": 1})
    with pytest.raises(ValueError, match="holds no toy state"):
        tr.load_state(foreign)
    state = {"global_step": 1, "batches": 2, "world_size": 2}
    wide = save_checkpoint(str(tmp_path / "wide"), 1, tr.model, tr.optimizer, tr.scheduler, state)
    with pytest.raises(ValueError, match="written by 2 processes; this run has 1"):
        tr.load_state(wide)


def test_time_budget_stops_and_counts_the_seconds_before_a_resume(tmp_path, clock):
    cfg = dict(max_steps=100, max_seconds=3.5, save_steps=2, output_dir=str(tmp_path))
    first = ToyTrainer(ToyConfig(**cfg))
    first.train(progress=False)
    assert first.global_step == 4 and first.elapsed == 4.0  # the step that passes 3.5 s is the last
    assert [r["elapsed"] for r in _metrics(tmp_path, drop=())] == [1.0, 2.0, 3.0, 4.0]
    # the linear schedule decays with the budget, not with max_steps=100: at the 4th update 3 s
    # of the 3.5 were spent
    assert first.scheduler.get_last_lr()[0] == pytest.approx(0.05 * (1 - 3.0 / 3.5), rel=1e-9)

    longer = ToyTrainer(ToyConfig(**{**cfg, "max_seconds": 5.5}))
    longer.train(resume_from_checkpoint=True, progress=False)  # 4 s spent before: two more steps
    assert (longer.global_step, longer.elapsed) == (6, 6.0)
    assert [r["step"] for r in _metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]


def test_a_checkpoint_counts_the_callbacks_seconds(tmp_path, clock):
    def evaluate(step):
        clock.now += 0.25  # an evaluation after the step, before its checkpoint
        return {"held_out": 1.0}

    tr = ToyTrainer(ToyConfig(max_steps=2, save_steps=2, output_dir=str(tmp_path)))
    tr.train(progress=False, callback=evaluate, every=2)
    assert [r["elapsed"] for r in _metrics(tmp_path, drop=())] == [1.0, 2.0]
    assert json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())["elapsed"] == tr.elapsed == 2.25


def test_hooks_callback_and_stop(tmp_path):
    class Stops(ToyTrainer):
        def end_of_step(self, record, log):
            return self.global_step == 3

    tr = Stops(ToyConfig(max_steps=10, save_steps=3, logging_steps=5, output_dir=str(tmp_path / "hook")))
    tr.train(progress=False)
    assert tr.global_step == 3 and [s for s, _ in list_checkpoints(str(tmp_path / "hook"))] == [3]  # stopped after the step's checkpoint

    calls = []
    tr = ToyTrainer(ToyConfig(max_steps=10, logging_steps=5, output_dir=str(tmp_path / "callback")))
    records = tr.train(progress=False, callback=lambda step: calls.append(step) or {"held_out": len(calls)}, every=2,
                       stop=lambda rec: rec["held_out"] >= 3)
    assert calls == [2, 4, 6] and tr.global_step == 6
    # the callback's steps are logged with its metrics, beside the every-5 steps
    assert [(r["step"], r.get("held_out")) for r in records] == [(2, 1), (4, 2), (5, None), (6, 3)]


def test_accumulation_gives_the_gradient_of_one_batch(tmp_path):
    tr = ToyTrainer(ToyConfig(output_dir=str(tmp_path)))
    x, y = tr.batch()

    def mse(b):
        return torch.nn.functional.mse_loss(tr.model(b[0]), b[1]), {"rows": b[0].shape[0]}

    def sse_share(b):  # each micro-batch's share of one sum over the step
        return (tr.model(b[0]) - b[1]).square().sum() / x.shape[0], {"rows": b[0].shape[0]}

    whole, _ = tr.backward_micro_batches([(x, y)], mse, mean_over=1)
    want = [p.grad.clone() for p in tr.model.parameters()]
    halves = [(x[:4], y[:4]), (x[4:], y[4:])]
    for fn, mean_over in ((mse, 2), (sse_share, None)):
        loss, stats = tr.backward_micro_batches(halves, fn, mean_over=mean_over)
        assert loss == pytest.approx(whole, rel=1e-6) and stats == {"rows": 4.0}
        for p, g in zip(tr.model.parameters(), want):
            torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)
    assert any(g.abs().sum() > 0 for g in want)


def test_a_logged_maximum_is_the_largest_over_micro_batches(tmp_path):
    tr = ToyTrainer(ToyConfig(output_dir=str(tmp_path)))
    x, y = tr.batch()
    parts = [(x[:3], y[:3], 5.0), (x[3:], y[3:], 2.0)]

    def fn(b):  # tis_ratio_max as the GRPO loss reports it: one maximum per micro-batch
        return torch.nn.functional.mse_loss(tr.model(b[0]), b[1]), {"rows": b[0].shape[0], "tis_ratio_max": b[2]}

    _, stats = tr.backward_micro_batches(parts, fn, mean_over=2)
    assert stats == {"rows": 4.0, "tis_ratio_max": 5.0}
