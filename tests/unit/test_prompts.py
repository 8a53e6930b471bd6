"""The default prompt: structure, overrides, and worked examples that follow the trainer's tool format exactly."""

import subprocess
import sys

import pytest

from trl_gtpo.demo.prompts import (
    DEFAULT_SYSTEM_PROMPT,
    EXAMPLE_SETS,
    FEW_SHOT_EXAMPLES,
    WORD_PROBLEM_EXAMPLES,
    build_prompt,
    few_shot_messages,
)
from trl_gtpo.interpreter.transcript import code_blocks, last_boxed, tool_output_text


def test_default_prompt_is_system_examples_then_question():
    messages = build_prompt("What is 2 + 2?")
    roles = [message["role"] for message in messages]
    assert roles == ["system"] + ["user", "assistant"] * len(FEW_SHOT_EXAMPLES) + ["user"]
    assert messages[0]["content"] == DEFAULT_SYSTEM_PROMPT
    assert messages[1:-1] == few_shot_messages()
    assert messages[-1] == {"role": "user", "content": "What is 2 + 2?"}
    assert FEW_SHOT_EXAMPLES[0][0] == "What is 512 * 389?"


def test_system_prompt_teaches_the_format():
    for marker in ("```python", "```output", "\\boxed{"):
        assert marker in DEFAULT_SYSTEM_PROMPT


def test_system_prompt_can_be_replaced_or_left_out():
    assert build_prompt("Q?", system_prompt="Be terse.")[0] == {"role": "system", "content": "Be terse."}
    for missing in (None, ""):
        messages = build_prompt("Q?", system_prompt=missing)
        assert all(message["role"] != "system" for message in messages)
        assert messages[-1] == {"role": "user", "content": "Q?"}
        assert len(messages) == 1 + 2 * len(FEW_SHOT_EXAMPLES)


def test_few_shot_can_be_turned_off():
    assert build_prompt("Q?", few_shot=False) == [
        {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
        {"role": "user", "content": "Q?"},
    ]
    assert build_prompt("Q?", system_prompt=None, few_shot=False) == [{"role": "user", "content": "Q?"}]


def test_number_of_worked_examples():
    one = build_prompt("Q?", num_examples=1)
    assert one[1:-1] == few_shot_messages()[:2] == few_shot_messages(1)
    assert one[1]["content"] == FEW_SHOT_EXAMPLES[0][0]
    assert build_prompt("Q?", num_examples=0) == build_prompt("Q?", few_shot=False)
    assert build_prompt("Q?", num_examples=len(FEW_SHOT_EXAMPLES)) == build_prompt("Q?")
    for bad in (-1, len(FEW_SHOT_EXAMPLES) + 1):
        with pytest.raises(ValueError, match="num_examples must be between 0 and"):
            build_prompt("Q?", num_examples=bad)


def test_sets_of_worked_examples_by_name():
    assert build_prompt("Q?", examples="arithmetic") == build_prompt("Q?")
    word = build_prompt("Q?", examples="word")
    assert [message["content"] for message in word[1:-1]] == [text for pair in WORD_PROBLEM_EXAMPLES for text in pair]
    question = WORD_PROBLEM_EXAMPLES[0][0]
    assert "*" not in question and "512" in question and "389" in question  # the code, not the question, multiplies
    with pytest.raises(ValueError, match="Unknown set of worked examples 'algebra'; known sets: arithmetic, word"):
        build_prompt("Q?", examples="algebra")


def test_build_prompt_returns_fresh_lists():
    first = build_prompt("Q?")
    first[1]["content"] = "changed"
    assert build_prompt("Q?")[1]["content"] == FEW_SHOT_EXAMPLES[0][0]


@pytest.mark.parametrize("question,answer", [pair for pairs in EXAMPLE_SETS.values() for pair in pairs])
def test_worked_examples_are_real_trajectories(question, answer):
    """Each example is exactly: model code turns, each followed by the output block the trainer appends, then a final
    \\boxed{} answer; each block's code really prints what its output block shows (each block stands alone)."""
    blocks = code_blocks(answer)
    assert blocks and all(block.well_formed for block in blocks)
    text, outputs = "", []
    for block in blocks:
        turn = answer[len(text) : block.end]
        assert turn.startswith("```python") and "```output" not in turn  # one model turn, nothing but its code
        run = subprocess.run([sys.executable, "-c", block.code], capture_output=True, text=True, timeout=30)
        assert run.returncode == 0
        appended = tool_output_text(text + turn, run.stdout, "```output")
        assert answer.startswith(text + turn + appended)
        text += turn + appended
        outputs.append(run.stdout.strip())
    final = answer[len(text) :]
    assert final == f"The answer is \\boxed{{{outputs[-1]}}}."
    assert last_boxed(answer) == outputs[-1]
