"""GTPO's turn-level rewards summed into one trajectory reward, for TRL's GRPOTrainer.

A fair GRPO baseline sees the same information as GTPO: the same turn rewards and the same format rule, but as one
number per trajectory, whose single advantage every turn then shares. GTPO (arXiv 2511.14846) hands turn j only the
rewards of turns j and later; comparing the two isolates that difference. Both functions here take TRL's reward
function arguments plus `turns` (one `TurnRecord` list per trajectory), which `CodeInterpreterRollout` returns and
TRL hands to every reward function.
"""

from __future__ import annotations

from collections.abc import Callable

from .format import format_terms
from .turn import call_turn_reward_funcs, weighted_turn_terms

__all__ = ["summed_format_penalty", "summed_turn_reward"]


def summed_turn_reward(turn_reward_func: Callable, weight: float = 1.0) -> Callable:
    """A TRL reward function: `weight` x the sum of `turn_reward_func`'s values over each trajectory's turns (None
    counts 0), checked as GTPOTrainer checks turn rewards (one finite value or None per turn). Named
    `summed_<name>` in TRL's logs."""
    name = getattr(turn_reward_func, "__name__", type(turn_reward_func).__name__)

    def reward(prompts=None, completions=None, turns=None, **kwargs) -> list[float]:
        if turns is None:
            raise ValueError(
                f"summed_{name} needs `turns` (one TurnRecord list per trajectory): use it with "
                "CodeInterpreterRollout as GRPOTrainer's rollout_func, which returns them."
            )
        (values,) = call_turn_reward_funcs([turn_reward_func], [name], turns, prompts=prompts, completions=completions,
                                           **kwargs)
        width = max((len(trajectory) for trajectory in turns), default=0)
        return weighted_turn_terms([values], [weight], width).sum(dim=1).tolist()

    reward.__name__ = f"summed_{name}"
    return reward


def summed_format_penalty(penalty: float) -> Callable:
    """A TRL reward function: GTPO's format rule (`format_terms`: `penalty` per malformed tool call, and once more
    when no tool call ran) summed over each trajectory. Named `format_penalty` in TRL's logs."""

    def format_penalty(prompts=None, completions=None, turns=None, **kwargs) -> list[float]:
        if turns is None:
            raise ValueError(
                "format_penalty needs `turns` (one TurnRecord list per trajectory): use it with "
                "CodeInterpreterRollout as GRPOTrainer's rollout_func, which returns them."
            )
        import torch

        num_turns = torch.tensor([len(trajectory) for trajectory in turns])
        width = max((len(trajectory) for trajectory in turns), default=0)
        return format_terms(list(turns), num_turns, width, penalty).sum(dim=1).tolist()

    return format_penalty
