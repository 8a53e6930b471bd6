"""What the model answered: the final answer of a tool-integrated completion, and the reference answer of a row.

Completions of this project are tool-integrated: the model's prose, its ```python code blocks and the interpreter's
```output blocks, in turns. The final answer is what the model itself writes, never what its code or the interpreter
prints: the last `\\boxed{...}` of the prose, else the last plain number of the prose that follows the last output
block. The transcript is read by `trl_gtpo.interpreter.transcript`, the module that also writes it.
"""

from __future__ import annotations

import math
import re

from ..interpreter.transcript import DEFAULT_STOP_MARKER, OUTPUT, PROSE, Segment, last_boxed, segments

__all__ = ["final_answer", "reference_answer"]

# Roles whose messages are the model's own text; every other role's content (tool results) is a tool output.
_MODEL_ROLES = ("assistant", "model")

_NUMBER_RE = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+)?")
_THOUSANDS_RE = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


def _message_text(content) -> str:
    """Text of a message's content: a string, or a list of parts like {"type": "text", "text": ...}."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    return str(content)


def _completion_segments(completion, stop_marker: str) -> list[Segment]:
    """A completion as transcript segments. It is one of:

    - a string: the whole transcript, model turns and the output blocks the loop appended;
    - chat messages (a dict or a list of dicts): assistant messages are transcripts, other roles' are tool output;
    - a list of strings: the model's own turn texts, a tool output having followed each one but the last (what a
      trainer that knows the token-level turn structure can give, with no tool text to tell apart).
    """
    if completion is None:
        return []
    if isinstance(completion, str):
        return segments(completion, stop_marker)
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        if all(isinstance(turn, str) for turn in completion):
            result: list[Segment] = []
            for k, turn in enumerate(completion):
                result += ([Segment(OUTPUT, "")] if k else []) + segments(turn, stop_marker)
            return result
        if all(isinstance(message, dict) for message in completion):
            result = []
            for message in completion:
                text = _message_text(message.get("content"))
                if message.get("role", "assistant") in _MODEL_ROLES:
                    result += segments(text, stop_marker)
                else:
                    result.append(Segment(OUTPUT, text))
            return result
    raise TypeError(
        "A completion is a string, chat messages (dicts with 'role' and 'content') or a list of the model's turn "
        f"texts (strings); got {type(completion).__name__}"
        + (" mixing strings and other items" if isinstance(completion, (list, tuple)) else "")
        + "."
    )


def final_answer(completion, stop_marker: str = DEFAULT_STOP_MARKER) -> str | None:
    """The final answer written in a completion, or None.

    `completion` is a string transcript, chat messages, or the model's own turn texts (see `_completion_segments`);
    `stop_marker` is the one the loop ran with (GTPOConfig.turn_stop_marker): it opens the tool's output blocks.
    The answer is, in order of preference:

    1. the content of the last complete `\\boxed{...}` (balanced braces; `\\fbox` too) in the model's prose, i.e.
       outside the fenced blocks it wrote and the tool's output blocks;
    2. else the last plain number (`72`, `-3`, `1,234` returned as `1234`, `0.5`, `3/4`) of the prose after the last
       output block (numbers in code and in tool outputs are never taken: they are not the model's answer).

    Returns the answer text (stripped), or None if there is none. Raises TypeError for anything else than the
    completion forms above.
    """
    parts = _completion_segments(completion, stop_marker)
    boxed = last_boxed("\n".join(text for kind, text in parts if kind == PROSE))
    if boxed is not None:
        return boxed
    last_output = max((i for i, (kind, _) in enumerate(parts) if kind == OUTPUT), default=-1)
    tail = "\n".join(text for kind, text in parts[last_output + 1 :] if kind == PROSE)
    numbers = _NUMBER_RE.findall(tail.replace("\u2212", "-"))  # unicode minus
    if not numbers:
        return None
    number = numbers[-1]
    return number.replace(",", "") if _THOUSANDS_RE.match(number) else number


def reference_answer(answer) -> str | None:
    """The reference answer of a dataset row as text: GSM8K's "... #### 72" gives "72" (commas dropped); anything
    else is stripped and kept. None or empty gives None."""
    if answer is None:
        return None
    if isinstance(answer, float) and math.isnan(answer):
        return None
    text = str(answer).strip()
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip().replace(",", "")
    return text or None
