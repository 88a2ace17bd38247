"""`SampleStream`: the uniforms one sequence draws from, counter-based. Draw k of the stream with
key s is SplitMix64's output k for seed s, mix(s + (k + 1) * golden), so a batch's uniforms come
from its streams' keys and counters in a dozen tensor ops (`uniforms`), not from a torch.Generator
call per sequence (128 rows a decode step, ~10 us each, were about a sixth of the default run's
generation). A stream depends only on its (seed, sample index), so a request draws the same
samples whatever shares its batch, and a stream restarted from the same pair draws them again.

`uniform_reference` is the same arithmetic on Python ints (mod 2**64), what the tests hold the
tensor version to."""

from __future__ import annotations

import torch

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _signed(x: int) -> int:
    """x mod 2**64 as the int64 with the same bits."""
    x &= _MASK
    return x - (1 << 64) if x >> 63 else x


def _mix_int(z: int) -> int:
    z &= _MASK
    z = ((z ^ (z >> 30)) * _M1) & _MASK
    z = ((z ^ (z >> 27)) * _M2) & _MASK
    return z ^ (z >> 31)


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    # logical shift: >> on int64 tensors is arithmetic
    return (z >> s) & ((1 << (64 - s)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    # int64 products wrap mod 2**64, the unsigned arithmetic SplitMix64 is written in (tested
    # against _mix_int)
    z = (z ^ _shr(z, 30)) * _signed(_M1)
    z = (z ^ _shr(z, 27)) * _signed(_M2)
    return z ^ _shr(z, 31)


class SampleStream:
    """key: the stream (int64 bits); counter: the draws made so far."""

    __slots__ = ("key", "counter")

    def __init__(self, key: int, counter: int = 0):
        self.key = _signed(key)
        self.counter = counter

    def __repr__(self) -> str:
        return f"SampleStream(key={self.key}, counter={self.counter})"


def sample_stream(seed: int, index: int) -> SampleStream:
    """The stream of sample `index` of a request seeded with `seed`."""
    return SampleStream(_mix_int(seed + index * _GOLDEN))


def uniforms(streams: list[SampleStream]) -> torch.Tensor:
    """The next uniform in [0, 1) of each stream, float64 [len(streams)]; each counter moves on by one."""
    keys = torch.tensor([s.key for s in streams], dtype=torch.int64)
    counters = torch.tensor([s.counter + 1 for s in streams], dtype=torch.int64)
    for s in streams:
        s.counter += 1
    z = _mix(keys + counters * _signed(_GOLDEN))
    return _shr(z, 11).double() * 2.0**-53  # the top 53 bits: every double in [0, 1) on that grid


def uniform_reference(key: int, counter: int) -> float:
    """Draw `counter` (0-based) of the stream with `key`, on Python ints."""
    z = _mix_int((key & _MASK) + (counter + 1) * _GOLDEN)
    return (z >> 11) * 2.0**-53
