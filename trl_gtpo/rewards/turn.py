"""Turn rewards: one value per model turn, added to the turn reward r_ij of GTPO (arXiv 2511.14846, section 3.1).

A turn reward function has TRL's reward-function signature plus `turns`:

    f(prompts, completions, completion_ids, turns, **kwargs) -> list[list[float | None]]

`turns[i]` holds one `trl_gtpo.turn_records.TurnRecord` per model turn of trajectory i (its text, tool call, tool
response, status, token span); `kwargs` are the dataset columns and TRL's extras (`trainer_state`, `environments`),
as for reward functions. It returns, per trajectory, one value per turn; None means "no opinion" (0). Functions may
be `async`. With weights w_f (`GTPOConfig.turn_reward_weights`), turn j of trajectory i gains
sum_f w_f * f(...)[i][j].

A TRL environment (`environment_factory=`) gives turn rewards through a `get_turn_rewards()` method: one value per
tool call that reached it, which GTPO maps to the turns that made the calls ([`environment_turn_values`]).

Built-in turn rewards:

- [`tool_success_turn_reward`]: 1.0 for a turn whose tool call ran without error, 0.0 for one that ran and failed
  (raised, timed out, broke a limit, crashed), None for a turn whose call did not run.
- [`verified_answer_turn_reward`]: 1.0 for a turn whose tool call ran and whose output contains the value the final
  answer states (the answer was computed, i.e. verified by execution), None for every other turn.
- [`intermediate_value_turn_reward`]: for tasks whose steps have known intermediate results (a dataset column
  `intermediates`, the final value last): 1/n for a tool call whose last printed number is one of the n expected
  values not yet credited in its trajectory, 0.0 for a call that ran and printed none, None for a turn without a call
  that ran. The values of a problem add up to at most 1, never more than a correct answer's outcome reward.
- [`call_after_final_value_turn_reward`]: -1.0 for a tool call made after an earlier call of its trajectory printed
  the problem's final value (the last of `intermediates`), None for every other turn: the price of the call that
  goes on computing once the answer is known.
- [`answer_after_intermediate_turn_reward`]: -1.0 for the answer turn (the last, with no tool call) when the last
  value the trajectory's calls printed is an intermediate step's and not the final one, None for every other turn:
  the price of answering before the last step.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import numbers
import re
from collections.abc import Callable, Sequence

import torch

from ..turn_records import TurnRecord
from .answer import final_answer

__all__ = [
    "answer_after_intermediate_turn_reward",
    "call_after_final_value_turn_reward",
    "call_turn_reward_funcs",
    "checked_turn_values",
    "environment_turn_values",
    "intermediate_value_turn_reward",
    "last_printed_number",
    "tool_success_turn_reward",
    "turn_reward_table",
    "weighted_turn_terms",
    "verified_answer_turn_reward",
]

_FAILED = ("error", "timeout", "limit", "crash")
# Turn rewards enter float32 returns and group statistics: a square above 3.4e38 makes the std inf and every
# advantage of the group 0. 1e15 leaves room for sums over thousands of turns.
MAX_TURN_REWARD = 1e15
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?(?![\w])")


def tool_success_turn_reward(turns: Sequence[Sequence[TurnRecord]], **kwargs) -> list[list[float | None]]:
    """r_j = 1 if turn j's call ran and returned ("ok"), 0 if it ran and failed, None if it made no call that ran."""
    return [
        [1.0 if turn.status == "ok" else 0.0 if turn.status in _FAILED else None for turn in trajectory]
        for trajectory in turns
    ]


def verified_answer_turn_reward(
    completions: Sequence, turns: Sequence[Sequence[TurnRecord]], **kwargs
) -> list[list[float | None]]:
    """r_j = 1 if turn j's call ran and its output contains the final answer's value, else None.

    The final answer is `final_answer` of the completion (the model's last `\\boxed{}` or closing number); a numeric
    answer matches any number of the output equal to it (1e-9 relative), another answer matches as a whole word.
    Correctness is the outcome reward's business: this rewards answers that the model computed rather than guessed.
    """
    rewards = []
    for completion, trajectory in zip(completions, turns, strict=True):
        answer = final_answer(completion)
        rewards.append([1.0 if answer and _output_states(turn, answer) else None for turn in trajectory])
    return rewards


