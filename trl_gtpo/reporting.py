"""Text tables and plots of evaluation reports (`evaluation.evaluate`'s dicts), shared by the two commands: one
table renderer, so every table the package prints lines up the same way."""

from .evaluation import benchmark_fields


def text_table(rows: list[list[str]] | list[tuple[str, ...]], left_columns: int = 1) -> str:
    """Rows of cells as aligned plain text: the first row is the header, ruled off by dashes; the first
    `left_columns` columns are left-aligned (names), the rest right-aligned (numbers)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) if i < left_columns else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def benchmark_table(reports: dict[str, dict]) -> str:
    """One row per benchmark: n, pass@1 [95% interval], avg@k, tool calls per problem, tool error rate."""
    rows = [["benchmark", "n", "pass@1", "95% interval", "avg@k", "tool calls/problem", "tool error rate"]]
    for name, report in reports.items():
        k = report["k"]
        rows.append([
            name,
            str(report["num_problems"]),
            f"{report['pass@1']:.3f}",
            f"[{report['pass@1_low']:.3f}, {report['pass@1_high']:.3f}]",
            f"{report[f'avg@{k}']:.3f} (k={k})",
            f"{report['tool_calls_per_problem']:.2f}",
            f"{report['tool_error_rate']:.3f}",
        ])
    return text_table(rows)


def pooled_report(reports: dict[str, dict]) -> dict:
    """The splits' reports as one (their problems together): pass@1, its interval, tool calls over all of them."""
    problems = [problem for report in reports.values() for problem in report["problems"]]
    report = {"num_problems": len(problems), "pass@1": sum(p["correct"][0] for p in problems) / max(1, len(problems)),
              "problems": problems}
    return {**report, **benchmark_fields(report)}


def _interval(report: dict) -> str:
    return f"{report['pass@1']:.3f} [{report['pass@1_low']:.3f}, {report['pass@1_high']:.3f}]"


def _fixed_and_broken(before: dict, after: dict) -> tuple[int, int]:
    """Problems training fixed and broke, paired problem by problem on the first sample."""
    firsts = [(b["correct"][0], a["correct"][0]) for b, a in zip(before["problems"], after["problems"], strict=True)]
    return sum(not b and a for b, a in firsts), sum(b and not a for b, a in firsts)


def split_table(before: dict[str, dict] | None, after: dict[str, dict]) -> str:
    """One row per held-out split (and one for all of them when there are several): pass@1 with its 95% Wilson
    interval before and after training, the change, problems fixed and broken (paired), tool calls per problem.
    `before` None (not evaluated): those columns read "-"."""
    rows = [("split", "n", "before [95% interval]", "after [95% interval]", "change", "fixed/broken", "tool calls")]
    names = list(after) + (["all"] if len(after) > 1 else [])
    for name in names:
        a = pooled_report(after) if name == "all" else after[name]
        b = None if before is None else pooled_report(before) if name == "all" else before[name]
        cells = [name, str(a["num_problems"])]
        if b is None:
            cells += ["-", _interval(a), "-", "-", f"- -> {a['tool_calls_per_problem']:.2f}"]
        else:
            fixed, broken = _fixed_and_broken(b, a)
            cells += [_interval(b), _interval(a), f"{a['pass@1'] - b['pass@1']:+.3f}", f"{fixed}/{broken}",
                      f"{b['tool_calls_per_problem']:.2f} -> {a['tool_calls_per_problem']:.2f}"]
        rows.append(tuple(cells))
    return text_table(rows)


def change_verdict(before: dict, after: dict) -> str:
    """One line under a one-split table: the change, problems fixed and broken, and whether the after pass@1 is
    clear of the base model's 95% interval (a change inside it is not evidence of learning)."""
    fixed, broken = _fixed_and_broken(before, after)
    outside = not before["pass@1_low"] <= after["pass@1"] <= before["pass@1_high"]
    return (f"change {after['pass@1'] - before['pass@1']:+.3f} ({fixed} problems fixed, {broken} broken): after is "
            + ("outside" if outside else "inside") + " the before 95% interval")


def success_curve(log_history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key` in a Trainer's `state.log_history`, one point per logged training step."""
    points = [(entry["step"], entry[key]) for entry in log_history if key in entry and "step" in entry]
    return [step for step, _ in points], [value for _, value in points]


def save_success_curve(
    log_history: list[dict], reward_name: str, path: str, reports: dict | None = None, splits: dict | None = None
) -> str | None:
    """A PNG of the training success rate per step (the mean of the reward `reward_name` over the step's
    trajectories, sampled at the training temperature) with the held-out pass@1 before and after training and their
    95% intervals (`reports`: label -> report); with `splits` (label -> {split: report}), a second panel shows each
    split's pass@1 before and after with its interval. None (nothing written) when no step was logged or matplotlib
    is missing."""
    steps, values = success_curve(log_history, f"rewards/{reward_name}/mean")
    if not steps:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if splits:
        figure, (axis, bars) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [3, 2]})
        _split_bars(bars, splits)
    else:
        figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(steps, values, marker="o", label=f"training success (mean {reward_name} per step)")
    for (label, report), color in zip((reports or {}).items(), ("tab:gray", "tab:green")):
        axis.axhline(report["pass@1"], color=color, linestyle="--", label=f"held-out pass@1 {label}")
        axis.axhspan(report["pass@1_low"], report["pass@1_high"], color=color, alpha=0.15)
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("training step")
    axis.set_ylabel("success rate")
    axis.set_ylim(-0.02, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(loc="best", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _split_bars(axis, splits: dict[str, dict[str, dict]]) -> None:
    """Held-out pass@1 per split, one bar per label (before / after), 95% Wilson intervals as error bars."""
    names = list(next(iter(splits.values())))
    width = 0.8 / len(splits)
    for k, ((label, reports), color) in enumerate(zip(splits.items(), ("tab:gray", "tab:green", "tab:blue"))):
        xs = [i + (k - (len(splits) - 1) / 2) * width for i in range(len(names))]
        values = [reports[name]["pass@1"] for name in names]
        errors = [[v - reports[n]["pass@1_low"] for v, n in zip(values, names)],
                  [reports[n]["pass@1_high"] - v for v, n in zip(values, names)]]
        axis.bar(xs, values, width, yerr=errors, capsize=3, color=color, label=label)
    axis.set_xticks(range(len(names)), names, fontsize=8)
    axis.set_ylim(0, 1.02)
    axis.set_ylabel("held-out pass@1 (greedy)")
    axis.grid(alpha=0.3, axis="y")
    axis.legend(fontsize=8)
