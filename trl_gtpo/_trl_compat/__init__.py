"""The one door into TRL's private API (checked against TRL 1.16.0), one module per TRL area: every other module of
trl_gtpo uses only TRL's public names and the names below. Each function says which TRL code it relies on;
`check_trl_api`, run when a GTPOTrainer is built, fails loudly when one of them moves.

What GTPO needs that TRL does not expose:
- the values `GRPOTrainer._generate_and_score_completions` computes and drops: the unmasked tool masks and extra
  fields of `_generate`, the gathered rewards of `_calculate_rewards` (`capture_step`);
- one model turn through `_generate_single_turn`, with a per-turn token budget and stop strings, and the prompt's
  images for a vision-language model (`TurnGenerator`, `PromptMedia`);
- the tokenizer, prompt tokenization, the metric dict and the completions table (`tokenizer`, `tokenize_prompts`,
  `metrics`, `log_completion_column`, `append_logged_columns`, `replace_logged_advantages`);
- two fixes of TRL's vLLM colocate generation (`vllm_sleep_once_per_rollout`, `patch_colocate_weight_sync_for_cpu`);
- the turn-level importance ratio inside `GRPOTrainer._compute_loss` (`turn_level_ratio`);
- the loss's forward passes with the prompts' shared beginning read once (`score_from_shared_prefix`);
- `mask_truncated_completions` applied by GTPO, so that a trajectory that ran out of turns is not dropped
  (`truncation_masking_off`, `truncated_rows`), nor counted in `completions/clipped_ratio`
  (`recount_clipped_completions`);
- an environment's tools as TRL lists them, and hiding `get_turn_rewards` from that list (`environment_tools`,
  `hide_environment_methods`);
- a readable log: the completions sample in a log file, one TRL deprecation warning per step silenced
  (`compact_completions_sample`, `without_trl_checkpointing_warning`).
"""

from trl.trainer.utils import get_config_model_id

from .api import check_trl_api
from .environments import environment_tools, hide_environment_methods
from .generation import PromptMedia, TurnGenerator, prompt_media, stop_padding_start, stop_string_criteria
from .logging import (
    append_logged_columns,
    compact_completions_sample,
    log_completion_column,
    metrics,
    recount_clipped_completions,
    replace_logged_advantages,
    without_trl_checkpointing_warning,
)
from .loss import turn_level_ratio
from .scoring import score_from_shared_prefix
from .step import StepValues, capture_step, tokenize_prompts, tokenizer, truncated_rows, truncation_masking_off
from .vllm import patch_colocate_weight_sync_for_cpu, vllm_sleep_once_per_rollout

__all__ = [
    "PromptMedia",
    "StepValues",
    "TurnGenerator",
    "append_logged_columns",
    "capture_step",
    "check_trl_api",
    "compact_completions_sample",
    "environment_tools",
    "get_config_model_id",
    "hide_environment_methods",
    "log_completion_column",
    "metrics",
    "patch_colocate_weight_sync_for_cpu",
    "prompt_media",
    "recount_clipped_completions",
    "replace_logged_advantages",
    "score_from_shared_prefix",
    "stop_padding_start",
    "stop_string_criteria",
    "tokenize_prompts",
    "tokenizer",
    "truncated_rows",
    "truncation_masking_off",
    "turn_level_ratio",
    "vllm_sleep_once_per_rollout",
    "without_trl_checkpointing_warning",
]
