"""The sandbox workers stop when training ends: `CloseAtTrainEnd` calls what it was given at `on_train_end`."""

from types import SimpleNamespace

from transformers import TrainerControl, TrainerState

from trl_gtpo.interpreter.lifecycle import CloseAtTrainEnd
from trl_gtpo.interpreter.rollout import CodeInterpreterRollout


def test_close_is_called_at_train_end_only():
    calls = []
    callback = CloseAtTrainEnd(lambda: calls.append("closed"))
    args, state, control = SimpleNamespace(), TrainerState(), TrainerControl()
    callback.on_step_end(args, state, control)
    callback.on_epoch_end(args, state, control)
    assert calls == []
    callback.on_train_end(args, state, control)
    assert calls == ["closed"]


def test_a_rollout_for_grpo_gives_a_callback_that_closes_it():
    rollout = CodeInterpreterRollout.__new__(CodeInterpreterRollout)  # no sandbox needed to check the wiring
    closed = []
    rollout.close = lambda: closed.append(True)
    rollout.callback().on_train_end(SimpleNamespace(), TrainerState(), TrainerControl())
    assert closed == [True]
