"""Sampler on synthetic logits: the draw follows softmax(logits / T) restricted by top-k, top-p and
min-p; log-probs are those of the untruncated distribution; seeds fix the draws."""

from types import SimpleNamespace

import pytest
import torch

from r1core.engine.sample_stream import sample_stream
from r1core.engine.sampler import Sampler
from r1core.engine.sampling_params import SamplingParams


def rows(params, n, seed0=0):
    return [SimpleNamespace(params=params, rng=sample_stream(seed0, i)) for i in range(n)]


def draw(logits_row, params, n=4000):
    logits = logits_row[None].expand(n, -1).contiguous()
    tokens, lps = Sampler()(logits, rows(params, n, seed0=int(torch.randint(0, 2**30, ()))))
    return torch.tensor(tokens), torch.tensor(lps)


@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float32, 1e-5, 1e-5)])
@pytest.mark.parametrize("kw, allowed", [
    (dict(), [0, 1, 2, 3]),
    (dict(top_k=2), [0, 1]),
    (dict(top_p=0.6), [0, 1]),
    (dict(top_p=0.45), [0]),
    (dict(min_p=0.5), [0, 1]),
    (dict(top_k=3, min_p=0.3), [0, 1]),
])
def test_truncation_and_frequencies(kw, allowed, dtype, atol, rtol):
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=dtype)
    logits = p.log()
    tokens, lps = draw(logits, SamplingParams(temperature=1.0, **kw))
    assert set(tokens.tolist()) == set(allowed)
    kept = torch.zeros(4)
    kept[allowed] = p[allowed]
    freq = torch.bincount(tokens, minlength=4).float() / len(tokens)
    torch.testing.assert_close(freq, kept / kept.sum(), atol=0.035, rtol=0)
    # log-probs of the full, untruncated distribution
    torch.testing.assert_close(lps, p.log()[tokens], atol=atol, rtol=rtol)


def test_temperature_scales_the_distribution():
    p = torch.tensor([0.6, 0.3, 0.1])
    tokens, lps = draw(p.log(), SamplingParams(temperature=2.0))
    q = torch.softmax(p.log() / 2.0, -1)
    freq = torch.bincount(tokens, minlength=3).float() / len(tokens)
    torch.testing.assert_close(freq, q, atol=0.035, rtol=0)
    torch.testing.assert_close(lps, q.log()[tokens], atol=1e-5, rtol=1e-5)


def test_greedy_rows_in_a_mixed_batch():
    logits = torch.randn(6, 50)
    params = [SamplingParams(temperature=0), SamplingParams(temperature=1.0)] * 3
    seqs = [SimpleNamespace(params=p, rng=sample_stream(3, i)) for i, p in enumerate(params)]
    tokens, lps = Sampler()(logits, seqs)
    assert tokens[0::2] == logits[0::2].argmax(-1).tolist()
    torch.testing.assert_close(torch.tensor(lps), torch.log_softmax(logits, -1)[torch.arange(6), tokens], atol=1e-5, rtol=1e-5)


def test_seeded_rows_do_not_depend_on_neighbours():
    logits = torch.randn(5, 64)
    params = SamplingParams(temperature=1.0, top_p=0.9)
    alone, _ = Sampler()(logits[2:3], [SimpleNamespace(params=params, rng=sample_stream(42, 0))])
    seqs = [SimpleNamespace(params=params, rng=sample_stream(s, 0)) for s in (1, 2, 42, 4, 5)]
    batched, _ = Sampler()(logits, seqs)
    assert batched[2] == alone[0]
