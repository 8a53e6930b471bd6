"""The evaluation report: what its figures count."""

from trl_gtpo.evaluation import SampleResult, _model_turns, _report
from trl_gtpo.interpreter.loop import Trajectory
from trl_gtpo.rewards import math_answer_reward


def _sample(statuses: list) -> dict:
    return {"turns": [{"status": status} for status in statuses], "wrote_code": True}


def test_mean_tool_calls_counts_only_code_that_ran():
    # A turn with no code (None) and a stop marker without code ("no_code") are not tool calls.
    result = SampleResult("q", "1", [_sample([None]), _sample(["ok", "no_code", "error"])], [True, False])
    assert _report([result], k=2)["mean_tool_calls"] == 1.0


def test_the_reward_reads_the_model_turns_from_the_tool_mask():
    class Characters:  # one token per character
        @staticmethod
        def decode(ids, skip_special_tokens=True):
            return "".join(map(chr, ids))

    model, tool = "```python\nprint('```\\n\\\\boxed{72}')\n```", "\n```output\n```\n\\boxed{72}\n```\n"
    ids = [ord(c) for c in model + tool + "Not sure."]
    mask = [1] * len(model) + [0] * len(tool) + [1] * len("Not sure.")
    turns = _model_turns(Trajectory(completion_ids=ids, tool_mask=mask), Characters())
    assert turns == [model, "Not sure."]
    assert math_answer_reward(["ignored"], answer=["72"], model_turns=[turns]) == [0.0]
