"""The main job's reward, designed before it is trained on: the total each behaviour earns on the word problems, and
the order those totals must have so that the best policy is the right one (README, "Turn rewards").

Totals are what GRPO's summed reward gives (outcome + each turn reward summed with its weight + the format rule) and
what GTPO's turn terms add up to (tests/unit/test_summed_rewards.py checks that the two are the same sums). The weights are
read from the main job's recipe, so a change there is checked here.
"""

import random
from pathlib import Path

import pytest
import yaml

from trl_gtpo.cli.train import load_reward_funcs
from trl_gtpo.rewards import math_answer_reward
from trl_gtpo.rewards.summed import summed_format_penalty, summed_turn_reward
from trl_gtpo.rewards.turn import intermediate_value_turn_reward
from trl_gtpo.turn_records import TurnRecord

RECIPE = yaml.safe_load((Path(__file__).resolve().parents[2] / "recipes" / "cpu_default.yaml").read_text())
TURN_NAMES = RECIPE["turn_reward_funcs"]
TURN_WEIGHTS = dict(zip(TURN_NAMES, RECIPE.get("turn_reward_weights") or [1.0] * len(TURN_NAMES), strict=True))
TURN_REWARDS = list(zip(load_reward_funcs(TURN_NAMES, "--turn_reward_funcs"), TURN_WEIGHTS.values(), strict=True))
TURN_WEIGHT = TURN_WEIGHTS["intermediate_value_turn_reward"]
OUTCOME_WEIGHT = (RECIPE.get("reward_weights") or [1.0])[0]
FORMAT_PENALTY = RECIPE.get("format_penalty", -0.1)

# "Each box holds 48 pens. Each crate holds 73 boxes. How many pens are in 97 crates?" and "Each box holds 779 pens.
# How many pens are in 982 boxes?"
TWO_STEP = {"answer": "339888", "intermediates": [3504, 339888]}
ONE_STEP = {"answer": "764978", "intermediates": [764978]}


def call(code: str) -> tuple[str, str]:
    return code, str(eval(code.removeprefix("print(").removesuffix(")")))  # the value the sandbox would print


def total(problem: dict, calls: list[tuple[str, str]], boxed: str | None) -> float:
    """The reward of a trajectory that makes `calls` (code, printed value), then answers \\boxed{boxed}."""
    turns = [
        TurnRecord(j, f"```python\n{code}\n```", code, f"{output}\n", "ok", 0, 1) for j, (code, output) in enumerate(calls)
    ]
    answer = "I don't know." if boxed is None else f"The answer is \\boxed{{{boxed}}}."
    turns.append(TurnRecord(len(calls), answer, None, None, "none", 0, 1))
    completion = "".join(f"{t.text}\n```output\n{t.tool_response}```\n" for t in turns[:-1]) + answer
    outcome = math_answer_reward([completion], [problem["answer"]], model_turns=[[t.text for t in turns]])[0]
    steps = sum(
        summed_turn_reward(func, weight)(turns=[turns], intermediates=[problem["intermediates"]])[0]
        for func, weight in TURN_REWARDS
    )
    return OUTCOME_WEIGHT * outcome + steps + summed_format_penalty(FORMAT_PENALTY)(turns=[turns])[0]


