"""The completions sample of a logging step, printed compactly for a log file: a few lines per sample.

TRL prints the sample (`log_completions=True`) as a rich table sized to the terminal; written to a file it is 80
columns wide and the prompt and completion columns wrap one word per line, hundreds of lines per step. Here each
sample is one line of figures (rewards, advantage, the extra columns such as each turn's tool call), then the last
prompt message and the completion, each on one line, newlines shown as "⏎", long text cut in the middle.
"""

import random

PROMPT_CHARS = 160  # of the prompt's last message: the question (system prompts and worked examples are the same)
COMPLETION_CHARS = 480


def compact_samples(
    prompts: list,
    completions: list,
    rewards: dict[str, list[float]],
    advantages: list[float] | None,
    step: int,
    num_samples: int | None = None,
    extra: dict[str, list] | None = None,
) -> str:
    """The sample as text, with the arguments of TRL's `print_prompt_completions_sample` (which it replaces when the
    output is not a terminal): `num_samples` rows drawn at random as TRL draws them, all rows when None."""
    rows = list(range(len(prompts)))
    if num_samples is not None and num_samples < len(rows):
        rows = sorted(random.sample(rows, num_samples))
    lines = [f"--- step {step}: {len(rows)} of {len(prompts)} completions ---"]
    for number, i in enumerate(rows, start=1):
        figures = [f"{name} {values[i]:.2f}" for name, values in rewards.items() if i < len(values)]
        if advantages is not None and i < len(advantages):
            figures.append(f"advantage {advantages[i]:+.2f}")
        figures += [f"{name} {values[i]}" for name, values in (extra or {}).items() if i < len(values)]
        lines.append(f"[{number}] " + " | ".join(figures))
        lines.append("    prompt: " + one_line(_last_message(prompts[i]), PROMPT_CHARS, keep_end=True))
        lines.append("    completion: " + one_line(_text(completions[i]), COMPLETION_CHARS))
    return "\n".join(lines)


def one_line(text: str, limit: int, keep_end: bool = False) -> str:
    """`text` on one line: newlines as "⏎", characters that do not print as "�", at most `limit` characters (the
    start and the end kept, the middle cut; or only the end with `keep_end`)."""
    text = "⏎".join(text.strip().split("\n"))
    text = "".join(char if char.isprintable() else "�" for char in text)
    if len(text) <= limit:
        return text
    if keep_end:
        return "…" + text[-(limit - 1) :]
    head = (limit - 3) * 2 // 3
    return text[:head] + " … " + text[-(limit - 3 - head) :]


def _last_message(prompt) -> str:
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        return _text([prompt[-1]])
    return _text(prompt)


def _text(entry) -> str:
    """A completion or prompt as plain text: a string, or chat messages (their contents and tool calls, in order)."""
    if not isinstance(entry, list):
        return str(entry)
    parts = []
    for message in entry:
        if not isinstance(message, dict):
            parts.append(str(message))
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(
                block.get("text", "[image]") if isinstance(block, dict) else str(block) for block in content
            )
        text = content or ""
        for call in message.get("tool_calls") or []:
            function = call.get("function", {}) if isinstance(call, dict) else {}
            text += f" {function.get('name', '?')}({function.get('arguments', '')})"
        parts.append(text if message.get("role", "assistant") == "assistant" else f"[{message['role']}] {text}")
    return "\n".join(parts)
