"""GTPOTrainer end to end on the CPU: real generation, real code execution, turn-level advantages into TRL's loss."""

import os
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from trl_gtpo import GTPOConfig, GTPOTrainer
from trl_gtpo.interpreter.rollout import CodeInterpreterRollout

from helpers import QUESTION, RecordingGTPOTrainer, boxed_42, make_args, trl_args

pytestmark = pytest.mark.slow

def test_trains_multi_turn_with_turn_level_advantages(tool_using_model_path, tmp_path):
    dataset = Dataset.from_dict({"prompt": [QUESTION] * 8})
    trainer = RecordingGTPOTrainer(
        model=tool_using_model_path, reward_funcs=boxed_42, args=make_args(tmp_path), train_dataset=dataset
    )
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()

    assert trainer.state.global_step == 2
    logs = trainer.state.log_history[0]
    assert logs["turns/mean"] > 1.0  # the model wrote code, its output came back, and it went on
    assert logs["tools/calls_per_trajectory"] > 0.0
    record = trainer.records[0]
    advantages, mask = record["gtpo"], record["mask"]
    assert advantages.shape == mask.shape  # (B, T)
    assert (advantages[mask == 0] == 0).all()  # tool output and padding carry no advantage
    ran = [turns for turns in record["turns"] if any(turn.status == "ok" for turn in turns)]
    assert ran and all(turns[0].tool_response.strip() == "42" for turns in ran)  # the code really ran in the sandbox
    changed = any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    assert changed
    assert trainer.rollout_func._executor is None  # the sandbox was shut down at the end of training


def test_single_turn_without_format_and_shaping_rewards_equals_grpo(tiny_model_path, tmp_path):
    dataset = Dataset.from_dict({"prompt": [QUESTION] * 8})

    def varied(completions, **kwargs):
        return [float(len(completion[0]["content"]) % 3) for completion in completions]

    args = make_args(tmp_path, max_turns=1, format_penalty=0.0, shaping_alpha=0.0, max_steps=1)
    trainer = RecordingGTPOTrainer(model=tiny_model_path, reward_funcs=varied, args=args, train_dataset=dataset)
    trainer.train()
    for record in trainer.records:
        expected = record["grpo"].unsqueeze(1).expand_as(record["gtpo"]) * record["unmasked"]
        torch.testing.assert_close(record["gtpo"], expected)
        assert record["grpo"].abs().sum() > 0  # the rewards did differ, so this compared something


def test_multi_turn_outcome_only_at_gamma_1_equals_grpo(tool_using_model_path, tmp_path):
    """The sanity arm of the credit benchmark (issue 19): several turns, gamma 1, no format penalty, no shaping, no
    turn rewards: every model token of a trajectory gets GRPO's advantage of that trajectory, so training is GRPO."""
    dataset = Dataset.from_dict({"prompt": [QUESTION] * 8})

    def varied(completions, **kwargs):  # the taught model writes the same transcript each time: vary by row
        return [float(i % 3) for i in range(len(completions))]

    args = make_args(tmp_path, max_turns=3, gamma=1.0, format_penalty=0.0, shaping_alpha=0.0, max_steps=1)
    trainer = RecordingGTPOTrainer(model=tool_using_model_path, reward_funcs=varied, args=args, train_dataset=dataset)
    trainer.train()
    record = trainer.records[0]
    expected = record["grpo"].unsqueeze(1).expand_as(record["gtpo"]) * record["unmasked"]
    torch.testing.assert_close(record["gtpo"], expected)
    assert record["grpo"].abs().sum() > 0  # the rewards did differ, so this compared something
    assert any(len(turns) > 1 for turns in record["turns"])  # and some trajectory had several turns


def test_single_turn_normalize_then_sum_equals_grpo(tiny_model_path, tmp_path):
    """GDPO aggregation: each function normalized within its group, summed, then scaled by the batch std (TRL ignores
    scale_rewards there, and so does GTPO): with one turn each, exactly GRPO's advantages."""
    dataset = Dataset.from_dict({"prompt": [QUESTION] * 8})

    def varied(completions, **kwargs):
        return [float(len(completion[0]["content"]) % 3) for completion in completions]

    def scaled(completions, **kwargs):
        return [10.0 * (len(completion[0]["content"]) % 5) for completion in completions]

    args = make_args(
        tmp_path, max_turns=1, format_penalty=0.0, shaping_alpha=0.0, max_steps=1,
        multi_objective_aggregation="normalize_then_sum", reward_weights=[1.0, 0.5],
    )
    trainer = RecordingGTPOTrainer(model=tiny_model_path, reward_funcs=[varied, scaled], args=args, train_dataset=dataset)
    trainer.train()
    for record in trainer.records:
        expected = record["grpo"].unsqueeze(1).expand_as(record["gtpo"]) * record["unmasked"]
        torch.testing.assert_close(record["gtpo"], expected)
        assert record["grpo"].abs().sum() > 0


