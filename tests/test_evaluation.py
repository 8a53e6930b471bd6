"""The evaluation report: what its figures count."""

from trl_gtpo.evaluation import SampleResult, _report


def _sample(statuses: list) -> dict:
    return {"turns": [{"status": status} for status in statuses], "wrote_code": True}


def test_mean_tool_calls_counts_only_code_that_ran():
    # A turn with no code (None) and a stop marker without code ("no_code") are not tool calls.
    result = SampleResult("q", "1", [_sample([None]), _sample(["ok", "no_code", "error"])], [True, False])
    assert _report([result], k=2)["mean_tool_calls"] == 1.0
