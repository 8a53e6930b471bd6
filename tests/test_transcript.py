"""Finding where a turn ends, and formatting the output block, on plain text."""

from trl_gtpo.interpreter.transcript import code_blocks, tool_output_text, turn_end

M = "```output"


def test_a_closed_python_block_ends_the_turn_right_after_its_fence():
    text = "Let me see.\n```python\nprint(2)\n```\nand then more"
    end = turn_end(text, M)
    assert text[:end] == "Let me see.\n```python\nprint(2)\n```"


def test_the_stop_marker_ends_the_turn_and_an_open_block_is_closed_by_it():
    assert turn_end("no code here ```output\n5", M) == len("no code here ```output")
    text = "```python\nx = 1\n```output\n"
    assert text[: turn_end(text, M)] == "```python\nx = 1\n```"


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

