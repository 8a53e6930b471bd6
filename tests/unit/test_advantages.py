"""Turn-level advantage math against hand-computed values (GTPO.md parts 1-2)."""

import math

import pytest
import torch

from trl_gtpo.advantages import (
    AdvantageSettings,
    TurnBatch,
    discounted_returns,
    normalize_returns,
    token_advantages,
    turn_advantages,
    turn_rewards,
)
from trl_gtpo.turn_records import turn_index

nan = math.nan


def grpo_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """GRPO's advantages as TRL 1.16 computes them (sum_then_normalize), written out independently."""
    grouped = rewards.view(-1, group_size)
    mean = grouped.mean(dim=1).repeat_interleave(group_size)
    if scale == "group":
        std = grouped.std(dim=1).repeat_interleave(group_size)
    elif scale == "batch":
        std = rewards.std().expand_as(rewards)
    else:
        return rewards - mean
    return (rewards - mean) / (std + 1e-4)


def test_turn_index_reads_turns_off_the_mask():
    mask = torch.tensor([[1, 1, 0, 0, 1, 0, 1, 1], [1, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]])
    index, num_turns = turn_index(mask)
    assert index.tolist() == [[0, 0, -1, -1, 1, -1, 2, 2], [0, 0, 0, 0, -1, -1, -1, -1], [-1] * 8]
    assert num_turns.tolist() == [3, 1, 0]


def test_turn_rewards_put_outcome_and_shaping_on_the_final_turn():
    rewards = turn_rewards(
        num_turns=torch.tensor([3, 1, 2]),
        outcome=torch.tensor([1.0, 0.0, nan]),
        width=3,
        turn_terms=torch.tensor([[0.0, -0.1, 0.0], [-0.1, 0.0, 0.0], [0.0, 0.0, 0.0]]),
        shaping=torch.tensor([0.0, 0.25, 0.0]),
    )
    expected = torch.tensor([[0.0, -0.1, 1.0], [0.15, nan, nan], [nan, nan, nan]])
    torch.testing.assert_close(rewards, expected, equal_nan=True)


def test_discounted_returns_by_hand():
    rewards = torch.tensor([[0.0, -0.1, 1.0], [0.5, nan, nan]])
    returns = discounted_returns(rewards, gamma=0.9)
    # R_3 = 1, R_2 = -0.1 + 0.9, R_1 = 0 + 0.9 * 0.8
    torch.testing.assert_close(returns, torch.tensor([[0.72, 0.8, 1.0], [0.5, nan, nan]]), equal_nan=True)


def test_gamma_zero_keeps_each_turns_own_reward_and_gamma_one_sums_the_rest():
    rewards = torch.tensor([[0.2, -0.1, 1.0]])
    torch.testing.assert_close(discounted_returns(rewards, 0.0), rewards)
    torch.testing.assert_close(discounted_returns(rewards, 1.0), torch.tensor([[1.1, 0.9, 1.0]]))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_single_turn_groups_give_exactly_grpos_advantages(scale):
    torch.manual_seed(0)
    outcome = torch.randint(0, 2, (12,)).float() + torch.rand(12) * 0.1
    rewards = turn_rewards(torch.ones(12, dtype=torch.long), outcome, width=1)
    returns = discounted_returns(rewards, gamma=0.9)
    advantages = normalize_returns(returns, group_size=4, scope="group", scale=scale)
    torch.testing.assert_close(advantages[:, 0], grpo_advantages(outcome, 4, scale))


def test_group_normalization_uses_every_turn_of_the_group():
    returns = torch.tensor([[0.72, 0.8, 1.0], [0.0, nan, nan], [1.0, 2.0, nan], [3.0, nan, nan]])
    advantages = normalize_returns(returns, group_size=2, scope="group", scale="group")
    first = torch.tensor([0.72, 0.8, 1.0, 0.0])
    second = torch.tensor([1.0, 2.0, 3.0])
    expected = torch.tensor(
        [
            ((first - first.mean()) / (first.std() + 1e-4)).tolist()[:3],
            [((0.0 - first.mean()) / (first.std() + 1e-4)).item(), nan, nan],
            [*((second[:2] - second.mean()) / (second.std() + 1e-4)).tolist(), nan],
            [((3.0 - second.mean()) / (second.std() + 1e-4)).item(), nan, nan],
        ]
    )
    torch.testing.assert_close(advantages, expected, equal_nan=True)


