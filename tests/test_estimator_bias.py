"""The exact toy check of benchmarks/estimator_bias.py: what each turn-advantage estimator's expected update is
unbiased for, by enumeration (no sampling noise), and that none of them blows up."""

import importlib.util
import pathlib

import pytest

PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "estimator_bias.py"
spec = importlib.util.spec_from_file_location("estimator_bias", PATH)
estimator_bias = importlib.util.module_from_spec(spec)
spec.loader.exec_module(estimator_bias)


@pytest.fixture(scope="module")
def rows():
    table = estimator_bias.run(group_sizes=(2, 3), gammas=(0.9, 1.0))
    return {(r["gamma"], r["G"], r["estimator"], r["scale"]): r for r in table if "estimator" in r}


def test_the_enumeration_is_a_distribution_with_a_nonzero_gradient():
    trajectories = estimator_bias.enumerate_trajectories()
    grad, _, probs = estimator_bias.true_gradients(trajectories, estimator_bias.THETA, 0.9)
    assert len(trajectories) == 26
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-12)
    assert (grad.abs() > 1e-3).all()  # every logit matters, so sign agreement means something


@pytest.mark.parametrize("gamma", [0.9, 1.0])
@pytest.mark.parametrize("group_size", [2, 3])
def test_a_leave_one_out_baseline_is_exactly_unbiased_for_the_return_weighted_gradient(rows, gamma, group_size):
    # Without scaling and without the zero-signal rule, E[U] = g_R = E[sum_j R_j grad log pi_j] to float precision.
    row = rows[(gamma, group_size, "loo_ungated", "none")]
    assert row["cos_R"] > 1 - 1e-9
    assert abs(row["rel_norm_error_R"]) < 1e-6


def test_with_discount_the_turn_returns_miss_the_state_weighting_of_the_true_gradient(rows):
    # g_R lacks the gamma^(j-1) weighting of turn j in grad J (Thomas, 2014): equal at gamma = 1, not at 0.9.
    assert rows[(1.0, 3, "loo_ungated", "none")]["cos"] > 1 - 1e-9
    assert 0.99 < rows[(0.9, 3, "loo_ungated", "none")]["cos"] < 1 - 1e-5


@pytest.mark.parametrize("group_size", [2, 3])
def test_the_zero_signal_rule_costs_leave_one_out_a_small_bias(rows, group_size):
    # Giving 0 to a group of equal totals (as GRPO does) drops turn-level differences inside it: measured 1e-4 of
    # the norm at gamma = 1 and well under 1% at gamma = 0.9 in this toy; nonzero, so the rule is not free.
    at_one, at_discount = rows[(1.0, group_size, "leave_one_out", "none")], rows[(0.9, group_size, "leave_one_out", "none")]
    assert abs(at_one["rel_norm_error"]) < 1e-3 and at_one["cos"] > 1 - 1e-5
    assert abs(at_discount["rel_norm_error_R"]) < 1e-2 and at_discount["cos_R"] > 1 - 1e-3
    assert abs(at_one["rel_norm_error"]) > 1e-6  # the rule does change the expectation


@pytest.mark.parametrize("group_size", [2, 3])
def test_trajectory_baseline_without_scaling_shrinks_the_gradient_by_one_minus_one_over_g(rows, group_size):
    row = rows[(1.0, group_size, "trajectory", "none")]
    assert row["cos"] > 1 - 1e-5
    assert row["rel_norm_error"] == pytest.approx(-1 / group_size, abs=1e-3)


def test_pooled_baseline_is_directionally_biased(rows):
    # Its baseline holds the trajectory's own turns, as many as it took: not even the direction is right at gamma=1,
    # and with the std division and G=2 a third of the gradient's coordinates have the wrong sign.
    assert rows[(1.0, 2, "pooled", "none")]["cos"] < 1 - 1e-4
    assert rows[(0.9, 2, "pooled", "group")]["sign_agreement"] < 1.0
    assert rows[(0.9, 2, "pooled", "group")]["cos"] < 0.9


def test_every_trajectory_level_estimator_points_the_right_way_with_bounded_variance(rows):
    for (gamma, group_size, estimator, scale), row in rows.items():
        if estimator != "pooled":
            assert row["sign_agreement"] == 1.0, (gamma, group_size, estimator, scale)
            assert row["cos"] > 0.98, (gamma, group_size, estimator, scale)
        # The toy's rewards are within [-0.2, 1]: a trace of Cov[U] above 1 is an amplified rounding error.
        assert row["trace_cov"] < 1.0, (gamma, group_size, estimator, scale)
