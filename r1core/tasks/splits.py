"""Held-out splits decided by a hash of the problem, so train and test are disjoint by construction.

A problem's split depends only on its canonical key (e.g. "989+796"), never on the seed or on how
many rows were asked for: two datasets drawn with different seeds agree on which problems are test.
"""
import hashlib

SPLITS = ("train", "test")
TEST_FRACTION = 0.1


def problem_split(key: str, test_fraction: float = TEST_FRACTION) -> str:
    """"train" or "test" for the problem with canonical key `key`."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected a value in (0, 1), got {test_fraction!r}")
    # blake2b rather than hash(): Python's str hash is salted per process
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64  # uniform in [0, 1)
    return "test" if u < test_fraction else "train"


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
