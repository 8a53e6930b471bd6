"""The scoring step both trainers share (`trl_gtpo.scoring`), without a model: which records, the format rule, the
weights of turn rewards, the outcome and shaping, and the config fields it reads."""

import math

import pytest
import torch

from trl_gtpo import scoring, shaping  # noqa: F401 - shaping binds the real make_similarity before any test patches it
from trl_gtpo.advantages import AdvantageSettings
from trl_gtpo.gtpo_config import GTPOFields
from trl_gtpo.interpreter.environment import ToolRun
from trl_gtpo.scoring import ScoringSettings, score_turns, trajectory_records
from trl_gtpo.turn_records import TurnRecord


def record(index, code, status="ok", well_formed=True):
    return TurnRecord(index, "t", code, None, status, index, index + 1, well_formed=well_formed)


# A: two turns, its first call ran, outcome 1. B: one turn with a malformed call that never ran, outcome 0.
RECORDS = [[record(0, "print(6 * 7)"), record(1, None, "none")], [record(0, "print(6 *", "none", well_formed=False)]]
NUM_TURNS = torch.tensor([2, 1])
REWARDS = torch.tensor([[1.0], [0.0]])
ONE = torch.ones(1)


def settings(**fields):
    return ScoringSettings(AdvantageSettings(0.9, "aligned"), **fields)


def test_the_format_rule_reads_the_code_interpreters_records_only():
    scored = score_turns(RECORDS, NUM_TURNS, REWARDS, ONE, 2, settings(shaping_alpha=0.0), interpreter=True)
    # B: -0.1 for its malformed call, -0.1 more on its final turn: no call of it ran
    assert scored.formats.tolist() == [[0.0, 0.0], [pytest.approx(-0.2), 0.0]]
    assert scored.table.rewards[1, 0].item() == pytest.approx(-0.2)
    plain = score_turns(RECORDS, NUM_TURNS, REWARDS, ONE, 2, settings(shaping_alpha=0.0), interpreter=False)
    assert plain.formats is None and plain.batch.turn_terms is None and plain.batch.shaping is None


def test_turn_rewards_are_weighted_and_added_to_the_format_terms():
    values = [[[1.0, None], [0.5]], [[None, 2.0], [None]]]
    scored = score_turns(
        RECORDS, NUM_TURNS, REWARDS, ONE, 2, settings(shaping_alpha=0.0), interpreter=True,
        turn_values=values, turn_weights=[0.5, 2.0],
    )
    # t = format + 0.5 * first source + 2 * second source (None counts 0)
    torch.testing.assert_close(scored.batch.turn_terms, torch.tensor([[0.5, 4.0], [0.25 - 0.2, 0.0]]))


def test_shaping_uses_the_similarity_and_model_of_the_settings(monkeypatch):
    """Both trainers shape with the configured similarity (the asynchronous one used to ignore it)."""
    asked = []

    def make_similarity(name, model_path=None):
        asked.append((name, model_path))
        return lambda a, b: torch.full((len(a), len(b)), 0.25).numpy()

    monkeypatch.setattr("trl_gtpo.shaping.make_similarity", make_similarity)
    chosen = settings(shaping_alpha=0.5, shaping_similarity="embedding", shaping_embedding_model="/models/e5")
    scored = score_turns(RECORDS, NUM_TURNS, REWARDS, ONE, 2, chosen, interpreter=True)
    assert asked == [("embedding", "/models/e5")]
    assert scored.batch.shaping.tolist() == [0.0, 0.5 * 0.25]  # B failed and wrote code; A succeeded


def test_shaping_decides_success_on_the_raw_sum_under_normalize_then_sum():
    # Normalized within the group, A's outcome is +0.7, never 1.0: success is read on the raw weighted sum.
    chosen = settings(shaping_alpha=0.5, aggregation="normalize_then_sum", shaping_similarity=lambda a, b: [[1.0]])
    scored = score_turns(RECORDS, NUM_TURNS, REWARDS, ONE, 2, chosen, interpreter=True)
    assert scored.batch.outcome[0].item() == pytest.approx(1 / (math.sqrt(0.5) + 1e-4) * 0.5, rel=1e-4)
    assert scored.batch.shaping.tolist() == [0.0, 0.5]


def test_records_come_from_the_best_source_a_trajectory_has():
    decode = lambda ids: " ".join(map(str, ids))  # noqa: E731
    own = [record(0, "x = 1")]
    assert trajectory_records([1, 2], [1, 1], [], decode, own=own, runs=[ToolRun("y", "", "ok")]) == own
    messages = [{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "python"}}]},
                {"role": "tool", "name": "python", "content": "3"}]
    from_runs = trajectory_records([1, 2, 3], [1, 0, 1], messages, decode, runs=[ToolRun("print(3)", "3", "ok")])
    assert (from_runs[0].tool_call, from_runs[0].status) == ("print(3)", "ok")
    from_messages = trajectory_records([1, 2, 3], [1, 0, 1], messages, decode)
    assert from_messages[0].tool_call.startswith("[{") and len(from_messages) == 2


def test_settings_read_every_gtpo_field_the_step_uses():
    class Args:
        gamma, turn_advantage_estimator, turn_advantage_scope = 0.5, "pooled", "batch"
        format_penalty, shaping_alpha, shaping_success_threshold = -0.3, 0.2, 0.8
        shaping_similarity, shaping_embedding_model = "embedding", "/models/e5"

    chosen = ScoringSettings.from_config(Args(), scale="none", aggregation="sum_then_normalize")
    assert chosen == ScoringSettings(
        AdvantageSettings(0.5, "pooled", "batch", "none"), "sum_then_normalize", -0.3, 0.2, 0.8, "embedding", "/models/e5"
    )
    # TRL scales normalize_then_sum advantages by the batch std whatever scale_rewards says
    assert ScoringSettings.from_config(Args(), scale="none", aggregation="normalize_then_sum").advantages.scale == "batch"
    shared = {name for name in vars(Args) if not name.startswith("_")}
    assert shared <= set(GTPOFields.__dataclass_fields__)
