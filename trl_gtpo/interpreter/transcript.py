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
"```output"); these functions say where, on plain text, so the loop can cut the turn's tokens there.
"""

import re
from dataclasses import dataclass

# An opening fence: ```python or ```py, at the start of the text or of a line, then the end of that line.
_OPEN_FENCE = re.compile(r"(?:^|\n)[ \t]*```[ \t]*(?:python3?|py)[ \t]*\n", re.IGNORECASE)
# A closing fence inside an open block: ``` at the start of a line.
_CLOSE_FENCE = re.compile(r"(?:^|\n)[ \t]*```")


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
    whichever comes first. (A stop marker inside an open block closes it: "```output" starts with a fence.)
    """
    ends = []
    for block in code_blocks(text):
        if block.closed:
            ends.append(block.end)
            break
    marker = text.find(stop_marker)
    if marker != -1:
        ends.append(marker + len(stop_marker))
    return min(ends) if ends else None


def ended_with_marker(text: str, stop_marker: str) -> bool:
    """Whether the model wrote the stop marker itself at the end of its turn (so the output opener is there)."""
    return text.rstrip(" \t\n").endswith(stop_marker)


def tool_output_text(turn_text: str, output: str, stop_marker: str) -> str:
    """The tool tokens' text that follows a turn: an output block, completing the marker if the model wrote it."""
    if ended_with_marker(turn_text, stop_marker):
        opener = "" if turn_text.endswith("\n") else "\n"
    else:
        opener = ("" if turn_text.endswith("\n") else "\n") + stop_marker + "\n"
    body = output.rstrip("\n")
    return f"{opener}{body}\n```\n" if body else f"{opener}```\n"

