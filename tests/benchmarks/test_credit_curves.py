"""benchmarks/credit_curves.py: the exact expected update of the tabular chain, and the credit-placement checks it
makes possible (issue 19): a turn reward must move its own step, the outcome must reach every step, and an advantage
step with two turns swapped or the discount applied backwards must fail those checks."""

import dataclasses
import itertools
import math

import pytest
import torch

from benchmarks import credit_curves
from trl_gtpo import GTPOConfig
from trl_gtpo.advantages import AdvantageSettings, TurnAdvantages, TurnBatch, turn_advantages

DEFAULT = next(f.default for f in dataclasses.fields(GTPOConfig) if f.name == "turn_advantage_estimator")
THETA = torch.tensor([0.8, 1.3], dtype=torch.float64)


def brute_force_update(chain_steps, group_size, method, gamma, theta, **kwargs) -> torch.Tensor:
    """E[U] over every ORDERED group, each weighted by its probability: the definition the multiset sum must match."""
    types = credit_curves.trajectory_types(chain_steps)
    right = torch.sigmoid(theta)
    p_type = (types.double() * right + (1 - types.double()) * (1 - right)).prod(dim=1)
    update = credit_curves.ExpectedUpdate(chain_steps, group_size, method, gamma, "prefix", **kwargs)
    total = torch.zeros(chain_steps, dtype=torch.float64)
    for group in itertools.product(range(len(types)), repeat=group_size):
        counts = torch.zeros(1, len(types), dtype=torch.float64)
        for t in group:
            counts[0, t] += 1
        row = next(i for i in range(len(update.counts)) if torch.equal(update.counts[i], counts[0]))
        per_group = update.s[row] - right * update.q[row]
        total += math.prod(p_type[t].item() for t in group) * per_group
    return total


@pytest.mark.parametrize("method", [DEFAULT, "grpo-sum"])
def test_the_multiset_sum_equals_the_sum_over_ordered_groups(method):
    update = credit_curves.ExpectedUpdate(2, 3, method, 0.9, "prefix")
    torch.testing.assert_close(update(THETA), brute_force_update(2, 3, method, 0.9, THETA))


def test_grpo_with_one_outcome_turn_is_the_outcome_only_gtpo_at_gamma_1():
    """GRPO (one turn holding F) and the default estimator at gamma 1 without turn rewards: the same update."""
    grpo = credit_curves.ExpectedUpdate(2, 4, "grpo", 1.0, "prefix")
    gtpo = credit_curves.ExpectedUpdate(2, 4, DEFAULT, 1.0, "prefix", weight=0.0)
    torch.testing.assert_close(grpo(THETA), gtpo(THETA))


# ------------------------------------------------------------------ credit placement, and two ways to break it


def swapped_turns(batch: TurnBatch, settings: AdvantageSettings) -> TurnAdvantages:
    """The real step, then turns 1 and 2 exchange their advantages (a misaligned broadcast)."""
    table = turn_advantages(batch, settings)
    return dataclasses.replace(table, advantages=table.advantages[:, [1, 0, *range(2, table.advantages.shape[1])]])


def reversed_gamma(batch: TurnBatch, settings: AdvantageSettings) -> TurnAdvantages:
    """The real step run on the turns in reverse order: each turn's return sums the rewards BEFORE it."""
    width = int(batch.num_turns.max())
    rewards = torch.nan_to_num(
        turn_advantages(batch, dataclasses.replace(settings, estimator="pooled", scale="none")).rewards
    )
    backwards = TurnBatch(outcome=torch.zeros_like(batch.outcome), num_turns=batch.num_turns,
                          group_size=batch.group_size, turn_terms=rewards.flip(1)[:, :width])
    table = turn_advantages(backwards, settings)
    return dataclasses.replace(table, advantages=table.advantages.flip(1))


