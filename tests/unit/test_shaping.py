"""Tests of trl_gtpo.shaping: the self-supervised shaping reward (GTPO, arXiv 2511.14846 section 3.3)."""

import math

import numpy as np
import pytest

from trl_gtpo.shaping import batch_shaping_rewards, group_shaping_rewards
from trl_gtpo.similarity import lexical_similarity_matrix

from helpers import OTHER_CODE, SAME_SOLUTION_OTHER_LAYOUT, SOLUTION


class StubSimilarity:
    """A similarity given by a table {(code_a, code_b): value}; records its calls."""

    def __init__(self, table):
        self.table = table
        self.calls = []

    def __call__(self, codes_a, codes_b):
        self.calls.append((list(codes_a), list(codes_b)))
        return np.array([[self.table[(a, b)] for b in codes_b] for a in codes_a], dtype=float)


# ---------------------------------------------------------------------------------------------------------------------
# group_shaping_rewards: arithmetic with a stub similarity
# ---------------------------------------------------------------------------------------------------------------------


def test_two_successes_two_failures_hand_computed():
    stub = StubSimilarity({("f1", "s1"): 0.2, ("f1", "s2"): 0.6, ("f2", "s1"): 1.0, ("f2", "s2"): 0.0})
    rewards = group_shaping_rewards([1.0, 0.0, 1.0, 0.0], ["s1", "f1", "s2", "f2"], alpha=0.5, similarity=stub)
    # f1: 0.5 * (0.2 + 0.6) / 2 = 0.2 ; f2: 0.5 * (1.0 + 0.0) / 2 = 0.25 ; successes get nothing
    assert rewards == pytest.approx([0.0, 0.2, 0.0, 0.25], abs=1e-12)
    # One call: the failed trajectories' code against the successful ones'.
    assert stub.calls == [(["f1", "f2"], ["s1", "s2"])]


def test_alpha_scales_linearly():
    stub = StubSimilarity({("f", "s"): 0.3})
    assert group_shaping_rewards([0.0, 1.0], ["f", "s"], alpha=2.0, similarity=stub) == pytest.approx([0.6, 0.0])


def test_no_success_in_group_gives_zero_without_calling_similarity():
    stub = StubSimilarity({})
    assert group_shaping_rewards([0.0, 0.5, 0.0], ["a", "b", "c"], alpha=0.5, similarity=stub) == [0.0, 0.0, 0.0]
    assert stub.calls == []


def test_all_succeed_gives_zero():
    stub = StubSimilarity({})
    assert group_shaping_rewards([1.0, 1.0], ["a", "b"], alpha=0.5, similarity=stub) == [0.0, 0.0]
    assert stub.calls == []


def test_alpha_zero_turns_shaping_off():
    stub = StubSimilarity({})
    assert group_shaping_rewards([1.0, 0.0], ["a", "a"], alpha=0.0, similarity=stub) == [0.0, 0.0]
    assert stub.calls == []


@pytest.mark.parametrize("no_code", [None, "", "   \n\t"])
def test_failed_trajectory_without_code_gets_zero(no_code):
    stub = StubSimilarity({("f", "s"): 0.8})
    rewards = group_shaping_rewards([1.0, 0.0, 0.0], ["s", no_code, "f"], alpha=0.5, similarity=stub)
    assert rewards == pytest.approx([0.0, 0.0, 0.4])
    assert stub.calls == [(["f"], ["s"])]  # the code-less trajectory is not even compared


def test_successful_trajectory_without_code_counts_in_p_with_similarity_zero():
    stub = StubSimilarity({("f", "s"): 0.8})
    rewards = group_shaping_rewards([1.0, 1.0, 0.0], ["s", None, "f"], alpha=0.5, similarity=stub)
    assert rewards == pytest.approx([0.0, 0.0, 0.5 * (0.8 + 0.0) / 2])


def test_only_codeless_successes_give_zero():
    stub = StubSimilarity({})
    assert group_shaping_rewards([1.0, 0.0], ["", "f"], alpha=0.5, similarity=stub) == [0.0, 0.0]
    assert stub.calls == []


@pytest.mark.parametrize("unscorable", [math.nan, None])
def test_unscorable_outcome_gets_zero_and_is_not_a_success(unscorable):
    stub = StubSimilarity({("f", "s"): 0.5, ("n", "s"): 0.9})
    assert group_shaping_rewards([unscorable, 0.0], ["n", "f"], alpha=0.5, similarity=stub) == [0.0, 0.0]
    rewards = group_shaping_rewards([1.0, unscorable, 0.0], ["s", "n", "f"], alpha=0.5, similarity=stub)
    assert rewards == pytest.approx([0.0, 0.0, 0.25])


