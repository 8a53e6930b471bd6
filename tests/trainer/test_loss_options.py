"""TRL's per-sequence options in GTPOTrainer's loss: the single-turn invariant (GTPO's loss and gradient are
GRPOTrainer's, number for number, on the same prepared batch, for every option), and multi-turn cases by hand.

The forward pass is replaced by fixed per-token log-probs (tests/helpers.py `loss_and_grad`), so both trainers see
exactly the same inputs and the loss is differentiated by the log-probs themselves."""

import math

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from trl_gtpo import GTPOTrainer

from helpers import boxed_42, loss_and_grad, make_args, prepared_batch, trl_args

pytestmark = pytest.mark.slow

DATASET = Dataset.from_dict({"prompt": ["unused"] * 4})  # the trainers need one; the batches are made by hand
LENGTHS = [6, 4, 5, 3]
ADVANTAGES = torch.tensor([1.0, -0.5, 0.8, -1.2])
COMPLETION_MASK = torch.tensor([[1] * n + [0] * (6 - n) for n in LENGTHS])


def _single_turn_case(seed=0):
    generator = torch.Generator().manual_seed(seed)
    logps = -1.0 + 0.5 * torch.randn(4, 6, generator=generator)
    old = logps + 0.3 * torch.randn(4, 6, generator=generator)  # ratios around 1, some clipped at eps=0.2
    extra = {
        "old_per_token_logps": old,
        "sampling_per_token_logps": old + 0.2 * torch.randn(4, 6, generator=generator),
        "ref_per_token_logps": logps + 0.1 * torch.randn(4, 6, generator=generator),
    }
    return logps, extra


