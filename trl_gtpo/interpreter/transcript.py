"""Finding, closing and formatting the ```python / ```output blocks of the code-interpreter format.

The format (the Qwen2.5-Math tool-integrated-reasoning one): the model writes

    ```python
    print(512 * 389)
    ```

and the tool's answer follows as

    ```output
    199168
    ```

A model turn ends when a ```python block is closed or when the model writes the stop marker itself (default
"```output"); these functions say where, on plain text, so the loop can cut the turn's tokens there, and read a
finished transcript back (`segments`, `last_boxed`) the same way, so the reward never parses the format on its own.

Fences count only at the start of a line (after blanks): backticks mid-line ("Use ```print``` then ...") are inline
code. Tool output is appended with its line-start backtick runs spaced apart (`tool_output_text`), so nothing a
program prints can close its output block early and pass for the model's words.
"""

import re
from dataclasses import dataclass
from typing import NamedTuple

DEFAULT_STOP_MARKER = "```output"

# An opening fence: ```python or ```py, at the start of the text or of a line, then the end of that line.
_OPEN_FENCE = re.compile(r"(?:^|\n)[ \t]*```[ \t]*(?:python3?|py)[ \t]*\n", re.IGNORECASE)
# A closing fence inside an open block: ``` at the start of a line.
_CLOSE_FENCE = re.compile(r"(?:^|\n)[ \t]*```")
# Any opening fence in the model's text: a line of ``` and an info string without backticks (as in CommonMark).
_FENCE_LINE = re.compile(r"^[ \t]*```[^`\n]*$", re.MULTILINE)
# A run of backticks at the start of a line of tool output: it would read as a fence.
_LINE_START_BACKTICKS = re.compile(r"^([ \t]*)(`{3,})", re.MULTILINE)
# A \boxed{...} whose content runs longer than this is not an answer (and scanning is bounded).
_MAX_BOXED_CHARS = 2_000


@dataclass(frozen=True)
class CodeBlock:
    """A ```python block: its code, whether it was closed, and where it ends in the text it was found in."""

    code: str
    closed: bool
    end: int

    @property
    def parses(self) -> bool:
        """Whether the code compiles: a tool call that does not parse is malformed."""
        try:
            compile(self.code, "<tool>", "exec")
        except (SyntaxError, ValueError):  # ValueError: null bytes in the source
            return False
        return True

    @property
    def well_formed(self) -> bool:
        return self.closed and self.parses


def code_blocks(text: str) -> list[CodeBlock]:
    """Every ```python block of `text`, in order; the last one may be unclosed."""
    blocks = []
    position = 0
    while (opening := _OPEN_FENCE.search(text, position)) is not None:
        code_start = opening.end()
        # The closing fence may directly follow the opening line (empty code), so search from the newline before it.
        closing = _CLOSE_FENCE.search(text, code_start - 1)
        if closing is None:
            blocks.append(CodeBlock(code=text[code_start:], closed=False, end=len(text)))
            break
        code = text[code_start : closing.start()] if closing.start() >= code_start else ""
        blocks.append(CodeBlock(code=code, closed=True, end=closing.end()))
        position = closing.end()
    return blocks


def turn_end(text: str, stop_marker: str) -> int | None:
    """Index just past the end of the model turn in `text`, or None if the turn has not ended.

    The turn ends at the first closing fence of a ```python block or at the first stop marker outside a block,
    whichever comes first. (A stop marker inside an open block closes it: "```output" starts with a fence.) Like a
    fence, the stop marker counts only at the start of a line (after blanks): written mid-line it is prose, and a
    backend that stopped there generates on.
    """
    ends = []
    for block in code_blocks(text):
        if block.closed:
            ends.append(block.end)
            break
    marker = _line_start_marker(stop_marker).search(text)
    if marker is not None:
        ends.append(marker.end())
    return min(ends) if ends else None


def _line_start_marker(stop_marker: str) -> re.Pattern:
    """The stop marker at the start of the text or of a line, after blanks."""
    return re.compile(r"(?:^|(?<=\n))[ \t]*" + re.escape(stop_marker))


def ended_with_marker(text: str, stop_marker: str) -> bool:
    """Whether the model wrote the stop marker itself at the end of its turn (so the output opener is there)."""
    return text.rstrip(" \t\n").endswith(stop_marker)


