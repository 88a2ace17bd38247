"""DistillTrainer and DistillConfig: the logit loss equals the generalised JSD on full logits; a
logit-distilled student's KL to the teacher falls; GKD with lmbda 0 and 1 takes the dataset's and
the student's completions, seq_kd the teacher's; the reverse-KL policy gradient has the gradient of
-sum(A * log p); a killed and resumed run ends where an uninterrupted one ends; two gloo processes
give the gradients of one on the same global batch; bad input is named."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from r1core.engine.outputs import CompletionOutput
from r1core.recipes.base_model import BaseModelSpec, build_model, build_tokenizer
from r1core.tasks import generate
from r1core.tasks.tokenizer import build_tokenizer as char_tokenizer
from r1core.trainers import DistillConfig, DistillTrainer
from r1core.trainers.distill import teacher_states

TEACHER = BaseModelSpec(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)
STUDENT = BaseModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)


def _rows(n=16, seed=None):
    seed = int(torch.randint(0, 10**6, ())) if seed is None else seed
    return [{"prompt": r["prompt"], "completion": r["solution"]} for r in generate("addition", "train", n, seed=seed, digits=2)]


def make(tmp_path, rows=None, seed=None, **kw):
    seed = int(torch.randint(0, 10**6, ())) if seed is None else seed
    tok = build_tokenizer()
    teacher, student = build_model(tok, TEACHER, seed=seed), build_model(tok, STUDENT, seed=seed + 1)
    cfg = {"per_device_train_batch_size": 4, "max_new_tokens": 8, "max_steps": 2, "logging_steps": 1, "learning_rate": 3e-3,
           "output_dir": str(tmp_path / "out"), "seed": seed, **kw}
    return DistillTrainer(student, teacher, tok, rows if rows is not None else _rows(seed=seed), DistillConfig(**cfg))


def _log_softmax(model, b, temperature):
    logits = model(input_ids=b.input_ids, position_ids=b.position_ids, attention_mask=b.attention_mask).logits.double()
    return (logits[:, :-1][b.loss_mask[:, 1:]] / temperature).log_softmax(-1)  # [N, V]


def _jsd(s, t, beta):
    """TRL's generalized_jsd_loss per token on log-probs s, t [N, V] (float64)."""
    if beta == 0:
        return (t.exp() * (t - s)).sum(-1)
    if beta == 1:
        return (s.exp() * (s - t)).sum(-1)
    m = torch.logsumexp(torch.stack([s + torch.log(torch.tensor(1 - beta)), t + torch.log(torch.tensor(beta))]), 0)
    return beta * (t.exp() * (t - m)).sum(-1) + (1 - beta) * (s.exp() * (s - m)).sum(-1)


@pytest.mark.parametrize("field,value", [("lmbda", 1.5), ("beta", -0.1), ("temperature", 0.0), ("mode", "jsd"), ("max_new_tokens", 0),
                                         ("weight_hard_loss", -1.0), ("per_device_train_batch_size", 0), ("output_dir", ""),
                                         ("seq_kd", "yes")])
def test_config_rejects_out_of_range(field, value):
    with pytest.raises(ValueError, match=f"DistillConfig.{field}"):
        DistillConfig(**{field: value})


def test_config_rejects_off_policy_switches_with_reverse_kl_pg():
    with pytest.raises(ValueError, match="DistillConfig.seq_kd"):
        DistillConfig(mode="reverse_kl_pg", seq_kd=True)
    with pytest.raises(ValueError, match="DistillConfig.weight_hard_loss"):
        DistillConfig(mode="reverse_kl_pg", weight_hard_loss=0.5)


@pytest.mark.parametrize("beta,temperature,hard", [(0.0, 1.0, 0.0), (0.3, 0.7, 0.0), (1.0, 1.3, 0.5)])
def test_logit_loss_is_the_jsd_on_full_logits(tmp_path, beta, temperature, hard):
    tr = make(tmp_path, lmbda=0.0, beta=beta, temperature=temperature, weight_hard_loss=hard)
    b = tr.make_batch(tr.next_positions())
    out = tr.accumulate_gradients(b)
    s, t = _log_softmax(tr.model, b, temperature), _log_softmax(tr.teacher, b, temperature)
    ce = -_log_softmax(tr.model, b, 1.0).gather(-1, b.targets[:, None]).squeeze(-1)
    want = (_jsd(s, t, beta) + hard * ce).mean().item()
    assert out["tokens"] == b.targets.numel() > 0
    assert out["loss"] == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert teacher_states(tr.teacher, b).shape == (b.targets.numel(), TEACHER.hidden_size)
    assert all(p.grad is None for p in tr.teacher.parameters())  # the teacher is frozen


def test_logit_distillation_lowers_the_kl_to_the_teacher(tmp_path):
    rows = _rows(8)
    tr = make(tmp_path, rows=rows, lmbda=0.0, beta=0.0, temperature=1.0, learning_rate=1e-2, max_steps=25, logging_steps=25,
              per_device_train_batch_size=8)
    b = tr.make_batch(list(range(8)))  # one epoch: every row

    def kl():
        with torch.no_grad():
            return _jsd(_log_softmax(tr.model, b, 1.0), _log_softmax(tr.teacher, b, 1.0), 0.0).mean().item()

    before = kl()
    tr.train(progress=False)
    assert kl() < 0.5 * before