def test_user_rollout_func_with_env_mask_gets_turn_advantages(tiny_model_path, tmp_path):
    """TRL's rollout_func + env_mask path: turns are read off the mask and each turn gets its own advantage."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    turn, tool = tokenizer.encode("abc"), tokenizer.encode(" tool says 1 ")

    def rollout(prompts, trainer):
        texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
        prompt_ids = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
        n = len(prompts)
        two_turns = turn + tool + turn + [tokenizer.eos_token_id]
        one_turn = turn + [tokenizer.eos_token_id]
        completions = [two_turns if i % 2 == 0 else one_turn for i in range(n)]
        masks = [[1] * len(turn) + [0] * len(tool) + [1] * (len(turn) + 1) if i % 2 == 0 else [1] * len(one_turn) for i in range(n)]
        return {"prompt_ids": prompt_ids, "completion_ids": completions, "logprobs": None, "env_mask": masks}

    def reward(completions, **kwargs):
        return [1.0 if "tool" in completion[0]["content"] else 0.0 for completion in completions]

    args = make_args(
        tmp_path, max_steps=1, gamma=0.5, format_penalty=0.0, shaping_alpha=0.0, turn_advantage_estimator="pooled"
    )
    trainer = RecordingGTPOTrainer(
        model=tiny_model_path, reward_funcs=reward, args=args, train_dataset=Dataset.from_dict({"prompt": [QUESTION] * 4}), rollout_func=rollout
    )
    trainer.train()
    record = trainer.records[0]
    assert record["turns"] is None  # not our loop: the user's rollout ran
    # Returns: two-turn trajectories [0.5, 1.0], one-turn ones [0.0] -> S = {0.5, 1, 0.5, 1, 0, 0}
    values = torch.tensor([0.5, 1.0, 0.5, 1.0, 0.0, 0.0])
    normalized = (torch.tensor([0.5, 1.0, 0.0]) - values.mean()) / (values.std() + 1e-4)
    row = record["gtpo"][0]
    first_turn, second_turn = row[: len(turn)], row[len(turn) + len(tool) : 2 * len(turn) + len(tool)]
    torch.testing.assert_close(first_turn, normalized[0].expand_as(first_turn))
    torch.testing.assert_close(second_turn, normalized[1].expand_as(second_turn))
    assert (row[len(turn) : len(turn) + len(tool)] == 0).all()


@pytest.mark.parametrize(
    "field, value",
    [("importance_sampling_level", "segment"), ("multi_objective_aggregation", "sum"), ("gamma", 1.5), ("max_turns", 0)],
)
def test_unsupported_settings_fail_at_construction_naming_the_field(field, value, tmp_path):
    with pytest.raises(ValueError, match=f"GTPOConfig.{field}="):
        GTPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, **{field: value})


def test_a_grpo_config_is_refused_with_the_fix(tiny_model_path, tmp_path):
    args = GRPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False)
    with pytest.raises(TypeError, match="replace `GRPOConfig"):
        GTPOTrainer(model=tiny_model_path, reward_funcs=boxed_42, args=args)


def test_a_grpo_user_script_runs_after_swapping_the_class_names(tool_using_model_path, tmp_path):
    source = open(os.path.join(os.path.dirname(__file__), "..", "integration", "grpo_user_script.py")).read()
    swapped = source.replace("from trl import GRPOConfig, GRPOTrainer", "from trl_gtpo import GTPOConfig, GTPOTrainer")
    swapped = swapped.replace("GRPOConfig", "GTPOConfig").replace("GRPOTrainer", "GTPOTrainer")
    assert swapped.count("GTPO") == 5  # import (2), config, trainer, and nothing else changed
    script = tmp_path / "gtpo_user_script.py"
    script.write_text(swapped)
    result = subprocess.run(
        [sys.executable, str(script), tool_using_model_path, str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TRAINED GTPOTrainer 1" in result.stdout


def test_plain_grpo_trainer_runs_the_same_code_interpreter(tool_using_model_path, tmp_path):
    """The GRPO baseline of the comparisons: TRL's GRPOTrainer with GTPO's code interpreter as its rollout_func."""
    rollout = CodeInterpreterRollout(make_args(tmp_path, max_steps=1))
    seen_turns = []

    def reward_seeing_turns(completions, turns, **kwargs):  # TRL hands the rollout's extra keys to reward functions
        seen_turns.extend(turns)
        return boxed_42(completions)

    grpo_args = GRPOConfig(**trl_args(tmp_path, max_steps=1))
    trainer = GRPOTrainer(
        model=tool_using_model_path, reward_funcs=reward_seeing_turns, args=grpo_args,
        train_dataset=Dataset.from_dict({"prompt": [QUESTION] * 4}), rollout_func=rollout, callbacks=[rollout.callback()],
    )
    trainer.train()
    assert trainer.state.log_history[0]["turns/mean"] > 1.0
    assert any(turn.status == "ok" for turns in seen_turns for turn in turns)
    assert rollout._executor is None


def test_truncated_completions_stay_in_the_group_statistics_as_in_grpo(tiny_model_path, tmp_path):
    """With mask_truncated_completions, TRL masks truncated completions out of the loss but keeps their rewards in the
    group baseline; so must GTPO (one turn each, no format/shaping reward: exactly GRPO's advantages)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)

    def rollout(prompts, trainer):
        texts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
        prompt_ids = [tokenizer.encode(text, add_special_tokens=False) for text in texts]
        body = [tokenizer.encode("x" * (i + 1)) for i in range(len(prompts))]
        # even rows end with EOS, odd rows are cut off (truncated)
        completions = [ids + [tokenizer.eos_token_id] if i % 2 == 0 else ids for i, ids in enumerate(body)]
        return {"prompt_ids": prompt_ids, "completion_ids": completions, "logprobs": None,
                "env_mask": [[1] * len(c) for c in completions]}

    def varied(completions, **kwargs):
        return [float(len(completion[0]["content"]) % 3) for completion in completions]

    args = make_args(tmp_path, format_penalty=0.0, shaping_alpha=0.0, max_steps=1, mask_truncated_completions=True)
    trainer = RecordingGTPOTrainer(
        model=tiny_model_path, reward_funcs=varied, args=args, rollout_func=rollout,
        train_dataset=Dataset.from_dict({"prompt": [QUESTION] * 4}),
    )
    trainer.train()
    record = trainer.records[0]
    truncated = record["mask"].sum(dim=1) == 0
    assert truncated.tolist() == [False, True, False, True]
    assert record["grpo"][truncated].abs().sum() > 0  # GRPO gives truncated rows a real advantage...
    expected = record["grpo"].unsqueeze(1) * record["unmasked"]
    torch.testing.assert_close(record["gtpo"], expected)  # ...and so does GTPO (their loss is masked by TRL)


def test_executor_with_another_rollout_path_is_refused(tiny_model_path):
    with pytest.raises(ValueError, match="`executor` together with `tools`"):
        GTPOTrainer(model=tiny_model_path, reward_funcs=boxed_42, executor=object(), tools=[len])


def test_logged_figures_are_gtpos_also_when_the_eval_batch_outgrows_the_completions_table(tiny_model_path, tmp_path):
    """The completions table's "advantage" is the mean of the trained turn advantages (not GRPO's trajectory one),
    also for an eval batch larger than TRL's table (generation_batch_size rows); turn figures are logged by name."""
    from helpers import TaggedScripts

    args = make_args(
        tmp_path, max_steps=1, per_device_train_batch_size=2, num_generations=2, per_device_eval_batch_size=4,
        num_generations_eval=2, max_completion_length=96, shaping_alpha=0.0,
    )
    rollout = CodeInterpreterRollout(args, generate_turn=lambda trainer, stops: TaggedScripts(trainer.processing_class))
    dataset = Dataset.from_dict({"prompt": [QUESTION] * 4})
    trainer = RecordingGTPOTrainer(
        model=tiny_model_path, reward_funcs=boxed_42, args=args, rollout_func=rollout, train_dataset=dataset,
        eval_dataset=dataset.select(range(2)),
    )
    metrics = trainer.evaluate()
    record = trainer.records[-1]
    turn_means = []
    for row in range(record["gtpo"].shape[0]):
        mask = record["unmasked"][row]
        starts = [t for t in range(mask.shape[0]) if mask[t] == 1 and (t == 0 or mask[t - 1] == 0)]
        turn_means.append(sum(record["gtpo"][row, t].item() for t in starts) / len(starts))
    logged = list(trainer._logs["advantages"])
    assert len(logged) == 2 < len(turn_means)  # TRL's table keeps the last generation_batch_size rows
    assert logged == pytest.approx(turn_means[-2:], abs=1e-6)
    assert logged != pytest.approx(record["grpo"][-2:].tolist(), abs=1e-3)  # GRPO's would differ here
    assert len(trainer._logs["extra"]["turn_advantages"]) == 2
    assert "eval_turns/frac_zero_std_groups" in metrics and "eval_outcome/frac_reward_zero_std" in metrics
    assert "eval_frac_reward_zero_std" not in metrics


class _RaisingExecutor:
    def run(self, calls):
        raise ConnectionError("sandbox service down")

    def close_session(self, session_id):
        pass

    def close(self):
        pass


def test_an_executor_that_keeps_raising_fails_the_step_unless_contained(tiny_model_path, tmp_path, caplog):
    """Default: the step fails with the cause. tool_executor_errors="contain": training goes on, the failures are
    counted in tools/executor_failures (one failed run() per step: the scripted trajectories run code once) and
    warned about once."""
    import logging

    from trl_gtpo.interpreter.loop import ExecutorError

    from helpers import TaggedScripts

    dataset = Dataset.from_dict({"prompt": [QUESTION] * 4})

    def build(**fields):
        args = make_args(tmp_path, max_steps=2, max_completion_length=96, shaping_alpha=0.0, **fields)
        scripted = lambda trainer, stops: TaggedScripts(trainer.processing_class)  # noqa: E731
        rollout = CodeInterpreterRollout(args, executor=_RaisingExecutor(), generate_turn=scripted)
        return GTPOTrainer(
            model=tiny_model_path, reward_funcs=boxed_42, args=args, rollout_func=rollout, train_dataset=dataset
        )

    with pytest.raises(ExecutorError, match="_RaisingExecutor raised on 3 tries.*sandbox service down") as caught:
        build().train()
    assert isinstance(caught.value.__cause__, ConnectionError)
    trainer = build(tool_executor_errors="contain")
    with caplog.at_level(logging.WARNING, logger="trl_gtpo.interpreter.rollout"):
        trainer.train()
    key = "tools/executor_failures"
    logged = [entry[key] for entry in trainer.state.log_history if key in entry]
    assert logged == [1.0, 1.0]
    assert sum("this warning is not repeated" in record.getMessage() for record in caplog.records) == 1


# TRL 1.16's own checks of `GRPOTrainer.get_off_policy_mask` (tests/test_grpo_trainer.py: test_get_off_policy_mask,
# test_get_off_policy_mask_padding), written anew with GTPOTrainer: one advantage per sequence gives TRL's (B, 1).
def test_get_off_policy_mask_with_one_advantage_per_sequence_is_trls():
    mask = torch.ones(3, 4)
    advantages = torch.tensor([[2.0], [-0.5], [-3.0]])
    sampling = torch.zeros(3, 4)
    # drift sampling - current: row 0 3.0 (positive advantage: kept), row 1 0.25 (under 1.0: kept), row 2 3.0: dropped
    logps = torch.tensor([[-3.0] * 4, [-0.25] * 4, [-3.0] * 4])
    keep = GTPOTrainer.get_off_policy_mask(advantages, logps, sampling, mask, 1.0)
    assert keep.shape == (3, 1)
    torch.testing.assert_close(keep, torch.tensor([[1.0], [1.0], [0.0]]))
    torch.testing.assert_close(GTPOTrainer.get_off_policy_mask(advantages[:, 0], logps, sampling, mask, 1.0), keep)


def test_get_off_policy_mask_with_one_advantage_per_sequence_ignores_padding():
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0, 0.0]])
    logps = torch.tensor([[-1.5, -1.5, -1.5, 50_000.0, -50_000.0]])  # padding holds anything
    sampling = torch.zeros(1, 5)
    keep = GTPOTrainer.get_off_policy_mask(torch.tensor([[-0.1]]), logps, sampling, mask, 1.0)
    torch.testing.assert_close(keep, torch.tensor([[0.0]]))  # drift 1.5 over the 3 real tokens: dropped
    keep = GTPOTrainer.get_off_policy_mask(torch.tensor([[-0.1]]), logps, sampling, mask, 2.0)
    torch.testing.assert_close(keep, torch.tensor([[1.0]]))


