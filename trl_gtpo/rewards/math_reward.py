"""Outcome reward functions with TRL's reward-function signature `f(completions, **kwargs) -> list[float | None]`.

[`math_answer_reward`] compares the final answer of each completion (`trl_gtpo.rewards.answer.final_answer`) with
the dataset column `answer` through math-verify.

Thread safety: math-verify bounds its parsing and comparison with `signal.alarm`, which only works on the main thread
(elsewhere it raises). [`math_answer_reward`] uses that timeout only on the main thread (and only when no other alarm
is pending, which it would clobber); in any other thread (a `ThreadPoolExecutor`, `asyncio.to_thread`, an async
reward loop) it turns the signal timeout off and bounds the work itself: answers are cut at a few hundred characters
and, on either path, an answer whose value would have more than ~40,000 digits (`9^{9^{9}}`, `(10^{6})!`,
`\\prod_{k=1}^{10^{9}} k`, ...) is rejected before sympy tries to evaluate it. Such an answer is never a correct
answer to a math problem, and evaluating it could take minutes and gigabytes.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import signal
import threading
from collections.abc import Sequence

from ..interpreter.transcript import DEFAULT_STOP_MARKER
from ..turn_records import TurnRecord
from .answer import _THOUSANDS_RE, final_answer, reference_answer

__all__ = ["math_answer_reward"]


#: Seconds math-verify may spend parsing / comparing one answer, where its signal-based timeout can be used.
MATH_VERIFY_TIMEOUT_SECONDS = 5
# Answers longer than this (after extraction) are not parsed: wrong by construction, and parsing cost grows with size.
_MAX_ANSWER_CHARS = 512
_MAX_REFERENCE_CHARS = 2_048
# An expression whose value may need more bits than this (~40,000 decimal digits) is not evaluated.
_MAX_VALUE_BITS = 1 << 17


class _TimeoutDisabledFilter(logging.Filter):
    """Drops math-verify's "Timeout is disabled ..." warning: off the main thread we bound the work ourselves."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout is disabled")


@functools.lru_cache(maxsize=1)
def _math_verify():
    """Import math-verify once, and silence its warning about the timeout we turn off on purpose."""
    import math_verify

    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).addFilter(_TimeoutDisabledFilter())
    return math_verify


def _signal_timeout_usable() -> bool:
    """Whether math-verify's `signal.alarm` timeout can be used here: POSIX, main thread, no alarm already pending."""
    if os.name != "posix" or threading.current_thread() is not threading.main_thread():
        return False
    try:
        return signal.getitimer(signal.ITIMER_REAL)[0] == 0.0
    except (AttributeError, OSError, ValueError):
        return False


def _value_bits(node, depth: int = 0) -> float:
    """An upper bound on the number of bits of the value of a (not yet evaluated) sympy expression; inf if unbounded.

    Only magnitudes matter: symbols count as small, containers (sets, tuples, relations, matrices) as their largest
    element. Powers, factorials, binomials, exp and sums/products over ranges are what can explode.
    """
    import sympy

    if depth > 200:
        return math.inf
    if isinstance(node, str):
        return 1.0
    if isinstance(node, sympy.MatrixBase):
        return max((_value_bits(x, depth + 1) for x in node), default=1.0)
    if not isinstance(node, sympy.Basic):
        return 1.0
    if node.is_Integer:
        return float(max(int(node).bit_length(), 1))
    if node.is_Rational:
        return float(max(int(node.p).bit_length(), int(node.q).bit_length(), 1))
    if node.is_Float:
        try:
            return max(math.log2(abs(float(node))), 1.0) if node != 0 else 1.0
        except (OverflowError, ValueError):
            return math.inf
    if not node.args:  # symbols, pi, E, I, oo, ...
        return 2.0

    def size(value_bits: float) -> float:  # an upper bound of |value| from its bits
        return 2.0**value_bits if value_bits < 1000 else math.inf

    args_bits = [_value_bits(arg, depth + 1) for arg in node.args]
    if isinstance(node, sympy.Add):
        return max(args_bits) + math.log2(len(args_bits)) + 1
    if isinstance(node, sympy.Mul):
        return sum(args_bits)
    if isinstance(node, sympy.Pow):
        base_bits, exponent = args_bits[0], node.args[1]
        if exponent.is_Number:
            try:
                exponent_size = abs(float(exponent))
            except (OverflowError, ValueError):
                exponent_size = math.inf
        else:
            exponent_size = size(args_bits[1])
        return base_bits * max(exponent_size, 1.0)
    factorials = (sympy.factorial, sympy.factorial2, sympy.subfactorial, sympy.gamma, sympy.RisingFactorial)
    if isinstance(node, (*factorials, sympy.FallingFactorial)):
        bits = max(args_bits)
        return size(bits) * bits
    if isinstance(node, sympy.binomial):
        return size(args_bits[0])
    if isinstance(node, sympy.exp):
        return size(args_bits[0]) * 1.5
    if isinstance(node, (sympy.Sum, sympy.Product, sympy.Integral, sympy.Limit)):
        return size(max(args_bits)) * max(args_bits)  # bounded by the range of the limits times the term
    return max(args_bits) + 1


