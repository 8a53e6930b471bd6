"""trl_gtpo.reporting: the held-out tables and the training success plot of the training command."""

from trl_gtpo import reporting


def _report(correct: list[bool]) -> dict:
    from trl_gtpo.evaluation import benchmark_fields

    problems = [{"correct": [ok], "samples": [{"tool_calls": 1, "tool_errors": 0}]} for ok in correct]
    report = {"num_problems": len(correct), "pass@1": sum(correct) / len(correct), "problems": problems}
    return {**report, **benchmark_fields(report)}

def test_one_split_pairs_the_problems_and_judges_the_change_against_the_before_interval():
    before = _report([True] * 10 + [False] * 30)  # 0.25, 95% interval about [0.14, 0.40]
    after = _report([False] * 2 + [True] * 8 + [True] * 14 + [False] * 16)  # 0.55: 14 fixed, 2 broken
    table = reporting.split_table({"held-out": before}, {"held-out": after})
    assert "0.250 [0.142, 0.402]" in table and "14/2" in table and "+0.300" in table
    verdict = reporting.change_verdict(before, after)
    assert verdict == "change +0.300 (14 problems fixed, 2 broken): after is outside the before 95% interval"
    close = _report([True] * 12 + [False] * 28)
    assert "after is inside the before 95% interval" in reporting.change_verdict(before, close)

def test_success_curve_reads_the_logged_steps_and_is_saved_as_png(tmp_path):
    key = "rewards/math_answer_reward/mean"
    history = [{key: 0.25, "step": 1}, {"loss": 0.1, "step": 1}, {key: 0.5, "step": 2}, {"train_runtime": 9.0}]
    assert reporting.success_curve(history, key) == ([1, 2], [0.25, 0.5])
    path = tmp_path / "curve.png"
    reports = {"before": _report([True, False]), "after": _report([True, True])}
    assert reporting.save_success_curve(history, "math_answer_reward", str(path), reports) == str(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert reporting.save_success_curve([{"loss": 0.1, "step": 1}], "math_answer_reward", str(tmp_path / "no.png")) is None
    assert not (tmp_path / "no.png").exists()

def test_split_table_gives_each_split_and_all_of_them_with_intervals_and_paired_changes():
    before = {"word": _report([True] * 5 + [False] * 15), "word_two_step": _report([True] * 10 + [False] * 10)}
    after = {"word": _report([True] * 18 + [False] * 2), "word_two_step": _report([False] * 4 + [True] * 6 + [False] * 10)}
    lines = reporting.split_table(before, after).splitlines()
    assert lines[0].split()[:2] == ["split", "n"] and len(lines) == 2 + 3
    word, two_step, everything = lines[2:]
    # 5/20 -> 18/20: 13 fixed, 0 broken; Wilson intervals of 5/20 and 18/20
    assert word.split()[:2] == ["word", "20"] and "0.250 [0.112, 0.469]" in word and "0.900 [0.699, 0.972]" in word
    assert "+0.650" in word and "13/0" in word and "1.00 -> 1.00" in word
    assert "0.500" in two_step and "0.300" in two_step and "-0.200" in two_step and "0/4" in two_step
    assert everything.split()[:2] == ["all", "40"] and "0.375" in everything and "0.600" in everything
    assert "13/4" in everything
    unevaluated = reporting.split_table(None, after).splitlines()[2]
    assert unevaluated.split()[2] == "-" and "0.900 [0.699, 0.972]" in unevaluated
    assert len(reporting.split_table(None, {"held-out": after["word"]}).splitlines()) == 3  # one split: no "all" row

def test_the_plot_has_a_split_panel(tmp_path):
    key = "rewards/math_answer_reward/mean"
    history = [{key: 0.25, "step": 1}, {key: 0.5, "step": 2}]
    splits = {"before": {"word": _report([True, False]), "two": _report([False, False])},
              "after": {"word": _report([True, True]), "two": _report([True, False])}}
    overall = {label: reporting.pooled_report(by_split) for label, by_split in splits.items()}
    assert overall["after"]["pass@1"] == 0.75 and overall["after"]["num_problems"] == 4
    path = tmp_path / "curve.png"
    assert reporting.save_success_curve(history, "math_answer_reward", str(path), overall, splits=splits) == str(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
