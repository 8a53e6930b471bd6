"""Statistics of the learning benchmarks: Student-t intervals of paired differences and Holm's correction."""

import math
import statistics


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean, half-width of the 95% Student-t interval, and the two-sided p of a one-sample t-test against 0."""
    from scipy import stats

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    sd = statistics.stdev(values)
    half = stats.t.ppf(0.975, len(values) - 1) * sd / math.sqrt(len(values))
    p = 1.0 if sd == 0 else float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(len(values))), len(values) - 1))
    return mean, half, p


def holm(p_values: dict, alpha: float = 0.05) -> dict:
    """Holm's step-down: the k-th smallest p is compared with alpha / (m - k + 1), and rejection stops at the first
    that fails. Returns {name: (p, threshold, rejected)}."""
    order = sorted(p_values, key=lambda name: p_values[name])
    out, going = {}, True
    for k, name in enumerate(order):
        threshold = alpha / (len(order) - k)
        going = going and p_values[name] <= threshold
        out[name] = (p_values[name], threshold, going)
    return out
