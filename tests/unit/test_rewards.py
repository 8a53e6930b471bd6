"""Tests of trl_gtpo.rewards: final-answer extraction and the math-verify outcome reward."""

import asyncio
import signal
import threading

import pytest

from trl_gtpo.interpreter.transcript import tool_output_text
from trl_gtpo.rewards import final_answer, math_answer_reward, reference_answer
from trl_gtpo.rewards import math_reward as rewards

TIR = "Let me compute.\n```python\nx = 70 + 2\nprint(x)\n```\n```output\n72\n```\n"

# (completion, reference answer, expected reward)
CASES = [
    # integers, GSM8K references
    ("The answer is \\boxed{72}.", "72", 1.0),
    ("The answer is \\boxed{72}.", "She sold 48 + 24 = 72 clips.\n#### 72", 1.0),
    ("The answer is \\boxed{71}.", "She sold 48 + 24 = 72 clips.\n#### 72", 0.0),
    ("So she earns 18 dollars.", "#### 18", 1.0),
    ("\\boxed{-12}", "-12", 1.0),
    ("\\boxed{12}", "-12", 0.0),
    ("The temperature drops to -12 degrees.", "#### -12", 1.0),
    # thousands separators
    ("She has 1,234 apples.", "#### 1,234", 1.0),
    ("\\boxed{1,234}", "1234", 1.0),
    ("\\boxed{1234}", "#### 1,234", 1.0),
    ("\\boxed{1,235}", "1234", 0.0),
    # fractions and decimals
    ("\\boxed{3/4}", "\\frac{3}{4}", 1.0),
    ("\\boxed{\\frac{3}{4}}", "3/4", 1.0),
    ("It is 3/4 of the cake.", "\\frac{3}{4}", 1.0),
    ("\\boxed{0.75}", "3/4", 1.0),
    ("\\boxed{0.5}", "\\frac12", 1.0),
    ("\\boxed{\\dfrac{1}{2}}", "\\frac{1}{2}", 1.0),
    ("\\boxed{\\dfrac{1}{3}}", "\\frac{1}{2}", 0.0),
    ("$\\boxed{\\tfrac{1}{2}}$", "0.5", 1.0),
    # LaTeX forms
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\sqrt{2}/2", 1.0),
    ("\\boxed{x=3}", "3", 1.0),
    ("\\boxed{3}", "$x=3$", 1.0),
    ("\\boxed{2^{10}}", "1024", 1.0),
    # sets
    ("\\boxed{\\{2,1\\}}", "\\{1,2\\}", 1.0),
    ("\\boxed{\\{1,3\\}}", "\\{1,2\\}", 0.0),
    # units
    ("\\boxed{5\\text{ cm}}", "5 cm", 1.0),
    ("\\boxed{5\\text{ cm}}", "5", 1.0),
    ("\\boxed{5 \\text{cm}}", "#### 5", 1.0),
    ("\\boxed{6\\text{ cm}}", "5 cm", 0.0),
    # no answer, garbage
    ("I do not know.", "72", 0.0),
    ("", "72", 0.0),
    ("\\boxed{}", "72", 0.0),
    ("\\boxed{@@@ ### \\frac{}{", "72", 0.0),
    ("\\boxed{\\text{banana}}", "72", 0.0),
    ("\\boxed{}}}{{{", "72", 0.0),
    # answers too large to evaluate are wrong, not a hang
    ("\\boxed{9^{9^{9}}}", "5", 0.0),
    ("\\boxed{(10^{6})!}", "5", 0.0),
    ("\\boxed{\\prod_{k=1}^{10^{9}} k}", "5", 0.0),
    # tool-integrated completions
    (TIR + "So the answer is $\\boxed{72}$.", "#### 72", 1.0),
    (TIR + "So the answer is 72.", "#### 72", 1.0),
    (TIR, "#### 72", 0.0),  # the interpreter printed 72, the model never answered
    (TIR + "Hmm, that is wrong.", "#### 72", 0.0),
    ("```python\nprint(\\boxed{72})\n```\nI think it is 5.", "72", 0.0),  # code is not the answer
    ("First \\boxed{3}, no wait: \\boxed{4}.", "4", 1.0),  # the last box wins
    ("First \\boxed{3}, no wait: \\boxed{4}.", "3", 0.0),
]


@pytest.mark.parametrize("completion, reference, expected", CASES)
def test_math_answer_reward_table(completion, reference, expected):
    assert math_answer_reward([completion], answer=[reference]) == [expected]