class SpyEngine:
    """An engine that counts its calls (and can refuse them)."""

    def __init__(self, inner=None):
        self.inner, self.calls = inner, 0

    def generate(self, prompts, params):
        self.calls += 1
        if self.inner is None:
            raise AssertionError("this engine must not be used")
        return self.inner.generate(prompts, params)

    def weights_updated(self):
        pass


def test_gkd_lmbda_0_trains_on_the_dataset_and_1_on_the_students_samples(tmp_path):
    from r1core.engine import Engine

    tr = make(tmp_path, lmbda=0.0, max_steps=3)
    tr.engine, tr.teacher_engine = SpyEngine(), SpyEngine()
    recs = tr.train(progress=False)
    assert [r["on_policy"] for r in recs] == [0.0] * 3 and "gen_tokens" not in recs[-1]

    # lmbda 1: only prompts are needed; every step samples from the student's live weights
    rows = [{"prompt": r["prompt"]} for r in _rows()]
    tr = make(tmp_path, rows=rows, lmbda=1.0, max_steps=3, output_dir=str(tmp_path / "on"))
    tr.engine, tr.teacher_engine = SpyEngine(Engine(tr.model, tokenizer=tr.tokenizer, num_blocks=64)), SpyEngine()
    recs = tr.train(progress=False)
    assert tr.engine.calls == 3 and [r["on_policy"] for r in recs] == [1.0] * 3 and recs[-1]["gen_tokens"] > 0

    # seq_kd: the off-policy steps take the teacher's samples
    tr = make(tmp_path, rows=rows, lmbda=0.0, seq_kd=True, max_steps=2, output_dir=str(tmp_path / "seq"))
    tr.engine, tr.teacher_engine = SpyEngine(), SpyEngine(Engine(tr.teacher, tokenizer=tr.tokenizer, num_blocks=64))
    recs = tr.train(progress=False)
    assert tr.teacher_engine.calls == 2 and [r["teacher_samples"] for r in recs] == [1.0] * 2


def test_gkd_lmbda_half_mixes_by_a_seeded_draw(tmp_path):
    a, b = make(tmp_path, lmbda=0.5, seed=5), make(tmp_path, lmbda=0.5, seed=5)
    draws = [a.completion_source() for _ in range(40)]
    assert draws == [b.completion_source() for _ in range(40)]
    assert 10 <= draws.count("student") <= 30 and set(draws) == {"student", "dataset"}


def _sampled(tr, positions, g):
    """Completions as the engine gives them: token ids and their sampling log-probs."""
    out = []
    for _ in positions:
        n = int(torch.randint(1, 6, (), generator=g))
        ids = torch.randint(9, len(tr.tokenizer), (n,), generator=g).tolist()
        out.append(CompletionOutput(0, ids, "", (-torch.rand(n, generator=g) * 3).tolist(), "stop"))
    return out


def test_reverse_kl_policy_gradient(tmp_path):
    tr = make(tmp_path, mode="reverse_kl_pg", temperature=1.0)
    positions = tr.next_positions()
    b = tr.make_batch(positions, _sampled(tr, positions, torch.Generator().manual_seed(0)))
    out = tr.accumulate_gradients(b)
    got = {n: p.grad.clone() for n, p in tr.model.named_parameters()}
    # the reference: -sum over sampled tokens of A * log p_student / N, A = log p_teacher - sampling log-prob
    tr.model.zero_grad()
    sel = b.loss_mask[:, 1:]
    s = _log_softmax(tr.model, b, 1.0).gather(-1, b.targets[:, None]).squeeze(-1)
    with torch.no_grad():
        t = _log_softmax(tr.teacher, b, 1.0).gather(-1, b.targets[:, None]).squeeze(-1)
    adv = t - b.sample_logprobs[:, 1:][sel].double()
    (-(adv * s).sum() / sel.sum()).backward()
    for n, p in tr.model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, atol=1e-6, rtol=1e-4, msg=lambda m: f"{n}: {m}")
    assert out["reverse_kl"] == pytest.approx(-adv.mean().item(), rel=1e-4, abs=1e-6)


def test_reverse_kl_pg_trains_on_the_students_samples(tmp_path):
    rows = [{"prompt": r["prompt"]} for r in _rows()]
    recs = make(tmp_path, rows=rows, mode="reverse_kl_pg", max_steps=2).train(progress=False)
    assert [r["on_policy"] for r in recs] == [1.0, 1.0] and all("reverse_kl" in r for r in recs)


