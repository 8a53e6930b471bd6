"""Statistics of the learning benchmarks: Student-t intervals of paired differences, the analyses of a crossed
(starting model x seed) design, and Holm's correction."""

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


def model_means_t(differences: dict[tuple, float]) -> tuple[float, float, float, int]:
    """The t-test over the starting models: each model's mean difference over its seeds is one observation.

    Why: the runs of one starting model share it, so they are not independent pairs; with n = the number of models
    this test is valid whatever the within-model correlation, but it ignores the seeds' shared prompts (see
    `crossed_t`). Returns (mean, 95% half-width, p, n)."""
    models = sorted({model for model, _ in differences})
    means = [statistics.fmean(d for (m, _), d in differences.items() if m == model) for model in models]
    return (*t_interval(means), len(means))


def crossed_t(differences: dict[tuple, float]) -> dict:
    """The mean difference of a crossed (model x seed) design with both factors random, from a two-way ANOVA.

    Why: seed s trains every starting model on the same prompts in the same order, so the differences follow
    d_ms = mu + a_m + b_s + e_ms with a model effect a, a seed effect b shared across models, and a residual e. The
    grand mean's variance is s2_a / I + s2_b / J + s2_e / (I J) (I models, J seeds), estimated from the mean squares
    as (MS_model + MS_seed - MS_residual) / (I J), each variance component truncated at 0 (a negative estimate puts
    its mean square's coefficient to 0); the t statistic's degrees of freedom are Satterthwaite's for that
    combination. A 15-pair t-test treats a and b as noise that averages out over 15 runs; the model-means t-test
    (`model_means_t`) sees a but not b (b's mean is common to every model mean).

    Not a permutation test: sign flips must respect the crossing (flip whole models), and 3 models give 2^3 = 8
    patterns, so no p below 0.25. `differences` must fill the table: every model with every seed.
    Returns mean, half (95%), p, df, t, and the mean squares and variance components."""
    from scipy import stats

    models = sorted({m for m, _ in differences})
    seeds = sorted({s for _, s in differences})
    missing = [(m, s) for m in models for s in seeds if (m, s) not in differences]
    if missing or len(models) < 2 or len(seeds) < 2:
        raise ValueError(f"a crossed analysis needs every (model, seed) cell of at least 2 x 2; missing {missing}")
    n_models, n_seeds = len(models), len(seeds)
    table = [[differences[m, s] for s in seeds] for m in models]
    grand = statistics.fmean(d for row in table for d in row)
    rows = [statistics.fmean(row) for row in table]
    columns = [statistics.fmean(table[i][j] for i in range(n_models)) for j in range(n_seeds)]
    df_a, df_b, df_e = n_models - 1, n_seeds - 1, (n_models - 1) * (n_seeds - 1)
    ms_a = n_seeds * sum((r - grand) ** 2 for r in rows) / df_a
    ms_b = n_models * sum((c - grand) ** 2 for c in columns) / df_b
    residuals = (table[i][j] - rows[i] - columns[j] + grand for i in range(n_models) for j in range(n_seeds))
    ms_e = sum(e**2 for e in residuals) / df_e
    # Var(grand mean) * I J as a combination of mean squares: MS_e for the residual, plus (MS_x - MS_e) for each
    # factor whose component is estimated positive.
    weights = {"a": float(ms_a > ms_e), "b": float(ms_b > ms_e)}
    coefficients = [(weights["a"], ms_a, df_a), (weights["b"], ms_b, df_b), (1 - weights["a"] - weights["b"], ms_e, df_e)]
    combined = sum(c * ms for c, ms, _ in coefficients)
    denominator = sum((c * ms) ** 2 / df for c, ms, df in coefficients if c)
    df = combined**2 / denominator if denominator > 0 else math.inf
    se = math.sqrt(combined / (n_models * n_seeds))
    t = grand / se if se > 0 else (0.0 if grand == 0 else math.copysign(math.inf, grand))
    p = float(2 * stats.t.sf(abs(t), df)) if se > 0 else float(grand == 0)
    half = float(stats.t.ppf(0.975, df) * se) if se > 0 else 0.0
    return {"mean": grand, "half": half, "p": p, "df": df, "t": t, "models": n_models, "seeds": n_seeds,
            "ms_model": ms_a, "ms_seed": ms_b, "ms_residual": ms_e,
            "var_model": max(0.0, (ms_a - ms_e) / n_seeds), "var_seed": max(0.0, (ms_b - ms_e) / n_models),
            "var_residual": ms_e}
