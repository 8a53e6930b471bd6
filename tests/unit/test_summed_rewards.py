"""trl_gtpo.rewards.summed: the GRPO baseline's trajectory rewards carry exactly GTPO's turn-level information."""

import random

import pytest
import torch

from trl_gtpo.rewards.format import format_terms
from trl_gtpo.rewards.summed import summed_format_penalty, summed_turn_reward
from trl_gtpo.rewards.turn import intermediate_value_turn_reward, weighted_turn_terms
from trl_gtpo.turn_records import TurnRecord


def call(index: int, output: str | None, status: str = "ok", well_formed: bool = True) -> TurnRecord:
    return TurnRecord(index, "```python\nprint(x)\n```\n", "print(x)", output, status, 0, 1, well_formed)


def answer(index: int) -> TurnRecord:
    return TurnRecord(index, "The answer is \\boxed{1}.", None, None, "none", 0, 1)


def test_two_step_trajectories_by_hand():
    intermediates = [["312", "5304"]] * 4
    turns = [
        [call(0, "312\n"), call(1, "5304\n"), answer(2)],  # both steps right: 1/2 + 1/2
        [call(0, "312\n"), call(1, "4368\n"), answer(2)],  # second step wrong: 1/2 + 0
        [call(0, "221\n"), answer(1)],  # first step wrong, one call: 0
        [answer(0)],  # no call: nothing to check
    ]
    reward = summed_turn_reward(intermediate_value_turn_reward, weight=0.5)
    assert reward.__name__ == "summed_intermediate_value_turn_reward"
    assert reward(prompts=["p"] * 4, completions=["c"] * 4, turns=turns, intermediates=intermediates) == [0.5, 0.25, 0.0, 0.0]
    penalty = summed_format_penalty(-0.1)
    assert penalty.__name__ == "format_penalty"
    malformed = [[call(0, None, "none", well_formed=False), answer(1)]]
    assert penalty(turns=turns + malformed) == pytest.approx([0.0, 0.0, 0.0, -0.1, -0.2])  # no call ran: -0.1 once


@pytest.mark.parametrize("seed", range(5))
def test_the_sum_is_gtpos_turn_terms_summed_on_random_groups(seed):
    """Whatever the turn values, GRPO's summed reward is the row sum of the turn terms GTPO's advantage step gets."""
    rng = random.Random(seed)
    turns, intermediates = [], []
    for _ in range(16):
        steps = [str(rng.randint(10, 99)) for _ in range(rng.randint(1, 3))]
        trajectory = []
        for j in range(rng.randint(1, 4)):
            kind = rng.random()
            if kind < 0.4:
                trajectory.append(call(j, f"{rng.choice(steps)}\n"))
            elif kind < 0.6:
                trajectory.append(call(j, "Traceback", "error"))
            elif kind < 0.8:
                trajectory.append(call(j, None, "none", well_formed=rng.random() < 0.5))
            else:
                trajectory.append(answer(j))
        turns.append(trajectory)
        intermediates.append(steps)
    weight, penalty = rng.uniform(0.1, 2.0), -rng.uniform(0.05, 1.0)
    width = max(len(t) for t in turns)
    values = intermediate_value_turn_reward(turns=turns, intermediates=intermediates)
    terms = weighted_turn_terms([values], [weight], width)
    summed = summed_turn_reward(intermediate_value_turn_reward, weight)(turns=turns, intermediates=intermediates)
    assert summed == pytest.approx(terms.sum(dim=1).tolist())
    rule = format_terms(turns, torch.tensor([len(t) for t in turns]), width, penalty)
    assert summed_format_penalty(penalty)(turns=turns) == pytest.approx(rule.sum(dim=1).tolist())
    # zero weight or zero penalty: nothing reaches the reward
    assert set(summed_turn_reward(intermediate_value_turn_reward, 0.0)(turns=turns, intermediates=intermediates)) == {0.0}
    assert set(summed_format_penalty(0.0)(turns=turns)) == {0.0}


def test_without_turns_the_error_says_to_use_the_code_interpreter_rollout():
    with pytest.raises(ValueError, match="summed_intermediate_value_turn_reward needs `turns`.*CodeInterpreterRollout"):
        summed_turn_reward(intermediate_value_turn_reward)(completions=["c"], intermediates=[["1"]])
    with pytest.raises(ValueError, match="format_penalty needs `turns`.*CodeInterpreterRollout"):
        summed_format_penalty(-0.1)(completions=["c"])


def test_a_bad_turn_value_is_reported_as_for_gtpo():
    def bad(turns, **kwargs):
        return [[float("nan")] for _ in turns]

    with pytest.raises(ValueError, match="Turn reward function 'bad' returned nan for turn 0 of trajectory 0"):
        summed_turn_reward(bad)(turns=[[call(0, "1")]])