def intermediate_value_turn_reward(
    turns: Sequence[Sequence[TurnRecord]], intermediates: Sequence[Sequence], **kwargs
) -> list[list[float | None]]:
    """r_j = 1/n if turn j's tool call ran and the last number of its output is one of the trajectory's n expected
    values (`intermediates[i]`, the final value included) that no earlier call of the trajectory printed; 0 if the
    call ran and printed none of them, or one already credited (an error, another number, a repeat); None for a turn
    without a call that ran.

    Why this contract: the values of one problem add up to at most 1, so with a turn-reward weight no larger than the
    outcome's, checking the steps can never pay more than solving the problem, and the best policy is the right one.
    Totals with outcome weight 1 and this function at weight 1, on a two-step problem (values [a*b, a*b*c]): both
    steps printed and the right answer 2; one call that prints a*b*c and the right answer 1.5 (a correct solution in
    fewer calls earns the full outcome); a wrong first step, then a*b*c and the right answer 1.5; the right first
    product and then an answer (a premature one) 0.5; wrong 0. A value counts once, so printing it again earns
    nothing; any order counts, so a call is paid for what it computed, not for where it stands.

    Why the last number: a program that prints many candidates must not collect the reward. The expected values are
    the true intermediates of the task (a dataset column, numbers or numeric strings), so a step that follows a
    wrong one earns nothing unless it lands on an expected value.
    """
    rewards = []
    for trajectory, expected in zip(turns, intermediates, strict=True):
        targets = [_as_number(str(value)) for value in expected]
        share = 1.0 / len(targets) if targets else 0.0
        credited: set[int] = set()
        values = []
        for turn in trajectory:
            if not turn.ran:
                values.append(None)
                continue
            last = last_printed_number(turn)
            match = next((k for k, target in enumerate(targets) if k not in credited and _same(last, target)), None)
            if match is not None:
                credited.add(match)
            values.append(share if match is not None else 0.0)
        rewards.append(values)
    return rewards


def call_after_final_value_turn_reward(
    turns: Sequence[Sequence[TurnRecord]], intermediates: Sequence[Sequence], **kwargs
) -> list[list[float | None]]:
    """r_j = -1 if turn j's tool call ran after an earlier call of the trajectory printed the final value (the last of
    `intermediates[i]`, as the last number of a call's output), else None.

    Why: a reward for each verified value pays a step when it is taken, but nothing charges a step taken after the
    answer is known, and that is a small model's commonest way to break a solved problem (it copies a worked
    two-step example and multiplies a one-step problem's answer once more, then boxes the wrong product). The outcome
    charges that only through the lost answer, on the whole trajectory; this charges the call that went wrong, so
    turn-level credit (arXiv 2511.14846) can put the blame on that turn. With weight w no larger than the
    intermediate rewards', a correct solution that checks its answer once more still earns more than any wrong one.
    """
    rewards = []
    for trajectory, expected in zip(turns, intermediates, strict=True):
        final = _as_number(str(expected[-1])) if len(expected) else None
        found = False
        values = []
        for turn in trajectory:
            if not turn.ran:
                values.append(None)
                continue
            values.append(-1.0 if found else None)
            found = found or _same(last_printed_number(turn), final)
        rewards.append(values)
    return rewards


