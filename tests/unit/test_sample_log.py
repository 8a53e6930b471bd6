"""The completions sample of a logging step as a log file gets it (trl_gtpo.sample_log): a few lines per sample."""

from trl_gtpo.sample_log import compact_samples, one_line

PROMPT = [{"role": "system", "content": "You are a math assistant.\n" * 40}, {"role": "user", "content": "What is 6 * 7?"}]
COMPLETION = [{"role": "assistant", "content": "```python\nprint(6 * 7)\n```\n```output\n42\n```\nThe answer is \\boxed{42}."}]


def test_each_sample_is_a_line_of_figures_then_the_question_and_the_completion_on_one_line_each():
    text = compact_samples(
        [PROMPT, PROMPT], [COMPLETION, COMPLETION], {"math_answer_reward": [1.0, 0.0]}, [0.5, -0.5], step=3,
        extra={"tool_calls": ["T1: ok | T2: no call | end: eos", "T1: error"]},
    )
    assert text.split("\n") == [
        "--- step 3: 2 of 2 completions ---",
        "[1] math_answer_reward 1.00 | advantage +0.50 | tool_calls T1: ok | T2: no call | end: eos",
        "    prompt: [user] What is 6 * 7?",
        "    completion: ```python⏎print(6 * 7)⏎```⏎```output⏎42⏎```⏎The answer is \\boxed{42}.",
        "[2] math_answer_reward 0.00 | advantage -0.50 | tool_calls T1: error",
        "    prompt: [user] What is 6 * 7?",
        "    completion: ```python⏎print(6 * 7)⏎```⏎```output⏎42⏎```⏎The answer is \\boxed{42}.",
    ]


def test_a_sample_of_the_rows_and_long_or_unprintable_text_stay_short():
    text = compact_samples(["p"] * 8, ["c"] * 8, {}, None, step=1, num_samples=2)
    assert text.startswith("--- step 1: 2 of 8 completions ---") and len(text.split("\n")) == 1 + 2 * 3
    cut = one_line("a" * 300 + "\x14" + "b" * 300, 100)
    assert len(cut) == 100 and cut.startswith("aaa") and cut.endswith("bbb") and " … " in cut
    assert one_line("x\x14y\nz", 10) == "x�y⏎z"
    assert one_line("q" * 50 + "END", 11, keep_end=True) == "…" + "q" * 7 + "END"
