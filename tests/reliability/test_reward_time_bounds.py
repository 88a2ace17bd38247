"""Every reward call is bounded in time, on any thread (issue 17, item 6): math-verify runs in a
child process killed past `ANSWER_TIMEOUT_S` (its own SIGALRM timeout works on the main thread
only: `10^(10^10)` hung a worker thread without limit), and the answer and tag scans are linear
(lazy regexes took ~25 s on 20000 unclosed tags). Plus the answers a length cap or a sign made
wrong."""

import threading
import time

import pytest

from r1core.rewards import (
    accuracy,
    accuracy_reward,
    answers_match,
    countdown_reward,
    format_reward,
    language_consistency_reward,
    scratchpad_format_reward,
)
from r1core.rewards.verify_worker import worker

TIMEOUT = 0.5
SLACK = 8.0  # a restarted worker imports sympy again (~1 s, more on a busy CI machine); a hang is unbounded

ADVERSARIAL = [
    "A10^(10^10)", "<answer>10^(10^10)</answer>", "A9**9**9", "<answer>9**9**9**9</answer>", "\\boxed{10^{10^{10}}}",
    "<answer>" * 20000, "<think>" * 20000, "<think>" + "<think>a" * 10000, "\\boxed{" * 20000, ";A" * 30000,
    "T" + "1+1=2," * 20000 + "x", "<answer>" + "(" * 5000 + "1" + ")" * 5000 + "</answer>", "-1.5/" * 30000,
    "<answer>" + "9" * 100000 + "</answer>", "A" + "1/" * 400 + "1",
]
REWARDS = [accuracy_reward, countdown_reward, format_reward, scratchpad_format_reward, language_consistency_reward]
COLUMNS = {"answer": ["1/2"], "numbers": [[3, 5, 7]], "target": [22]}


@pytest.fixture
def short_timeout(monkeypatch):
    monkeypatch.setattr(accuracy, "ANSWER_TIMEOUT_S", TIMEOUT)
    assert answers_match("1/2", "0.5")  # the worker started: its start-up is not the calls' time


def _timed_on_thread(fn):
    """(seconds, result) of fn() on a worker thread; the thread is given up after a minute."""
    box = {}

    def run():
        t0 = time.monotonic()
        box["result"] = fn()
        box["seconds"] = time.monotonic() - t0

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(60)
    assert not th.is_alive(), "a reward call ran for a minute on a worker thread"
    return box["seconds"], box["result"]


@pytest.mark.parametrize("reward", REWARDS, ids=lambda f: f.__name__)
def test_every_reward_call_is_bounded_on_a_worker_thread(short_timeout, reward):
    for completion in ADVERSARIAL:
        seconds, out = _timed_on_thread(lambda: reward([None], [completion], **COLUMNS))
        assert seconds < TIMEOUT + SLACK, (reward.__name__, completion[:40], seconds)
        assert len(out) == 1 and (out[0] is None or 0.0 <= out[0] <= 1.0)


def test_a_stalling_comparison_is_cut_at_the_timeout(short_timeout):
    restarts = worker().restarts
    for on_thread in (True, False):  # math-verify's own timeout never fired on a worker thread
        t0 = time.monotonic()
        ok = _timed_on_thread(lambda: answers_match("5", "10^(10^10)"))[1] if on_thread else answers_match("5", "10^(10^10)")
        assert ok is False and time.monotonic() - t0 < TIMEOUT + SLACK
    assert worker().restarts >= restarts + 1  # killed at least once (sympy may give up by itself on the main thread)
    assert answers_match("1/2", "2/4")  # the next call has a fresh worker


def test_many_threads_share_the_worker(short_timeout):
    results = [None] * 8
    gold = ["1/2", "3/4", "0.25", "2"] * 2
    pred = ["0.5", "6/8", "1/4", "2.0"] * 2

    def check(i):
        results[i] = answers_match(gold[i], pred[i])

    threads = [threading.Thread(target=check, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [True] * 8


def test_long_and_signed_integer_answers():
    big = "7" * 5000  # beyond MAX_ANSWER_CHARS and Python's 4300-digit int() limit
    assert accuracy_reward(None, [f"<answer>{big}</answer>"], answer=[big]) == [1.0]
    assert accuracy_reward(None, [f"<answer>{big}8</answer>"], answer=[big]) == [0.0]
    assert answers_match("123", "+123") and answers_match("+123", "123") and answers_match("-0", "0")
    assert answers_match("1785", "01785") and not answers_match("-5", "5") and not answers_match("12", "-12")
