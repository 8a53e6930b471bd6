"""Checkpoints resume with the same step count and data order; PEFT (LoRA) trains through GTPOTrainer."""

import pytest
from datasets import Dataset

from trl_gtpo import GTPOTrainer

from helpers import make_args

pytestmark = pytest.mark.slow


def questions(n):
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": f"What is {i} * 7?"}] for i in range(n)]})


def recording_reward(log):
    def reward(completions, prompts, trainer_state, **kwargs):
        log.append((trainer_state.global_step, tuple(p[-1]["content"] for p in prompts)))
        return [float(len(c[0]["content"]) % 2) for c in completions]

    return reward


def test_resume_from_checkpoint_keeps_step_count_and_data_order(tiny_model_path, tmp_path):
    seen_full, seen_resumed = [], []
    args = dict(max_steps=4, save_strategy="steps", save_steps=2, max_completion_length=16, per_device_train_batch_size=2,
                num_generations=2, max_turns=2)
    full = GTPOTrainer(model=tiny_model_path, reward_funcs=recording_reward(seen_full),
                       args=make_args(tmp_path / "full", **args), train_dataset=questions(16))
    full.train()
    checkpoint = tmp_path / "full" / "out" / "checkpoint-2"
    assert checkpoint.is_dir()

    resumed = GTPOTrainer(model=tiny_model_path, reward_funcs=recording_reward(seen_resumed),
                          args=make_args(tmp_path / "resumed", **args), train_dataset=questions(16))
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == full.state.global_step == 4
    # The resumed run saw exactly the prompts the uninterrupted run saw in steps 3 and 4, in the same order.
    assert [prompts for step, prompts in seen_resumed] == [prompts for step, prompts in seen_full if step >= 2]
    assert len(seen_resumed) == 2


def test_a_reward_function_that_raises_loses_only_its_step_on_resume(tiny_model_path, tmp_path):
    """A reward function raising in step 2 fails that step with its own exception (TRL's behaviour); resuming from
    the last checkpoint redoes step 2 on the same prompts and finishes the run: only the failed step is lost."""
    seen = []
    fail_at = {2}

    def flaky(completions, prompts, trainer_state, **kwargs):
        step = trainer_state.global_step + 1
        if step in fail_at:
            fail_at.clear()
            raise ConnectionError("reward server down")
        seen.append((step, tuple(p[-1]["content"] for p in prompts)))
        return [0.5 for _ in completions]

    args = make_args(tmp_path, max_steps=3, save_strategy="steps", save_steps=1, max_completion_length=16,
                     per_device_train_batch_size=2, num_generations=2, max_turns=2)
    with pytest.raises(ConnectionError, match="reward server down"):
        GTPOTrainer(model=tiny_model_path, reward_funcs=flaky, args=args, train_dataset=questions(16)).train()
    assert [step for step, _ in seen] == [1]
    resumed = GTPOTrainer(model=tiny_model_path, reward_funcs=flaky, args=args, train_dataset=questions(16))
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-1"))
    assert resumed.state.global_step == 3 and [step for step, _ in seen] == [1, 2, 3]
    reference = []
    GTPOTrainer(model=tiny_model_path, reward_funcs=recording_reward(reference),
                args=make_args(tmp_path / "reference", max_steps=3, max_completion_length=16,
                               per_device_train_batch_size=2, num_generations=2, max_turns=2, save_strategy="no"),
                train_dataset=questions(16)).train()
    assert [prompts for _, prompts in seen] == [prompts for _, prompts in reference]  # the same data, in order


def test_peft_lora_trains_only_the_adapter(tiny_model_path, tmp_path):
    from peft import LoraConfig

    trainer = GTPOTrainer(
        model=tiny_model_path,
        reward_funcs=recording_reward([]),
        args=make_args(tmp_path, max_steps=1, max_completion_length=16, per_device_train_batch_size=2, num_generations=2),
        train_dataset=questions(4),
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora" in n for n in trainable)
    trainer.train()
    assert trainer.state.global_step == 1
