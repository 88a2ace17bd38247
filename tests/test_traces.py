"""Countdown search traces (r1core.tasks.countdown_traces): both styles parse, replay as legal
searches, and their answers verify with the countdown reward; the search is seeded and budgeted."""

import re

import pytest

from r1core.rewards import countdown_reward, format_reward
from r1core.tasks import generate
from r1core.tasks.countdown_traces import (
    DEAD,
    SOLVED,
    _doomed,
    countdown_trace,
    replay_trace,
    trace_rows,
)


@pytest.fixture(scope="module")
def rows():
    return generate("countdown", "train", 120, seed=3, num_numbers=3, max_number=10, max_target=50)


@pytest.mark.parametrize("style", ["journey", "shortcut"])
def test_solved_traces_parse_and_verify(rows, style):
    traces = [t for t in trace_rows(rows, style, seed=1) if t["solved"]]
    assert len(traces) > 60
    texts = [t["completion"] for t in traces]
    assert format_reward(None, texts) == [1.0] * len(texts)
    assert countdown_reward(None, texts, numbers=[t["numbers"] for t in traces], target=[t["target"] for t in traces]) == [1.0] * len(texts)
    for t in traces:
        steps, answer = replay_trace(t["completion"])
        assert steps and answer
        assert t["completion"].count(SOLVED) == 1


def test_journey_backtracks_and_shortcut_is_its_path(rows):
    backtracked = 0
    for i, r in enumerate(rows):
        j = countdown_trace(r["numbers"], r["target"], "journey", seed=i)
        s = countdown_trace(r["numbers"], r["target"], "shortcut", seed=i)
        assert (j.solved, j.steps) == (s.solved, s.steps)  # the same search, the same answer
        if j.solved:
            assert DEAD not in s.text and replay_trace(s.text)[0] == list(s.steps) == replay_trace(j.text)[0]
            assert len(s.text) <= len(j.text)
            backtracked += DEAD in j.text
    assert backtracked > 10  # wrong branches, checked and left


def test_node_restates_target_and_dead_end_marker_differs():
    t = countdown_trace([5, 3, 4], 12, "journey", seed=0)
    assert t.solved
    body = t.text.split("<think>")[1].split("</think>")[0]
    for part in body.split("|")[1:]:
        node = part.split(":")[1].rstrip(DEAD + SOLVED)
        assert node.endswith(">12")
    assert body.endswith("12>12" + SOLVED)


def test_doomed_node_is_cut(rows):
    # nothing from 1, 1 and 2 reaches 50: the root is a dead end with no step tried
    t = countdown_trace([1, 1, 2], 50, "journey")
    assert (t.text, t.solved, t.expanded) == ("<think>1,1,2>50^</think><answer></answer>", False, 0)
    cut = 0
    for r in rows:  # a node whose values cannot reach the target is never expanded, and is marked dead
        body = countdown_trace(r["numbers"], r["target"], "journey", order="random", budget=40).text.split("</think>")[0][7:]
        parts = re.findall(r"\|[^:|^!]+:[^|^!]+|[\^!]|[^|^!]+", body)
        for k, part in enumerate(parts[:-1]):
            if part in "^!":
                continue
            node = part.split(":")[-1]
            values = tuple(int(x) for x in node.split(">")[0].split(","))
            if len(values) > 1 and _doomed(values, int(node.split(">")[1])):
                assert parts[k + 1] == "^", (body, node)
                cut += 1
    assert cut > 0


def test_seeded_order_and_budget(rows):
    r = rows[0]
    a = countdown_trace(r["numbers"], r["target"], "journey", seed=5, order="random")
    assert a == countdown_trace(r["numbers"], r["target"], "journey", seed=5, order="random")
    texts = {countdown_trace(r["numbers"], r["target"], "journey", seed=s, order="random").text for s in range(8)}
    assert len(texts) > 1
    tight = trace_rows(rows, "journey", budget=2)
    assert any(not t["solved"] for t in tight) and all(t["expanded"] <= 2 for t in tight)
    for t in tight:
        if not t["solved"]:
            assert t["completion"].endswith("<answer></answer>")
            assert countdown_reward(None, [t["completion"]], numbers=[t["numbers"]], target=[t["target"]]) == [0.0]


def test_replay_rejects_wrong_traces():
    with pytest.raises(ValueError, match="not legal"):
        replay_trace("<think>5,3,4>12|5+4=8:3,8>12^</think><answer></answer>")
    with pytest.raises(ValueError, match="should list"):
        replay_trace("<think>5,3,4>12|5+4=9:3,8>12^</think><answer></answer>")
    with pytest.raises(ValueError, match="not the target"):
        replay_trace("<think>5,3,4>12|5+4=9:3,9>12|9-3=6:6>12!</think><answer>(5+4)-3</answer>")


def test_bad_arguments_are_named():
    for kwargs, word in (({"style": "tree"}, "style"), ({"order": "bfs"}, "order"), ({"budget": 0}, "budget")):
        with pytest.raises(ValueError, match=word):
            countdown_trace([1, 2], 3, **kwargs)


def test_hint_prompt():
    from r1core.tasks.countdown_traces import hint_prompt

    hinted = hint_prompt("8,3,2>22:", "(8+3)*2")
    assert hinted == "8,3,2>22@(8+3)*2:"
    with pytest.raises(ValueError, match="prompt"):
        hint_prompt(hinted, "(8+3)*2")