def places_credit(advantage_fn, method=DEFAULT) -> bool:
    """What a turn-level advantage step must do on the 2-step chain (G = 4, gamma 0.9), in expectation (exact), with
    margins far outside float rounding (the numbers are in the test below):
    - outcome only: the expected update raises both steps' logits by more than 0.05 (the outcome's credit reaches
      every turn before it);
    - a turn reward on step 1 only (no outcome): it raises step 1 by more than 0.1 and leaves step 2 alone (1e-6).
    """
    outcome_only = credit_curves.ExpectedUpdate(2, 4, method, 0.9, "step", weight=0.0,
                                                advantage_fn=advantage_fn)(THETA)
    step_one = credit_curves.ExpectedUpdate(2, 4, method, 0.9, "step", weight=(1.0, 0.0), outcome_weight=0.0,
                                            advantage_fn=advantage_fn)(THETA)
    return bool((outcome_only > 0.05).all() and step_one[0] > 0.1 and abs(step_one[1]) < 1e-6)


def test_the_advantage_step_places_credit_and_the_check_catches_swapped_turns_and_a_backwards_discount():
    """Measured at THETA with the default ("aligned") estimator: outcome only, E[U] = (0.191, 0.146); a step-1
    reward only, (0.302, 0.0). Turns 1 and 2 swapped: (0.212, 0.132) and (0.0, 0.0), step 1 no longer moved by its
    own reward. Gamma backwards: (0.0, 0.0), the outcome no longer reaches the steps, and (0.302, 0.0)."""
    assert places_credit(turn_advantages)
    assert not places_credit(swapped_turns)
    assert not places_credit(reversed_gamma)


def test_one_group_by_hand_a_turn_reward_moves_its_own_step_and_grpo_sum_moves_the_other_the_wrong_way():
    """Two trajectories: A gets step 1 right and step 2 wrong, B the reverse; step 1 is rewarded (1), nothing else
    (outcome 0). Tabular policy: the update of step j's logit is (1/G) sum_i A_ij (b_ij - sigmoid(theta_j)).

    Default estimator: the step-1 terms are t = (1, 0), mean 1/2, sample std sqrt(1/2), the only place that varies,
    so sigma = sqrt(1/2) and A_A1 = +1/sqrt(2), A_B1 = -1/sqrt(2); turn 2 and the answer turn have no reward at or after them: A_i2 = 0.
    Step 1: (1/2) [1/sqrt(2) (1 - s) - 1/sqrt(2) (0 - s)] = 1/(2 sqrt(2)) = 0.3536 for any s = sigmoid(theta_1).
    Step 2: 0. GRPO with the summed reward: totals (1, 0), the same +-1/sqrt(2) on every turn, so step 2 gets
    (1/2) [1/sqrt(2) (0 - s) - 1/sqrt(2) (1 - s)] = -0.3536: B's right step 2 is pushed down.
    """
    right = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # b_ij
    terms = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    batch = TurnBatch(outcome=torch.zeros(2), num_turns=torch.tensor([3, 3]), group_size=2, turn_terms=terms)
    gtpo = turn_advantages(batch, AdvantageSettings(gamma=0.9, estimator=DEFAULT)).advantages[:, :2].double()
    totals = TurnBatch(outcome=terms.sum(dim=1), num_turns=torch.tensor([1, 1]), group_size=2)
    grpo = turn_advantages(totals, AdvantageSettings(gamma=1.0, estimator=DEFAULT)).advantages.double().expand(2, 2)
    s = torch.sigmoid(THETA)
    expected = 1 / (2 * math.sqrt(2))
    gtpo_update, grpo_update = (gtpo * (right - s)).sum(dim=0) / 2, (grpo * (right - s)).sum(dim=0) / 2
    torch.testing.assert_close(gtpo_update, torch.tensor([expected, 0.0], dtype=torch.float64), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grpo_update, torch.tensor([expected, -expected], dtype=torch.float64), atol=1e-4, rtol=1e-4)


def test_the_curves_start_at_the_taught_success_and_every_method_learns():
    rows = credit_curves.run(chain_steps=(2,), rewards=("prefix",), updates=5)
    for row in rows:
        assert row["success"][0] == pytest.approx((1 - credit_curves.P_ERR) ** 2)
        assert row["success"][-1] > row["success"][0], row["method"]
