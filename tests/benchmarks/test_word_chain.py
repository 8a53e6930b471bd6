"""benchmarks/learning/word_chain.py, the pretrained model's chain task (issue 29, item 1): each step is checked on
its own, against the previous step's printed value; the splits never share a problem; the held-out measure is the
teacher-forced probability of each step."""

import math
import re

import pytest

from benchmarks.learning import word_chain
from trl_gtpo.interpreter.loop import CodeInterpreterLoop
from trl_gtpo.interpreter.rollout import turn_records
from trl_gtpo.interpreter.sandbox import SandboxPool
from trl_gtpo.testing import make_tiny_model, make_tiny_tokenizer
from trl_gtpo.turn_records import TurnRecord

# The module docstring's example: 24 bags x 15 kg, 25% used, 30 kg given away, in grams.
FLOUR = word_chain.row(0, 24, 15, 25, 30)


def calls(*outputs):
    """Turn records of one trajectory: each output is a tool call's printed text ("ok"), an ("error", text) pair, or
    None for a turn that ran no call (the answer turn)."""
    records = []
    for k, output in enumerate(outputs):
        if output is None:
            records.append(TurnRecord(k, "The answer is ...", None, None, "none", 0, 1))
        elif isinstance(output, tuple):
            records.append(TurnRecord(k, "code", "x = y", output[1], output[0], 0, 1))
        else:
            records.append(TurnRecord(k, "code", "x = ...", output + "\n", "ok", 0, 1))
    return records


def reward(*outputs, example=FLOUR):
    return word_chain.step_turn_reward([calls(*outputs)], [example["steps"]], [example["intermediates"]])[0]


def test_the_example_row_is_the_docstrings():
    assert FLOUR["question"] == ("A baker buys 24 bags of flour with 15 kilograms in each bag. She uses 25% of the flour "
                                 "for bread. Then she gives 30 kilograms to a neighbor. A kilogram is 1000 grams. How "
                                 "many grams of flour does she have left?")
    assert FLOUR["intermediates"] == ["360", "270", "240", "240000"] and FLOUR["answer"] == "240000"


def test_every_right_step_earns_a_quarter_and_the_answer_turn_no_opinion():
    assert reward("360", "270.0", "240.0", "240000.0", None) == [0.25, 0.25, 0.25, 0.25, None]


def test_a_wrong_step_does_not_take_the_next_steps_reward_away():
    """Step 2 prints the share used (90) instead of what is left (270); steps 3 and 4 apply their own operations
    right to 90. The true-value check of intermediate_value_turn_reward would pay neither."""
    assert reward("360", "90.0", "60.0", "60000.0", None) == [0.25, 0.0, 0.25, 0.25, None]
    # Step 4 with the wrong factor (x 100 for grams) after a right chain: only step 4 loses.
    assert reward("360", "270.0", "240.0", "24000.0", None) == [0.25, 0.25, 0.25, 0.0, None]
    # A step applied to the true previous value instead of the printed one, i.e. printing the true value: right.
    assert reward("360", "90.0", "240.0", "240000.0") == [0.25, 0.0, 0.25, 0.25]
    # A step that repeats the previous value did not apply its operation.
    assert reward("360", "360", "330", "330000") == [0.25, 0.0, 0.25, 0.25]
    assert reward("360", "270.0", "270.0", "270000.0") == [0.25, 0.25, 0.0, 0.25]


def test_a_failed_call_is_a_wrong_step_and_the_next_is_judged_on_the_last_printed_value():
    error = ("error", "NameError: name 'y' is not defined")
    # Step 3 raised (x unchanged at 270); step 4 multiplies the 270 printed last: right.
    assert reward("360", "270.0", error, "270000.0", None) == [0.25, 0.25, 0.0, 0.25, None]
    # A call printing no number is wrong too; the next step reads the number before it.
    assert reward("360", "done", "330") == [0.25, 0.0, 0.25]
    # A retry of a failed step is judged as the next step (the worked examples never retry), so it earns nothing.
    assert reward("360", error, "270.0", "240.0", "240000.0") == [0.25, 0.0, 0.0, 0.0, 0.0]
    # A call past the last step earns nothing.
    assert reward("360", "270.0", "240.0", "240000.0", "240000.0") == [0.25, 0.25, 0.25, 0.25, 0.0]


def test_the_first_step_is_checked_against_the_question_only():
    # 24 + 15 = 39 is wrong; step 2 then takes 25% off 39 right and is paid.
    assert reward("39", "29.25") == [0.0, 0.25]
    assert reward("24", "18.0") == [0.0, 0.25]
    assert word_chain.evaluate_step("x - x * 25 / 100", None) is None
    with pytest.raises(ValueError):
        word_chain.evaluate_step("__import__('os')", 1.0)


def test_boxed_answer_reward_reads_the_value_as_a_number():
    texts = ["The answer is \\boxed{240000}.", "The answer is \\boxed{240000.0}.", "\\boxed{24000}", "240000"]
    assert word_chain.boxed_answer_reward(texts, ["240000"] * 4) == [1.0, 1.0, 0.0, 0.0]