# Currency signs, thousands separators and degree signs are how an answer is written, not part of its value. Each
# case is a form seen in GSM8K-style answers or in MATH references (33 MATH train references contain "\$").
FORMATTING_CASES = [
    pytest.param("The answer is \\boxed{\\$18}", "18", 1.0, id="escaped-dollar-in-answer"),
    pytest.param("\\boxed{18}", "\\$18", 1.0, id="escaped-dollar-in-reference"),
    pytest.param("\\boxed{\\$19}", "\\$18", 0.0, id="wrong-money-is-wrong-not-unscorable"),
    pytest.param("\\boxed{\\$18.50}", "18.5", 1.0, id="escaped-dollar-decimal"),
    pytest.param("\\boxed{-0.5}", "-\\$0.50", 1.0, id="negative-money"),
    pytest.param("\\boxed{\\$1,080}", "1080", 1.0, id="escaped-dollar-thousands"),
    pytest.param("\\boxed{1080}", "\\$1,080", 1.0, id="escaped-dollar-thousands-in-reference"),
    pytest.param("\\boxed{32348}", "\\$32,\\!348", 1.0, id="escaped-dollar-latex-thousands"),
    pytest.param("\\boxed{23000}", "\\$23{,}000", 1.0, id="escaped-dollar-braced-thousands"),
    pytest.param("\\boxed{\\text{\\$}18}", "18", 1.0, id="dollar-in-text"),
    pytest.param("\\boxed{1\\,000}", "1000", 1.0, id="thin-space-thousands"),
    pytest.param("\\boxed{90°}", "90^\\circ", 1.0, id="degree-sign"),
    pytest.param("\\boxed{90}", "90°", 1.0, id="degree-sign-in-reference"),
    pytest.param("\\boxed{18 dollars}", "18", 1.0, id="unit-word-in-the-box"),
    pytest.param("\\boxed{1,080 dollars.}", "#### 1080", 1.0, id="unit-word-thousands"),
    pytest.param("\\boxed{12 miles per hour}", "12", 1.0, id="unit-words"),
    pytest.param("\\boxed{3 km/h}", "3", 1.0, id="unit-with-slash"),
    pytest.param("\\boxed{19 dollars}", "18", 0.0, id="wrong-number-with-unit-is-wrong"),
    pytest.param("\\boxed{18}", "18 dollars", 1.0, id="unit-word-in-reference"),
    pytest.param("\\boxed{3x}", "3", 0.0, id="a-variable-is-not-a-unit"),
    pytest.param("\\boxed{2 pi}", "2", 0.0, id="pi-is-not-a-unit"),
    pytest.param("\\boxed{72°F}", "72", 1.0, id="fahrenheit"),
    pytest.param("\\boxed{72 °C}", "72", 1.0, id="celsius-spaced"),
    pytest.param("\\boxed{72^\\circ F}", "72", 1.0, id="circ-fahrenheit"),
    pytest.param("\\boxed{72^{\\circ}\\text{C}}", "72°C", 1.0, id="circ-text-celsius"),
    pytest.param("\\boxed{73°F}", "72", 0.0, id="wrong-temperature"),
]


@pytest.mark.parametrize("completion, reference, expected", FORMATTING_CASES)
def test_answer_formatting_is_not_part_of_the_value(completion, reference, expected):
    assert math_answer_reward([completion], answer=[reference]) == [expected]


# The reward reads the transcript the way the loop wrote it: fences only at line start, tool output apart.
def _transcript(turns: list[str], outputs: list[str], marker: str = "```output") -> str:
    """Model turns with the output block the loop appends after each (`tool_output_text`)."""
    text = ""
    for k, turn in enumerate(turns):
        text += turn
        if k < len(outputs):
            text += tool_output_text(turn, outputs[k], marker)
    return text


def test_inline_backticks_in_prose_are_not_fences():
    assert math_answer_reward(["Use ```print``` then \\boxed{72}"], answer=["72"]) == [1.0]


def test_backticks_inside_tool_output_do_not_end_the_output_block():
    turns = ["```python\nexec(source)\n```", "So the answer is \\boxed{42}."]
    text = _transcript(turns, ["Error: unexpected ``` in input"])
    assert math_answer_reward([text], answer=["42"]) == [1.0]


def test_a_fence_printed_by_the_code_does_not_make_the_output_the_models_words():
    turn = "```python\nprint('```\\n\\\\boxed{72}')\n```"
    text = _transcript([turn, "I am not sure."], ["```\n\\boxed{72}\n"])
    assert math_answer_reward([text], answer=["72"]) == [0.0]


def test_reward_reads_the_configured_stop_marker():
    # With turn_stop_marker="<output>" the tool's 72 is in a "<output>" block: not the model's answer.
    text = _transcript(["```python\nprint(70 + 2)\n```", "I am not sure."], ["72"], marker="<output>")
    assert math_answer_reward([text], answer=["72"], stop_marker="<output>") == [0.0]
    assert math_answer_reward([text], answer=["72"], stop_marker=["<output>"]) == [0.0]  # a rollout's extra field
    assert math_answer_reward([text + " It is 72."], answer=["72"], stop_marker="<output>") == [1.0]


