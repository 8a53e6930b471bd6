"""The format rule of GTPO (arXiv 2511.14846, section 3.1): a turn reward for malformed tool calls.

A turn whose tool call is malformed (an unclosed or unparsable ```python block, an output marker without code) gets
`penalty`; so does the final turn of a trajectory none of whose tool calls ran (code written in the last allowed turn,
or cut by the budget, never ran, so it is no tool call).
"""

import torch

from ..turn_records import TurnRecord

__all__ = ["format_terms"]


def format_terms(turns: list[list[TurnRecord]], num_turns: torch.Tensor, width: int, penalty: float) -> torch.Tensor:
    """The format rule of GTPO (arXiv 2511.14846, section 3.1): `penalty` on each turn with a malformed tool call,
    and on the final turn of a trajectory that made no tool call that ran. (B, width)."""
    rewards = torch.zeros(len(turns), width, device=num_turns.device)
    for i, records in enumerate(turns):
        records = records[: int(num_turns[i])]
        for j, record in enumerate(records):
            rewards[i, j] += 0.0 if record.well_formed else penalty
        if records and not any(record.ran for record in records):
            rewards[i, len(records) - 1] += penalty
    return rewards
