"""Stop the sandbox workers when training ends, as a TRL/transformers callback.

A rollout starts its worker processes on first use and keeps them for the whole run; `Trainer.train` gives no other
hook at its end than a callback. One class for every owner (GTPOTrainer's own rollout, a `CodeInterpreterRollout`
handed to GRPOTrainer), so that the trainer registers it without going back into the rollout.
"""

from __future__ import annotations

from collections.abc import Callable

from transformers import TrainerCallback


class CloseAtTrainEnd(TrainerCallback):
    """Calls `close()` (for example `CodeInterpreterRollout.close`) at `on_train_end`; what it closes restarts if it
    is used again."""

    def __init__(self, close: Callable[[], None]):
        self.close = close

    def on_train_end(self, args, state, control, **kwargs):
        self.close()