def answer_after_intermediate_turn_reward(
    turns: Sequence[Sequence[TurnRecord]], intermediates: Sequence[Sequence], **kwargs
) -> list[list[float | None]]:
    """r_j = -1 if turn j is the trajectory's answer (its last turn, with no tool call) and the last value its calls
    printed (the last number of the latest call that printed one) is one of `intermediates[i]` before the final
    value; None for every other turn.

    Why: the mirror of `call_after_final_value_turn_reward`. A reward for each verified value pays the first step of
    a two-step problem whether or not the second follows, so a trajectory that answers with the first product earns
    as much as one that takes the second step and gets it wrong, and a group with no correct answer has no reward
    difference pointing to the second call. This charges the turn that stopped early (turn-level credit,
    arXiv 2511.14846, puts it there; a summed reward spreads it). A trajectory that ran out of turns or tokens with
    a call last has given no answer and is not charged; a one-step problem has no intermediate and is never
    charged.
    """
    rewards = []
    for trajectory, expected in zip(turns, intermediates, strict=True):
        values: list[float | None] = [None] * len(trajectory)
        if len(expected) > 1 and trajectory and trajectory[-1].tool_call is None:
            final = _as_number(str(expected[-1]))
            steps = [_as_number(str(value)) for value in expected[:-1]]
            printed = [last_printed_number(turn) for turn in trajectory[:-1]]
            last = next((value for value in reversed(printed) if value is not None), None)
            if any(_same(last, step) for step in steps) and not _same(last, final):
                values[-1] = -1.0
        rewards.append(values)
    return rewards


def last_printed_number(turn: TurnRecord) -> float | None:
    """The last number a turn's tool call printed, if the call ran and returned ("ok"); None otherwise. Rewards that
    check a computed value read this one number, so that a program printing many candidates does not collect them."""
    printed = _NUMBER.findall(turn.tool_response or "") if turn.status == "ok" else []
    return _as_number(printed[-1]) if printed else None


def _output_states(turn: TurnRecord, answer: str) -> bool:
    if turn.status != "ok" or not turn.tool_response:
        return False
    value = _as_number(answer)
    if value is None:
        return re.search(rf"(?<!\w){re.escape(answer.strip())}(?!\w)", turn.tool_response) is not None
    return any(_same(number, value) for number in map(_as_number, _NUMBER.findall(turn.tool_response)))


def _same(a: float | None, b: float | None) -> bool:
    """Two parsed numbers are the same value (1e-9 relative); a number that did not parse matches nothing."""
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _as_number(text: str) -> float | None:
    try:
        return float(text.strip().replace(",", ""))
    except ValueError:
        return None


def call_turn_reward_funcs(
    funcs: Sequence[Callable],
    names: Sequence[str],
    turns: Sequence[Sequence[TurnRecord]],
    run_async: Callable | None = None,
    **reward_kwargs,
) -> list[list[list[float | None]]]:
    """Call each turn reward function on the batch and check its shape; returns values[f][i][j].

    `reward_kwargs` are passed as keyword arguments (prompts, completions, completion_ids, the dataset columns...);
    `run_async(coroutine)` runs an async function's coroutine (default: `asyncio.run`).
    """
    results = []
    for func, name in zip(funcs, names, strict=True):
        values = func(turns=turns, **reward_kwargs)
        if inspect.isawaitable(values):
            values = (run_async or asyncio.run)(values)
        results.append(checked_turn_values(values, f"Turn reward function {name!r}", turns))
    return results


def checked_turn_values(
    values, what: str, turns: Sequence[Sequence[TurnRecord]], *, missing_rows: bool = False
) -> list[list[float | None]]:
    """`values[i][j]` checked against the turn counts, as floats or None. `what` names the source in the error (a
    function, an environment's `get_turn_rewards()`, a rollout_func's `turn_rewards`); with `missing_rows`, a row that
    is None or empty means "no opinion on any turn" (an environment without `get_turn_rewards`)."""
    if not isinstance(values, (list, tuple)) or len(values) != len(turns):
        count = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
        raise ValueError(
            f"{what} returned {count} values for {len(turns)} trajectories: return one list per trajectory, with one "
            "value (float or None) per turn."
        )
    rows = []
    for i, (row, trajectory) in enumerate(zip(values, turns)):
        if missing_rows and not row:
            row = [None] * len(trajectory)
        if not isinstance(row, (list, tuple)) or len(row) != len(trajectory):
            count = len(row) if isinstance(row, (list, tuple)) else type(row).__name__
            raise ValueError(
                f"{what} returned {count} values for trajectory {i}, which has {len(trajectory)} turns: return one "
                f"value (float or None) per turn of `turns[{i}]`."
            )
        rows.append([_turn_value(value, what, i, j) for j, value in enumerate(row)])
    return rows