BEHAVIOURS = {  # name: (problem, calls, boxed answer), the README's table
    "two-step: both steps, right answer": (TWO_STEP, [call("print(48 * 73)"), call("print(3504 * 97)")], "339888"),
    "two-step: one call for the final value": (TWO_STEP, [call("print(48 * 73 * 97)")], "339888"),
    "two-step: wrong pair first, then the final value": (
        TWO_STEP, [call("print(48 * 97)"), call("print(4656 * 73)")], "339888"
    ),
    "two-step: right first product, answered at once": (TWO_STEP, [call("print(48 * 73)")], "3504"),
    "two-step: right first product, then a wrong second product": (
        TWO_STEP, [call("print(48 * 73)"), call("print(3504 * 79)")], "276816"
    ),
    "two-step: wrong pair, answered at once": (TWO_STEP, [call("print(48 * 97)")], "4656"),
    "two-step: no call, a guess": (TWO_STEP, [], "340000"),
    "one-step: one call, right answer": (ONE_STEP, [call("print(779 * 982)")], "764978"),
    "one-step: a second call that multiplies again": (
        ONE_STEP, [call("print(779 * 982)"), call("print(764978 * 2)")], "1529956"
    ),
    "one-step: the same value printed twice": (ONE_STEP, [call("print(779 * 982)"), call("print(764978)")], "764978"),
    "two-step: both steps, then a third call": (
        TWO_STEP, [call("print(48 * 73)"), call("print(3504 * 97)"), call("print(339888 * 2)")], "339888"
    ),
}
README_TOTALS = {
    "two-step: both steps, right answer": 2.0,
    "two-step: one call for the final value": 1.5,
    "two-step: wrong pair first, then the final value": 1.5,
    "two-step: right first product, answered at once": 0.0,
    "two-step: right first product, then a wrong second product": 0.5,
    "two-step: wrong pair, answered at once": 0.0,
    "two-step: no call, a guess": -0.1,
    "one-step: one call, right answer": 2.0,
    "one-step: a second call that multiplies again": 0.5,
    "one-step: the same value printed twice": 1.5,
    "two-step: both steps, then a third call": 1.5,
}


@pytest.fixture(scope="module")
def totals():
    return {name: total(*behaviour) for name, behaviour in BEHAVIOURS.items()}


def test_the_readme_table_is_what_the_rewards_give(totals):
    assert totals == pytest.approx(README_TOTALS)


def test_the_full_two_step_solution_is_strictly_best(totals):
    best = totals["two-step: both steps, right answer"]
    assert all(best > value for name, value in totals.items() if name.startswith("two-step") and "both" not in name)


def test_a_correct_solution_in_fewer_calls_earns_the_full_outcome(totals):
    for name in ("two-step: one call for the final value", "two-step: wrong pair first, then the final value"):
        assert totals[name] >= OUTCOME_WEIGHT


def test_a_premature_answer_earns_strictly_less_than_any_correct_solution(totals):
    correct = [v for n, v in totals.items() if n.startswith("two-step") and BEHAVIOURS[n][2] == TWO_STEP["answer"]]
    assert totals["two-step: right first product, answered at once"] < min(correct)
    assert totals["one-step: a second call that multiplies again"] < totals["one-step: one call, right answer"]


def test_without_a_correct_answer_the_second_step_still_beats_stopping_at_the_first(totals):
    """A group of two-step trajectories none of which is right still has a reward difference that points to the second
    call: going on and getting it wrong beats answering with the first product, which is charged on its answer turn;
    a premature answer is still no worse than a wrong pair and better than no call."""
    premature = totals["two-step: right first product, answered at once"]
    assert totals["two-step: right first product, then a wrong second product"] > premature
    assert premature >= totals["two-step: wrong pair, answered at once"] > totals["two-step: no call, a guess"]


def test_a_call_after_the_final_value_costs_less_than_a_wrong_answer(totals):
    """Going on after the answer is known is charged, but a correct answer checked once more still beats any wrong
    one, and the right answer in the fewest calls is best."""
    wrong = max(v for n, v in totals.items() if BEHAVIOURS[n][2] not in (TWO_STEP["answer"], ONE_STEP["answer"]))
    for name in ("one-step: the same value printed twice", "two-step: both steps, then a third call"):
        assert wrong < totals[name] < max(totals.values())


@pytest.mark.parametrize("seed", range(3))
def test_checked_steps_never_add_up_to_more_than_the_outcome(seed):
    """Whatever a trajectory prints, over any number of calls, its intermediate rewards sum to at most the outcome's
    weight: checking the steps can never pay more than solving the problem."""
    rng = random.Random(seed)
    for _ in range(200):
        expected = [rng.randint(10, 10**6) for _ in range(rng.randint(1, 4))]
        printed = [rng.choice(expected + [rng.randint(10, 10**6)]) for _ in range(rng.randint(0, 8))]
        turns = [TurnRecord(j, "", "print(x)", f"{v}\n", "ok", 0, 1) for j, v in enumerate(printed)]
        reward = summed_turn_reward(intermediate_value_turn_reward, TURN_WEIGHT)(turns=[turns], intermediates=[expected])
        assert reward[0] <= OUTCOME_WEIGHT + 1e-9
