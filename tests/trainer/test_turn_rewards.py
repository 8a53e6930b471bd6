"""Turn rewards of the user's own (trl_gtpo.rewards.turn) on the four multi-turn paths, checked by hand."""

import asyncio
import os

import pytest
import torch
from datasets import Dataset

from trl_gtpo import GTPOConfig
from trl_gtpo.interpreter.rollout import CodeInterpreterRollout
from trl_gtpo.rewards.turn import (
    answer_after_intermediate_turn_reward,
    call_after_final_value_turn_reward,
    call_turn_reward_funcs,
    environment_turn_values,
    intermediate_value_turn_reward,
    tool_success_turn_reward,
    verified_answer_turn_reward,
)
from trl_gtpo.turn_records import (
    TurnRecord,
    environment_call_turns,
    records_from_mask,
    records_from_messages,
)

from helpers import (
    QUESTION,
    RecordingGTPOTrainer,
    TaggedScripts,
    boxed_42,
    first_token_advantages,
    make_args,
    pooled,
    rows_by_tag,
    tool_calling_tokenizer,
)


def record(index, status="none", response=None, call=None):
    return TurnRecord(index, f"turn {index}", call, response, status, 0, 1)


# ------------------------------------------------------------------------------------------------ pure functions


def test_tool_success_turn_reward_by_hand():
    turns = [[record(0, "ok"), record(1, "error"), record(2, "none")], [record(0, "timeout"), record(1, "no_code")]]
    assert tool_success_turn_reward(turns) == [[1.0, 0.0, None], [0.0, None]]


def test_verified_answer_turn_reward_rewards_the_turn_whose_output_states_the_answer():
    turns = [[record(0, "ok", "1,080.0\n"), record(1, "ok", "7"), record(2)]] * 2 + [[record(0, "error", "1080")]]
    completions = ["So the answer is \\boxed{1080}.", "The answer is \\boxed{12}.", "\\boxed{1080}"]
    assert verified_answer_turn_reward(completions, turns) == [[1.0, None, None], [None, None, None], [None]]


def test_intermediate_value_turn_reward_pays_each_expected_value_once_with_a_share_of_one():
    turns = [
        # right first step (1/2), a wrong second step, no call, then a call that prints nothing expected
        [record(0, "ok", "1924\n"), record(1, "ok", "2536"), record(2), record(3, "ok", "7")],
        # "no_code" is no call; numbers are compared as numbers
        [record(0, "ok", "1924\n"), record(1, "no_code"), record(2, "ok", "2,535.0")],
        # the last printed number counts, not any; a call that failed is 0
        [record(0, "ok", "1924 2535 7"), record(1, "error", "2535")],
        # one call straight to the final value is paid for it; the first step's value later still counts once
        [record(0, "ok", "2535"), record(1, "ok", "1924"), record(2, "ok", "1924")],
        # printing the same value again earns nothing more
        [record(0, "ok", "1924"), record(1, "ok", "1924")],
    ]
    intermediates = [["1924", "2535"], [1924, 2535], [1924, 2535], [1924, 2535], [1924, 2535]]
    assert intermediate_value_turn_reward(turns, intermediates) == [
        [0.5, 0.0, None, 0.0], [0.5, None, 0.5], [0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.0]
    ]
    # one expected value: the whole share of 1
    assert intermediate_value_turn_reward([[record(0, "ok", "42")]], [[42]]) == [[1.0]]


def test_call_after_final_value_turn_reward_charges_every_call_made_once_the_final_value_was_printed():
    turns = [
        # the final value, then a second multiplication and a check: both charged; the answer turn is not a call
        [record(0, "ok", "764978\n"), record(1, "ok", "1529956"), record(2, "ok", "764,978.0"), record(3)],
        # the intermediate first: the second call is the step, not a late one
        [record(0, "ok", "3504"), record(1, "ok", "339888"), record(2)],
        # the final value among other numbers does not count, only the last printed one; a failed call neither
        [record(0, "ok", "339888 7"), record(1, "error", "339888"), record(2, "ok", "1"), record(3, "no_code")],
        # a call that did not run is never charged, even after the final value
        [record(0, "ok", "339888"), record(1, "no_code"), record(2, "ok", "5")],
    ]
    intermediates = [[764978], [3504, 339888], ["3504", "339888"], [3504, 339888]]
    assert call_after_final_value_turn_reward(turns, intermediates) == [
        [None, -1.0, -1.0, None], [None, None, None], [None, None, None, None], [None, None, -1.0]
    ]
    assert call_after_final_value_turn_reward([[record(0, "ok", "1")]], [[]]) == [[None]]  # no expected value


