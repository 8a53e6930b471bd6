"""The turn-level importance ratio inside `GRPOTrainer._compute_loss`."""

from contextlib import contextmanager


@contextmanager
def turn_level_ratio(trainer, inputs: dict, turn_level_old_logps):
    """Make TRL's token-level importance ratio the turn-level one for one `_compute_loss(model, inputs)` call.

    TRL 1.16's `GRPOTrainer._compute_loss` knows two ratios, per token and per sequence. With the trainer at token
    level, it computes `log_ratio = per_token_logps - old_per_token_logps` right after its forward pass
    (`_get_per_token_logps_and_entropies`), with `old_per_token_logps = inputs.get("old_per_token_logps")` or, when
    absent (on-policy), `per_token_logps.detach()`. The forward pass is wrapped on the instance for the duration of
    the call: after it runs, `inputs["old_per_token_logps"]` is replaced by `turn_level_old_logps(per_token_logps,
    old, mask, kept)` (GTPO's, passed in: `trl_gtpo.turn_level`), under which `log_ratio` is each turn's mean
    log-ratio, with its gradient. `per_token_logps`
    itself is untouched, so the KL term and the `log pi` factor of CISPO and VESPO stay exact.

    `inputs` must be the caller's own copy of the batch dict (the buffered batch is reused across iterations); the
    turns are those of TRL's loss mask, `completion_mask * tool_mask`. With `top_entropy_quantile < 1`, TRL trains
    only the tokens of its entropy mask (`GRPOTrainer.get_high_entropy_mask`, which `_compute_loss` calls on the same
    entropies and mask): each turn's ratio is then taken over those tokens, so the others get no gradient.
    """
    had_attribute, attribute = "_get_per_token_logps_and_entropies" in vars(trainer), vars(trainer).get(
        "_get_per_token_logps_and_entropies"
    )
    forward = trainer._get_per_token_logps_and_entropies

    def turn_level_forward(*args, **kwargs):
        per_token_logps, entropies, aux_loss = forward(*args, **kwargs)
        old = inputs.get("old_per_token_logps")
        old = per_token_logps.detach() if old is None else old
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        kept = None
        if trainer.top_entropy_quantile < 1.0:
            kept = trainer.get_high_entropy_mask(entropies, mask, 1 - trainer.top_entropy_quantile)
        inputs["old_per_token_logps"] = turn_level_old_logps(per_token_logps, old, mask, kept)
        return per_token_logps, entropies, aux_loss

    trainer._get_per_token_logps_and_entropies = turn_level_forward
    try:
        yield
    finally:
        if had_attribute:
            trainer._get_per_token_logps_and_entropies = attribute
        else:
            del trainer._get_per_token_logps_and_entropies
