"""The TRL 1.16 private API trl_gtpo relies on, listed, and `check_trl_api`, which fails loudly when any of it
moves: run when a `GTPOTrainer` is built (before TRL's own construction) and by tests/trainer/test_trl_compat.py.
Each error names the module of `trl_gtpo/_trl_compat/` that relies on what moved."""

import inspect

# The private GRPOTrainer methods used here, with the parameters relied on (TRL 1.16.0, trl/trainer/grpo_trainer.py)
# and the modules of trl_gtpo/_trl_compat/ that rely on them.
_PRIVATE_METHODS = {
    "_generate": (["prompts"], "step.py"),
    "_calculate_rewards": (["inputs", "prompts", "completions", "completion_ids_list"], "step.py"),
    "_generate_and_score_completions": (["inputs"], "step.py"),
    "_generate_single_turn": (["prompt_ids", "images", "multimodal_fields", "num_generations"], "generation.py"),
    "_tokenize_prompts": (["prompts"], "step.py and generation.py"),
    "_log_completion_extra": (["column", "values"], "logging.py"),
    "_get_per_token_logps_and_entropies": (
        ["model", "input_ids", "attention_mask", "logits_to_keep", "batch_size", "compute_entropy"],
        "loss.py and scoring.py",
    ),
    "_compute_loss": (["model", "inputs"], "loss.py"),
}

# Public GRPOTrainer methods GTPOTrainer overrides, with the keyword parameters TRL passes them (TRL 1.16.0).
_OVERRIDDEN_METHODS = {
    "get_off_policy_mask": [
        "advantages", "per_token_logps", "sampling_per_token_logps", "mask", "off_policy_threshold",
    ],
    "log": ["self", "logs", "start_time"],
}

# `turn_level_ratio` needs `_compute_loss` to compute the current log-probs before it reads the old ones, and to read
# the old ones from `inputs` (TRL 1.16.0, grpo_trainer.py, `_compute_loss`): these lines, in this order.
_COMPUTE_LOSS_ORDER = ("self._get_per_token_logps_and_entropies(", 'inputs.get("old_per_token_logps")')

# `score_from_shared_prefix` scores a chunk as `_get_per_token_logps_and_entropies` does (TRL 1.16.0): the fused LM
# head's log-probabilities and entropies of the completion tokens, which the call labels.
_SCORING_CALL = ("labels[:, :-logits_to_keep] = -100", "fused_lm_head=True", "outputs.log_probs[:, -logits_to_keep:]",
                 "outputs.entropy[:, -logits_to_keep:]")

# `truncation_masking_off` relies on `_generate_and_score_completions` reading this attribute (TRL 1.16.0).
_TRUNCATION_MASKING_READ = "if self.mask_truncated_completions:"

# `recount_clipped_completions` relies on `_generate` appending these figures, one value each per call (TRL 1.16.0).
_TRUNCATION_METRICS = (
    "completions/clipped_ratio",
    "completions/mean_terminated_length",
    "completions/min_terminated_length",
    "completions/max_terminated_length",
)

# `compact_completions_sample` relies on `GRPOTrainer.log` printing the sample through this module-level name.
_SAMPLE_PRINTER = "print_prompt_completions_sample"


def check_trl_api() -> None:
    """Raise if a private GRPOTrainer method this module relies on is gone or takes other parameters."""
    from trl import GRPOTrainer

    for name, (expected, module) in _PRIVATE_METHODS.items():
        method = getattr(GRPOTrainer, name, None)
        if method is None:
            raise RuntimeError(
                f"trl_gtpo needs GRPOTrainer.{name}, which this TRL version lacks: install trl==1.16.0 or update "
                f"trl_gtpo/_trl_compat/{module}, which uses it."
            )
        parameters = list(inspect.signature(method).parameters)[1 : len(expected) + 1]
        if parameters != expected:
            raise RuntimeError(
                f"GRPOTrainer.{name} takes {parameters}, trl_gtpo expects {expected}: install trl==1.16.0 or update "
                f"trl_gtpo/_trl_compat/{module}, which uses it."
            )
    for name, expected in _OVERRIDDEN_METHODS.items():
        parameters = list(inspect.signature(getattr(GRPOTrainer, name)).parameters)
        if parameters != expected:
            raise RuntimeError(
                f"GRPOTrainer.{name} takes {parameters}, trl_gtpo overrides it with {expected}: install trl==1.16.0 or "
                "update trl_gtpo/gtpo_trainer.py."
            )
    if _TRUNCATION_MASKING_READ not in inspect.getsource(GRPOTrainer._generate_and_score_completions):
        raise RuntimeError(
            "GRPOTrainer._generate_and_score_completions no longer reads `self.mask_truncated_completions`, which "
            "GTPO turns off to mask truncated completions itself: install trl==1.16.0 or update "
            "trl_gtpo/_trl_compat/step.py (truncation_masking_off)."
        )
    generate = inspect.getsource(GRPOTrainer._generate)
    if not all(f'_metrics[mode]["{name}"].append(' in generate for name in _TRUNCATION_METRICS):
        raise RuntimeError(
            f"GRPOTrainer._generate no longer appends {', '.join(_TRUNCATION_METRICS)} to its metrics, which GTPO "
            "recounts: install trl==1.16.0 or update trl_gtpo/_trl_compat/logging.py (recount_clipped_completions)."
        )
    import trl.trainer.grpo_trainer as grpo_module

    if not hasattr(grpo_module, _SAMPLE_PRINTER) or f"{_SAMPLE_PRINTER}(" not in inspect.getsource(GRPOTrainer.log):
        raise RuntimeError(
            f"GRPOTrainer.log no longer prints the completions sample through trl.trainer.grpo_trainer."
            f"{_SAMPLE_PRINTER}, which GTPO replaces in log files: install trl==1.16.0 or update "
            "trl_gtpo/_trl_compat/logging.py (compact_completions_sample)."
        )
    source = inspect.getsource(GRPOTrainer._compute_loss)
    positions = [source.find(line) for line in _COMPUTE_LOSS_ORDER]
    if -1 in positions or positions != sorted(positions):
        raise RuntimeError(
            "GRPOTrainer._compute_loss no longer computes the current log-probs before reading "
            "inputs['old_per_token_logps'], which importance_sampling_level='turn' relies on: install trl==1.16.0 or "
            "update trl_gtpo/_trl_compat/loss.py (turn_level_ratio)."
        )
    scoring = inspect.getsource(GRPOTrainer._get_per_token_logps_and_entropies)
    if not all(line in scoring for line in _SCORING_CALL):
        raise RuntimeError(
            "GRPOTrainer._get_per_token_logps_and_entropies no longer scores the completion tokens through the fused "
            "LM head as trl_gtpo's shared-prefix scoring does: install trl==1.16.0, set cache_prompt_prefix=False, or "
            "update trl_gtpo/_trl_compat/scoring.py."
        )