# (TRL options of the GRPO run, the importance_sampling_level values GTPO must match it with)
CASES = {
    "dapo": ({}, ["token"]),
    "grpo": ({"loss_type": "grpo"}, ["token"]),
    "bnpo": ({"loss_type": "bnpo"}, ["token"]),
    "dr_grpo": ({"loss_type": "dr_grpo"}, ["token"]),
    "cispo": ({"loss_type": "cispo", "epsilon_high": 1.1}, ["token"]),
    "sapo": ({"loss_type": "sapo"}, ["token"]),
    "two_sided": ({"loss_type": "grpo", "delta": 1.1}, ["token"]),
    "gspo": ({"loss_type": "grpo", "importance_sampling_level": "sequence"}, ["sequence", "turn"]),
    "gspo_cispo": ({"loss_type": "cispo", "importance_sampling_level": "sequence", "epsilon_high": 1.05}, ["sequence", "turn"]),
    "off_policy_mask": ({"off_policy_mask_threshold": 0.05}, ["token"]),
    "gspo_off_policy_mask": (
        {"loss_type": "grpo", "importance_sampling_level": "sequence", "off_policy_mask_threshold": 0.05},
        ["sequence", "turn"],
    ),
    "luspo": ({"loss_type": "luspo", "importance_sampling_level": "sequence"}, ["sequence", "turn"]),
    "vespo": ({"loss_type": "vespo"}, ["token", "turn"]),
    "kl": ({"loss_type": "grpo", "beta": 0.1}, ["token"]),
    "gspo_kl": ({"loss_type": "grpo", "importance_sampling_level": "sequence", "beta": 0.1}, ["sequence", "turn"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_turn_per_trajectory_gtpo_loss_is_grpo_loss(case, tiny_model_path, tmp_path):
    options, levels = CASES[case]
    logps, extra = _single_turn_case()
    grpo = GRPOTrainer(model=tiny_model_path, reward_funcs=boxed_42, args=GRPOConfig(**trl_args(tmp_path, **options)), train_dataset=DATASET)
    expected_loss, expected_grad = loss_and_grad(grpo, prepared_batch(ADVANTAGES, COMPLETION_MASK, **extra), logps)
    assert expected_grad.abs().sum() > 0
    turn_advantages = ADVANTAGES.unsqueeze(1) * COMPLETION_MASK  # what GTPO hands TRL for one turn per row
    for level in levels:
        args = make_args(tmp_path, **(options | {"importance_sampling_level": level}))
        gtpo = GTPOTrainer(model=tiny_model_path, reward_funcs=boxed_42, args=args, train_dataset=DATASET)
        loss, grad = loss_and_grad(gtpo, prepared_batch(turn_advantages, COMPLETION_MASK, **extra), logps)
        torch.testing.assert_close(loss, expected_loss, msg=f"{case}, GTPO at {level} level")
        torch.testing.assert_close(grad, expected_grad, msg=f"{case}, GTPO at {level} level")


def test_the_off_policy_mask_case_drops_something(tiny_model_path, tmp_path):
    """The off-policy cases above compare something: the mask drops a row there (else the loss would not change)."""
    logps, extra = _single_turn_case()
    losses = []
    for threshold in (None, 0.05):
        grpo = GRPOTrainer(
            model=tiny_model_path, reward_funcs=boxed_42,
            args=GRPOConfig(**trl_args(tmp_path, off_policy_mask_threshold=threshold)), train_dataset=DATASET,
        )
        losses.append(loss_and_grad(grpo, prepared_batch(ADVANTAGES, COMPLETION_MASK, **extra), logps)[0])
    assert not torch.isclose(losses[0], losses[1])


# ------------------------------------------------------------------------------------------------ multi-turn by hand
# Row 0: turn 1 = tokens 0-1, tool output 2, turn 2 = tokens 3-5. Row 1: one turn, tokens 0-3, then padding.
TOOL_MASK = torch.tensor([[1, 1, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
MULTI_MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
TURNS = [[[0, 1], [3, 4, 5]], [[0, 1, 2, 3]]]
TURN_ADVANTAGES = [[0.7, -1.1], [0.4]]


def _token_advantages():
    advantages = torch.zeros(2, 6)
    for i, turns in enumerate(TURNS):
        for tokens, value in zip(turns, TURN_ADVANTAGES[i]):
            advantages[i, tokens] = value
    return advantages


def _gtpo(tiny_model_path, tmp_path, **options):
    return GTPOTrainer(model=tiny_model_path, reward_funcs=boxed_42, args=make_args(tmp_path, **options), train_dataset=DATASET)


def _multi_turn_inputs():
    logps = torch.tensor([[-1.0, -2.0, -9.0, -0.5, -1.5, -1.0], [-0.8, -1.2, -2.0, -0.4, -7.0, -7.0]])
    old = logps.clone()
    old[0, :2] -= torch.tensor([0.3, 0.1])  # turn 1 of row 0: mean log-ratio +0.2 -> ratio 1.2214 > 1 + 0.2, clipped
    old[0, 3:] -= torch.tensor([0.05, -0.02, 0.03])  # turn 2: mean +0.02 -> ratio 1.0202, inside the clip range
    old[1, :4] += 0.1  # row 1: mean -0.1 -> ratio 0.9048, inside
    return logps, old


def test_turn_level_ratio_multi_turn_by_hand(tiny_model_path, tmp_path):
    """loss_type "grpo", importance_sampling_level "turn": each turn's ratio s_ij = exp(mean log-ratio over its
    tokens), clipped to [0.8, 1.2], times A_ij; the per-token losses averaged over the row's model tokens."""
    logps, old = _multi_turn_inputs()
    batch = prepared_batch(_token_advantages(), MULTI_MASK, TOOL_MASK, old_per_token_logps=old)
    loss, grad = loss_and_grad(_gtpo(tiny_model_path, tmp_path, loss_type="grpo", importance_sampling_level="turn"), batch, logps)

    s = [[math.exp(0.2), math.exp(0.02)], [math.exp(-0.1)]]
    row_losses = []
    for i, turns in enumerate(TURNS):
        tokens = sum(len(t) for t in turns)
        total = sum(
            -min(s[i][j] * a, min(max(s[i][j], 0.8), 1.2) * a) * len(t)
            for j, (t, a) in enumerate(zip(turns, TURN_ADVANTAGES[i]))
        )
        row_losses.append(total / tokens)
    assert loss.item() == pytest.approx(sum(row_losses) / 2, rel=1e-5)
    # gradient: a clipped turn (row 0, turn 1: A > 0 and s > 1.2) gets none; an unclipped turn j of row i gives each
    # of its tokens -A_ij * s_ij / |turn j| * |turn j| / tokens_i / B = -A_ij * s_ij / tokens_i / 2
    expected = torch.zeros(2, 6)
    expected[0, 3:] = 1.1 * s[0][1] / 5 / 2
    expected[1, :4] = -0.4 * s[1][0] / 4 / 2
    torch.testing.assert_close(grad, expected)


def test_turn_level_ratio_leaves_the_batch_and_the_trainer_as_they_were(tiny_model_path, tmp_path):
    """TRL reuses a buffered batch over `num_iterations`: the turn-level old log-probs go into a copy only."""
    logps, old = _multi_turn_inputs()
    trainer = _gtpo(tiny_model_path, tmp_path, loss_type="grpo", importance_sampling_level="turn")
    assert trainer.importance_sampling_level == "token"  # what TRL's `_compute_loss` runs at
    batch = prepared_batch(_token_advantages(), MULTI_MASK, TOOL_MASK, old_per_token_logps=old)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    trainer.compute_loss(trainer.model, batch)
    assert batch["old_per_token_logps"] is old
    assert "_get_per_token_logps_and_entropies" not in vars(trainer)


def test_sequence_level_ratio_averages_the_turn_advantages_away(tiny_model_path, tmp_path):
    """Why GSPO users should pick "turn": on-policy, two equal turns with advantages +1 and -1. Under "sequence" the
    gradient of every token is (mean turn advantage) * d s_i = 0: the turn credit is gone. Under "turn" each turn's
    tokens get their own advantage."""
    mask = torch.tensor([[1, 1, 1, 1, 1, 1]])
    tool = torch.tensor([[1, 1, 0, 0, 1, 1]])
    advantages = torch.tensor([[1.0, 1.0, 0.0, 0.0, -1.0, -1.0]])
    logps = torch.tensor([[-1.0, -2.0, -3.0, -3.0, -0.5, -1.5]])
    batch = prepared_batch(advantages, mask, tool)
    _, sequence_grad = loss_and_grad(_gtpo(tiny_model_path, tmp_path, loss_type="grpo", importance_sampling_level="sequence"), batch, logps)
    _, turn_grad = loss_and_grad(_gtpo(tiny_model_path, tmp_path, loss_type="grpo", importance_sampling_level="turn"), batch, logps)
    torch.testing.assert_close(sequence_grad, torch.zeros(1, 6))
    torch.testing.assert_close(turn_grad, torch.tensor([[-0.25, -0.25, 0.0, 0.0, 0.25, 0.25]]))


def test_on_policy_token_and_turn_levels_give_the_same_gradient_and_sequence_level_none(tiny_model_path, tmp_path):
    """What docs/SETTINGS.md says of ratio 1 (num_iterations=1): "token" and "turn" give each turn's tokens
    their own advantage, -A_ij / n per token (grpo: mean over the row's n = 4 model tokens); "sequence" gives every
    token the trajectory's mean turn advantage, 0 for two equal turns with +1 and -1."""
    mask, tool = torch.ones(1, 6, dtype=torch.long), torch.tensor([[1, 1, 0, 0, 1, 1]])
    batch = prepared_batch(torch.tensor([[1.0, 1.0, 0.0, 0.0, -1.0, -1.0]]), mask, tool)
    logps = torch.tensor([[-1.0, -2.0, -3.0, -3.0, -0.5, -1.5]])
    grads = {
        level: loss_and_grad(_gtpo(tiny_model_path, tmp_path, loss_type="grpo", importance_sampling_level=level), batch, logps)[1]
        for level in ("token", "turn", "sequence")
    }
    expected = torch.tensor([[-0.25, -0.25, 0.0, 0.0, 0.25, 0.25]])
    torch.testing.assert_close(grads["token"], expected)
    torch.testing.assert_close(grads["turn"], expected)
    torch.testing.assert_close(grads["sequence"], torch.zeros(1, 6))


@pytest.mark.parametrize("level", ["token", "turn"])
def test_a_token_the_entropy_mask_drops_gets_no_gradient_at_any_level(level, tiny_model_path, tmp_path):
    """top_entropy_quantile=0.5 keeps the tokens of entropy >= the median of the model tokens' entropies (2.0):
    tokens 0, 2 (turn 1, A = +1) and 4 (turn 2, A = -1). At "turn" level the ratio of turn 1 is the geometric mean
    over its kept tokens 0 and 2 only, so token 1 gets no gradient, as at "token" level. grpo: mean over the 5 model
    tokens; d/d logp_0 = -(1/5) * (2 tokens * 1/2) = -0.2."""
    mask, tool = torch.ones(1, 6, dtype=torch.long), torch.tensor([[1, 1, 1, 0, 1, 1]])
    batch = prepared_batch(torch.tensor([[1.0, 1.0, 1.0, 0.0, -1.0, -1.0]]), mask, tool)
    logps = torch.tensor([[-1.0, -2.0, -0.7, -3.0, -0.5, -1.5]])
    entropies = torch.tensor([[3.0, 0.1, 2.0, 9.0, 5.0, 0.2]])  # token 3 is tool output: not a model token
    trainer = _gtpo(tiny_model_path, tmp_path, loss_type="grpo", importance_sampling_level=level, top_entropy_quantile=0.5)
    _, grad = loss_and_grad(trainer, batch, logps, entropies)
    torch.testing.assert_close(grad, torch.tensor([[-0.2, 0.0, -0.2, 0.0, 0.2, 0.0]]))


def test_turn_level_luspo_weights_each_turn_by_its_length_by_hand(tiny_model_path, tmp_path):
    """LUSPO: the sum over a row's model tokens of the turn losses, i.e. each turn's GSPO loss times its length."""
    logps, old = _multi_turn_inputs()
    batch = prepared_batch(_token_advantages(), MULTI_MASK, TOOL_MASK, old_per_token_logps=old)
    loss, _ = loss_and_grad(_gtpo(tiny_model_path, tmp_path, loss_type="luspo", importance_sampling_level="turn"), batch, logps)
    s = [[math.exp(0.2), math.exp(0.02)], [math.exp(-0.1)]]
    rows = [
        sum(-min(s[i][j] * a, min(max(s[i][j], 0.8), 1.2) * a) * len(t) for j, (t, a) in enumerate(zip(turns, TURN_ADVANTAGES[i])))
        for i, turns in enumerate(TURNS)
    ]
    assert loss.item() == pytest.approx(sum(rows) / 2, rel=1e-5)


def test_vespo_weights_each_turn_by_the_trajectory_ratio_shaped_by_its_sign_by_hand(tiny_model_path, tmp_path):
    """VESPO: phi(w_i) from the trajectory's ratio w_i = prod over its model tokens, with (k, lambda) of the sign of
    the turn's advantage; loss -phi * A_ij * log pi summed over model tokens, over TRL's token normalizer."""
    logps, old = _multi_turn_inputs()
    batch = prepared_batch(_token_advantages(), MULTI_MASK, TOOL_MASK, old_per_token_logps=old)
    for level in ("token", "turn"):  # VESPO's weight is the trajectory's at either level
        trainer = _gtpo(tiny_model_path, tmp_path, loss_type="vespo", importance_sampling_level=level)
        loss, grad = loss_and_grad(trainer, batch, logps)
        a = trainer.args
        log_w = [0.2 * 2 + 0.02 * 3, -0.1 * 4]

        def phi(i, advantage):
            k, lam = (a.vespo_k_pos, a.vespo_lambda_pos) if advantage >= 0 else (a.vespo_k_neg, a.vespo_lambda_neg)
            return math.exp(lam + k * log_w[i] - lam * math.exp(log_w[i]))

        expected_grad = torch.zeros(2, 6)
        for i, turns in enumerate(TURNS):
            for tokens, advantage in zip(turns, TURN_ADVANTAGES[i]):
                expected_grad[i, tokens] = -phi(i, advantage) * advantage / 9  # 9 model tokens in the batch
        torch.testing.assert_close(grad, expected_grad, msg=level)
        assert loss.item() == pytest.approx((expected_grad * logps).sum().item(), rel=1e-5)


def test_off_policy_mask_drops_only_the_drifted_negative_turn_by_hand(tiny_model_path, tmp_path):
    """Row 0's second turn (A < 0) drifted by 0.5 per token, its first turn (A < 0 too) did not: only the second turn
    leaves the loss. TRL's sequence mask would have dropped both (row drift 1.5 / 5 = 0.3 > 0.1)."""
    logps = torch.tensor([[-1.0, -2.0, -9.0, -0.5, -1.5, -1.0], [-0.8, -1.2, -2.0, -0.4, -7.0, -7.0]])
    sampling = logps.clone()
    sampling[0, 3:] += 0.5
    advantages = _token_advantages()
    advantages[0, :2] = -0.7
    batch = prepared_batch(advantages, MULTI_MASK, TOOL_MASK, sampling_per_token_logps=sampling)
    trainer = _gtpo(tiny_model_path, tmp_path, loss_type="grpo", off_policy_mask_threshold=0.1)
    loss, grad = loss_and_grad(trainer, batch, logps)
    # on-policy (no old log-probs): ratio 1, d ratio / d logp = 1; per-token loss -A, averaged over the row's tokens
    expected_grad = torch.zeros(2, 6)
    expected_grad[0, :2] = 0.7 / 5 / 2
    expected_grad[1, :4] = -0.4 / 4 / 2
    torch.testing.assert_close(grad, expected_grad)
    assert loss.item() == pytest.approx((0.7 * 2 / 5 - 0.4) / 2, rel=1e-5)


# ------------------------------------------------------------------------------------------- 2 training steps each
TRAINING_OPTIONS = {
    "turn_ratio_two_iterations": {"importance_sampling_level": "turn", "loss_type": "grpo", "num_iterations": 2},
    "sequence_ratio_luspo": {"importance_sampling_level": "sequence", "loss_type": "luspo"},
    "vespo_with_kl": {"loss_type": "vespo", "beta": 0.04},
    "normalize_then_sum_off_policy_mask": {
        "multi_objective_aggregation": "normalize_then_sum", "off_policy_mask_threshold": 0.0, "num_iterations": 2,
        "importance_sampling_level": "turn",
    },
}


@pytest.mark.parametrize("name", list(TRAINING_OPTIONS))
def test_each_option_trains_two_steps_on_the_code_interpreter(name, tool_using_model_path, tmp_path):
    from helpers import QUESTION

    def length(completions, **kwargs):
        return [float(len(completion[0]["content"]) % 7) for completion in completions]

    args = make_args(tmp_path, **TRAINING_OPTIONS[name])
    trainer = GTPOTrainer(
        model=tool_using_model_path, reward_funcs=[boxed_42, length], args=args,
        train_dataset=Dataset.from_dict({"prompt": [QUESTION] * 8}),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 2
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    assert trainer.state.log_history[0]["turns/mean"] > 1.0  # multi-turn trajectories went through the loss
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