def test_batch_scope_normalizes_over_the_whole_batch():
    returns = torch.tensor([[1.0, 2.0], [3.0, nan], [5.0, nan], [7.0, 8.0]])
    values = torch.tensor([1.0, 2.0, 3.0, 5.0, 7.0, 8.0])
    advantages = normalize_returns(returns, group_size=2, scope="batch", scale="group")
    expected = (returns - values.mean()) / (values.std() + 1e-4)
    torch.testing.assert_close(advantages, expected, equal_nan=True)
    no_scale = normalize_returns(returns, group_size=2, scope="batch", scale="none")
    torch.testing.assert_close(no_scale, returns - values.mean(), equal_nan=True)


def test_unscorable_trajectories_are_left_out_of_the_baseline_and_get_zero_advantage():
    outcome = torch.tensor([1.0, 0.0, nan, 1.0])
    rewards = turn_rewards(torch.ones(4, dtype=torch.long), outcome, width=1)
    advantages = normalize_returns(discounted_returns(rewards, 0.9), group_size=4)
    scored = torch.tensor([1.0, 0.0, 1.0])
    expected = (scored - scored.mean()) / (scored.std() + 1e-4)
    torch.testing.assert_close(advantages[[0, 1, 3], 0], expected)
    index = torch.zeros(4, 3, dtype=torch.long)
    assert token_advantages(advantages, index)[2].tolist() == [0.0, 0.0, 0.0]


def test_token_advantages_broadcast_turns_and_zero_tool_tokens():
    mask = torch.tensor([[1, 1, 0, 1, 0], [1, 1, 1, 0, 0]])  # second row: one turn then right padding
    index, _ = turn_index(mask)
    advantages = torch.tensor([[0.5, -1.0], [2.0, nan]])
    assert token_advantages(advantages, index).tolist() == [[0.5, 0.5, 0.0, -1.0, 0.0], [2.0, 2.0, 2.0, 0.0, 0.0]]


def test_truncated_completion_with_masked_tokens_has_no_turns():
    # mask_truncated_completions zeroes the whole tool mask of a truncated completion: no turn, advantage 0.
    mask = torch.tensor([[0, 0, 0, 0], [1, 1, 0, 1]])
    index, num_turns = turn_index(mask)
    outcome = torch.tensor([1.0, 0.0])
    rewards = turn_rewards(num_turns, outcome, width=2)
    assert torch.isnan(rewards[0]).all()
    advantages = normalize_returns(discounted_returns(rewards, 0.9), group_size=2)
    assert token_advantages(advantages, index)[0].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_group_size_must_divide_the_batch():
    with pytest.raises(ValueError, match="groups of 3"):
        normalize_returns(torch.zeros(4, 1), group_size=3)


# ---------------------------------------------------------------------------------------------------- estimators


def advantages_of(outcome, num_turns, group_size, estimator, turn_terms=None, gamma=0.9, scale="group"):
    batch = TurnBatch(
        outcome=torch.tensor(outcome), num_turns=torch.tensor(num_turns), group_size=group_size,
        turn_terms=torch.tensor(turn_terms) if turn_terms is not None else None,
    )
    return turn_advantages(batch, AdvantageSettings(gamma=gamma, estimator=estimator, scale=scale)).advantages


def test_pooled_gives_a_solved_group_unit_sized_advantages_from_the_discount_alone():
    # The measured defect the other estimators remove: four correct 2-turn trajectories, returns [0.9, 1.0] each.
    advantages = advantages_of([1.0] * 4, [2] * 4, 4, "pooled")
    values = torch.tensor([0.9, 1.0] * 4)
    expected = (torch.tensor([0.9, 1.0]) - values.mean()) / (values.std() + 1e-4)
    torch.testing.assert_close(advantages, expected.expand(4, 2))
    assert advantages[0, 0].item() == pytest.approx(-0.934, abs=1e-3)