def test_call_after_final_value_turn_reward_matches_a_reference_on_random_trajectories():
    import random

    rng = random.Random(0)
    for _ in range(500):
        expected = [rng.randint(1, 50) for _ in range(rng.randint(1, 3))]
        trajectory = []
        for j in range(rng.randint(0, 8)):
            status = rng.choice(["ok", "ok", "ok", "error", "none", "no_code"])
            value = rng.choice(expected + [rng.randint(1, 50)])
            trajectory.append(record(j, status, f"{rng.randint(1, 9)} {value}" if status != "none" else None))
        (values,) = call_after_final_value_turn_reward([trajectory], [expected])
        first = next((j for j, t in enumerate(trajectory)
                      if t.status == "ok" and int(t.tool_response.split()[-1]) == expected[-1]), None)
        assert values == [-1.0 if first is not None and j > first and t.ran else None for j, t in enumerate(trajectory)]


def test_answer_after_intermediate_turn_reward_charges_an_answer_given_on_an_intermediate_value():
    answer = record  # the answer turn: no tool call
    turns = [
        # the right first product, then the answer: the answer turn is charged, the call is not
        [record(0, "ok", "3504\n", "print(48 * 73)"), answer(1)],
        # both steps, then the answer: not charged; a wrong second step, then the answer: not charged either
        [record(0, "ok", "3504", "c"), record(1, "ok", "339888", "c"), answer(2)],
        [record(0, "ok", "3504", "c"), record(1, "ok", "336384", "c"), answer(2)],
        # a failed call prints no value: the last value printed is still the intermediate; numbers as numbers
        [record(0, "ok", "3,504.0", "c"), record(1, "error", "Traceback", "c"), answer(2)],
        # the intermediate among other numbers counts only as the last one; a wrong pair is not an intermediate
        [record(0, "ok", "3504 7", "c"), answer(1)], [record(0, "ok", "4656", "c"), answer(1)],
        # no answer: the last turn made a call (out of turns); no call at all; an empty trajectory
        [record(0, "ok", "3504", "c"), record(1, "none", None, "print(3504 * 97)")], [answer(0)], [],
        # the final value printed last (after the intermediate again) is an answer on the final value
        [record(0, "ok", "339888", "c"), answer(1)],
    ]
    intermediates = [[3504, 339888]] * 3 + [["3504", "339888"]] + [[3504, 339888]] * 6
    assert answer_after_intermediate_turn_reward(turns, intermediates) == [
        [None, -1.0], [None, None, None], [None, None, None], [None, None, -1.0], [None, None], [None, None],
        [None, None], [None], [], [None, None],
    ]
    # a one-step problem has no intermediate: never charged
    assert answer_after_intermediate_turn_reward([[record(0, "ok", "42", "c"), answer(1)]], [[42]]) == [[None, None]]


def test_answer_after_intermediate_turn_reward_matches_a_reference_on_random_trajectories():
    import random

    rng = random.Random(1)
    for _ in range(500):
        expected = rng.sample(range(1, 60), rng.randint(1, 3))
        trajectory = []
        for j in range(rng.randint(0, 6)):
            status = rng.choice(["ok", "ok", "ok", "error", "none", "no_code"])
            value = rng.choice(expected + [rng.randint(1, 60)])
            response = f"{rng.randint(1, 9)} {value}" if status != "none" else None
            trajectory.append(record(j, status, response, rng.choice(["code", None]) if status == "none" else "code"))
        (values,) = answer_after_intermediate_turn_reward([trajectory], [expected])
        printed = [int(t.tool_response.split()[-1]) for t in trajectory[:-1] if t.status == "ok"]
        premature = (bool(trajectory) and trajectory[-1].tool_call is None and bool(printed)
                     and printed[-1] in expected[:-1])
        assert values == [-1.0 if premature and j == len(trajectory) - 1 else None for j in range(len(trajectory))]


