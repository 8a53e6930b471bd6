"""What the model answered: the final answer of a tool-integrated completion, and the reference answer of a row.

Completions of this project are tool-integrated: the model's prose, its ```python code blocks and the interpreter's
```output blocks, in turns. The final answer is what the model itself writes, never what its code or the interpreter
prints: the last `\\boxed{...}` of the prose, else the last plain number of the prose that follows the last output
block.
"""

from __future__ import annotations

import math
import re

__all__ = ["final_answer", "reference_answer"]

# Roles whose messages are tool results, not model text: their content is treated like an ```output block.
_MODEL_ROLES = ("assistant", "model")
# A \boxed{...} whose content runs longer than this is not an answer (and scanning is bounded).
_MAX_BOXED_CHARS = 2_000

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


def _completion_text(completion) -> str:
    """A completion as one text: a string as is; a conversation's messages in order, tool messages as ```output."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        chunks = []
        for message in completion:
            if isinstance(message, str):
                chunks.append(message)
                continue
            if not isinstance(message, dict):
                continue
            text = _message_text(message.get("content"))
            if message.get("role", "assistant") in _MODEL_ROLES:
                chunks.append(text)
            else:  # tool / user / system text inside a completion: not the model's own words
                chunks.append(f"\n```output\n{text}\n```\n")
        return "\n".join(chunks)
    return str(completion)


def _segments(text: str) -> list[tuple[str, str]]:
    """Split `text` into ("prose" | "code" | "output", chunk) segments along ``` fences.

    A fence whose info string starts with "output" opens an output block; any other fence (```python, ```py, bare
    ```) opens a code block. A block runs to the next ``` or, if unclosed (a truncated completion), to the end.
    """
    segments = []
    position = 0
    while True:
        start = text.find("```", position)
        if start < 0:
            segments.append(("prose", text[position:]))
            return segments
        segments.append(("prose", text[position:start]))
        end_of_info = text.find("\n", start + 3)
        if end_of_info < 0:
            end_of_info = len(text)
        info = text[start + 3 : end_of_info].strip().lower()
        close = text.find("```", end_of_info)
        kind = "output" if info.startswith("output") else "code"
        if close < 0:
            segments.append((kind, text[end_of_info:]))
            return segments
        segments.append((kind, text[end_of_info:close]))
        position = close + 3


def _boxed_content(text: str, index: int) -> str | None:
    """Content of the \\boxed / \\fbox command at `index`, or None if it is not a complete one."""
    match = re.compile(r"\\(?:boxed|fbox)").match(text, index)
    if match is None:
        return None
    position = match.end()
    if position < len(text) and text[position].isalpha():  # e.g. \boxedtext: another command
        return None
    while position < len(text) and text[position] in " \t":
        position += 1
    if position >= len(text):
        return None
    if text[position] != "{":  # "\boxed 5": the argument runs to the next space or $
        argument = re.match(r"[^\s$]+", text[position:])
        return argument.group(0) if argument else None
    depth = 0
    limit = min(len(text), position + _MAX_BOXED_CHARS)
    i = position
    while i < limit:
        char = text[i]
        if char == "\\":
            i += 2  # an escaped character (\{, \}, \\) never opens or closes
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[position + 1 : i].strip() or None
        i += 1
    return None  # unbalanced (truncated) or too long


def _last_boxed(text: str) -> str | None:
    """Content of the last complete, non-empty \\boxed{...} (or \\fbox{...}) of `text`."""
    end = len(text)
    while end > 0:
        index = max(text.rfind("\\boxed", 0, end), text.rfind("\\fbox", 0, end))
        if index < 0:
            return None
        content = _boxed_content(text, index)
        if content is not None:
            return content
        end = index
    return None


def final_answer(text) -> str | None:
    """The final answer written in a completion, or None.

    `text` is a completion: a string, or a list of chat messages (tool messages count as interpreter output).
    The answer is, in order of preference:

    1. the content of the last complete `\\boxed{...}` (balanced braces; `\\fbox` too) in the model's prose, i.e.
       outside ```python code blocks and ```output blocks;
    2. else the last plain number (`72`, `-3`, `1,234` returned as `1234`, `0.5`, `3/4`) of the prose after the last
       ```output block (numbers in code and in tool outputs are never taken: they are not the model's answer).

    Returns the answer text (stripped), or None if there is none.
    """
    text = _completion_text(text)
    if not text:
        return None
    segments = _segments(text)
    prose = "\n".join(chunk for kind, chunk in segments if kind == "prose")
    boxed = _last_boxed(prose)
    if boxed is not None:
        return boxed
    last_output = max((i for i, (kind, _) in enumerate(segments) if kind == "output"), default=-1)
    tail = "\n".join(chunk for kind, chunk in segments[last_output + 1 :] if kind == "prose")
    tail = tail.replace("\u2212", "-")  # unicode minus
    numbers = _NUMBER_RE.findall(tail)
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
