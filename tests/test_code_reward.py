"""code_reward: TRL's signature, the fraction of test cases passed in the sandbox, None without a
code block, runs in parallel, stop_on_first_failure."""

import time

import pytest

import r1core.sandbox
from r1core.rewards import code_reward, extract_code, make_code_reward, outputs_match, rewards_for_task
from r1core.sandbox import SandboxLimits, sandbox_available

needs_namespaces = pytest.mark.skipif(not sandbox_available(), reason="the kernel refuses user/network namespaces here")
ADD = [{"input": "1 2\n", "output": "3\n"}, {"input": "10 -4\n", "output": "6\n"}, {"input": "0 0\n", "output": "0\n"}]


def block(code: str, tag: str = "python") -> str:
    return f"Here is my program.\n```{tag}\n{code}\n```\nDone."


def test_extract_code_takes_the_last_python_block():
    assert extract_code(block("print(1)")) == "print(1)\n"
    assert extract_code("```\nprint(2)\n```") == "print(2)\n"  # untagged
    assert extract_code(block("print(1)") + block("print(3)", "py")) == "print(3)\n"
    assert extract_code(block("print(1)") + block("ls -l", "bash")) == "print(1)\n"  # not Python
    assert extract_code("<answer>\n```python\nprint(4)\n```\n</answer>") == "print(4)\n"
    conversation = [{"role": "user", "content": "q"}, {"role": "assistant", "content": block("print(5)")}]
    assert extract_code(conversation) == "print(5)\n"
    assert extract_code("no code here") is None
    assert extract_code("inline ```x``` only") is None
    assert extract_code("```python\nprint(1)") is None  # cut at the length limit: never closed
    assert extract_code(None) is None and extract_code(42) is None


def test_outputs_match_ignores_trailing_whitespace_only():
    assert outputs_match("3\n", "3")
    assert outputs_match("3\n4\n", "3   \n4\t\n\n\n")
    assert outputs_match("a b\r\n", "a b\n")
    assert not outputs_match("3 4\n", "3  4\n")  # inside a line it counts
    assert not outputs_match("3\n", " 3\n")  # leading too
    assert not outputs_match("3\n4\n", "3\n\n4\n")
    assert not outputs_match("3\n", "")


@needs_namespaces
def test_scores_are_the_fraction_of_test_cases_passed():
    completions = [
        block("a, b = map(int, input().split())\nprint(a + b)"),  # right
        block("a, b = map(int, input().split())\nprint(abs(a) + abs(b))"),  # right on 2 of 3
        block("print(3)"),  # right on 1 of 3
        block("a, b = map(int, input().split())\nprint(a + b   )\nprint('   ')"),  # trailing blank line: right
        block("print(("),  # syntax error
        block("a, b = map(int, input().split())\nprint(a + b)\nraise SystemExit(1)"),  # right output, failed exit
        block("while True: pass"),  # never ends
        "the answer is 3",  # no code block
        [{"role": "assistant", "content": block("print(sum(map(int, input().split())))")}],  # a conversation
    ]
    f = make_code_reward(SandboxLimits(wall_seconds=2, cpu_seconds=1), max_workers=4)
    got = f(["p"] * len(completions), completions, test_cases=[ADD] * len(completions))
    assert got == [1.0, pytest.approx(2 / 3), pytest.approx(1 / 3), 1.0, 0.0, 0.0, 0.0, None, 1.0]
    # the module's default instance, TRL's keyword columns alongside
    assert code_reward(None, completions[:1], test_cases=[ADD], prompt=["p"], other=[1]) == [1.0]


def test_a_program_too_big_for_its_directory_fails_instead_of_raising():
    huge = block("x = 1\n" * (1 << 20))  # 6 MiB of code, a 1 MiB directory
    assert make_code_reward(SandboxLimits(disk_mb=1))(None, [huge], test_cases=[ADD]) == [0.0]


def test_rows_without_test_cases_or_code_are_not_scored():
    assert code_reward(["p", "q"], [block("print(1)")] * 2) == [None, None]  # no test_cases column
    assert code_reward(["p", "q"], [block("print(1)"), "text"], test_cases=[None, ADD]) == [None, None]
    assert code_reward(["p"], [block("print(1)")], test_cases=[[]]) == [None]


def test_bad_columns_and_arguments_are_named():
    with pytest.raises(ValueError, match="test_cases"):
        code_reward(["p", "q"], ["a", "b"], test_cases=[ADD])
    with pytest.raises(ValueError, match=r"test_cases\[0\]\[1\]"):
        code_reward(["p"], [block("print(1)")], test_cases=[[ADD[0], {"input": "1"}]])
    with pytest.raises(ValueError, match=r"test_cases\[0\]"):
        code_reward(["p"], [block("print(1)")], test_cases=["1 2 -> 3"])
    with pytest.raises(ValueError, match="max_workers"):
        make_code_reward(max_workers=0)
    with pytest.raises(TypeError, match="limits"):
        make_code_reward(limits={"wall_seconds": 1})


@needs_namespaces
def test_stop_on_first_failure_runs_no_test_after_the_first_failure(monkeypatch):
    calls = []
    real = r1core.sandbox.run_python

    def counting(code, stdin="", *args, **kwargs):
        calls.append(stdin)
        return real(code, stdin, *args, **kwargs)

    monkeypatch.setattr(r1core.sandbox, "run_python", counting)
    wrong_first = [{"input": "1 1\n", "output": "3\n"}] + ADD[:2]  # print(a + b) fails the first only
    program = [block("a, b = map(int, input().split())\nprint(a + b)")]
    assert make_code_reward(stop_on_first_failure=True)(None, program, test_cases=[wrong_first]) == [0.0]
    assert calls == ["1 1\n"]
    calls.clear()
    assert make_code_reward()(None, program, test_cases=[wrong_first]) == [pytest.approx(2 / 3)]
    assert sorted(calls) == sorted(c["input"] for c in wrong_first)
    calls.clear()
    assert make_code_reward(stop_on_first_failure=True)(None, program, test_cases=[ADD[:2] + wrong_first[:1]]) \
        == [pytest.approx(2 / 3)]
    assert len(calls) == 3


@needs_namespaces
def test_runs_go_in_parallel():
    # 4 completions x 2 tests that each sleep 0.5 s: 4 s one at a time, 1 s on 8 workers
    completions = [block("import time\ntime.sleep(0.5)\nprint(1)")] * 4
    cases = [[{"input": "", "output": "1\n"}] * 2] * 4
    t0 = time.monotonic()
    assert make_code_reward(max_workers=8)(None, completions, test_cases=cases) == [1.0] * 4
    assert time.monotonic() - t0 < 2.5


def test_the_code_task_is_trained_with_code_reward_alone():
    assert rewards_for_task("code") == [code_reward]
    assert code_reward.__name__ == "code_reward" and code_reward.required_columns == ("test_cases",)
    with pytest.raises(ValueError, match="code"):  # the message lists it among the tasks
        rewards_for_task("chess")
