"""Turn-level advantage math against hand-computed values (GTPO.md parts 1-2)."""

import math

import pytest
import torch

from trl_gtpo.advantages import discounted_returns, normalize_returns, token_advantages, turn_index, turn_rewards

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
        format_rewards=torch.tensor([[0.0, -0.1, 0.0], [-0.1, 0.0, 0.0], [0.0, 0.0, 0.0]]),
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