def test_get_off_policy_mask_with_turn_advantages_keeps_its_turn_reading():
    mask = torch.tensor([[1, 1, 0, 1, 1]])
    advantages = torch.tensor([[-1.0, -1.0, 0.0, -1.0, -1.0]])
    logps = torch.tensor([[-2.0, -2.0, 0.0, 0.0, 0.0]])  # only the first turn drifted
    keep = GTPOTrainer.get_off_policy_mask(advantages, logps, torch.zeros(1, 5), mask, 1.0)
    assert keep.tolist() == [[0, 0, 1, 1, 1]]


class _Scripted:
    """`generate_turn` replaying per-tag scripts (trajectories share a prompt; each is told apart by its [tag])."""

    def __init__(self, tokenizer, scripts: dict[str, list[str]]):
        self.tokenizer, self.remaining, self.unassigned = tokenizer, {t: list(s) for t, s in scripts.items()}, list(scripts)

    def __call__(self, prompt_ids, max_new_tokens):
        outputs = []
        for ids in prompt_ids:
            text = self.tokenizer.decode(ids)
            tag = next((t for t in self.remaining if f"[{t}]" in text), None) or self.unassigned.pop(0)
            segment = self.remaining[tag].pop(0) if self.remaining[tag] else "<EOS>"
            new = self.tokenizer.encode(segment.replace("<EOS>", ""), add_special_tokens=False)
            outputs.append((new + [self.tokenizer.eos_token_id] if segment.endswith("<EOS>") else new)[:max_new_tokens])
        return outputs, None


