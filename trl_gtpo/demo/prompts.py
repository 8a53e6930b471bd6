"""The default prompt of the code-interpreter format: a system prompt and one worked example.

The format (fixed by the trainer, see `trl_gtpo.interpreter.transcript`): the model writes

    ```python
    print(512 * 389)
    ```

the trainer runs the code and appends

    ```output
    199168
    ```

and the model goes on, ending with its answer in `\\boxed{}`.

A small model follows the format far more often when it has seen it once: with the system prompt alone,
SmolLM2-135M-Instruct almost never writes a code block, while with worked examples, given as prior user/assistant
exchanges, it writes one for most arithmetic questions. So `build_prompt` adds the examples by default.
"""

from __future__ import annotations

DEFAULT_SYSTEM_PROMPT = (
    "You are a math assistant with a Python interpreter. To compute something, write Python code in a ```python "
    "block that prints the result. The code is run and its output is shown to you in an ```output block. Then write "
    '"The answer is \\boxed{...}" with the final answer.'
)

# Worked examples, as (user question, assistant answer) pairs. The assistant text is exactly what a trajectory looks
# like: the model's ```python block, the ```output block the trainer appends, the model's final sentence. The second
# example shows how to write `a^b mod m` in Python; without it the model almost never solves those.
FEW_SHOT_EXAMPLES: tuple[tuple[str, str], ...] = (
    (
        "What is 512 * 389?",
        "```python\nprint(512 * 389)\n```\n```output\n199168\n```\nThe answer is \\boxed{199168}.",
    ),
    (
        "What is 23^41 mod 97?",
        "```python\nprint(pow(23, 41, 97))\n```\n```output\n41\n```\nThe answer is \\boxed{41}.",
    ),
)

# A worked word problem: the question does not spell out the expression, the code does. With the arithmetic examples
# above, SmolLM2-135M-Instruct solves almost no word problem ("To find the answer, we need to divide ..."); with this
# one it solves about a quarter of them greedily, which leaves room to learn (the synthetic "word" kind).
WORD_PROBLEM_EXAMPLES: tuple[tuple[str, str], ...] = (
    (
        "Each crate holds 512 apples. How many apples are in 389 crates?",
        "```python\nprint(512 * 389)\n```\n```output\n199168\n```\nThe answer is \\boxed{199168}.",
    ),
)

# A worked two-step word problem (the synthetic "word_two_step" kind): one tool turn per product, the second one
# reading the first one's output. With the one-step example before it, the model sees both shapes of solution.
TWO_STEP_EXAMPLES: tuple[tuple[str, str], ...] = (
    (
        "A tray holds 24 cookies. A shelf holds 13 trays. How many cookies are on 17 shelves?",
        "```python\nprint(24 * 13)\n```\n```output\n312\n```\n```python\nprint(312 * 17)\n```\n```output\n5304\n```\n"
        "The answer is \\boxed{5304}.",
    ),
)

# The sets of worked examples by name (`build_prompt(examples=...)`, examples/train_gtpo.py's --few_shot_examples).
EXAMPLE_SETS: dict[str, tuple[tuple[str, str], ...]] = {
    "arithmetic": FEW_SHOT_EXAMPLES,
    "word": WORD_PROBLEM_EXAMPLES,
    "word_steps": WORD_PROBLEM_EXAMPLES + TWO_STEP_EXAMPLES,
}


def few_shot_messages(num_examples: int | None = None, examples: str = "arithmetic") -> list[dict[str, str]]:
    """The first `num_examples` worked examples of the set `examples` (a name in `EXAMPLE_SETS`; all of the set if
    `num_examples` is None) as alternating user/assistant messages."""
    if examples not in EXAMPLE_SETS:
        raise ValueError(f"Unknown set of worked examples {examples!r}; known sets: {', '.join(EXAMPLE_SETS)}")
    chosen = EXAMPLE_SETS[examples]
    if num_examples is not None and not 0 <= num_examples <= len(chosen):
        raise ValueError(f"num_examples must be between 0 and {len(chosen)}, got {num_examples}")
    messages = []
    for question, answer in chosen[:num_examples]:
        messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "content": answer})
    return messages


def build_prompt(
    question: str,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    few_shot: bool = True,
    num_examples: int | None = None,
    examples: str = "arithmetic",
) -> list[dict[str, str]]:
    """Conversational prompt for `question`: the system prompt (left out if `system_prompt` is None or empty), the
    worked examples of the set `examples` (see `EXAMPLE_SETS`) as user/assistant exchanges (if `few_shot`; the first
    `num_examples` of them, all if None), then the question as the last user message.

    Every prompt token is paid again on each turn of each trajectory (the prompt is encoded once per turn), so on a
    small machine one example instead of two makes generation markedly cheaper (the first example alone already
    teaches the format; the second one only matters for `a^b mod m` questions).

    Without a system message, SmolLM2's chat template inserts its own default one ("You are a helpful AI assistant
    named SmolLM, ...") when the prompt is rendered.
    """
    messages: list[dict[str, str]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    if few_shot:
        messages.extend(few_shot_messages(num_examples, examples))
    messages.append({"role": "user", "content": question})
    return messages
