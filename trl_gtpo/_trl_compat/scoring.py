"""The loss's forward passes (`GRPOTrainer._get_per_token_logps_and_entropies`) with the prompts' shared beginning
read once."""

import inspect

import torch

from ..prefix_cache import can_cache_prefix, positions_are_relative, read_prefix, scoring_layout

# TRL 1.16's `_get_per_token_logps_and_entropies` arguments this module handles; any other (images, token types,
# `compute_aux_loss`) set to other than None or False makes the call TRL's own.
_TEXT_ARGUMENTS = ("self", "model", "input_ids", "attention_mask", "logits_to_keep", "batch_size", "compute_entropy")


def score_from_shared_prefix(trainer, original, enabled: bool, model, *args, **kwargs):
    """`original(model, *args, **kwargs)` (TRL's `_get_per_token_logps_and_entropies`, bound), with each chunk whose
    prompts share at least `prefix_cache.MIN_CACHED_PREFIX` tokens scored as [shared prefix read once][the rest]
    when `enabled` (`GTPOConfig.cache_prompt_prefix`).

    TRL 1.16 scores a chunk as `model(input_ids, attention_mask, labels=<completion tokens>, fused_lm_head=True)` and
    keeps `log_probs` and `entropy` over the last `logits_to_keep` columns; the same call is made here on the rest,
    after the prefix's KV cache (`past_key_values`) with position ids that follow the mask. Where it does not apply
    (see `_applies`) the call is TRL's untouched."""
    call = inspect.signature(original).bind(model, *args, **kwargs)
    call.apply_defaults()
    values = dict(call.arguments)
    if not (enabled and _applies(trainer, model, values)):
        return original(model, *args, **kwargs)
    input_ids, attention_mask, logits_to_keep = values["input_ids"], values["attention_mask"], values["logits_to_keep"]
    batch_size = values["batch_size"] or input_ids.size(0)
    compute_entropy = values["compute_entropy"]
    all_logps, all_entropies = [], []
    for start in range(0, input_ids.size(0), batch_size):
        ids, mask = input_ids[start : start + batch_size], attention_mask[start : start + batch_size]
        scored = _score_chunk(trainer, model, ids, mask, logits_to_keep, compute_entropy)
        if scored is None:
            scored = original(model, ids, mask, logits_to_keep, compute_entropy=compute_entropy)[:2]
        all_logps.append(scored[0])
        all_entropies.append(scored[1])
    entropies = torch.cat(all_entropies, dim=0) if compute_entropy else None
    return torch.cat(all_logps, dim=0), entropies, None


def _score_chunk(trainer, model, input_ids, attention_mask, logits_to_keep, compute_entropy):
    layout = scoring_layout(input_ids, attention_mask, logits_to_keep, trainer._tokenizer.pad_token_id)
    if layout is None:
        return None
    prefix, suffix_ids, mask, position_ids = layout
    with trainer.accelerator.autocast():
        past = read_prefix(model, prefix, input_ids.size(0))
        if past is None:
            return None
        labels = suffix_ids.masked_fill(mask[:, prefix.size(1) :] == 0, -100)
        labels[:, :-logits_to_keep] = -100
        outputs = model(
            input_ids=suffix_ids,
            attention_mask=mask,
            position_ids=position_ids,
            past_key_values=past,
            labels=labels,
            fused_lm_head=True,
        )
    entropies = outputs.entropy[:, -logits_to_keep:] if compute_entropy else None
    return outputs.log_probs[:, -logits_to_keep:], entropies


def _applies(trainer, model, values: dict) -> bool:
    """A text-only call that asks for log-probabilities and entropies only; a pad token; one
    process with unsharded parameters (under DDP, FSDP or DeepSpeed a forward pass is part of a collective or of the
    gradient reduction's bookkeeping, and one call here makes two; DataParallel would split the rows, not the cache);
    no gradient checkpointing (it turns the cache off); positions read as differences (`positions_are_relative`);
    and a model that computes the same with the prefix cached (`prefix_cache.can_cache_prefix`)."""
    unwrapped = trainer.accelerator.unwrap_model(model)
    return (
        all(value is None or value is False for name, value in values.items() if name not in _TEXT_ARGUMENTS)
        and not getattr(trainer, "_is_vlm", False)
        and trainer._tokenizer.pad_token_id is not None
        and trainer.accelerator.num_processes == 1
        and getattr(trainer.args, "n_gpu", 1) <= 1  # one process on several GPUs wraps the model in DataParallel
        and not isinstance(model, torch.nn.DataParallel)
        and not getattr(trainer, "is_fsdp_enabled", False)
        and not trainer.is_deepspeed_enabled
        and not _checkpointing(unwrapped)
        and positions_are_relative(unwrapped.config)
        and can_cache_prefix(unwrapped)
    )


def _checkpointing(model) -> bool:
    # transformers 5 renamed `is_gradient_checkpointing` (deprecated: it warns on every read); PEFT has neither name.
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(type(model), "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))
