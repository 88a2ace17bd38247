"""countdown_trace_reward: right answer and a trace that replays from the problem, or 0."""

import random

import pytest

from r1core.rewards import countdown_reward
from r1core.rewards.countdown_trace import countdown_trace_reward, trace_is_sound
from r1core.tasks.countdown_traces import countdown_trace

SOUND = "<think>8,3,2>22|8+3=11:11,2>22|11*2=22:22>22!</think><answer>(8+3)*2</answer>"


def _score(text, numbers=(8, 3, 2), target=22):
    return countdown_trace_reward(None, [text], numbers=[list(numbers)], target=[target])[0]


def test_sound_traces_of_both_styles_pass():
    assert _score(SOUND) == 1.0
    journey = "<think>8,3,2>22|8+3=11:11,2>22|11+2=13:13>22^|11*2=22:22>22!</think><answer>(8+3)*2</answer>"
    assert _score(journey) == 1.0
    rng = random.Random(0)
    for _ in range(20):  # the solver's own traces of random problems
        nums, target = [rng.randint(1, 10) for _ in range(3)], rng.randint(1, 30)
        for style in ("journey", "shortcut"):
            t = countdown_trace(nums, target, style, budget=100)
            if t.solved:
                assert _score(t.text, nums, target) == 1.0, t.text


@pytest.mark.parametrize("text, why", [
    ("<think>8,3,2>22|8+3=12:12,2>22|11*2=22:22>22!</think><answer>(8+3)*2</answer>", "false arithmetic"),
    ("<think>8,3,2>22|8+3=11:11,2>22|11*2=22:22>22</think><answer>(8+3)*2</answer>", "no solved node"),
    ("<think>8,4,2>22|8+3=11:11,2>22|11*2=22:22>22!</think><answer>(8+3)*2</answer>", "another problem's numbers"),
    ("<think>8,3,2>21|8+3=11:11,2>21|11*2=22:22>21!</think><answer>(8+3)*2</answer>", "another target"),
    ("<think>8,3,2>22|8+3=11:11,2>22|11*2=22:22>22!</think><answer>(8+2)*3</answer>", "a wrong answer"),
    ("<answer>(8+3)*2</answer>", "no trace"),
    ("", "nothing"),
])
def test_a_right_answer_without_sound_reasoning_scores_zero(text, why):
    assert _score(text) == 0.0, why


def test_the_answer_alone_would_have_passed_the_false_step():
    # what STaR's answer check keeps and this one does not
    bad = "<think>8,3,2>22|8+3=18:18,2>22|11*2=22:22>22!</think><answer>(8+3)*2</answer>"
    assert countdown_reward(None, [bad], numbers=[[8, 3, 2]], target=[22]) == [1.0]
    assert _score(bad) == 0.0
    assert not trace_is_sound(bad, [8, 3, 2], 22)


def test_rows_without_a_problem_are_unscorable_and_columns_are_checked():
    assert countdown_trace_reward(None, [SOUND, SOUND], numbers=[[8, 3, 2], None], target=[22, 22]) == [1.0, None]
    assert countdown_trace_reward(None, [SOUND]) == [None]
    with pytest.raises(ValueError, match="numbers"):
        countdown_trace_reward(None, [SOUND, SOUND], numbers=[[8, 3, 2]], target=[22, 22])
    assert countdown_trace_reward.required_columns == ("numbers", "target")
