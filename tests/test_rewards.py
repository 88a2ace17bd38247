"""Rule-based rewards on constructed right, wrong, garbage and malicious completions."""
import random

import pytest

from r1core.rewards import accuracy_reward, countdown_reward, extract_answer, format_reward, score_expression, scratchpad_format_reward


def conv(text):
    return [{"role": "assistant", "content": text}]


@pytest.mark.parametrize("wrap", [lambda s: s, conv], ids=["text", "conversation"])
def test_accuracy_right_and_wrong(wrap):
    a, b = random.randrange(1000), random.randrange(1000)
    gold = str(a + b)
    right = [f"T1+2+0=3;A{gold}", f"<think>x</think><answer>{gold}</answer>", f"so \\boxed{{{gold}}}",
             f"I think it is {a} + {b} = {gold}", f"<think>A{gold + '1'}</think> <answer> {gold} </answer>"]
    wrong = [f"T1+2+0=3;A{a + b + 1}", f"<answer>{a + b - 1}</answer>", f"\\boxed{{{a + b + 10}}} and {gold}"]
    comps = [wrap(c) for c in right + wrong]
    assert accuracy_reward(["p"] * len(comps), comps, answer=[gold] * len(comps)) == \
        [1.0] * len(right) + [0.0] * len(wrong)


def test_accuracy_through_math_verify():
    comps = ["<answer>0.5</answer>", "<answer>\\frac{1}{2}</answer>", "<answer>1/3</answer>", "A1785.0",
             "<answer>$x \\cdot 2$</answer>", "<answer>\\frac{3}{4}</answer>"]
    golds = ["\\frac{1}{2}", "0.5", "0.5", "1785", "$2x$", "3/4"]
    assert accuracy_reward(None, comps, answer=golds) == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]


def test_accuracy_none_without_gold_and_never_raises():
    assert accuracy_reward(None, ["A1", "A2"]) == [None, None]
    assert accuracy_reward(None, ["A1", "A2", "A3"], answer=["1", None, ""]) == [1.0, None, None]
    garbage = ["", "<answer></answer>", "<answer>\\frac{</answer>", "\\boxed{", "A" * 5000, "}}}{{{", None, 12,
               [{"role": "user"}], [], "<answer>__import__('os').system('echo hacked')</answer>",
               "<answer>" + "(" * 500 + "1" + ")" * 500 + "</answer>", "<answer>1e999999999</answer>"]
    assert accuracy_reward(None, garbage, answer=["7"] * len(garbage)) == [0.0] * len(garbage)
    with pytest.raises(ValueError, match="answer"):
        accuracy_reward(None, ["A1", "A2"], answer=["1"])


def test_extract_answer_precedence():
    assert extract_answer("<answer>5</answer> \\boxed{6} 7") == "5"
    assert extract_answer("T1+1+0=2;A42") == "42"
    assert extract_answer("\\boxed{\\frac{1}{2}} then 9") == "\\frac{1}{2}"
    assert extract_answer("no digits") is None
    assert extract_answer("x 3 y -4.5 z") == "-4.5"
    assert extract_answer("A12") == "12" and extract_answer("After adding 5 and 7 we get 12.") == "12"


@pytest.mark.parametrize("wrap", [lambda s: s, conv], ids=["text", "conversation"])
def test_countdown_reward_cases(wrap):
    nums, target = [8, 3, 2], 22
    cases = {
        "<think>8*3=24,24-2=22</think><answer>(8*3)-2</answer>": 1.0,
        "T8*3=24,24-2=22;A8*3-2": 1.0,
        "<answer>8*3-2 = 22</answer>": 1.0,
        "<answer>2*(8+3)</answer>": 1.0,
        "<answer>8*3-2 = 23</answer>": 0.0,
        "<answer>8*3-3</answer>": 0.0,  # 3 twice, 2 unused
        "<answer>8*3</answer>": 0.0,  # 2 unused
        "<answer>8*3-2+0</answer>": 0.0,  # extra number
        "<answer>8*3-2</answer><answer>8+3</answer>": 0.0,  # the last answer counts
        "<answer>-2+8*3</answer>": 0.0,  # unary minus is not allowed
        "<answer>8*3-2.0</answer>": 0.0,  # integers only
        "<answer>(8*3)-2)</answer>": 0.0,
        "<answer>2/(3-3)*8</answer>": 0.0,  # wrong numbers, and a zero division
        "<answer>22</answer>": 0.0,
        "8*3-2": 0.0,  # no answer marker
        "": 0.0,
    }
    comps = [wrap(c) for c in cases]
    out = countdown_reward(None, comps, numbers=[nums] * len(cases), target=[target] * len(cases))
    assert out == list(cases.values())


