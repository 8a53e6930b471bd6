"""The whole reward-to-advantage path through GTPOTrainer on scripted rollouts: outcome reward, format penalties,
shaping and discounted returns, checked against values computed by hand."""

import pytest
import torch
from datasets import Dataset

from trl_gtpo.interpreter.rollout import CodeInterpreterRollout
from trl_gtpo.similarity import lexical_similarity_matrix

from helpers import QUESTION, RecordingGTPOTrainer, TaggedScripts, boxed_42, make_args, rows_by_tag

pytestmark = pytest.mark.slow

@pytest.mark.parametrize("estimator", ["pooled", "aligned"])
def test_reward_to_advantage_path_by_hand(estimator, tiny_model_path, tmp_path):
    gamma, alpha, penalty = 0.9, 0.5, -0.1
    args = make_args(
        tmp_path, max_steps=1, gamma=gamma, shaping_alpha=alpha, format_penalty=penalty, max_completion_length=96,
        turn_advantage_estimator=estimator,
    )
    rollout = CodeInterpreterRollout(args, generate_turn=lambda trainer, stop_strings: TaggedScripts(trainer.processing_class))
    trainer = RecordingGTPOTrainer(
        model=tiny_model_path, reward_funcs=boxed_42, args=args, train_dataset=Dataset.from_dict({"prompt": [QUESTION] * 4}),
        rollout_func=rollout,
    )
    trainer.train()

    record = trainer.records[0]
    rows = rows_by_tag(record, trainer.processing_class)
    assert sorted(rows) == ["A", "B", "C", "D"]

    similarity_d = float(lexical_similarity_matrix(["print(6 *"], ["print(6 * 7)"])[0, 0])
    assert 0.0 < similarity_d < 1.0
    shaping_b = alpha * (1.0 + 0.0) / 2  # mean similarity over the successes A (identical code) and C (no code)
    shaping_d = alpha * (similarity_d + 0.0) / 2
    turn_rewards = {
        "A": [0.0, 1.0],
        "B": [0.0, shaping_b],
        "C": [1.0 + penalty],
        "D": [penalty, shaping_d],
    }
    returns = {tag: [r[0] + gamma * r[1], r[1]] if len(r) == 2 else r for tag, r in turn_rewards.items()}
    if estimator == "pooled":  # baseline and std over every turn return of the group
        values = torch.tensor([value for tag in "ABCD" for value in returns[tag]])
        expected = {tag: [(value - values.mean()) / (values.std() + 1e-4) for value in returns[tag]] for tag in "ABCD"}
    else:  # each reward against the group's mean at its place: F at the end, turn terms at their turn index
        final = {"A": 1.0, "B": shaping_b, "C": 1.0, "D": shaping_d}
        terms = {"A": [0.0, 0.0], "B": [0.0, 0.0], "C": [penalty, 0.0], "D": [penalty, 0.0]}  # 0 past the end
        mean_final = sum(final.values()) / 4
        mean_terms = [sum(terms[tag][m] for tag in "ABCD") / 4 for m in range(2)]
        sigma = torch.tensor(list(final.values())).std() + torch.tensor([terms[t][0] for t in "ABCD"]).std()
        expected = {}
        for tag in "ABCD":
            k = len(returns[tag])
            deviations = [terms[tag][m] - mean_terms[m] for m in range(2)]
            expected[tag] = [
                (gamma ** (k - 1 - j) * (final[tag] - mean_final) + sum(gamma ** (m - j) * deviations[m] for m in range(j, 2)))
                / (sigma + 1e-4)
                for j in range(k)
            ]

    advantages, mask = record["gtpo"], record["mask"]
    for tag, row in rows.items():
        index = (mask[row] == 1).nonzero().flatten()
        # the first token of each turn: turns are maximal runs of model tokens
        starts = [index[0].item()] + [b.item() for a, b in zip(index[:-1], index[1:]) if b != a + 1]
        assert len(starts) == len(returns[tag]), tag
        for start, value in zip(starts, expected[tag]):
            assert advantages[row, start].item() == pytest.approx(float(value), abs=1e-5), tag

    turns_d = record["turns"][rows["D"]]
    assert not turns_d[0].well_formed and turns_d[0].status == "error"
    logs = trainer.state.log_history[0]
    assert logs["shaping/frac_shaped"] == pytest.approx(0.5)
    assert logs["shaping/mean"] == pytest.approx((shaping_b + shaping_d) / 4, abs=1e-6)
    assert logs["format/violations_per_turn"] == pytest.approx(2 / 7)