def _cheap(parsed: list) -> bool:
    """Whether every parsed expression is small enough to be compared (see `_value_bits`)."""
    try:
        return all(_value_bits(expression) <= _MAX_VALUE_BITS for expression in parsed)
    except RecursionError:
        return False


# A currency sign, however it is written: \$, \textdollar, \text{\$} (and \mbox, \textrm). Never part of a value.
_CURRENCY_RE = re.compile(r"\\(?:text|mbox|textrm)\s*\{\s*(?:\\\$|\\textdollar)\s*\}|\\\$|\\textdollar(?![a-zA-Z])")
# Thousands separators as LaTeX writes them: 32,\!348, 23{,}000, 1\,000.
_LATEX_THOUSANDS = (",\\!", "{,}", "\\,")
# A temperature's scale after a degree sign: 72°F, 72 °C, 72^\circ F, 72^{\circ}\text{C}. The value is the number.
_TEMPERATURE_RE = re.compile(
    r"\s*(?:°|\^\s*\{?\s*\\circ\s*\}?)\s*(?:\\(?:text|mathrm)\s*\{\s*[FC]\s*\}|[FC](?![A-Za-z]))"
)
# A number followed only by unit words ("18 dollars", "3 km/h", "5 \text{apples}."): the value is the number. The
# first word has two letters or more and none is a name of math (pi, ln, sin, ...), so "3x" or "2 pi" keep theirs.
_NUMBER_WITH_UNITS_RE = re.compile(
    r"^(-?\d[\d,]*(?:\.\d+)?(?:/\d+)?)\s*((?:\\(?:text|mathrm)\s*\{[^{}]*\}|[A-Za-z]{2,}[A-Za-z\s./-]*?)+)\.?$"
)
_MATH_NAMES = {"pi", "ln", "log", "exp", "sin", "cos", "tan", "cot", "sec", "csc", "sqrt", "mod", "deg", "circ"}


def _normalize_answer(text: str) -> str:
    r"""An answer without its formatting: math delimiters, currency signs, thousands separators, degree signs,
    temperature scales, unit words after a number.

    math-verify already reads \%, ^\circ and \text{ units}; these are the forms it gets wrong (\$18 unparsed,
    1\,000 read as 1*0, 90° read as a symbol, 1,234 read as a set, 72°F and 72^\circ F as products with F,
    "18 dollars" as a product of letters).
    """
    text = text.strip().replace("\u2212", "-")
    while len(text) >= 2 and text[0] == "$" and text[-1] == "$":  # $...$ / $$...$$ around an answer
        text = text[1:-1].strip()
    text = _TEMPERATURE_RE.sub("", text)
    text = _CURRENCY_RE.sub("", text).replace("°", "^\\circ").strip()
    units = _NUMBER_WITH_UNITS_RE.match(text)
    if units is not None and not _MATH_NAMES & set(re.findall(r"[A-Za-z]+", units.group(2).lower())):
        text = units.group(1)
    if text.count("$") == 1:  # a lone $ is a unit ("$18"), not a math delimiter
        text = text.replace("$", "").strip()
    plain = text
    for separator in _LATEX_THOUSANDS:
        plain = plain.replace(separator, ",")
    if _THOUSANDS_RE.match(plain.replace(" ", "")):  # 1,234 -> 1234 (math-verify would read "1,234" as a set)
        text = plain.replace(" ", "").replace(",", "")
    return text


def _parse(text: str, use_signal: bool) -> list:
    """math-verify parse of an answer (wrapped in \\boxed{} unless already a LaTeX environment); [] on failure."""
    math_verify = _math_verify()
    if "\\boxed" not in text and "\\fbox" not in text and "$" not in text:
        text = "\\boxed{" + text + "}"
    try:
        parsed = math_verify.parse(
            text,
            parsing_timeout=MATH_VERIFY_TIMEOUT_SECONDS if use_signal else None,
            raise_on_error=False,
        )
    except BaseException as error:  # math-verify's TimeoutException is a BaseException
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        return []
    return parsed if parsed and _cheap(parsed) else []


