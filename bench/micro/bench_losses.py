"""The loss ops, forward and forward + backward, against the reference and the peers installed:
TRL's math on materialised logits, Liger-Kernel's fused linear losses."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from _shapes import ATTN_SHAPES, LOSS_SHAPES, MODELS, params  # noqa: F401

import r1kernels
from r1kernels import reference

HAS_TRL = importlib.util.find_spec("trl") is not None
HAS_LIGER = importlib.util.find_spec("liger_kernel") is not None
OPTS = dict(beta=0.04, epsilon_low=0.2, epsilon_high=0.28, temperature=1.0)


def head_inputs(shape, seed=0):
    name, B, T = shape
    m = MODELS[name]
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, m.hidden, generator=g)
    weight = torch.randn(m.vocab, m.hidden, generator=g) * (2.0 / m.hidden**0.5)
    targets = torch.randint(0, m.vocab, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) < 0.9
    advantages = torch.randn(B, generator=g)
    with torch.no_grad():
        lp = r1kernels.token_logprobs(hidden, weight, targets)
    old = lp + 0.1 * torch.randn(B, T, generator=g)
    ref = lp + 0.1 * torch.randn(B, T, generator=g)
    return dict(hidden=hidden, weight=weight, targets=targets, mask=mask, advantages=advantages, old=old, ref=ref)


def leaves(*ts):
    return [t.detach().requires_grad_() for t in ts]


def run(benchmark, group, backward, fn):
    """Benchmark fn() (its loss, backward too when asked) in `group` + /forward or /backward."""
    benchmark.group = f"{group}/{'forward+backward' if backward else 'forward'}"

    def once():
        if backward:
            fn().backward()
        else:
            with torch.no_grad():
                fn()

    benchmark(once)


PASS = pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])


# --- group_advantages (no backward) ----------------------------------------------------------------
@pytest.mark.parametrize("impl", ["r1kernels", "reference"])
@pytest.mark.parametrize("rows", [64, 4096])
def bench_group_advantages(benchmark, impl, rows):
    rewards = torch.rand(rows)
    f = r1kernels.group_advantages if impl == "r1kernels" else reference.group_advantages
    benchmark.group = "group_advantages"
    benchmark(lambda: f(rewards, 16))


# --- token_logprobs -----------------------------------------------------------------------------
@PASS
@pytest.mark.parametrize("impl", ["r1kernels", "reference", "trl"])
@pytest.mark.parametrize("shape", params(LOSS_SHAPES))
def bench_token_logprobs(benchmark, shape, impl, backward):
    if impl == "trl" and not HAS_TRL:
        pytest.skip("trl is not installed")
    inp = head_inputs(shape)

    def fn():
        h, w = leaves(inp["hidden"], inp["weight"])
        if impl == "r1kernels":
            return r1kernels.token_logprobs(h, w, inp["targets"]).sum()
        if impl == "reference":
            return reference.token_logprobs(h, w, inp["targets"]).sum()
        from trl.trainer.utils import selective_log_softmax

        return selective_log_softmax(h @ w.T, inp["targets"]).sum()

    run(benchmark, "token_logprobs", backward, fn)


# --- grpo_loss ----------------------------------------------------------------------------------
def trl_grpo_math(logps, inp):
    """TRL's GRPOTrainer._compute_loss for loss_type "grpo" on given log-probs."""
    mask, adv = inp["mask"].float(), inp["advantages"].unsqueeze(1)
    coef_1 = torch.exp(logps - inp["old"])
    coef_2 = torch.clamp(coef_1, 1 - OPTS["epsilon_low"], 1 + OPTS["epsilon_high"])
    per_token = -torch.min(coef_1 * adv, coef_2 * adv)
    d = inp["ref"] - logps
    per_token = per_token + OPTS["beta"] * (torch.exp(d) - d - 1)
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


@PASS
@pytest.mark.parametrize("impl", ["r1kernels", "reference", "trl", "liger"])
@pytest.mark.parametrize("shape", params(LOSS_SHAPES))
def bench_grpo_loss(benchmark, shape, impl, backward):
    if (impl == "trl" and not HAS_TRL) or (impl == "liger" and not HAS_LIGER):
        pytest.skip(f"{impl} is not installed")
    inp = head_inputs(shape)
    kw = dict(mask=inp["mask"], old_logprobs=inp["old"], ref_logprobs=inp["ref"], loss_type="grpo", **OPTS)
    liger = None
    if impl == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

        liger = LigerFusedLinearGRPOLoss(
            beta=OPTS["beta"],
            compiled=False,
            use_ref_model=True,
            epsilon_low=OPTS["epsilon_low"],
            epsilon_high=OPTS["epsilon_high"],
            loss_type="grpo",
            temperature=1.0,
        )

    def fn():
        h, w = leaves(inp["hidden"], inp["weight"])
        if impl == "r1kernels":
            return r1kernels.grpo_loss(h, w, inp["targets"], inp["advantages"], **kw)[0]
        if impl == "reference":
            return reference.grpo_loss(
                h,
                w,
                inp["targets"],
                inp["advantages"],
                inp["mask"],
                inp["old"],
                inp["ref"],
                beta=OPTS["beta"],
                epsilon_low=0.2,
                epsilon_high=0.28,
                loss_type="grpo",
            )[0]
        if impl == "liger":
            return liger(
                h,
                w,
                inp["targets"],
                inp["mask"].long(),
                inp["advantages"],
                ref_per_token_logps=inp["ref"],
                old_per_token_logps=inp["old"],
            )[0]
        from trl.trainer.utils import selective_log_softmax

        return trl_grpo_math(selective_log_softmax(h @ w.T, inp["targets"]), inp)

    run(benchmark, "grpo_loss", backward, fn)