def test_model_turns_given_by_the_trainer_replace_parsing_the_completion():
    turns = ["```python\nprint('```\\n\\\\boxed{72}')\n```", "So the answer is \\boxed{42}."]
    completion = _transcript(turns, ["```\n\\boxed{72}\n"])
    assert math_answer_reward([completion], answer=["42"], model_turns=[turns]) == [1.0]
    assert math_answer_reward(["garbled"], answer=["42"], model_turns=[turns]) == [1.0]
    assert math_answer_reward([completion], answer=["72"], model_turns=[turns]) == [0.0]


def test_batch_and_kwargs():
    completions = ["\\boxed{1}", "\\boxed{2}", "3"]
    result = math_answer_reward(completions, answer=["1", "1", "3"], prompts=["p"] * 3, trainer_state=None, extra=[0])
    assert result == [1.0, 0.0, 1.0]
    assert all(isinstance(r, float) for r in result)
    with pytest.raises(ValueError, match="answers"):
        math_answer_reward(completions, answer=["1"])


def test_conversational_completions():
    good = [{"role": "assistant", "content": "The answer is \\boxed{\\frac{1}{2}}."}]
    multi_turn = [
        {"role": "assistant", "content": "```python\nprint(70 + 2)\n```"},
        {"role": "tool", "content": "72"},
        {"role": "assistant", "content": "So the answer is 72."},
    ]
    tool_only = multi_turn[:2]  # 72 appears only in the tool's output
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "It is \\boxed{72}"}]}]
    result = math_answer_reward([good, multi_turn, tool_only, parts], answer=["0.5", "#### 72", "#### 72", "72"])
    assert result == [1.0, 1.0, 0.0, 1.0]


def test_missing_or_unparsable_reference_is_unscorable():
    assert math_answer_reward(["\\boxed{1}", "\\boxed{1}", "\\boxed{1}"], answer=[None, "", "####   "]) == [
        None,
        None,
        None,
    ]


def test_non_string_reference():
    assert math_answer_reward(["\\boxed{72}", "\\boxed{0.5}"], answer=[72, 0.5]) == [1.0, 1.0]


def test_name_is_stable():
    assert math_answer_reward.__name__ == "math_answer_reward"  # TRL logs rewards/<function name>


# ---------------------------------------------------------------------------------------------------------------------
# final_answer
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("x \\boxed{\\{1,2\\}} y", "\\{1,2\\}"),  # escaped braces do not close the box
        ("\\boxed{a{b}c} then \\boxed{d}", "d"),
        ("\\boxed{7} and a truncated \\boxed{\\frac{1}{", "7"),  # an unbalanced last box is skipped
        ("\\boxed 5 apples", "5"),
        ("\\fbox{9}", "9"),
        ("\\boxedtext{x} \\boxedfoo", None),  # not \boxed commands
        ("\\boxedtext{9}", "9"),  # ... so the plain-number fallback applies
        ("The total is 1,234,567 dollars.", "1234567"),
        ("From 3 to -4.5.", "-4.5"),
        ("x-5 gives 7", "7"),
        ("The ratio is 2/3", "2/3"),
        ("It is 72km away.", "72"),
        ("Not a thousands separator: 1,2345", "2345"),
        ("Values 1,5 and 2", "2"),
        ("Temperature \u22123", "-3"),  # unicode minus
        ("```python\nprint(42)\n```", None),  # code only
        ("```python\nprint(42)\n", None),  # unclosed code block
        ("We get 5.\n```python\nprint(42)\n```\n```output\n42\n```\n", None),  # no prose after the output
        ("We get 5.\n```python\nprint(42)\n```\n```output\n42\n```\nSo 42 it is.", "42"),
        ("We get 5.\n```python\nprint(42)\n```\n", "5"),  # no output block yet: all prose counts
        ("```output\n\\boxed{1}\n```\nDone.", None),  # a box printed by the tool is not the model's answer
        ("", None),
        (None, None),
        ("no digits at all", None),
    ],
)
def test_final_answer(text, expected):
    assert final_answer(text) == expected


def test_final_answer_messages():
    messages = [
        {"role": "assistant", "content": "```python\nprint(6 * 7)\n```"},
        {"role": "tool", "content": "42"},
    ]
    assert final_answer(messages) is None
    assert final_answer(messages + [{"role": "assistant", "content": "It is 42."}]) == "42"