def test_turn_reward_function_shape_errors_name_the_function_the_trajectory_and_both_counts():
    turns = [[record(0)], [record(0), record(1)]]

    def short(turns, **kwargs):
        return [[1.0], [1.0]]

    with pytest.raises(ValueError, match=r"'short' returned 1 values for trajectory 1, which has 2 turns"):
        call_turn_reward_funcs([short], ["short"], turns)
    with pytest.raises(ValueError, match=r"'short' returned 2 values for 3 trajectories"):
        call_turn_reward_funcs([short], ["short"], turns + [[record(0)]])


def test_async_turn_reward_functions_are_awaited():
    async def later(turns, **kwargs):
        await asyncio.sleep(0)
        return [[0.5] * len(t) for t in turns]

    assert call_turn_reward_funcs([later], ["later"], [[record(0), record(1)]]) == [[[0.5, 0.5]]]


def test_records_from_messages_read_trl_tool_loop_output():
    ids = list(range(10))
    mask = [1, 1, 1, 0, 0, 1, 1, 0, 1, 1]
    messages = [
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {}}}]},
        {"role": "tool", "name": "f", "content": "12"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "g", "arguments": {}}}]},
        {"role": "tool", "name": "g", "content": "{'error': 'boom'}"},
        {"role": "assistant", "content": "done"},
    ]
    records = records_from_messages(ids, mask, messages, lambda t: " ".join(map(str, t)))
    assert [(r.start, r.end) for r in records] == [(0, 3), (5, 7), (8, 10)]
    assert [r.status for r in records] == ["ok", "error", "none"]
    assert records[0].tool_response == "12" and '"name": "f"' in records[0].tool_call and records[2].tool_call is None
    assert [r.text for r in records_from_mask(ids, mask, str)] == ["[0, 1, 2]", "[5, 6]", "[8, 9]"]


# ------------------------------------------------------------------------------------ the four training paths

@pytest.mark.slow
def test_code_interpreter_turn_rewards_change_the_advantages_by_hand(tiny_model_path, tmp_path):
    gamma = 0.5
    args = make_args(tmp_path, max_steps=1, turn_advantage_estimator="pooled", gamma=gamma, shaping_alpha=0.0, format_penalty=0.0, max_completion_length=96)
    rollout = CodeInterpreterRollout(args, generate_turn=lambda trainer, stops: TaggedScripts(trainer.processing_class))
    trainer = RecordingGTPOTrainer(
        model=tiny_model_path, reward_funcs=boxed_42, args=args, rollout_func=rollout,
        train_dataset=Dataset.from_dict({"prompt": [QUESTION] * 4}), turn_reward_funcs=[tool_success_turn_reward],
    )
    trainer.train()
    trainer_record = trainer.records[0]
    rows = rows_by_tag(trainer_record, trainer.processing_class)
    # A: code ran (ok), then correct; B: code ran, wrong; C: no code, correct; D: code raised (error), wrong.
    turn_rewards = {"A": [1.0, 1.0], "B": [1.0, 0.0], "C": [1.0], "D": [0.0, 0.0]}
    returns = {tag: [r[0] + gamma * r[1], r[1]] if len(r) == 2 else r for tag, r in turn_rewards.items()}
    expected = dict(zip("ABCD", pooled([returns[tag] for tag in "ABCD"])))
    for tag, row in rows.items():
        assert first_token_advantages(trainer_record, row) == pytest.approx(expected[tag], abs=1e-5), tag
    logs = trainer.state.log_history[0]
    assert logs["turn_rewards/tool_success_turn_reward/mean"] == pytest.approx(2 / 3)  # ok, ok, error