def test_aligned_estimator_by_hand():
    # A: two turns, correct: t = [0, 0], F = 1. B: one turn, wrong, malformed call: t = [-0.1], F = 0. gamma 0.9.
    # Places: F (mean 0.5), t_1 (mean -0.05), t_2 (A 0, B 0 past its end: mean 0).
    advantages = advantages_of([1.0, 0.0], [2, 1], 2, "aligned", turn_terms=[[0.0, 0.0], [-0.1, 0.0]])
    sigma = torch.tensor([1.0, 0.0]).std().item() + torch.tensor([0.0, -0.1]).std().item() + 1e-4  # std F + std t_1
    expected = torch.tensor(
        [
            [(0.9 * 0.5 + 0.05) / sigma, 0.5 / sigma],  # turn 1 gets the outcome discounted once, and beat B's turn 1
            [(-0.5 - 0.05) / sigma, nan],
        ]
    )
    torch.testing.assert_close(advantages, expected, equal_nan=True)


def test_aligned_turn_terms_count_zero_past_a_trajectorys_end():
    # Same outcome; A took 3 turns with a +0.3 turn reward on turn 3, B one turn. t_3: A 0.3, B 0 (ended): mean 0.15.
    advantages = advantages_of([1.0, 1.0], [3, 1], 2, "aligned", turn_terms=[[0.0, 0.0, 0.3], [0.0, 0.0, 0.0]], gamma=0.5)
    sigma = torch.tensor([0.3, 0.0]).var().sqrt().item() + 1e-4
    expected = torch.tensor([[0.25 * 0.15 / sigma, 0.5 * 0.15 / sigma, 0.15 / sigma], [0.25 * -0.15 / sigma, nan, nan]])
    torch.testing.assert_close(advantages, expected, equal_nan=True)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_aligned_estimator_is_exactly_grpo_with_one_turn(scale):
    torch.manual_seed(0)
    outcome = torch.randint(0, 2, (12,)).float() + torch.rand(12) * 0.1
    advantages = advantages_of(outcome.tolist(), [1] * 12, 4, "aligned", scale=scale)
    torch.testing.assert_close(advantages[:, 0], grpo_advantages(outcome, 4, scale))


@pytest.mark.parametrize("estimator", ["pooled", "aligned"])
def test_a_group_of_one_trajectory_gets_zero_advantages_as_in_grpo(estimator):
    # num_generations_eval=1: a group of one has no baseline; TRL gives 0.
    advantages = advantages_of([0.0, 1.0], [2, 2], 1, estimator, turn_terms=[[0.1, 0.0], [0.0, 0.0]])
    assert advantages.tolist() == [[0.0, 0.0], [0.0, 0.0]]


@pytest.mark.parametrize("estimator", ["pooled", "aligned"])
def test_unscorable_trajectories_are_left_out_of_every_estimator(estimator):
    advantages = advantages_of([1.0, nan, 0.0, 0.0], [1, 2, 1, 1], 4, estimator)
    assert torch.isnan(advantages[1]).all()
    assert advantages[0, 0] > 0 > advantages[2, 0]
    # the unscorable row's turn count does not leak into the others: the same group without it
    without = advantages_of([1.0, 0.0, 0.0], [1, 1, 1], 3, estimator)
    if estimator == "aligned":
        torch.testing.assert_close(advantages[[0, 2, 3], 0], without[:, 0])


def test_unknown_estimator_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="aligned, pooled"):
        AdvantageSettings(estimator="mean")


@pytest.mark.parametrize("estimator", ["trajectory", "leave_one_out"])
def test_removed_estimators_are_refused_with_the_reason_and_the_replacement(estimator):
    with pytest.raises(ValueError, match="removed.*Use 'aligned'"):
        AdvantageSettings(estimator=estimator)


def test_nanstd_matches_trls_to_the_bit():
    """advantages.nanstd replaces TRL's (the advantage step imports nothing of the TRL door): the same numbers."""
    from trl.trainer.utils import nanstd as trl_nanstd

    from trl_gtpo.advantages import nanstd

    values = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    values[0, :4] = float("nan")  # one value left: NaN, as in TRL
    values[1] = float("nan")
    for dim, keepdim in [(None, False), (1, False), (1, True), (0, True)]:
        torch.testing.assert_close(nanstd(values, dim, keepdim), trl_nanstd(values, dim, keepdim), rtol=0, atol=0,
                                   equal_nan=True)