def _turn_value(value, what: str, i: int, j: int) -> float | None:
    """One turn reward as a float: None stays None ("no opinion"); anything but a finite real number is an error
    naming its source (a NaN or inf would silently erase its whole group's advantages)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if not isinstance(value, numbers.Real):
        raise ValueError(
            f"{what} returned {value!r} ({type(value).__name__}) for turn {j} of trajectory {i}: return a number "
            "(float) or None for no opinion."
        )
    value = float(value)
    if not math.isfinite(value) or abs(value) > MAX_TURN_REWARD:
        raise ValueError(
            f"{what} returned {value!r} for turn {j} of trajectory {i}: return a finite number within "
            f"+-{MAX_TURN_REWARD:g}, or None for no opinion (a NaN, an inf or a value whose square overflows the "
            "float32 group statistics would wipe out the advantages of its whole group)."
        )
    return value


def environment_turn_values(
    values, call_turns: Sequence[Sequence[int]], turns: Sequence[Sequence[TurnRecord]], what: str
) -> list[list[float | None]]:
    """Environments' `get_turn_rewards()` as one value per turn, `values[i]` being trajectory i's environment's.

    An environment records what it sees, its tool calls, so its list has one value (float or None) per call that
    reached its methods, in call order; `call_turns[i]` is the turn of each of those calls
    (`turn_records.environment_call_turns`). A turn's value is the sum of its calls' values, None when all are None
    or it made none; a call whose turn is not in the completion is dropped. A list with one value per turn (and a
    length other than the call count) is read per turn. None or an empty list: no opinion.
    """
    if not isinstance(values, (list, tuple)) or len(values) != len(turns):
        count = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
        raise ValueError(f"{what} gave {count} lists for {len(turns)} trajectories: one list per environment.")
    rows = []
    for i, (row, calls, trajectory) in enumerate(zip(values, call_turns, turns, strict=True)):
        if not row:
            rows.append([None] * len(trajectory))
            continue
        if not isinstance(row, (list, tuple)) or len(row) not in (len(calls), len(trajectory)):
            count = len(row) if isinstance(row, (list, tuple)) else type(row).__name__
            raise ValueError(
                f"{what} returned {count} values for trajectory {i}, which made {len(calls)} calls of the "
                f"environment's tools in {len(trajectory)} turns: return one value (float or None) per call that "
                "reached the environment's methods, in call order (a call that raised counts; GTPO sums each turn's "
                "calls), or one value per turn."
            )
        if len(row) != len(calls):  # one value per turn
            rows.append([_turn_value(value, what, i, j) for j, value in enumerate(row)])
            continue
        per_turn: list[float | None] = [None] * len(trajectory)
        for turn, value in zip(calls, row):
            value = _turn_value(value, what, i, turn)
            if value is not None and turn < len(trajectory):
                per_turn[turn] = value + (per_turn[turn] or 0.0)
        rows.append(per_turn)
    return rows


def turn_reward_table(values: Sequence[Sequence[float | None]], width: int) -> torch.Tensor:
    """values[i][j] as an (N, width) float tensor: None and missing turns are NaN."""
    table = torch.full((len(values), width), math.nan)
    for i, row in enumerate(values):
        for j, value in enumerate(row[:width]):
            if value is not None:
                table[i, j] = value
    return table


def weighted_turn_terms(
    tables: Sequence[Sequence[Sequence[float | None]]],
    weights: Sequence[float],
    width: int,
    base: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """The (N, width) turn terms t_ij = base_ij + sum_f w_f u_f(i, j) of the advantage step, from each source's
    values[i][j] (`tables`, one per source, with its weight); None, and missing turns, count 0. None when there is
    neither a base (e.g. the format rule) nor a source."""
    terms = base
    for values, weight in zip(tables, weights, strict=True):
        weighted = torch.nan_to_num(turn_reward_table(values, width), nan=0.0) * weight
        terms = weighted if terms is None else terms + weighted.to(terms)
    return terms