@pytest.mark.slow
def test_rollout_func_turn_rewards_and_tensor_env_masks(tiny_model_path, tmp_path):
    """A rollout_func may return `turn_rewards` (one list per trajectory) and its `env_mask` as tensors."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    turn, tool = tokenizer.encode("abc"), tokenizer.encode(" tool says 1 ")

    def rollout(prompts, trainer):
        texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
        two_turns = turn + tool + turn + [tokenizer.eos_token_id]
        one_turn = turn + [tokenizer.eos_token_id]
        completions = [two_turns if i % 2 == 0 else one_turn for i in range(len(prompts))]
        masks = [
            torch.tensor([1] * len(turn) + [0] * len(tool) + [1] * (len(turn) + 1) if i % 2 == 0 else [1] * len(one_turn))
            for i in range(len(prompts))
        ]
        turn_rewards = [[0.25, None] if i % 2 == 0 else [-0.5] for i in range(len(prompts))]
        return {
            "prompt_ids": [tokenizer.encode(text, add_special_tokens=False) for text in texts],
            "completion_ids": completions, "logprobs": None, "env_mask": masks, "turn_rewards": turn_rewards,
        }

    def reward(completions, **kwargs):
        return [1.0 if "tool" in completion[0]["content"] else 0.0 for completion in completions]

    args = make_args(tmp_path, max_steps=1, turn_advantage_estimator="pooled", gamma=0.5)
    trainer = RecordingGTPOTrainer(
        model=tiny_model_path, reward_funcs=reward, args=args, rollout_func=rollout,
        train_dataset=Dataset.from_dict({"prompt": [QUESTION] * 4}),
    )
    trainer.train()
    # two-turn rows: r = [0.25, 1.0] -> R = [0.75, 1.0]; one-turn rows: r = [-0.5] -> R = [-0.5]
    expected = pooled([[0.75, 1.0], [-0.5], [0.75, 1.0], [-0.5]])
    for row in range(4):
        assert first_token_advantages(trainer.records[0], row) == pytest.approx(expected[row], abs=1e-5)
    assert trainer.state.log_history[0]["turn_rewards/rollout_func/mean"] == pytest.approx((0.25 - 0.5) / 2)


class ScriptedToolModel:
    """`generate` of a tiny model replaced by a script: before any tool response, even rows call `multiply(3, 4)`
    and odd rows write `odd` (by default a call of a tool that does not exist); after a tool response, every row
    answers."""

    CALL = '<tool_call>\n{"name": "multiply", "arguments": {"a": 3, "b": 4}}\n</tool_call>'
    BAD_CALL = '<tool_call>\n{"name": "divide", "arguments": {"a": 3, "b": 0}}\n</tool_call>'

    def __init__(self, model, tokenizer, odd: str = BAD_CALL):
        self.tokenizer, self.rows, self.odd = tokenizer, 0, odd
        model.generate = self

    def __call__(self, input_ids, **kwargs):
        texts = self.tokenizer.batch_decode(input_ids, skip_special_tokens=False)
        completions = []
        for text in texts:
            if "<tool_response>" in text.rsplit("<|im_start|>assistant", 1)[-1] or "<tool_response>" in text[-400:]:
                body = "The answer is 12." if "12" in text.rsplit("<tool_response>", 1)[-1] else "I could not compute it."
            else:
                body = self.CALL if self.rows % 2 == 0 else self.odd
                self.rows += 1
            completions.append(self.tokenizer.encode(body + "<|im_end|>", add_special_tokens=False))
        width = max(map(len, completions))
        pad = self.tokenizer.pad_token_id
        tail = torch.tensor([ids + [pad] * (width - len(ids)) for ids in completions])
        return torch.cat([input_ids, tail.to(input_ids.device)], dim=1)


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return a * b


def says_12(completions, **kwargs):
    return [1.0 if "12" in str(completion[-1].get("content")) else 0.0 for completion in completions]


@pytest.mark.slow
def test_trl_tools_path_turn_rewards_by_hand(tiny_model_path, tmp_path):
    tokenizer = tool_calling_tokenizer(tiny_model_path)
    args = make_args(tmp_path, max_steps=1, turn_advantage_estimator="pooled", gamma=0.5, max_completion_length=160)
    trainer = RecordingGTPOTrainer(
        model=tiny_model_path, reward_funcs=says_12, args=args, processing_class=tokenizer, tools=[multiply],
        train_dataset=Dataset.from_dict({"prompt": [QUESTION] * 4}), turn_reward_funcs=[tool_success_turn_reward],
    )
    ScriptedToolModel(trainer.model, tokenizer)
    trainer.train()
    trainer_record = trainer.records[0]
    # valid call: r = [1 (tool ok), 1 (says 12)] -> R = [1.5, 1]; unknown tool: r = [0 (error), 0] -> R = [0, 0]
    completions = trainer_record["completion_ids"]
    valid = ["multiply" in tokenizer.decode(ids) for ids in completions]
    assert sorted(valid) == [False, False, True, True]
    expected = pooled([[1.5, 1.0] if v else [0.0, 0.0] for v in valid])
    for row in range(4):
        assert first_token_advantages(trainer_record, row) == pytest.approx(expected[row], abs=1e-5)


class CalculatorEnvironment:
    """A TRL environment whose tool calls are rewarded per turn: 0.5 for each turn that called `multiply`."""

    def __init__(self):
        self.calls = 0

    def reset(self, **kwargs):
        self.calls = 0

    def multiply(self, a: int, b: int) -> int:
        """Multiply two integers.

        Args:
            a: The first factor.
            b: The second factor.
        """
        self.calls += 1
        return a * b

    def get_turn_rewards(self) -> list[float | None]:
        return [0.5] * self.calls + [None]


@pytest.mark.slow
def test_environment_get_turn_rewards_by_hand(tiny_model_path, tmp_path):
    tokenizer = tool_calling_tokenizer(tiny_model_path)
    args = make_args(tmp_path, max_steps=1, turn_advantage_estimator="pooled", gamma=0.5, max_completion_length=160)
    trainer = RecordingGTPOTrainer(
        model=tiny_model_path, reward_funcs=says_12, args=args, processing_class=tokenizer,
        environment_factory=CalculatorEnvironment, train_dataset=Dataset.from_dict({"prompt": [QUESTION] * 4}),
    )
    assert [tool.__name__ for tool in trainer.tools] == ["multiply"]  # get_turn_rewards is read, not offered
    ScriptedToolModel(trainer.model, tokenizer, odd="I think it is 7.")
    trainer.train()
    trainer_record = trainer.records[0]
    valid = ["multiply" in tokenizer.decode(ids) for ids in trainer_record["completion_ids"]]
    # a call: r = [0.5 (environment), 1 (says 12)] -> R = [1.0, 1.0]; a direct wrong answer: r = [0] -> R = [0]
    assert sorted(valid) == [False, False, True, True]
    expected = pooled([[1.0, 1.0] if v else [0.0] for v in valid])
    for row in range(4):
        assert first_token_advantages(trainer_record, row) == pytest.approx(expected[row], abs=1e-5)
    assert trainer.state.log_history[0]["turn_rewards/environment/mean"] == pytest.approx(0.5)


def test_format_rule_by_hand():
    from trl_gtpo.rewards.format import format_terms

    malformed = TurnRecord(0, "t", "print(6 *", "SyntaxError", "error", 0, 1, well_formed=False)
    unrun_last = TurnRecord(1, "t", "print(1)", None, "none", 2, 3)  # code in the last allowed turn: never ran
    turns = [
        [record(0, "ok"), record(1)],  # a call ran: no penalty
        [record(0), unrun_last],  # code written but never run: no tool call, penalty on the final turn
        [malformed, record(1)],  # malformed (it ran, and raised): penalty on that turn only
        [TurnRecord(0, "t", "x", None, "no_code", 0, 1, well_formed=False)],  # marker without code: both rules
    ]
    terms = format_terms(turns, torch.tensor([2, 2, 2, 1]), width=2, penalty=-0.1)
    torch.testing.assert_close(terms, torch.tensor([[0.0, 0.0], [0.0, -0.1], [-0.1, 0.0], [-0.2, 0.0]]))


# ------------------------------------------------------------------------- environments: values per tool call


def call(name, **arguments):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def divide(a: float, b: float) -> float:
    return a / b


def test_environment_call_turns_follow_trls_messages():
    tools = {"divide": divide}
    messages = [
        {"role": "assistant", "content": "", "tool_calls": [call("divide", a=6, b=3), call("divide", a=1, b=0)]},
        {"role": "tool", "name": "divide", "content": "2.0"},
        {"role": "tool", "name": "divide", "content": "{'error': 'division by zero'}"},  # raised: it ran, counts
        {"role": "assistant", "content": "", "tool_calls": [call("nope", a=1), call("divide", a=1), call("divide", a=1, c=2)]},
        {"role": "tool", "name": "nope", "content": "{'error': 'Tool nope not found.'}"},  # never entered the env
        {"role": "tool", "name": "divide", "content": "{'error': 'missing b'}"},  # arguments do not fit: never entered
        {"role": "tool", "name": "divide", "content": "{'error': 'unexpected c'}"},
        {"role": "assistant", "content": "", "tool_calls": [call("divide", a=8, b=2)]},  # turn 2: ran
        {"role": "tool", "name": "divide", "content": "4.0"},
        {"role": "assistant", "content": "", "tool_calls": [call("divide", a=9, b=3)]},  # past the iteration limit
    ]
    assert environment_call_turns(messages, tools, max_iterations=3) == [0, 0, 2]
    assert environment_call_turns(messages, tools, max_iterations=10) == [0, 0, 2, 3]


def test_a_rolled_back_call_ran_and_keeps_its_turn():
    """TRL rolls back the tool messages of a call whose result would overflow max_completion_length: the assistant
    message stays, with its calls, and the trajectory ends. The environment recorded both calls."""
    messages = [
        {"role": "assistant", "content": "", "tool_calls": [call("divide", a=1, b=4)]},
        {"role": "tool", "name": "divide", "content": "0.25"},
        {"role": "assistant", "content": "", "tool_calls": [call("divide", a=6, b=3), call("divide", a=1, b=0)]},
    ]
    calls = environment_call_turns(messages, {"divide": divide}, max_iterations=10)
    assert calls == [0, 1, 1]
    turns = [[record(0), record(1)]]
    assert environment_turn_values([[0.5, 0.1, -0.1]], [calls], turns, "env") == [[0.5, pytest.approx(0.0)]]


def test_a_completion_cut_to_zero_tokens_after_a_tool_keeps_the_calls_before_it():
    """The completion after the tool result was cut to 0 tokens: TRL appends no assistant message, the mask has one
    turn, and the calls of that turn keep their values."""
    messages = [
        {"role": "assistant", "content": "", "tool_calls": [call("divide", a=6, b=3), call("divide", a=6, b=2)]},
        {"role": "tool", "name": "divide", "content": "2.0"},
        {"role": "tool", "name": "divide", "content": "3.0"},
    ]
    calls = environment_call_turns(messages, {"divide": divide}, max_iterations=10)
    assert environment_turn_values([[0.1, 0.1]], [calls], [[record(0)]], "env") == [[pytest.approx(0.2)]]


def test_environment_turn_values_per_call_per_turn_and_errors():
    turns = [[record(0), record(1)], [record(0)], [record(0), record(1)]]
    calls = [[0, 0], [], [0, 5]]  # trajectory 2: a call whose turn is not in the completion is dropped
    values = [[0.25, None], None, [1.0, 3.0]]
    assert environment_turn_values(values, calls, turns, "env") == [[0.25, None], [None], [1.0, None]]
    # one value per turn, when that is not the call count
    assert environment_turn_values([[1.0, 2.0], [], []], [[0], [], []], turns, "env")[0] == [1.0, 2.0]
    # all None: no opinion
    assert environment_turn_values([[None, None], [], []], calls, turns, "env")[0] == [None, None]
    with pytest.raises(ValueError, match=r"env returned 3 values for trajectory 0, which made 2 calls of the "
                                         r"environment's tools in 2 turns"):
        environment_turn_values([[1.0, 1.0, 1.0], [], []], calls, turns, "env")


def _readme_block(marker: str) -> str:
    """The ```python block of README.md that contains `marker`, exactly as printed."""
    import re

    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```\n", readme, re.DOTALL) if marker in b]
    return block