def tool_output_text(turn_text: str, output: str, stop_marker: str) -> str:
    """The tool tokens' text that follows a turn: an output block, completing the marker if the model wrote it.

    Backtick runs at the start of a line of `output` are spaced apart ("```" -> "` ` `"): left as printed, they would
    close the block, and the rest of the tool's output would read as the model's own text. Mid-line backticks are
    kept, since only line-start fences count.
    """
    if ended_with_marker(turn_text, stop_marker):
        opener = "" if turn_text.endswith("\n") else "\n"
    else:
        opener = ("" if turn_text.endswith("\n") else "\n") + stop_marker + "\n"
    body = _LINE_START_BACKTICKS.sub(lambda m: m.group(1) + " ".join(m.group(2)), output.rstrip("\n"))
    return f"{opener}{body}\n```\n" if body else f"{opener}```\n"


PROSE, CODE, OUTPUT = "prose", "code", "output"


class Segment(NamedTuple):
    """A piece of a transcript: the model's `PROSE`, a fenced block it wrote (`CODE`), or a tool's `OUTPUT`."""

    kind: str
    text: str


def segments(text: str, stop_marker: str = DEFAULT_STOP_MARKER) -> list[Segment]:
    """Read a transcript back the way the loop wrote it: model turns, each followed by the tool's output block.

    A model turn runs to `turn_end`; the output block after it opens at the stop marker (the model's own, or the one
    `tool_output_text` added) and runs to the next line-start ```. Text past a turn end with no output block after
    it (no tool ran: the last turn) is the model's again. Inside a turn, any line-start fenced block is `CODE`.
    """
    result: list[Segment] = []
    position = 0
    while position < len(text):
        end = turn_end(text[position:], stop_marker)
        if end is None:
            result += _model_segments(text[position:], stop_marker)
            break
        result += _model_segments(text[position : position + end], stop_marker)
        position += end
        body_start = _output_body_start(text, position, stop_marker)
        if body_start is None:
            continue
        closing = _CLOSE_FENCE.search(text, body_start)
        body_end = closing.start() if closing is not None else len(text)
        result.append(Segment(OUTPUT, text[body_start:body_end].strip("\n")))
        position = closing.end() if closing is not None else len(text)
    return result


def _output_body_start(text: str, turn_end_index: int, stop_marker: str) -> int | None:
    """Where the output block after a turn ending at `turn_end_index` starts, or None if no output block follows.

    The stop marker is the block's opener: it ends the turn, follows the turn after blanks, or (a closing fence
    token that runs into the marker, "```" + "output") starts before the turn end and finishes after it.
    """
    if text[:turn_end_index].endswith(stop_marker):
        return turn_end_index
    start = text.find(stop_marker, max(0, turn_end_index - len(stop_marker) + 1))
    if start < 0 or (start > turn_end_index and text[turn_end_index:start].strip(" \t\n")):
        return None
    return start + len(stop_marker)


def _model_segments(turn: str, stop_marker: str) -> list[Segment]:
    """One model turn's text as prose and the fenced blocks it wrote (the last one may be unclosed)."""
    if turn.endswith(stop_marker):  # the output block's opener, not the model's prose
        turn = turn[: -len(stop_marker)]
    result: list[Segment] = []
    position = 0
    while (opening := _FENCE_LINE.search(turn, position)) is not None:
        result.append(Segment(PROSE, turn[position : opening.start()]))
        body_start = opening.end()  # the newline ending the fence line: a fence right after it closes an empty block
        closing = _CLOSE_FENCE.search(turn, body_start)
        if closing is None:
            result.append(Segment(CODE, turn[body_start + 1 :]))
            return result
        result.append(Segment(CODE, turn[body_start + 1 : closing.start()]))
        position = closing.end()
    result.append(Segment(PROSE, turn[position:]))
    return result


def last_boxed(text: str) -> str | None:
    """Content of the last complete, non-empty `\\boxed{...}` (or `\\fbox{...}`) of `text`, braces matched."""
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


_BOXED_COMMAND = re.compile(r"\\(?:boxed|fbox)")


def _boxed_content(text: str, index: int) -> str | None:
    """Content of the \\boxed / \\fbox command at `index`, or None if it is not a complete one."""
    match = _BOXED_COMMAND.match(text, index)
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