def test_success_threshold():
    stub = StubSimilarity({("f", "s"): 0.5})
    # Default threshold 1.0: 0.6 is a failure, so nobody succeeded.
    assert group_shaping_rewards([0.6, 0.4], ["s", "f"], alpha=1.0, similarity=stub) == [0.0, 0.0]
    rewards = group_shaping_rewards([0.6, 0.4], ["s", "f"], alpha=1.0, success_threshold=0.5, similarity=stub)
    assert rewards == pytest.approx([0.0, 0.5])
    # At the threshold is a success; float32 rounding just below 1.0 still counts.
    assert group_shaping_rewards([0.5, 0.4], ["s", "f"], alpha=1.0, success_threshold=0.5, similarity=stub)[1] == 0.5
    assert group_shaping_rewards([0.99999994, 0.0], ["s", "f"], alpha=1.0, similarity=stub)[1] == 0.5
    # Outcomes above the maximum (e.g. several reward functions summed) are successes too.
    assert group_shaping_rewards([2.0, 0.0], ["s", "f"], alpha=1.0, similarity=stub)[1] == 0.5


def test_similarity_values_are_clipped_and_nan_is_zero():
    stub = StubSimilarity({("f", "s1"): 3.0, ("f", "s2"): math.nan, ("f", "s3"): -1.0})
    rewards = group_shaping_rewards([1.0, 1.0, 1.0, 0.0], ["s1", "s2", "s3", "f"], alpha=0.9, similarity=stub)
    assert rewards == pytest.approx([0.0, 0.0, 0.0, 0.9 * (1.0 + 0.0 + 0.0) / 3])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="codes"):
        group_shaping_rewards([1.0, 0.0], ["a"], alpha=0.5)
    with pytest.raises(ValueError, match="alpha"):
        group_shaping_rewards([1.0, 0.0], ["a", "b"], alpha=-1.0)
    with pytest.raises(ValueError, match="shape"):
        group_shaping_rewards([1.0, 0.0], ["a", "b"], alpha=0.5, similarity=lambda a, b: np.zeros((3, 3)))
    assert group_shaping_rewards([], [], alpha=0.5) == []


# ---------------------------------------------------------------------------------------------------------------------
# group_shaping_rewards with the real lexical similarity
# ---------------------------------------------------------------------------------------------------------------------


def test_identical_code_gets_alpha():
    rewards = group_shaping_rewards([1.0, 0.0], [SOLUTION, SOLUTION], alpha=0.5, similarity="lexical")
    assert rewards == [0.0, 0.5]


def test_lexical_shaping_hand_computed():
    # tokens [x, =, 1] vs [x, =, 2]: shared n-grams x, =, "x =" -> cosine 3 / (sqrt(6) * sqrt(6)) = 0.5
    rewards = group_shaping_rewards([1.0, 0.0, 0.0], ["x = 1", "x = 2", "y"], alpha=0.5)
    assert rewards == pytest.approx([0.0, 0.25, 0.0])


def test_closer_code_gets_more_reward():
    rewards = group_shaping_rewards(
        [1.0, 0.0, 0.0], [SOLUTION, SAME_SOLUTION_OTHER_LAYOUT.replace("3", "4"), OTHER_CODE], alpha=0.5
    )
    assert rewards[0] == 0.0
    assert 0.3 < rewards[1] < 0.5
    assert 0.0 < rewards[2] < rewards[1]


# ---------------------------------------------------------------------------------------------------------------------
# batch_shaping_rewards
# ---------------------------------------------------------------------------------------------------------------------


def test_batch_applies_groups_independently():
    outcomes = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    codes = [SOLUTION, SOLUTION, None, SOLUTION, OTHER_CODE, OTHER_CODE]
    rewards = batch_shaping_rewards(outcomes, codes, group_size=3, alpha=0.5)
    # Group 1: identical code -> alpha; no code -> 0. Group 2: the success's code is OTHER_CODE, so trajectory 3
    # (SOLUTION) is not compared with group 1's SOLUTION.
    assert rewards[:3] == [0.0, 0.5, 0.0]
    assert rewards[3] == pytest.approx(0.5 * lexical_similarity_matrix([SOLUTION], [OTHER_CODE])[0, 0])
    assert rewards[3] < 0.5
    assert rewards[4:] == [0.0, 0.5]
    expected = group_shaping_rewards(outcomes[:3], codes[:3], alpha=0.5) + group_shaping_rewards(
        outcomes[3:], codes[3:], alpha=0.5
    )
    assert rewards == expected


def test_batch_accepts_tensors_and_arrays():
    torch = pytest.importorskip("torch")
    outcomes = [1.0, 0.0, 0.0, 1.0]
    codes = ["x = 1", "x = 2", "x = 2", "x = 1"]
    expected = batch_shaping_rewards(outcomes, codes, 2, alpha=0.5)
    assert expected == pytest.approx([0.0, 0.25, 0.25, 0.0])
    assert batch_shaping_rewards(torch.tensor(outcomes), codes, 2, alpha=0.5) == expected
    assert batch_shaping_rewards(np.array(outcomes), codes, 2, alpha=0.5) == expected
    # NaN from TRL (a reward function returned None) is unscorable.
    assert batch_shaping_rewards(torch.tensor([1.0, math.nan]), ["x = 1", "x = 1"], 2, alpha=0.5) == [0.0, 0.0]


def test_batch_bad_sizes_raise():
    with pytest.raises(ValueError, match="multiple"):
        batch_shaping_rewards([1.0, 0.0, 0.0], ["a", "b", "c"], 2, alpha=0.5)
    with pytest.raises(ValueError, match="codes"):
        batch_shaping_rewards([1.0, 0.0], ["a"], 2, alpha=0.5)


