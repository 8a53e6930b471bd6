"""The turn-level loss pieces (trl_gtpo.turn_level) and the GDPO outcome (scoring.outcome_rewards), without a
model: turn means, the turn-level old log-probs, the per-turn off-policy mask, normalize_then_sum."""

import torch
from trl.trainer.utils import nanstd

from trl_gtpo.advantages import AdvantageSettings, TurnBatch, turn_advantages
from trl_gtpo.scoring import outcome_rewards
from trl_gtpo.turn_level import turn_level_old_logps, turn_means, turn_off_policy_mask

# Row 0: turn [0, 1], tool token 2, turn [3, 4, 5], padding 6. Row 1: one turn [0..4], padding 5, 6.
MASK = torch.tensor([[1, 1, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0, 0]])


def test_turn_means_average_each_turn_and_carry_every_tokens_gradient():
    values = torch.tensor([[1.0, 3.0, 100.0, 2.0, 4.0, 6.0, torch.nan], [1.0, 2.0, 3.0, 4.0, 5.0, 9.0, 9.0]])
    values.requires_grad_(True)
    means = turn_means(values, MASK)
    torch.testing.assert_close(means.detach(), torch.tensor([[2.0, 2, 0, 4, 4, 4, 0], [3.0, 3, 3, 3, 3, 0, 0]]))
    (means * torch.arange(7.0)).sum().backward()
    # d/dv_t of sum_s w_s m(s) = (sum of the weights w_s over t's turn) / |turn|
    expected = torch.tensor([[0.5, 0.5, 0, 4, 4, 4, 0], [2.0, 2, 2, 2, 2, 0, 0]])
    torch.testing.assert_close(values.grad, expected)


def test_turn_means_over_kept_tokens_keep_the_turns_of_the_mask():
    values = torch.tensor([[1.0, 3.0, 100.0, 2.0, 4.0, 6.0, 7.0], [1.0, 2.0, 3.0, 4.0, 5.0, 9.0, 9.0]], requires_grad=True)
    kept = torch.tensor([[1, 0, 1, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0, 0]])  # row 1 keeps nothing: its turn gets 0
    means = turn_means(values, MASK, kept)
    torch.testing.assert_close(means, torch.tensor([[1.0, 1.0, 0.0, 6.0, 6.0, 6.0, 0.0], [0.0] * 7]))
    means.sum().backward()
    # turn 1 of row 0 (2 tokens) averages token 0 only; turn 2 (3 tokens) token 5 only: the others get no gradient
    torch.testing.assert_close(values.grad, torch.tensor([[2.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0], [0.0] * 7]))


def test_turn_level_old_logps_make_the_token_log_ratio_the_turn_mean():
    logps = torch.randn(2, 7, requires_grad=True)
    old = torch.randn(2, 7)
    log_ratio = logps - turn_level_old_logps(logps, old, MASK)
    torch.testing.assert_close(log_ratio.detach(), turn_means(logps.detach() - old, MASK))
    # its gradient is the turn mean's: 1/|turn| on each token of the turn
    log_ratio[0, 3].backward()
    torch.testing.assert_close(logps.grad[0], torch.tensor([0.0, 0, 0, 1 / 3, 1 / 3, 1 / 3, 0]))
    assert logps.grad[1].abs().sum() == 0


def test_turn_level_old_logps_on_policy_give_ratio_one_with_the_turn_gradient():
    logps = torch.randn(2, 7, requires_grad=True)
    log_ratio = logps - turn_level_old_logps(logps, logps.detach(), MASK)
    assert log_ratio.detach().abs().max() < 1e-6


def test_off_policy_mask_drops_a_negative_turn_that_drifted_over_its_own_tokens():
    logps = torch.zeros(2, 7)
    sampling = torch.zeros(2, 7)
    sampling[0, 3:6] = 0.5  # row 0's second turn drifted (mean 0.5); its first turn did not
    sampling[0, 2] = 50.0  # a tool token: in no turn, never counted
    advantages = torch.tensor([[-1.0, -1, 0, -1, -1, -1, 0], [-1.0, -1, -1, -1, -1, 0, 0]])
    keep = turn_off_policy_mask(advantages, logps, sampling, MASK, off_policy_threshold=0.1)
    assert keep[0].tolist() == [1, 1, 1, 0, 0, 0, 1]
    assert keep[1].tolist() == [1] * 7
    # the same drift with a positive advantage is kept; a threshold above the drift keeps everything
    assert turn_off_policy_mask(advantages.abs(), logps, sampling, MASK, 0.1).all()
    assert turn_off_policy_mask(advantages, logps, sampling, MASK, 0.6).all()
    # TRL's mask would drop the whole of row 0 (sequence drift 1.5 / 5 = 0.3 > 0.1), its first turn included
    # NaN (a token vLLM could not score) is no evidence of drift
    sampling[1, 0] = torch.nan
    assert turn_off_policy_mask(advantages, logps, sampling, MASK, 0.1)[1].all()