def test_the_splits_never_share_a_problem_and_every_right_value_is_whole():
    train = word_chain.problems(3000, 0)
    test = word_chain.problems(600, 0, "test")
    assert not {r["question"] for r in train} & {r["question"] for r in test}
    assert len({r["question"] for r in train}) == 3000
    assert word_chain.problems(50, 1) == word_chain.problems(50, 1) != word_chain.problems(50, 2)
    assert word_chain.test_problems(64) == word_chain.problems(64, 12345, "test")
    for example in train[:500] + test:
        values = [float(v) for v in example["intermediates"]]
        assert all(v.is_integer() and v > 0 for v in values)
        taken_away = example["question"].split("Then ")[1].split(".")[0]
        w = int(re.search(r"\d+", taken_away).group())
        assert example["steps"][2] == f"x - {w}" and w < float(example["intermediates"][1])
        factor = int(re.search(r" is (\d+) ", example["question"]).group(1))  # the unit factor is stated
        assert example["steps"][3] == f"x * {factor}" and factor in (100, 1000)
    assert {r["scenario"] for r in test} == {0, 1, 2, 3}
    worked = {question for steps in (3, 4) for question, _ in word_chain.worked_examples(steps)}
    assert not worked & {r["question"] for r in train + test}


def test_the_three_step_variant_drops_the_conversion_and_asks_in_the_storys_unit():
    short = word_chain.row(0, 24, 15, 25, 30, steps=3)
    assert short["question"] == ("A baker buys 24 bags of flour with 15 kilograms in each bag. She uses 25% of the flour "
                                 "for bread. Then she gives 30 kilograms to a neighbor. How many kilograms of flour "
                                 "does she have left?")
    assert short["steps"] == FLOUR["steps"][:3] and short["answer"] == "240"
    rewards = word_chain.step_turn_reward([calls("360", "270.0", "240.0", None)], [short["steps"]],
                                          [short["intermediates"]])
    assert rewards == [[1 / 3, 1 / 3, 1 / 3, None]]
    examples = word_chain.worked_examples(3)
    assert all(t.count("```python") == 3 and "grams" not in q.replace("kilograms", "") for q, t in examples)
    test = word_chain.test_problems(64, steps=3)
    assert all(len(r["steps"]) == 3 for r in test) and not {r["question"] for r in test} & {
        r["question"] for r in word_chain.problems(2000, 0, steps=3)}


def test_the_right_transcript_is_what_the_interpreter_prints_and_earns_every_reward():
    """The worked examples and the teacher-forced measure use `solution`: replayed through the code interpreter, its
    model turns give exactly its tool outputs, and the rewards pay every step and the outcome."""
    tokenizer = make_tiny_tokenizer()
    text = word_chain.solution(FLOUR)
    model_turns = re.split(r"```output\n.*?\n```\n", text, flags=re.DOTALL)

    def replay(prompt_ids, max_new_tokens):
        new = tokenizer.encode(model_turns.pop(0), add_special_tokens=False)
        return [new + ([tokenizer.eos_token_id] if not model_turns else [])], None

    prompt_ids = tokenizer.apply_chat_template(FLOUR["prompt"][-1:], add_generation_prompt=True)
    with SandboxPool(size=1) as executor:
        loop = CodeInterpreterLoop(tokenizer, executor, max_turns=6, max_completion_length=400,
                                   eos_token_ids=[tokenizer.eos_token_id])
        (trajectory,) = loop.run([prompt_ids], replay)
    assert tokenizer.decode(trajectory.completion_ids, skip_special_tokens=True) == text
    turns = turn_records(trajectory, tokenizer.decode)
    assert word_chain.step_turn_reward([turns], [FLOUR["steps"]], [FLOUR["intermediates"]]) == [[0.25] * 4 + [None]]
    assert word_chain.boxed_answer_reward([text], [FLOUR["answer"]]) == [1.0]


def test_step_probabilities_multiply_to_the_whole_routes_probability():
    """With the shared prompt prefix cached, the per-step probabilities of each row multiply to the probability of
    all its model tokens computed in one plain forward pass."""
    import torch

    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer, hidden_size=32, num_layers=2, seed=0)
    rows = word_chain.test_problems(3)
    probabilities = word_chain.step_probabilities(model, tokenizer, rows, batch_size=2)
    assert [len(p) for p in probabilities] == [5, 5, 5]
    for example, steps in zip(rows, probabilities):
        prompt_text = tokenizer.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=False)
        text = word_chain.solution(example)
        encoded = tokenizer(prompt_text + text, add_special_tokens=False, return_offsets_mapping=True)
        spans = [(len(prompt_text) + b, len(prompt_text) + e) for b, e in word_chain.step_spans(text)]
        scored = [any(lo <= b < hi for lo, hi in spans) for b, _ in encoded["offset_mapping"]] + [True]
        ids = torch.tensor([encoded["input_ids"] + [tokenizer.eos_token_id]])
        with torch.no_grad():
            logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1).gather(1, ids[0, 1:, None])[:, 0]
        expected = sum(lp for lp, keep in zip(logps.tolist(), scored[1:]) if keep)
        assert math.log(math.prod(steps)) == pytest.approx(expected, abs=1e-3)
        assert all(0 < p <= 1 for p in steps)