def test_killed_and_resumed_run_ends_like_an_uninterrupted_one(tmp_path):
    seed = int(torch.randint(0, 10**6, ()))
    rows = _rows(6, seed)
    kw = {"lmbda": 0.5, "max_steps": 4, "save_steps": 2, "seed": seed, "rows": rows}
    whole = make(tmp_path / "a", **kw)
    want = whole.train(progress=False)
    cut = make(tmp_path / "b", **{**kw, "max_steps": 2})
    cut.train(progress=False)
    resumed = make(tmp_path / "b", **kw)
    got = resumed.train(resume_from_checkpoint=True, progress=False)
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert [r["step"] for r in got] == [1, 2, 3, 4]  # the records before the kill are kept
    for g, w in zip(got, want):
        assert (g["on_policy"], g["tokens"]) == (w["on_policy"], w["tokens"]) and g["loss"] == pytest.approx(w["loss"], rel=1e-4)
    with pytest.raises(ValueError, match="training rows"):
        make(tmp_path / "b", **{**kw, "rows": rows[:5]}).train(resume_from_checkpoint=True, progress=False)


def test_bad_input_is_named(tmp_path):
    tok = build_tokenizer()
    student = build_model(tok, STUDENT, seed=0)
    teacher = build_model(tok, TEACHER, seed=1)
    rows = _rows(4)
    cfg = DistillConfig(output_dir=str(tmp_path))
    other = char_tokenizer("0123456789+=")  # another vocabulary
    with pytest.raises(ValueError, match="teacher_model's vocabulary has .* distillation needs one tokenizer"):
        DistillTrainer(student, build_model(other, TEACHER, seed=1), tok, rows, cfg)
    shuffled = char_tokenizer("".join(reversed("0123456789+-*/=,;:>()TA")))  # same size, other ids
    with pytest.raises(ValueError, match="teacher_tokenizer differs from tokenizer"):
        DistillTrainer(student, teacher, tok, rows, cfg, teacher_tokenizer=shuffled)
    with pytest.raises(ValueError, match="train_dataset is empty"):
        DistillTrainer(student, teacher, tok, [], cfg)
    with pytest.raises(ValueError, match="row 0 needs a string 'completion' column"):
        DistillTrainer(student, teacher, tok, [{"prompt": "1+1="}], cfg)
    DistillTrainer(student, teacher, tok, [{"prompt": "1+1="}], DistillConfig(lmbda=1.0, output_dir=str(tmp_path)))  # on-policy: prompts do
    with pytest.raises(ValueError, match="teacher_model is on meta and the student \\(model\\) on cpu"):
        DistillTrainer(student, build_model(tok, TEACHER, seed=1).to("meta"), tok, rows, cfg)
    with pytest.raises(ValueError, match="teacher_model must be"):
        DistillTrainer(student, "teacher", tok, rows, cfg)
    with pytest.raises(ValueError, match="more than max_seq_length=8"):
        DistillTrainer(student, teacher, tok, rows, DistillConfig(max_seq_length=8, output_dir=str(tmp_path)))


# ---- two processes ---------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_trainer(seed, mode, per_device):
    tok = build_tokenizer()
    teacher, student = build_model(tok, TEACHER, seed=seed), build_model(tok, STUDENT, seed=seed + 1)
    cfg = DistillConfig(mode=mode, lmbda=0.0, beta=0.4, per_device_train_batch_size=per_device, output_dir="/tmp/unused", seed=seed)
    return DistillTrainer(student, teacher, tok, _rows(8, seed), cfg)


def _ddp_batch(tr, mode, positions, seed):
    if mode == "logit":
        return tr.make_batch(positions)
    g = torch.Generator().manual_seed(seed)
    comps = _sampled(tr, range(8), g)  # the global batch's samples, this rank's share of them
    return tr.make_batch(positions, [comps[k] for k in positions])


def _worker(rank, world, port, seed, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), OMP_WAIT_POLICY="PASSIVE")
    torch.set_num_threads(1)
    from r1core.trainers import distributed as dist

    assert dist.init_from_env(backend="gloo")
    try:
        for mode in ("logit", "reverse_kl_pg"):
            tr = _ddp_trainer(seed, mode, 8 // world)
            positions = tr.next_positions()
            out = tr.accumulate_gradients(_ddp_batch(tr, mode, positions, seed))
            torch.save({"loss": out["loss"], "positions": positions, "grads": {n: p.grad.clone() for n, p in tr.model.named_parameters()}},
                       os.path.join(result_dir, f"{mode}{rank}.pt"))
        torch.distributed.barrier()  # rank 0 hosts the store: keep it until rank 1 is done
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_equal_one(tmp_path):
    seed = int(torch.randint(0, 10**6, ()))
    mp.spawn(_worker, args=(2, _free_port(), seed, str(tmp_path)), nprocs=2, join=True)
    for mode in ("logit", "reverse_kl_pg"):
        tr = _ddp_trainer(seed, mode, 8)
        positions = tr.next_positions()
        want = tr.accumulate_gradients(_ddp_batch(tr, mode, positions, seed))
        res = [torch.load(tmp_path / f"{mode}{r}.pt") for r in range(2)]
        assert res[0]["positions"] + res[1]["positions"] == positions  # the ranks split the global batch in order
        for r in res:
            assert r["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-7), mode
            for n, p in tr.model.named_parameters():
                torch.testing.assert_close(r["grads"][n], p.grad, atol=1e-6, rtol=1e-4, msg=lambda m: f"{mode} {n}: {m}")