@PASS
@pytest.mark.parametrize("impl", ["r1kernels", "reference", "trl"])
@pytest.mark.parametrize("shape", params(LOSS_SHAPES[:2]))
def bench_grpo_loss_from_logits(benchmark, shape, impl, backward):
    if impl == "trl" and not HAS_TRL:
        pytest.skip("trl is not installed")
    inp = head_inputs(shape)
    logits = inp["hidden"] @ inp["weight"].T

    def fn():
        (z,) = leaves(logits)
        if impl == "r1kernels":
            return r1kernels.grpo_loss_from_logits(
                z,
                inp["targets"],
                inp["advantages"],
                mask=inp["mask"],
                old_logprobs=inp["old"],
                ref_logprobs=inp["ref"],
                loss_type="grpo",
                **OPTS,
            )[0]
        if impl == "reference":
            return reference.grpo_loss_from_logits(
                z,
                inp["targets"],
                inp["advantages"],
                inp["mask"],
                inp["old"],
                inp["ref"],
                beta=OPTS["beta"],
                epsilon_low=0.2,
                epsilon_high=0.28,
                loss_type="grpo",
            )[0]
        from trl.trainer.utils import selective_log_softmax

        return trl_grpo_math(selective_log_softmax(z, inp["targets"]), inp)

    run(benchmark, "grpo_loss_from_logits", backward, fn)


# --- distill_loss -------------------------------------------------------------------------------
def distill_inputs(shape):
    inp = head_inputs(shape)
    g = torch.Generator().manual_seed(1)
    teacher_hidden = torch.randn(inp["hidden"].shape, generator=g)
    teacher_weight = torch.randn(inp["weight"].shape, generator=g) * (2.0 / inp["weight"].shape[1] ** 0.5)
    labels = inp["targets"].masked_fill(~inp["mask"], -100)
    return inp["hidden"], inp["weight"], teacher_hidden, teacher_weight, labels


def trl_jsd(student_logits, teacher_logits, labels, beta):
    from trl.experimental.gkd import GKDTrainer

    return GKDTrainer.generalized_jsd_loss(student_logits, teacher_logits, labels, beta=beta)


@PASS
@pytest.mark.parametrize("impl", ["r1kernels", "reference", "trl", "liger"])
@pytest.mark.parametrize("shape", params(LOSS_SHAPES))
def bench_distill_loss(benchmark, shape, impl, backward):
    if (impl == "trl" and not HAS_TRL) or (impl == "liger" and not HAS_LIGER):
        pytest.skip(f"{impl} is not installed")
    sh, sw, th, tw, labels = distill_inputs(shape)
    liger = None
    if impl == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss

        liger = LigerFusedLinearJSDLoss(weight_hard_loss=0.0, weight_soft_loss=1.0, beta=0.5, compiled=False)

    def fn():
        h, w = leaves(sh, sw)
        if impl == "r1kernels":
            return r1kernels.distill_loss(h, w, th, tw, labels, beta=0.5)
        if impl == "reference":
            return reference.distill_loss(h, w, th, tw, labels, beta=0.5)
        if impl == "liger":
            return liger(h.reshape(-1, h.shape[-1]), w, th.reshape(-1, th.shape[-1]), tw, labels.reshape(-1))
        return trl_jsd(h @ w.T, th @ tw.T, labels, 0.5)

    run(benchmark, "distill_loss", backward, fn)


@PASS
@pytest.mark.parametrize("impl", ["r1kernels", "reference", "trl"])
@pytest.mark.parametrize("shape", params(LOSS_SHAPES[:2]))
def bench_distill_loss_from_logits(benchmark, shape, impl, backward):
    if impl == "trl" and not HAS_TRL:
        pytest.skip("trl is not installed")
    sh, sw, th, tw, labels = distill_inputs(shape)
    s_logits, t_logits = sh @ sw.T, th @ tw.T

    def fn():
        (z,) = leaves(s_logits)
        if impl == "r1kernels":
            return r1kernels.distill_loss_from_logits(z, t_logits, labels, beta=0.5)
        if impl == "reference":
            return reference.distill_loss_from_logits(z, t_logits, labels, beta=0.5)
        return trl_jsd(z, t_logits, labels, 0.5)

    run(benchmark, "distill_loss_from_logits", backward, fn)
