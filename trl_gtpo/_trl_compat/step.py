"""`GRPOTrainer._generate_and_score_completions` from the inside: the values it computes and drops, the tokenizer and
prompt tokenization it uses, and its truncation masking, which GTPO applies itself."""

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


def tokenizer(trainer):
    """The trainer's text tokenizer (`GRPOTrainer._tokenizer`: the processing class, or its tokenizer for a VLM)."""
    return trainer._tokenizer


def tokenize_prompts(trainer, prompts: list) -> tuple[list[list[int]], list | None, dict]:
    """`GRPOTrainer._tokenize_prompts`: chat template (with the trainer's tools) + tokenization, as TRL generates."""
    return trainer._tokenize_prompts(prompts)


@dataclass
class StepValues:
    """What `GRPOTrainer._generate_and_score_completions` computed on the way, for the GTPO advantage step.

    `tool_masks` are `_generate`'s per-row masks before `mask_truncated_completions` zeroes the truncated ones (a
    truncated trajectory's turns still count in the group statistics, as its reward does in GRPO's); None when the
    rollout had no tool calls. `extra_fields` are a `rollout_func`'s extra output keys. `rewards_per_func` is
    `_calculate_rewards`' (N, F) gathered table; `reward_inputs` its `(inputs, prompts, completions,
    completion_ids_list)` arguments (local rows, `inputs` already carrying the extra fields).
    """

    completions: list = field(default_factory=list)
    completion_ids: list = field(default_factory=list)
    tool_masks: list | None = None
    extra_fields: dict = field(default_factory=dict)
    rewards_per_func: torch.Tensor | None = None
    reward_inputs: tuple = ()


@contextmanager
def capture_step(trainer):
    """Read the values `_generate` and `_calculate_rewards` return inside one `_generate_and_score_completions` call.

    TRL 1.16 computes the tool mask and the gathered rewards inside `_generate_and_score_completions` and returns
    neither. Instead of overriding both methods and passing their values through trainer attributes, both are wrapped
    on the instance for the duration of one call; the wrappers only record, and the class methods are back on exit.
    """
    step = StepValues()

    def generate(prompts):
        result = type(trainer)._generate(trainer, prompts)
        # (prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, images, tool_images)
        step.completion_ids, step.tool_masks, step.completions = result[1], result[2], result[3]
        step.extra_fields = dict(result[5])
        return result

    def calculate_rewards(inputs, prompts, completions, completion_ids_list):
        rewards = type(trainer)._calculate_rewards(trainer, inputs, prompts, completions, completion_ids_list)
        step.rewards_per_func, step.reward_inputs = rewards, (inputs, prompts, completions, completion_ids_list)
        return rewards

    trainer._generate, trainer._calculate_rewards = generate, calculate_rewards
    try:
        yield step
    finally:
        del trainer._generate, trainer._calculate_rewards


@contextmanager
def truncation_masking_off(trainer):
    """Turn TRL's `mask_truncated_completions` off for one `_generate_and_score_completions` call; yields whether it
    was on, so that the caller masks the rows it counts as truncated itself (`truncated_rows`).

    TRL 1.16 reads `self.mask_truncated_completions` once in `_generate_and_score_completions` and zeroes the
    `completion_mask` and `tool_mask` rows of every completion whose last token is neither an EOS nor the pad token.
    A code-interpreter trajectory that ran out of turns ends on its unrun tool call: it was not cut by the completion
    budget, yet TRL would drop it whole. With TRL's masking off, the rows' masks come back unmasked (the truncated
    rows' old and reference log-probs are then computed over their whole completion, which the loss never reads).
    """
    saved = trainer.mask_truncated_completions
    trainer.mask_truncated_completions = False
    try:
        yield saved
    finally:
        trainer.mask_truncated_completions = saved


def truncated_rows(trainer, completion_ids: Sequence) -> list[bool]:
    """TRL 1.16's truncation rule (`_generate_and_score_completions`, `mask_truncated_completions`): a completion is
    truncated when its last token is neither one of the trainer's EOS tokens nor the pad token (an empty one too)."""
    eos_and_pad = {*trainer.eos_token_ids, trainer._tokenizer.pad_token_id}
    return [len(ids) == 0 or int(ids[-1]) not in eos_and_pad for ids in completion_ids]
