"""TRL's metrics and completions table, written by GTPO (its truncation figures recounted); its completions sample and
one deprecation warning, made readable in a log file."""

import warnings
from collections.abc import Sequence
from contextlib import contextmanager

import torch

from .api import _SAMPLE_PRINTER


def metrics(trainer) -> dict:
    """The metric lists of the current mode (`GRPOTrainer._metrics["train" | "eval"]`), averaged and logged by TRL."""
    return trainer._metrics["train" if trainer.model.training else "eval"]


def log_completion_column(trainer, column: str, values: list) -> None:
    """Add a column (one value per local row) to the completions table, before TRL flushes it in
    `_generate_and_score_completions` (`GRPOTrainer._log_completion_extra`, what reward functions' `log_extra` does)."""
    trainer._log_completion_extra(column, values)


def recount_clipped_completions(trainer, clipped: Sequence[bool], lengths: Sequence[int]) -> None:
    """Replace the truncation figures `GRPOTrainer._generate` has just logged by ones counted from `clipped` (this
    process's rows; True: cut by length), with `lengths` its rows' model-token counts.

    TRL 1.16's `_generate` takes a completion whose last token is neither an EOS nor the pad token for clipped, and
    logs `completions/clipped_ratio` (the gathered fraction of such rows) and `completions/{mean,min,max}_terminated_
    length` (over the other rows; 0 when there is none), one value each per call. The caller knows better which rows
    the length budget cut; their values, computed the same way, overwrite the last ones (`check_trl_api` checks that
    `_generate` still appends them)."""
    device = trainer.accelerator.device
    clipped = trainer.accelerator.gather(torch.tensor(list(clipped), dtype=torch.bool, device=device))
    lengths = trainer.accelerator.gather(torch.tensor(list(lengths), dtype=torch.float32, device=device))
    values = metrics(trainer)
    values["completions/clipped_ratio"][-1] = clipped.float().mean().item()
    terminated = lengths[~clipped] if (~clipped).any() else torch.zeros(1, device=device)
    values["completions/mean_terminated_length"][-1] = terminated.mean().item()
    values["completions/min_terminated_length"][-1] = terminated.min().item()
    values["completions/max_terminated_length"][-1] = terminated.max().item()


def append_logged_columns(trainer, columns: dict[str, list]) -> None:
    """Add columns of gathered rows (every process) to the completions table after TRL's flush: TRL keeps the rows of
    the last generation batch in bounded deques (`GRPOTrainer._logs["extra"]`)."""
    for column, values in columns.items():
        trainer._logs["extra"][column].extend(values)


def replace_logged_advantages(trainer, values: Sequence[float]) -> None:
    """Overwrite the completions table's "advantage" of the rows TRL logged last (gathered rows, in order) by what is
    trained. TRL's deque keeps at most `generation_batch_size` rows (`GRPOTrainer._logs["advantages"]`), so with a
    larger eval batch only the last rows are still there: those are replaced, aligned from the end."""
    logged = trainer._logs["advantages"]
    count = min(len(logged), len(values))
    for k in range(1, count + 1):
        logged[-k] = values[-k]


@contextmanager
def compact_completions_sample(printer, enabled: bool = True):
    """While `GRPOTrainer.log` runs, print its completions sample (`log_completions`) compactly, a few lines per
    sample (`trl_gtpo.sample_log`), instead of TRL's rich table (not at all when not `enabled`): `log` looks the
    printer up at call time as `trl.trainer.grpo_trainer.print_prompt_completions_sample`, which is swapped for the
    call. The text goes through `tqdm.write`, so the progress bar is redrawn below it rather than split by it."""
    import trl.trainer.grpo_trainer as grpo_module
    from tqdm.auto import tqdm

    original = getattr(grpo_module, _SAMPLE_PRINTER)

    def print_compact(*args, **kwargs):
        if enabled:
            tqdm.write(printer(*args, **kwargs))

    setattr(grpo_module, _SAMPLE_PRINTER, print_compact)
    try:
        yield
    finally:
        setattr(grpo_module, _SAMPLE_PRINTER, original)


@contextmanager
def without_trl_checkpointing_warning():
    """Around one `GRPOTrainer._generate_and_score_completions` call: TRL 1.16 reads `model.is_gradient_checkpointing`
    there (`disable_gradient_checkpointing` before its no-grad forward passes, and `unwrap_model_for_generation` in
    every transformers `_generate_single_turn`), and with gradient checkpointing on it calls
    `gradient_checkpointing_disable` / `_enable` around generation; transformers 5 deprecates all three with a
    FutureWarning, printed again at every step. Exactly those warnings are ignored, only during the call."""
    with warnings.catch_warnings():
        for name in ("is_gradient_checkpointing", "gradient_checkpointing_disable", "gradient_checkpointing_enable"):
            warnings.filterwarnings("ignore", message=f"`{name}` is deprecated", category=FutureWarning)
        yield