def test_countdown_rational_intermediates_and_division_by_zero():
    assert score_expression("6/(1-3/4)", [6, 1, 3, 4], 24) == 1.0
    assert score_expression("(4-4)/(2-2)", [4, 4, 2, 2], 0) == 0.0
    assert score_expression("4/(2-2)+4-2", [4, 2, 2, 4, 2], 0) == 0.0  # numbers right, zero division


def test_countdown_malicious_never_executed(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    payloads = [
        "__import__('os')",
        f"__import__('os').system('touch {marker}')",
        f"open('{marker}', 'w')",
        "(lambda: 8*3-2)()",
        "8*3-2 if True else 0",
        "[8,3,2]",
        "8**3**2",
        "0x8*3-2",
        "8_0*3-2",
        "9" * 10000 + "*3-2",
        "(" * 10000 + "8*3-2" + ")" * 10000,
    ]
    called = []
    monkeypatch.setattr("builtins.eval", lambda *a, **k: called.append(a))
    comps = [f"<answer>{p}</answer>" for p in payloads]
    out = countdown_reward(None, comps, numbers=[[8, 3, 2]] * len(comps), target=[22] * len(comps))
    assert out == [0.0] * len(payloads)
    assert not marker.exists() and not called


def test_countdown_reward_missing_columns_and_lengths():
    assert countdown_reward(None, ["<answer>1+1</answer>"]) == [None]
    assert countdown_reward(None, ["<answer>1+1</answer>"], numbers=[None], target=[2]) == [None]
    with pytest.raises(ValueError, match="target"):
        countdown_reward(None, ["a", "b"], numbers=[[1, 1], [1, 1]], target=[2])


def test_format_reward():
    good = ["<think>a</think><answer>b</answer>", "  <think>\nstep 1\n\nstep 2\n</think>\n<answer> 5 </answer>\n",
            "<think></think><answer></answer>"]
    bad = ["<answer>b</answer>", "<think>a</think>", "x<think>a</think><answer>b</answer>",
           "<think>a</think><answer>b</answer>x", "<think>a</think><answer>b</answer><answer>c</answer>",
           "<think>a<think>b</think><answer>c</answer>", "<answer>b</answer><think>a</think>",
           "<think>a</think>text<answer>b</answer>", ""]
    assert format_reward(None, [conv(g) for g in good] + bad) == [1.0] * len(good) + [0.0] * len(bad)


def test_scratchpad_format_reward():
    good = ["T9+6+0=15,8+9+1=18,9+7+1=17;A1785", "T123*5=615,123*40=4920;615+4920=5535;A5535",
            "T8*3=24,24-2=22;A(8*3)-2", "T1+2+0=3;A9\n"]
    bad = ["T9+6+0=15,8+9+1=18;1785", "9+6+0=15;A1785", "T9+6+0=15,,8+9=17;A1785", "T;A1785", "T9+6=;A15",
           "T9+6+0=15;A", "<think>9+6+0=15</think><answer>15</answer>", "T9+6+0=15;A15 junk"]
    assert scratchpad_format_reward(None, good + bad) == [1.0] * len(good) + [0.0] * len(bad)


def test_language_consistency_reward():
    from r1core.rewards import language_consistency_reward

    comps = ["<think>First add the units then the tens</think><answer>5</answer>",
             "<think>First 加 the units 然后 tens</think><answer>5</answer>",  # 4 of 7 words (an ideograph is a word)
             "<think>先加个位</think><answer>5</answer>",
             "<think>9+6+0=15</think>", "no tags here at all"]
    assert language_consistency_reward(None, comps) == [1.0, pytest.approx(4 / 7), 0.0, None, 1.0]
    assert language_consistency_reward(None, comps[2:3], language="zh") == [1.0]
    with pytest.raises(ValueError, match="language"):
        language_consistency_reward(None, comps, language="fr")


def test_rewards_for_task_score_gold_solutions():
    from r1core.rewards import rewards_for_task
    from r1core.tasks import generate

    for task in ("addition", "multiplication", "countdown"):
        for fmt in ("scratchpad", "tagged", "r1zero"):
            rows = generate(task, "train", 4, random.randrange(1000), fmt=fmt)
            columns = {k: [r[k] for r in rows] for k in rows[0]}
            funcs = rewards_for_task(task, fmt)
            assert len(funcs) == (1 if fmt == "scratchpad" else 2)
            for f in funcs:
                assert f(columns["prompt"], columns["solution"], **columns) == [1.0] * 4
                assert f(columns["prompt"], ["garbage"] * 4, **columns) == [0.0] * 4
    with pytest.raises(ValueError, match="task"):
        rewards_for_task("chess")
    with pytest.raises(ValueError, match="fmt"):
        rewards_for_task("addition", "json")
