"""The dataset columns a GTPO run reads, checked when the trainer is built rather than at step 1.

TRL's GRPOTrainer reads `prompt` from every row, and hands the other columns to the reward functions as keyword
arguments: a missing `prompt` is a bare KeyError inside the first step, a missing reward column a TypeError inside a
reward function. Both are known at construction, when the error can name the column and the function. The one
exception is TRL's: with an `environment_factory`, the environment's `reset()` may supply the prompt, and a row may
carry only what the environment needs (e.g. an `environment` column that routes it); `prompt` is then optional.
"""

import inspect
from collections.abc import Callable, Sequence

# What TRL (and GTPO's code interpreter) pass to reward functions besides the dataset columns.
TRAINER_ARGUMENTS = frozenset(
    {"prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric", "environments", "turns"}
)


def check_dataset(
    dataset,
    split: str,
    funcs: Sequence[Callable] = (),
    extra: Sequence[str] = (),
    needs_prompt: bool = True,
) -> None:
    """Raise a ValueError naming the fix if `dataset` (the trainer's `split`, e.g. "train_dataset") is empty, has no
    `prompt` column (when `needs_prompt`: every path but an `environment_factory`, whose `reset()` may supply it), or
    lacks a column that a function of `funcs` requires (a parameter without default that is not one of
    `TRAINER_ARGUMENTS` nor `extra`, the names a rollout adds). Datasets that do not list their columns (some
    iterable ones) are only checked for what they tell."""
    if dataset is None:
        return
    if isinstance(dataset, dict):  # eval_dataset may be a dict of named datasets
        for name, part in dataset.items():
            check_dataset(part, f"{split}[{name!r}]", funcs, extra, needs_prompt)
        return
    try:
        size = len(dataset)
    except TypeError:
        size = None
    if size == 0:
        raise ValueError(
            f"GTPOTrainer got an empty {split}: there is nothing to train or evaluate on (TRL would run 0 steps and "
            "return). Pass a dataset with at least one row" + (" with a `prompt`." if needs_prompt else ".")
        )
    columns = getattr(dataset, "column_names", None)
    if not isinstance(columns, (list, tuple)):
        return
    if needs_prompt and "prompt" not in columns:
        raise ValueError(
            f"GTPOTrainer's {split} has no `prompt` column (its columns: {list(columns)}): every row needs a `prompt` "
            "(a string, or a list of chat messages); rename the question column, e.g. "
            "`dataset.rename_column('question', 'prompt')`."
        )
    known = set(columns) | TRAINER_ARGUMENTS | set(extra)
    for func in funcs:
        for name in _required_arguments(func):
            if name not in known:
                raise ValueError(
                    f"Reward function {_name(func)!r} needs the argument `{name}`, which {split} has no column for "
                    f"(its columns: {list(columns)}): add a `{name}` column, or rename the one that holds it."
                )


def _required_arguments(func: Callable) -> list[str]:
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # a model, or a callable without a signature
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in parameters if p.kind in kinds and p.default is inspect.Parameter.empty]


def _name(func) -> str:
    return getattr(func, "__name__", type(func).__name__)