def test_final_answer_of_model_turns():
    """A list of strings is the model's own turn texts; a tool output followed each turn but the last."""
    assert final_answer(["Maybe 5.\n```python\nprint(42)\n```", "So 42 it is."]) == "42"
    assert final_answer(["Maybe 5.\n```python\nprint(42)\n```", "```python\nprint(1)\n```"]) is None


def test_final_answer_rejects_what_is_not_a_completion():
    with pytest.raises(TypeError, match="chat messages"):
        final_answer(42)
    with pytest.raises(TypeError, match="chat messages"):
        final_answer([{"role": "assistant", "content": "1"}, "2"])


def test_huge_completion_does_not_raise():
    text = ("word 12 " * 200_000) + "\\boxed{" + "1" * 5000 + "}" + "\\boxed{" * 10_000
    assert math_answer_reward([text], answer=["12"]) == [0.0]  # the (complete) box is too long to be an answer


def test_reference_answer():
    assert reference_answer("blah 3 + 4 = 7\n#### 1,007") == "1007"
    assert reference_answer("  \\frac{1}{2} ") == "\\frac{1}{2}"
    assert reference_answer(None) is None
    assert reference_answer(float("nan")) is None


def test_expression_size_guard():
    assert rewards._parse("2^{10}", use_signal=False)
    assert rewards._parse("\\binom{100}{50}", use_signal=False)
    assert rewards._parse("\\sum_{k=1}^{100} k", use_signal=False)
    assert rewards._parse("9^{9^{9}}", use_signal=False) == []
    assert rewards._parse("10^{10}!", use_signal=False) == []
    assert rewards._parse("\\binom{10^{9}}{10^{5}}", use_signal=False) == []
    assert rewards._parse("x^{10^{9}} - 1", use_signal=False) == []


# ---------------------------------------------------------------------------------------------------------------------
# Threads and event loops: math-verify's signal.alarm timeout raises off the main thread
# ---------------------------------------------------------------------------------------------------------------------

THREAD_COMPLETIONS = ["\\boxed{\\frac12}", "\\boxed{3}", "\\boxed{\\{2,1\\}}", "The answer is 1,234.", "nothing"]
THREAD_ANSWERS = ["0.5", "4", "\\{1,2\\}", "#### 1,234", "1"]
THREAD_EXPECTED = [1.0, 0.0, 1.0, 1.0, 0.0]


def test_reward_in_a_thread():
    results, errors = [], []

    def run():
        try:
            results.append(math_answer_reward(THREAD_COMPLETIONS, answer=THREAD_ANSWERS))
        except BaseException as error:  # surfaces in the assertion below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == [THREAD_EXPECTED] * 3


def test_reward_in_asyncio_to_thread():
    async def main():
        return await asyncio.gather(
            asyncio.to_thread(math_answer_reward, THREAD_COMPLETIONS, answer=THREAD_ANSWERS),
            asyncio.to_thread(math_answer_reward, THREAD_COMPLETIONS[::-1], answer=THREAD_ANSWERS[::-1]),
        )

    first, second = asyncio.run(main())
    assert first == THREAD_EXPECTED
    assert second == THREAD_EXPECTED[::-1]


def test_reward_inside_a_running_event_loop():
    async def main():
        return math_answer_reward(THREAD_COMPLETIONS, answer=THREAD_ANSWERS)

    assert asyncio.run(main()) == THREAD_EXPECTED


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs POSIX interval timers")
def test_pending_alarm_of_the_caller_is_not_clobbered():
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *args: fired.append(True))
    try:
        signal.setitimer(signal.ITIMER_REAL, 300.0)
        assert math_answer_reward(THREAD_COMPLETIONS, answer=THREAD_ANSWERS) == THREAD_EXPECTED
        remaining, _ = signal.getitimer(signal.ITIMER_REAL)
        assert remaining > 0  # math-verify's alarm(0) would have cancelled it
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert fired == []


def test_the_code_interpreters_turn_records_decide_what_the_model_wrote():
    from trl_gtpo.turn_records import TurnRecord

    printed = "```python\nprint('```\\n\\\\boxed{72}')\n```\n```output\n```\n\\boxed{72}\n```\n"
    turns = [[TurnRecord(0, "```python\nprint('```\\n\\\\boxed{72}')\n```\n", "...", "```\n\\boxed{72}", "ok", 0, 9)]]
    assert math_answer_reward([printed], ["72"], turns=turns) == [0.0]  # only the tool printed it
    turns[0].append(TurnRecord(1, "So the answer is \\boxed{72}.", None, None, "none", 12, 20))
    assert math_answer_reward([printed + "So the answer is \\boxed{72}."], ["72"], turns=turns) == [1.0]
    assert math_answer_reward(["\\boxed{72}"], ["72"], turns=["a dataset column"]) == [1.0]  # not records: ignored
