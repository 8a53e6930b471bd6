"""trl-gtpo: Group Turn Policy Optimization for multi-turn tool-integrated reasoning, on top of TRL.

Public names load lazily (as in TRL), so the pure modules (`trl_gtpo.turns`, `trl_gtpo.code_blocks`, ...) import
without pulling in the trainer.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "GTPOConfig": "gtpo_config",
    "GTPOTrainer": "gtpo_trainer",
    "CodeInterpreterLoop": "interpreter.loop",
    "Trajectory": "interpreter.loop",
    "Turn": "interpreter.loop",
    "CodeCall": "interpreter.executor",
    "CodeExecutor": "interpreter.executor",
    "ExecutionResult": "interpreter.executor",
    "make_executor": "interpreter.executor",
    "math_answer_reward": "rewards",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
