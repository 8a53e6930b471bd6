"""trl-gtpo: Group Turn Policy Optimization (arXiv 2511.14846) for multi-turn tool-integrated reasoning, on TRL.

Four parts: the algorithm (`gtpo_config`, `gtpo_trainer`, `advantages`, `turn_records`, `shaping`, `similarity`,
`rewards`), the code interpreter (`interpreter`: transcript format, loop, rollout, executor protocol, and
`interpreter.sandbox`, the local pool that runs the code), asynchronous GTPO (`async_gtpo`, `async_turns`: GTPO on
TRL's experimental `AsyncGRPOTrainer`), and the offline demo (`demo`: packaged model, data sets, prompt). Public names
load lazily (as in TRL), so the pure modules import without pulling in the trainer.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "GTPOConfig": "gtpo_config",
    "GTPOTrainer": "gtpo_trainer",
    "CodeInterpreterLoop": "interpreter.loop",
    "Trajectory": "interpreter.loop",
    "Turn": "interpreter.loop",
    "ExecutorError": "interpreter.loop",
    "CodeCall": "interpreter.executor",
    "CodeExecutor": "interpreter.executor",
    "ExecutionResult": "interpreter.executor",
    "make_executor": "interpreter.executor_factory",
    "math_answer_reward": "rewards",
    "TurnRecord": "turn_records",
    "intermediate_value_turn_reward": "rewards.turn",
    "answer_after_intermediate_turn_reward": "rewards.turn",
    "call_after_final_value_turn_reward": "rewards.turn",
    "tool_success_turn_reward": "rewards.turn",
    "verified_answer_turn_reward": "rewards.turn",
    "CodeInterpreterRollout": "interpreter.rollout",
    "PythonEnvironment": "interpreter.environment",
    # Loaded on first use like every name here; these two also import TRL's experimental `trl.experimental.async_grpo`.
    "AsyncGTPOConfig": "async_gtpo",
    "AsyncGTPOTrainer": "async_gtpo",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
