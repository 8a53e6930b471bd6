"""The transcript format on plain text: where a turn ends, the output block appended after it, and reading a whole
transcript back into the model's prose, its code and the tool's output."""

import pytest

from trl_gtpo.interpreter.transcript import (
    CODE,
    OUTPUT,
    PROSE,
    code_blocks,
    last_boxed,
    segments,
    tool_output_text,
    turn_end,
)

M = "```output"


def test_a_closed_python_block_ends_the_turn_right_after_its_fence():
    text = "Let me see.\n```python\nprint(2)\n```\nand then more"
    end = turn_end(text, M)
    assert text[:end] == "Let me see.\n```python\nprint(2)\n```"


def test_the_stop_marker_ends_the_turn_and_an_open_block_is_closed_by_it():
    assert turn_end("no code here\n```output\n5", M) == len("no code here\n```output")
    assert turn_end("no code here\n  ```output\n5", M) == len("no code here\n  ```output")
    text = "```python\nx = 1\n```output\n"
    assert text[: turn_end(text, M)] == "```python\nx = 1\n```"


def test_a_stop_marker_in_the_middle_of_a_line_is_prose_and_does_not_end_the_turn():
    assert turn_end("A tool answers in a ```output block.\nSo", M) is None
    text = "A tool answers in a ```output block.\n```output\n"
    assert text[: turn_end(text, M)] == "A tool answers in a ```output block.\n```output"


def test_an_unclosed_block_or_plain_blocks_do_not_end_the_turn():
    assert turn_end("```python\nwhile True:\n    pass", M) is None
    assert turn_end("Here is text:\n```\nplain\n```\n", M) is None
    (block,) = code_blocks("```python\nwhile True:\n    pass")
    assert not block.closed and not block.well_formed


def test_code_blocks_parse_status():
    good, bad = code_blocks("```python\nprint(1)\n```\n```py\nprint(1 +\n```")
    assert good.well_formed and good.code == "print(1)"
    assert bad.closed and not bad.parses and not bad.well_formed
    (empty,) = code_blocks("```python\n```")
    assert empty.code == "" and empty.closed


def test_output_block_completes_what_the_model_wrote():
    assert tool_output_text("```python\nprint(1)\n```", "1\n", M) == "\n```output\n1\n```\n"
    assert tool_output_text("```python\nprint(1)\n```\n", "1", M) == "```output\n1\n```\n"
    assert tool_output_text("...\n```output", "1", M) == "\n1\n```\n"
    assert tool_output_text("...\n```output\n", "1", M) == "1\n```\n"
    assert tool_output_text("```python\nx=1\n```\n", "", M) == "```output\n```\n"



# ---------------------------------------------------------------------------------------------------------------------
# Reading a transcript back: the loop's own format, fences only at line start
# ---------------------------------------------------------------------------------------------------------------------


def test_tool_output_text_neutralizes_fences_at_line_start():
    """Backticks the tool printed at a line start would close the output block early, so they are spaced apart;
    mid-line backticks are not fences and stay as printed."""
    output = "```\n\\boxed{72}\n  ````py\nError: unexpected ``` in input"
    assert tool_output_text("```python\nx\n```", output, M) == (
        "\n```output\n` ` `\n\\boxed{72}\n  ` ` ` `py\nError: unexpected ``` in input\n```\n"
    )


def test_segments_follow_the_loop_turn_by_turn():
    turn_1 = "Use ```print``` here.\n```python\nprint('```\\nx')\n```"
    turn_2 = "So \\boxed{42}."
    text = turn_1 + tool_output_text(turn_1, "```\nx\n", M) + turn_2
    assert [(s.kind, s.text.strip()) for s in segments(text, M) if s.text.strip()] == [
        (PROSE, "Use ```print``` here."),
        (CODE, "print('```\\nx')"),
        (OUTPUT, "` ` `\nx"),
        (PROSE, "So \\boxed{42}."),
    ]


def test_segments_read_an_output_opener_the_model_wrote_or_that_straddles_the_turn_end():
    # The model wrote the marker itself; a closing fence token that runs into the marker ("```output").
    for turn in ("Compute it.\n```output", "```python\nprint(1)\n```output"):
        end = turn_end(turn, M)
        text = turn[:end] + tool_output_text(turn[:end], "1", M) + "Done: 1."
        kinds = [s.kind for s in segments(text, M) if s.text.strip()]
        assert kinds[-2:] == [OUTPUT, PROSE] and segments(text, M)[-1].text.strip() == "Done: 1."


def test_segments_use_the_given_stop_marker():
    turn = "```python\nprint(72)\n```"
    text = turn + tool_output_text(turn, "72", "<output>") + "I am not sure."
    assert [(s.kind, s.text.strip()) for s in segments(text, "<output>") if s.text.strip()] == [
        (CODE, "print(72)"),
        (OUTPUT, "72"),
        (PROSE, "I am not sure."),
    ]


def test_code_past_the_turn_end_without_an_output_block_reads_as_the_models():
    # No tool ran after the closed block (the last turn): what follows is the model's prose again.
    text = "```python\nprint(1)\n```\nSo it is \\boxed{1}."
    assert [s.kind for s in segments(text, M) if s.text.strip()] == [CODE, PROSE]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{1} then \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("\\boxed{7} and a truncated \\boxed{\\frac{1}{", "7"),
        ("\\boxed{\\$18}", "\\$18"),
        ("\\fbox{7}", "7"),
        ("our answer is $\\boxed 2$.", "2"),  # two MATH train solutions write it so
        ("no box", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected
