"""benchmarks/learning/paired_stats.py: the crossed (starting model x seed) analyses of the credit benchmark (issue
29), checked against mean squares worked out by hand."""

import math

import pytest
from scipy import stats

from benchmarks.learning import paired_stats


def table(rows):
    return {(m, s): d for m, row in enumerate(rows) for s, d in enumerate(row)}


# 2 models x 3 seeds. Grand mean 4.5; model means 3, 6; seed means 2, 4, 7.5; residuals +-0.5, +-0.5, -+1.
# MS_model = 3 * (1.5^2 + 1.5^2) / 1 = 13.5; MS_seed = 2 * (2.5^2 + 0.5^2 + 3^2) / 2 = 15.5; MS_residual = 3 / 2 = 1.5.
BY_HAND = [[1, 3, 5], [3, 5, 10]]


def test_crossed_t_matches_the_mean_squares_worked_out_by_hand():
    result = paired_stats.crossed_t(table(BY_HAND))
    assert result["mean"] == pytest.approx(4.5)
    assert (result["ms_model"], result["ms_seed"], result["ms_residual"]) == pytest.approx((13.5, 15.5, 1.5))
    # Var(mean) = (13.5 + 15.5 - 1.5) / 6; Satterthwaite: 27.5^2 / (13.5^2 / 1 + 15.5^2 / 2 + 1.5^2 / 2) = 2.4918.
    se = math.sqrt(27.5 / 6)
    assert result["df"] == pytest.approx(27.5**2 / (13.5**2 + 15.5**2 / 2 + 1.5**2 / 2))
    assert result["df"] == pytest.approx(2.4918, abs=1e-4)
    assert result["t"] == pytest.approx(4.5 / se)
    assert result["p"] == pytest.approx(2 * stats.t.sf(4.5 / se, result["df"]))
    assert result["half"] == pytest.approx(stats.t.ppf(0.975, result["df"]) * se)
    assert (result["var_model"], result["var_seed"]) == pytest.approx(((13.5 - 1.5) / 3, (15.5 - 1.5) / 2))


def test_model_means_t_is_a_t_test_over_the_model_means():
    mean, half, p, n = paired_stats.model_means_t(table(BY_HAND))
    # Model means 3 and 6: sd 2.1213, se 1.5, t = 3 on 1 df: p = 1 - 2 atan(3) / pi.
    assert (mean, n) == (4.5, 2)
    assert p == pytest.approx(1 - 2 * math.atan(3) / math.pi)
    assert half == pytest.approx(stats.t.ppf(0.975, 1) * 1.5)


def test_a_seed_effect_shared_by_every_model_is_noise_the_model_means_miss():
    """Same prompts per seed: a seed that favours one arm for every model moves every model mean alike. The model
    means then agree closely and their t-test is confident; the crossed analysis counts the 5 seeds' spread."""
    seed_effects = [0.30, -0.20, 0.25, -0.15, 0.05]
    rows = [[b + 0.01 * m + 0.001 * ((m * s) % 3) for s, b in enumerate(seed_effects)] for m in range(3)]
    _, _, p_models, _ = paired_stats.model_means_t(table(rows))
    crossed = paired_stats.crossed_t(table(rows))
    assert p_models < 0.01
    assert crossed["p"] > 0.3
    assert crossed["var_seed"] > 100 * crossed["var_model"]


def test_without_a_seed_effect_the_crossed_test_is_the_model_means_test():
    """A seed component estimated at or below 0 is set to 0: the variance of the mean is then MS_model / (I J), the
    model means' own, on I - 1 degrees of freedom."""
    rows = [[1, 2, 0], [3, 2, 4], [2, 2, 2]]  # seed means 2, 2, 2: MS_seed = 0 < MS_residual = 4 / 4
    crossed = paired_stats.crossed_t(table(rows))
    mean, half, p, _ = paired_stats.model_means_t(table(rows))
    assert crossed["var_seed"] == 0 and crossed["df"] == pytest.approx(2)
    assert crossed["ms_model"] == pytest.approx(3) and crossed["ms_residual"] == pytest.approx(1)
    assert (crossed["mean"], crossed["half"], crossed["p"]) == pytest.approx((mean, half, p))


def test_the_crossed_analysis_needs_every_cell():
    cells = table(BY_HAND)
    del cells[1, 2]
    with pytest.raises(ValueError, match="missing"):
        paired_stats.crossed_t(cells)
