"""TRL 1.16's own GRPOTrainer scenarios, written anew with GTPOTrainer swapped in (issue 31, the drop-in regression).

Each test names the TRL test (tests/test_grpo_trainer.py of TRL) whose scenario it reproduces on the tiny model.
"""

from unittest.mock import patch

import pytest
import torch
from datasets import Dataset

from trl_gtpo import GTPOTrainer

from helpers import QUESTION, make_args, tool_calling_tokenizer

# ------------------------------------------------- environments that own the data (the prompt comes from reset())

resets_seen = {"counter": [], "echo": []}
tool_calls_made = {"increment": [], "shout": []}


class CounterEnvironment:
    def reset(self, **kwargs):
        resets_seen["counter"].append(kwargs)
        return "Count now."

    def increment(self, step: int) -> int:
        """
        Increment the internal counter.

        Args:
            step: Value to add to the counter.
        """
        tool_calls_made["increment"].append(step)
        return step


class EchoEnvironment:
    def reset(self, **kwargs):
        resets_seen["echo"].append(kwargs)
        return "Echo now."

    def shout(self, text: str) -> str:
        """
        Shout the given text.

        Args:
            text: Text to shout.
        """
        tool_calls_made["shout"].append(text)
        return text.upper()


class ScriptedByPrompt:
    """`generate` replaced by a script: the first turn calls the tool of the environment the prompt (written by the
    environment's reset()) names; after a tool response, it answers. Records the user turn of every prompt."""

    COUNT = '<tool_call>\n{"name": "increment", "arguments": {"step": 1}}\n</tool_call>'
    ECHO = '<tool_call>\n{"name": "shout", "arguments": {"text": "hi"}}\n</tool_call>'

    def __init__(self, model, tokenizer):
        self.tokenizer, self.user_turns = tokenizer, []
        model.generate = self

    def __call__(self, input_ids, **kwargs):
        completions = []
        for text in self.tokenizer.batch_decode(input_ids, skip_special_tokens=False):
            if "<tool_response>" in text[-400:]:
                body = "Done."
            else:
                user = text.rsplit("<|im_start|>user", 1)[-1].split("<|im_end|>", 1)[0]
                self.user_turns.append(user.strip())
                body = self.COUNT if "Count now." in user else self.ECHO if "Echo now." in user else "No prompt."
            completions.append(self.tokenizer.encode(body + "<|im_end|>", add_special_tokens=False))
        width = max(map(len, completions))
        tail = torch.tensor([ids + [self.tokenizer.pad_token_id] * (width - len(ids)) for ids in completions])
        return torch.cat([input_ids, tail.to(input_ids.device)], dim=1)


def called_a_tool(completions, **kwargs):
    return [float(len(completion) > 1) for completion in completions]


@pytest.mark.slow
def test_a_dataset_of_environment_names_trains_with_the_prompts_of_reset(tiny_model_path, tmp_path):
    """TRL's test_train_with_multiple_environments: a dataset with only an `environment` column routes each row to
    its environment, whose reset() returns the prompt; each row's tool call reaches its own environment."""
    for seen in (*resets_seen.values(), *tool_calls_made.values()):
        seen.clear()
    tokenizer = tool_calling_tokenizer(tiny_model_path)
    args = make_args(
        tmp_path, max_steps=1, per_device_train_batch_size=4, num_generations=2, shuffle_dataset=False,
        max_completion_length=160,
    )
    trainer = GTPOTrainer(
        model=tiny_model_path, reward_funcs=called_a_tool, args=args, processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"environment": ["counter", "echo"] * 4}),
        environment_factory={"counter": CounterEnvironment, "echo": EchoEnvironment},
    )
    script = ScriptedByPrompt(trainer.model, tokenizer)
    trainer.train()
    assert trainer.state.global_step == 1
    # The batch is [counter, counter, echo, echo]; each prompt is its environment's reset() text alone.
    assert script.user_turns == ["Count now."] * 2 + ["Echo now."] * 2
    assert tool_calls_made == {"increment": [1, 1], "shout": ["hi", "hi"]}
    # `environment` routes the row and is not passed to reset(): the rows carry nothing else.
    assert resets_seen == {"counter": [{}, {}], "echo": [{}, {}]}
    assert "turns/frac_zero_std_groups" in trainer.state.log_history[0]  # GTPO's advantage step ran