class ParallelCalls:
    """`generate` of a tiny model replaced by a script: the k-th trajectory's first turn makes the calls of
    FIRST_TURNS[k]; after a tool response every trajectory answers."""

    FIRST_TURNS = [
        [("divide", {"a": 6, "b": 3}), ("divide", {"a": 1, "b": 0})],  # two parallel calls, one raises
        [("divide", {"a": 8, "b": 2})],
        [],  # answers directly
        [("multiply", {"a": 3, "b": 4})],  # not one of the environment's tools: TRL reports an error
    ]

    def __init__(self, model, tokenizer):
        self.tokenizer, self.rows = tokenizer, 0
        model.generate = self

    def __call__(self, input_ids, **kwargs):
        import json

        completions = []
        for text in self.tokenizer.batch_decode(input_ids, skip_special_tokens=False):
            if "<tool_response>" in text:
                body = "The answer is 2."
            else:
                calls = self.FIRST_TURNS[self.rows % 4]
                self.rows += 1
                body = "".join(
                    f'<tool_call>\n{json.dumps({"name": n, "arguments": a})}\n</tool_call>' for n, a in calls
                ) or "It is 2."
            completions.append(self.tokenizer.encode(body + "<|im_end|>", add_special_tokens=False))
        width = max(map(len, completions))
        pad = self.tokenizer.pad_token_id
        tail = torch.tensor([ids + [pad] * (width - len(ids)) for ids in completions])
        return torch.cat([input_ids, tail.to(input_ids.device)], dim=1)


