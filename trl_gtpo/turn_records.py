"""One record per model turn, the same on every multi-turn path: what turn rewards and the format rule read.

A turn is a maximal run of model tokens (tool mask 1) of a completion (arXiv 2511.14846, section 3.1); the tool
response that follows it is the run of tool tokens (mask 0) up to the next turn. The code interpreter knows more of a
turn (its code, whether it ran and how); TRL's `tools=` path knows its JSON calls and tool messages; a `rollout_func`
with `env_mask` gives only the spans. Each path's builder fills in what it knows.
"""

import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

# Status of a turn's tool call: the code interpreter's ExecutionResult statuses, "no_code" (the model asked for a tool
# run without code), and "none" (no call was run: the turn made none, or its call was never run).
STATUSES = ("ok", "error", "timeout", "limit", "crash", "no_code", "none")


@dataclass(frozen=True)
class TurnRecord:
    """One model turn.

    Attributes:
        index: the turn's number in its trajectory, from 0.
        text: the model's own text of the turn (its tokens decoded).
        tool_call: the call the turn made: the code of its last ```python block (run or not), or the JSON of its tool
            calls on TRL's `tools=` path; None when it made none.
        tool_response: what the tool answered (the interpreter's output, the tool messages' content), None if nothing.
        status: how the call went, one of STATUSES ("none": no call was run).
        start, end: the turn's token span [start, end) in the completion ids.
        well_formed: False for a malformed call (an unclosed or unparsable ```python block, a marker without code).
    """

    index: int
    text: str
    tool_call: str | None
    tool_response: str | None
    status: str
    start: int
    end: int
    well_formed: bool = True

    @property
    def ran(self) -> bool:
        """Whether a tool call of this turn was run (successfully or not)."""
        return self.status not in ("none", "no_code")


def trajectory_code(records: Sequence[TurnRecord]) -> str:
    """All the code one trajectory's turns wrote, one call after another: what shaping compares (GTPO, part 3)."""
    return "\n".join(turn.tool_call for turn in records if turn.tool_call)


def turn_spans(mask: Sequence[int]) -> list[tuple[int, int]]:
    """The [start, end) spans of the maximal runs of 1 in a tool mask: the model turns."""
    spans, start = [], None
    for position, value in enumerate(mask):
        if value and start is None:
            start = position
        elif not value and start is not None:
            spans.append((start, position))
            start = None
    if start is not None:
        spans.append((start, len(mask)))
    return spans


def turn_index(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Number each token by its turn: a turn is a maximal run of model tokens (mask == 1).

    Returns `(index, num_turns)`: `index` (B, T) holds the turn of each model token and -1 for tool-output and
    padding tokens; `num_turns` (B,) counts the turns of each trajectory.
    """
    mask = mask.bool()
    starts = mask.clone()
    starts[:, 1:] &= ~mask[:, :-1]
    # A float cumsum is several times faster than an integer one on CPU, and exact for these small counts.
    index = torch.cumsum(starts.float(), dim=1).mul_(mask).sub_(1).long()
    return index, starts.sum(dim=1)


def records_from_mask(
    completion_ids: Sequence[int],
    mask: Sequence[int] | None,
    decode: Callable[[list[int]], str],
    spans: Sequence[tuple[int, int]] | None = None,
) -> list[TurnRecord]:
    """Records of a completion known only by its tool mask (a `rollout_func` with `env_mask`): the spans and texts;
    the tokens between two turns are the tool response, and no call is known. A missing mask is one turn.

    `spans`: the turns' [start, end) in `completion_ids` when the caller knows them (the asynchronous trainer, where a
    turn's sampled tokens may no longer be trained): record k is then the turn of `spans[k]`, trained or not."""
    if spans is None:
        mask = list(mask) if mask is not None else [1] * len(completion_ids)
        spans, limit = turn_spans(mask), len(mask)
    else:
        spans, limit = [(int(start), int(end)) for start, end in spans], len(completion_ids)
    records = []
    for k, (start, end) in enumerate(spans):
        after = spans[k + 1][0] if k + 1 < len(spans) else limit
        response = decode(list(completion_ids[end:after])) if after > end else None
        records.append(TurnRecord(k, decode(list(completion_ids[start:end])), None, response, "none", start, end))
    return records


def records_from_messages(
    completion_ids: Sequence[int], mask: Sequence[int] | None, messages: Sequence[dict], decode, spans=None
) -> list[TurnRecord]:
    """Records of a completion of TRL's `tools=` / `environment_factory=` path.

    TRL 1.16's tool loop appends, per model turn, one assistant message (with `tool_calls` when it made any) and one
    `tool` message per call, whose content is the tool's result or `{'error': ...}` when the call raised. The k-th
    assistant message is the k-th turn of the mask (or of `spans`, see `records_from_mask`).
    """
    records = records_from_mask(completion_ids, mask, decode, spans)
    turns: list[tuple[dict, list[dict]]] = []
    for message in messages if isinstance(messages, (list, tuple)) else []:
        if not isinstance(message, dict):
            continue
        if message.get("role") == "assistant":
            turns.append((message, []))
        elif message.get("role") == "tool" and turns:
            turns[-1][1].append(message)
    enriched = []
    for record, (message, responses) in zip(records, turns + [({}, [])] * (len(records) - len(turns))):
        calls = message.get("tool_calls") or None
        contents = [_content_text(response.get("content")) for response in responses]
        failed = any(content.startswith("{'error'") for content in contents)
        enriched.append(
            TurnRecord(
                record.index,
                record.text,
                json.dumps(calls, default=str) if calls else None,
                "\n".join(contents) if contents else record.tool_response,
                ("error" if failed else "ok") if calls and responses else "none",
                record.start,
                record.end,
            )
        )
    return enriched


def environment_call_turns(messages: Sequence[dict], tools: Mapping[str, Callable], max_iterations: int) -> list[int]:
    """The turn of each tool call that reached an environment's methods, in call order: what its per-call
    `get_turn_rewards()` values are mapped by.

    TRL 1.16's tool loop (`GRPOTrainer._tool_call_loop`) runs the calls of the k-th assistant message (the k-th model
    turn, as in `records_from_messages`) in its k-th iteration, while k < `max_tool_calling_iterations`, one after the
    other. A call enters an environment method (`tools`: name -> bound method) when it is a function call naming one
    of them with arguments that fit its signature; any other call TRL answers with an error before any environment
    code runs. A call that raised still ran, and so did one whose result TRL rolled back because it would have
    overflowed `max_completion_length` (the assistant message stays, its tool messages are removed): both count, on
    the turn that made them.
    """
    turns, turn = [], -1
    for message in messages if isinstance(messages, (list, tuple)) else []:
        if not isinstance(message, dict) or message.get("role") != "assistant":
            continue
        turn += 1
        if turn >= max_iterations:
            break
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) and call.get("type") == "function" else None
            method = tools.get(function.get("name")) if isinstance(function, dict) else None
            arguments = function.get("arguments") if method is not None else None
            if not isinstance(arguments, dict):
                continue
            try:
                inspect.signature(method).bind(**arguments)
            except TypeError:
                continue
            turns.append(turn)
    return turns


def _content_text(content) -> str:
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)