def test_an_environment_owned_reward_with_mixed_environments_builds_without_prompts(tiny_model_path, tmp_path):
    """TRL's test_environment_owned_reward_mixed_environments: with a dict `environment_factory` only some
    environments own their reward (`get_reward`); the dataset has only an `environment` column."""

    class ScoredEnvironment:
        def reset(self, **kwargs): ...

        def act(self, x: int) -> int:
            """
            Act.

            Args:
                x: A value.
            """
            return x

        def get_reward(self) -> float:
            return 1.0

    class PlainEnvironment:
        def reset(self, **kwargs): ...

        def play(self, x: int) -> int:
            """
            Play.

            Args:
                x: A value.
            """
            return x

    def format_reward(completions, **kwargs):
        return [0.0 for _ in completions]

    trainer = GTPOTrainer(
        model=tiny_model_path, reward_funcs=format_reward,
        args=make_args(tmp_path, per_device_train_batch_size=3, num_generations=3),
        processing_class=tool_calling_tokenizer(tiny_model_path),
        train_dataset=Dataset.from_dict({"environment": ["scored", "scored2", "plain"]}),
        environment_factory={"scored": ScoredEnvironment, "scored2": ScoredEnvironment, "plain": PlainEnvironment},
    )
    assert trainer.reward_func_names == ["format_reward", "ScoredEnvironment"]
    assert trainer.reward_weights.tolist() == [1.0, 1.0]
    assert trainer.reward_funcs[-1](environments=[ScoredEnvironment(), PlainEnvironment()]) == [1.0, None]


def test_the_code_interpreter_still_needs_a_prompt_column(tiny_model_path, tmp_path):
    """Only an environment can supply the prompt; GTPO's code interpreter cannot, so it keeps the clear error."""
    with pytest.raises(ValueError, match=r"train_dataset has no `prompt` column \(its columns: \['environment'\]\)"):
        GTPOTrainer(
            model=tiny_model_path, reward_funcs=called_a_tool, args=make_args(tmp_path),
            train_dataset=Dataset.from_dict({"environment": ["counter"] * 4}),
        )


# ------------------------------------------------------------------------ the batch TRL hands to training_step


@pytest.mark.slow
def test_training_step_gets_the_datasets_rows_without_the_rollouts_fields(tiny_model_path, tmp_path):
    """TRL's test_prepare_input_called_with_correct_data: `training_step` gets the generation batch as the dataset
    gave it. TRL merges a rollout_func's extra fields into those row dicts in place; the code interpreter's `turns`
    and `stop_reason` must not end up there (the reward functions still get them)."""
    first, second = [{"role": "user", "content": "What is 2 + 2?"}], QUESTION
    args = make_args(
        tmp_path, max_steps=2, per_device_train_batch_size=4, num_generations=4, max_completion_length=16,
        shuffle_dataset=False, format_penalty=0.0, shaping_alpha=0.0,
    )
    reward_kwargs = []

    def reward(completions, **kwargs):
        reward_kwargs.append(set(kwargs))
        return [float(len(completion[0]["content"]) % 2) for completion in completions]

    dataset = Dataset.from_dict({"prompt": [first, second]})
    trainer = GTPOTrainer(model=tiny_model_path, reward_funcs=reward, args=args, train_dataset=dataset)
    with patch.object(GTPOTrainer, "training_step", wraps=trainer.training_step) as training_step:
        trainer.train()
    assert training_step.call_count == 2
    assert training_step.call_args_list[0].args[1] == [{"prompt": first}] * 4
    assert training_step.call_args_list[1].args[1] == [{"prompt": second}] * 4
    assert all({"turns", "stop_reason"} <= seen for seen in reward_kwargs)  # the reward functions' view is TRL's