@pytest.mark.slow
@pytest.mark.parametrize("max_completion_length", [400, 160])  # 160: the two-call turn's results are rolled back
def test_the_readme_environment_example_trains_as_printed(max_completion_length, tiny_model_path, tmp_path, monkeypatch):
    """README.md's environment example, executed as printed, with only what it leaves to the reader supplied
    (`my_outcome_reward`, `dataset`), the Hub model swapped for the tiny one, and the config's machine settings for
    this CPU (its own fields, turn_reward_weights, kept)."""
    import trl_gtpo

    from helpers import trl_args

    def cpu_config(output_dir, **fields):
        return GTPOConfig(**(trl_args(tmp_path, max_steps=1, max_completion_length=max_completion_length) | fields))

    class OfflineTrainer(RecordingGTPOTrainer):
        def __init__(self, model, reward_funcs, args, **kwargs):
            assert model == "Qwen/Qwen3-0.6B" and args.turn_reward_weights == [1.0, 0.2]
            kwargs["processing_class"] = tool_calling_tokenizer(tiny_model_path)
            super().__init__(tiny_model_path, reward_funcs, args, **kwargs)

        def _turn_reward_sources(self, step, turns):
            self.sources = super()._turn_reward_sources(step, turns)
            self.messages = step.completions
            return self.sources

    monkeypatch.setattr(trl_gtpo, "GTPOTrainer", OfflineTrainer)
    monkeypatch.setattr(trl_gtpo, "GTPOConfig", cpu_config)
    namespace = {
        "my_outcome_reward": lambda completions, **kw: [float("2" in str(c[-1]["content"])) for c in completions],
        "dataset": Dataset.from_dict({"prompt": [QUESTION] * 4}),
    }
    exec(_readme_block("class Calculator"), namespace)
    trainer = namespace["trainer"]
    assert [tool.__name__ for tool in trainer.tools] == ["divide"]
    ParallelCalls(trainer.model, trainer.processing_class)
    trainer.train()
    # get_turn_rewards: 0.1 per call with b != 0, -0.1 per call with b == 0; a turn gets the sum of its calls'
    # values. Every first turn made all the calls; the answer after the tool results (if any) is a turn without one.
    first_turn = {(("divide", 6, 3), ("divide", 1, 0)): 0.0, (("divide", 8, 2),): 0.1, (): None, (("multiply", 3, 4),): None}
    rolled_back = 0
    for messages, values in zip(trainer.messages, trainer.sources["environment"], strict=True):
        calls = tuple(
            (c["function"]["name"], *c["function"]["arguments"].values()) for c in messages[0].get("tool_calls") or []
        )
        num_turns = sum(message["role"] == "assistant" for message in messages)
        rolled_back += bool(calls) and num_turns == 1  # TRL dropped the results: the calls stay on turn 1
        assert values == pytest.approx([first_turn[calls]] + [None] * (num_turns - 1)), calls
    assert rolled_back == (1 if max_completion_length == 160 else 0)
    assert set(trainer.sources) == {"short_turns", "tool_success_turn_reward", "environment"}  # all of the README's
    assert trainer.state.log_history[0]["turn_rewards/environment/mean"] == pytest.approx(0.05)  # (0.0 + 0.1) / 2