def test_one_turn_per_row_the_off_policy_mask_is_trls():
    from trl import GRPOTrainer

    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]])
    logps, sampling = torch.randn(4, 4), torch.randn(4, 4)
    advantages = torch.tensor([-1.0, -0.5, 0.3, -2.0])
    trl = GRPOTrainer.get_off_policy_mask(advantages.unsqueeze(1), logps, sampling, mask, 0.2).expand(4, 4)
    ours = turn_off_policy_mask(advantages.unsqueeze(1) * mask, logps, sampling, mask, 0.2)
    assert torch.equal(ours * mask, trl * mask)
    assert (trl[:, 0] == 0).any() and (trl[:, 0] == 1).any()  # the case separates rows


def _trl_normalize_then_sum(rewards_per_func, weights, group_size):
    """TRL 1.16's advantages under normalize_then_sum (`_generate_and_score_completions`), line for line."""
    grouped = rewards_per_func.view(-1, group_size, rewards_per_func.shape[1])
    mean_k = torch.nanmean(grouped, dim=1, keepdim=True)
    std_k = nanstd(grouped, dim=1, keepdim=True)
    reward_k = ((grouped - mean_k) / (std_k + 1e-4)).view(-1, rewards_per_func.shape[1])
    rewards = (reward_k * weights.unsqueeze(0)).nansum(dim=1)
    rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
    std = nanstd(rewards).expand_as(rewards)
    return torch.nan_to_num((rewards - torch.nanmean(rewards)) / (std + 1e-4), nan=0.0)


def test_normalize_then_sum_one_turn_per_trajectory_gives_trls_advantages():
    rewards_per_func = torch.tensor(
        [[1.0, 0.2], [0.0, 0.9], [1.0, torch.nan], [0.0, 0.1], [0.0, 5.0], [1.0, 3.0], [torch.nan, torch.nan], [1.0, 4.0]]
    )
    weights = torch.tensor([2.0, 0.5])
    expected = _trl_normalize_then_sum(rewards_per_func, weights, 4)
    outcome = outcome_rewards(rewards_per_func, weights, 4, "normalize_then_sum")
    for estimator in ("pooled", "aligned"):
        for scope in ("group", "batch"):
            batch = TurnBatch(outcome=outcome, num_turns=torch.ones(8, dtype=torch.long), group_size=4)
            table = turn_advantages(batch, AdvantageSettings(0.9, estimator, scope, scale="batch"))
            torch.testing.assert_close(torch.nan_to_num(table.advantages[:, 0], nan=0.0), expected)


def test_normalize_then_sum_enters_the_final_turn_and_the_returns():
    """Two functions on scales 1 and 10; the normalized sum is the final turn's outcome, then returns as usual."""
    rewards_per_func = torch.tensor([[1.0, 10.0], [0.0, 30.0], [1.0, 20.0]])
    outcome = outcome_rewards(rewards_per_func, torch.tensor([1.0, 2.0]), 3, "normalize_then_sum")
    # function 1: mean 2/3, std sqrt(1/3); function 2: mean 20, std 10
    s1, s2 = (1 / 3) ** 0.5 + 1e-4, 10.0 + 1e-4
    z = [(1 - 2 / 3) / s1 + 2 * (-10) / s2, (0 - 2 / 3) / s1 + 2 * 10 / s2, (1 - 2 / 3) / s1 + 0.0]
    torch.testing.assert_close(outcome, torch.tensor(z))
    batch = TurnBatch(
        outcome=outcome, num_turns=torch.tensor([2, 1, 1]), group_size=3, turn_terms=torch.tensor([[-0.1, 0.0]] * 3)
    )
    table = turn_advantages(batch, AdvantageSettings(gamma=0.5, estimator="pooled", scale="batch"))
    torch.testing.assert_close(table.rewards, torch.tensor([[-0.1, z[0]], [z[1] - 0.1, torch.nan], [z[2] - 0.1, torch.nan]]), equal_nan=True)
    returns = torch.tensor([-0.1 + 0.5 * z[0], z[0], z[1] - 0.1, z[2] - 0.1])  # R_01, R_02, R_11, R_21
    expected = (returns - returns.mean()) / (returns.std() + 1e-4)
    torch.testing.assert_close(table.advantages[0], expected[:2])
    torch.testing.assert_close(table.advantages[1:, 0], expected[2:])


def test_sum_then_normalize_outcome_is_the_weighted_sum():
    rewards_per_func = torch.tensor([[1.0, 2.0], [torch.nan, torch.nan], [torch.nan, 3.0]])
    outcome = outcome_rewards(rewards_per_func, torch.tensor([1.0, 0.5]), 3)
    torch.testing.assert_close(outcome, torch.tensor([2.0, torch.nan, 1.5]), equal_nan=True)