@functools.lru_cache(maxsize=4096)
def _parse_reference(reference: str, use_signal: bool) -> tuple:
    return tuple(_parse(reference, use_signal))


def _answer_is_correct(prediction: str, reference: str, use_signal: bool) -> bool:
    gold = list(_parse_reference(reference, use_signal))
    if not gold:
        return False
    parsed = _parse(prediction, use_signal)
    if not parsed:
        return False
    try:
        return bool(
            _math_verify().verify(
                gold,
                parsed,
                timeout_seconds=MATH_VERIFY_TIMEOUT_SECONDS if use_signal else None,
                raise_on_error=False,
            )
        )
    except BaseException as error:
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        return False


def math_answer_reward(
    completions: Sequence,
    answer: Sequence,
    *,
    stop_marker: str | Sequence[str] = DEFAULT_STOP_MARKER,
    model_turns: Sequence | None = None,
    turns: Sequence | None = None,
    **kwargs,
) -> list[float | None]:
    """1.0 if the final answer of a completion equals the reference answer, else 0.0 (TRL reward function).

    Args:
        completions: the completions, as strings or as lists of chat messages (conversational data).
        answer: the dataset column `answer`, one reference per completion: GSM8K's "... #### 72", or a bare answer
            ("72", "\\frac{1}{2}", "$x=3$", "\\{1,2\\}", "5 cm", "\\$1,080", ...).
        stop_marker: the loop's GTPOConfig.turn_stop_marker, which opens the tool's output blocks; a string, or one
            per completion (as a rollout_func's extra field arrives).
        model_turns: optional, one list of the model's own turn texts per completion (decoded from the tokens the
            tool mask marks as the model's); when given, the answer is read from them instead of `completions`, so
            no tool text can ever pass for the model's.
        turns: the code interpreter's `TurnRecord`s per completion (its rollout returns them, and TRL hands them to
            reward functions): when given without `model_turns`, the model's turn texts are read from them.
        **kwargs: the other columns and TRL's extra arguments (ignored).

    Returns:
        One value per completion: 1.0 (equal per math-verify: 0.5 == \\frac12, 3/4 == \\dfrac{3}{4}, 1,234 == 1234,
        \\$18 == 18, 5\\text{ cm} == 5, {1,2} == {2,1}, ...), 0.0 (wrong, or no answer found, or the answer does not
        parse), or None when the reference itself is missing or unparsable (the row cannot be scored; TRL treats
        None as NaN).

    Safe in any thread and inside event loops (see the module docstring). Raises ValueError when the columns do not
    have one entry per completion, and TypeError for a completion that is neither text nor chat messages.
    """
    if model_turns is None and turns is not None:
        model_turns = _model_turn_texts(turns)
    answer = _per_completion(answer, completions, "answers")
    stop_markers = _per_completion(stop_marker, completions, "stop markers")
    sources = completions if model_turns is None else _per_completion(model_turns, completions, "model_turns rows")
    use_signal = _signal_timeout_usable()
    rewards: list[float | None] = []
    for source, reference, marker in zip(sources, answer, stop_markers, strict=True):
        reference_text = reference_answer(reference)
        if reference_text is not None:
            reference_text = _normalize_answer(reference_text)
        if not reference_text or len(reference_text) > _MAX_REFERENCE_CHARS:
            rewards.append(None)
            continue
        if not _parse_reference(reference_text, use_signal):
            rewards.append(None)
            continue
        prediction = final_answer(source, stop_marker=marker)
        if prediction is None:
            rewards.append(0.0)
            continue
        prediction = _normalize_answer(prediction)
        if not prediction or len(prediction) > _MAX_ANSWER_CHARS:
            rewards.append(0.0)
            continue
        rewards.append(1.0 if _answer_is_correct(prediction, reference_text, use_signal) else 0.0)
    return rewards


def _per_completion(value, completions: Sequence, what: str) -> Sequence:
    """`value` once per completion: a column as given, or a single value repeated."""
    if isinstance(value, (str, bytes)) or value is None or not hasattr(value, "__len__"):
        return [value] * len(completions)
    if len(value) != len(completions):
        raise ValueError(
            f"math_answer_reward got {len(completions)} completions but {len(value)} {what}: pass one per completion."
        )
    return value


def _model_turn_texts(turns: Sequence) -> list[list[str]] | None:
    """The model's turn texts of `TurnRecord`s per completion; None when `turns` is something else (e.g. a column)."""
    if all(isinstance(row, (list, tuple)) and all(isinstance(t, TurnRecord) for t in row) for row in turns):
        return [[turn.text for turn in row] for row in turns]
    return None