CALL = "```python\nprint(6 * 7)\n```\n"
RAMBLE = "and so on " * 40  # never ends: cut by max_completion_length


@pytest.mark.parametrize(
    "max_turns, scripts, expected_stops",
    [
        (1, {"A": [f"[A]\n{CALL}"], "B": ["[B] \\boxed{42}<EOS>"], "C": [f"[C] {RAMBLE}"], "D": [f"[D]\n{CALL}"]},
         {"A": "max_turns", "B": "eos", "C": "budget", "D": "max_turns"}),
        (2, {"A": [f"[A]\n{CALL}", CALL], "B": [f"[B]\n{CALL}", "\\boxed{42}<EOS>"], "C": [f"[C]\n{CALL}", RAMBLE],
             "D": [f"[D]\n{CALL}", f"Again:\n{CALL}"]},
         {"A": "max_turns", "B": "eos", "C": "budget", "D": "max_turns"}),
    ],
)
def test_mask_truncated_completions_drops_cut_trajectories_not_those_that_ran_out_of_turns(
    max_turns, scripts, expected_stops, tiny_model_path, tmp_path
):
    """TRL's `mask_truncated_completions` masks a completion that does not end with EOS. A trajectory whose tool call
    came in its last allowed turn ends there by design: all its turns stay trained. One cut by the completion budget
    is still masked whole, and the loss normalizer counts only what is trained."""
    args = make_args(tmp_path, max_steps=1, max_turns=max_turns, max_completion_length=48, mask_truncated_completions=True)
    rollout = CodeInterpreterRollout(args, generate_turn=lambda trainer, stops: _Scripted(trainer.processing_class, scripts))
    stops = []
    trainer = RecordingGTPOTrainer(
        model=tiny_model_path,
        reward_funcs=lambda completions, **kw: stops.extend(kw.get("stop_reason", [None] * 4)) or [0.0] * len(completions),
        args=args, rollout_func=rollout, train_dataset=Dataset.from_dict({"prompt": [QUESTION] * 4}),
    )
    trainer.train()
    record = trainer.records[0]
    tokenizer = trainer.processing_class
    tags = [next(t for t in scripts if f"[{t}]" in tokenizer.decode(ids)) for ids in record["completion_ids"]]
    for row, tag in enumerate(tags):
        trained, model_tokens = record["mask"][row].sum().item(), record["unmasked"][row].sum().item()
        assert trained == (0 if tag == "C" else model_tokens), tag
    assert record["num_items_in_batch"].item() == record["mask"].sum().item()
    assert {tag: stop for tag, stop in zip(tags, stops)} == expected_stops  # the rollout says why each one ended
    # TRL's completions/clipped_ratio counts only C, the one cut by length (TRL's own rule counts A, C and D: no EOS);
    # the terminated lengths are those of the other rows' model tokens.
    logs = trainer.state.log_history[0]
    assert logs["completions/clipped_ratio"] == 0.25
    ended = [record["unmasked"][row].sum().item() for row, tag in enumerate(tags) if tag != "C"]
    assert logs["completions/mean_terminated_length"] == pytest.approx(sum(ended) / 3)
    assert logs["completions/max_terminated_length"] == max(ended)
