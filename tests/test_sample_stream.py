"""SampleStream: the tensor SplitMix64 equals the Python-int one bit for bit, draws depend only on
(seed, index, draw number), and the uniforms are uniform."""

import random

import torch

from r1core.engine.sample_stream import SampleStream, sample_stream, uniform_reference, uniforms


def test_tensor_draws_equal_the_python_reference_for_any_key_and_counter():
    rng = random.Random(torch.randint(0, 2**31, ()).item())
    keys = [rng.getrandbits(64) for _ in range(200)] + [0, 1, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]
    streams = [SampleStream(k, counter=rng.randrange(0, 1 << 40)) for k in keys]
    want = [uniform_reference(s.key, s.counter) for s in streams]
    got = uniforms(streams).tolist()
    assert got == want
    assert all(0.0 <= u < 1.0 for u in got)


def test_each_draw_moves_its_stream_on_and_depends_on_nothing_else_in_the_batch():
    alone = sample_stream(42, 3)
    first = [uniforms([alone]).item() for _ in range(5)]
    assert alone.counter == 5 and len(set(first)) == 5
    mates = [sample_stream(s, i) for s, i in ((1, 0), (42, 3), (-7, 2), (2**70, 1))]
    batched = [uniforms(mates)[1].item() for _ in range(5)]
    assert batched == first
    assert [s.counter for s in mates] == [5] * 4
    # seeds and indices that differ give different streams
    firsts = {uniforms([sample_stream(s, i)]).item() for s in range(20) for i in range(20)}
    assert len(firsts) == 400


def test_uniforms_are_uniform():
    streams = [sample_stream(torch.randint(0, 2**31, ()).item(), i) for i in range(4000)]
    u = torch.cat([uniforms(streams) for _ in range(5)])
    counts = torch.histc(u.float(), bins=10, min=0.0, max=1.0)
    expected = u.numel() / 10
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 40.0, f"chi-square {chi2:.1f} over 10 bins (9 degrees of freedom; 40 has p ~ 1e-5)"
    # draws of one stream are not correlated with the next
    x = u.view(5, -1)
    r = torch.corrcoef(torch.stack([x[0], x[1]]))[0, 1]
    assert abs(float(r)) < 0.06
