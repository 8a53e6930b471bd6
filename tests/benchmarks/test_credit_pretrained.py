"""benchmarks/learning/credit_pretrained.py: the rules of the pretrained-model comparison, fixed before any run (issue
29): how many RL steps a measured step time allows, how the sweep picks a rate, which chains select it, what each arm
runs; and one step of each trainer on a tiny model."""

import pytest

from benchmarks.learning import credit_pretrained


def test_the_rl_steps_follow_the_measured_step_time():
    # 8 steps need at most 58 s per step; slower steps get proportionally fewer; under 5 the CPU is not enough.
    assert [credit_pretrained.rl_steps(c) for c in (30, 58, 65, 90)] == [8, 8, 7, 5]
    with pytest.raises(ValueError, match="at least 5"):
        credit_pretrained.rl_steps(100)


def test_the_sweep_takes_the_best_rate_and_the_lower_on_a_tie():
    assert credit_pretrained.choose_rate({5e-6: 0.10, 2e-5: 0.12}) == 2e-5
    assert credit_pretrained.choose_rate({5e-6: 0.12, 2e-5: 0.10}) == 5e-6
    assert credit_pretrained.choose_rate({2e-5: 0.11, 5e-6: 0.11}) == 5e-6


@pytest.mark.parametrize("chain_steps", [3, 4])
def test_selection_never_sees_a_trained_or_held_out_chain_and_replicates_have_their_own_prompts(chain_steps):
    validation = {r["question"] for r in credit_pretrained.validation_set(chain_steps)}
    held_out = {r["question"] for r in credit_pretrained.word_chain.test_problems(64, chain_steps)}
    sets = {seed: {r["question"] for r in credit_pretrained.prompt_set(seed, 8, chain_steps)}
            for seed in (credit_pretrained.SWEEP_SEED, *credit_pretrained.REPLICATES)}
    assert len(validation) == 32 and not validation & held_out
    assert all(not validation & prompts and not held_out & prompts and len(prompts) == 8 for prompts in sets.values())
    assert credit_pretrained.SWEEP_SEED not in credit_pretrained.REPLICATES
    assert len(set().union(*sets.values())) == 8 * len(sets)  # no two replicates share a prompt


def test_each_gtpo_arm_differs_from_gtpo_in_one_setting():
    gtpo = credit_pretrained.arm_config("gtpo")
    assert gtpo == {"format_penalty": 0.0, "shaping_alpha": 0.0}
    assert credit_pretrained.arm_config("gtpo-g1") == gtpo | {"gamma": 1.0}
    assert credit_pretrained.arm_config("gtpo-pooled") == gtpo | {"turn_advantage_estimator": "pooled"}
    with pytest.raises(ValueError):
        credit_pretrained.arm_config("grpo-sum")


def test_grpo_sum_hands_every_turn_the_summed_step_rewards():
    from trl_gtpo.turn_records import TurnRecord

    flour = credit_pretrained.word_chain.row(0, 24, 15, 25, 30)
    turns = [[TurnRecord(k, "", "x", out + "\n", "ok", 0, 1) for k, out in enumerate(["360", "90.0", "60.0", "1"])]]
    assert credit_pretrained.summed_step_reward(None, turns, [flour["steps"]], [flour["intermediates"]]) == [0.5]


@pytest.mark.slow
@pytest.mark.parametrize("arm", ["grpo-sum", "gtpo"])
def test_one_step_of_each_trainer_runs_on_a_tiny_model(arm, tmp_path):
    from trl_gtpo.testing import make_tiny_model, make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    make_tiny_model(tokenizer).save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    result = credit_pretrained.train(arm, 0, 1e-5, 1, 3, str(tmp_path / "out"), model=str(tmp_path / "tiny"))
    assert len(result["outcome"]) == 1 and result["seconds_per_step"] > 0


def test_the_measure_is_the_mean_teacher_forced_step_probability_with_greedy_beside_it():
    from trl_gtpo.testing import make_tiny_model, make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer)
    rows = credit_pretrained.word_chain.test_problems(3, 3)
    result = credit_pretrained.measure(model, tokenizer, rows, greedy=2)
    steps = credit_pretrained.word_chain.step_probabilities(model, tokenizer, rows)
    per_step = [sum(p[j] for p in steps) / 3 for j in range(3)]  # the answer line is not a step
    assert result["per_step"] == pytest.approx(per_step)
    assert result["measure"] == pytest.approx(sum(per_step) / 3)
    assert len(result["greedy"]["steps"]) == 3 and 0 <= result["greedy"]["outcome"] <= 1


def test_the_base_row_is_the_starting_model_untrained(tmp_path):
    import torch

    from trl_gtpo.testing import make_tiny_model, make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    saved = make_tiny_model(tokenizer)
    saved.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    model, loaded_tokenizer = credit_pretrained.starting_model(str(tmp_path / "tiny"))  # what its `base` job loads
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    for (name, a), (_, b) in zip(saved.state_dict().items(), model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
