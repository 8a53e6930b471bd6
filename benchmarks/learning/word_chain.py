"""A chain task for the packaged pretrained model (issue 29, item 1): a word problem solved one operation per tool turn.

    A baker buys 24 bags of flour with 15 kilograms in each bag. She uses 25% of the flour for bread. Then she gives
    30 kilograms to a neighbor. A kilogram is 1000 grams. How many grams of flour does she have left?

is solved, in SmolLM2-135M-Instruct's code format with the running value in `x`, as

    ```python\\nx = 24 * 15\\nprint(x)\\n```              -> 360       step 1: a product of two numbers of the question
    ```python\\nx = x - x * 25 / 100\\nprint(x)\\n```     -> 270.0     step 2: what is left after a percentage
    ```python\\nx = x - 30\\nprint(x)\\n```               -> 240.0     step 3: subtract the quantity taken away
    ```python\\nx = x * 1000\\nprint(x)\\n```             -> 240000.0  step 4: a unit conversion
    The answer is \\boxed{240000}.

Why this task: each step needs a different skill with its own pitfall (copying the two factors; taking what is
LEFT, not the share used; picking the quantity taken away among the question's numbers; applying the stated unit
factor, 1000 or 100, instead of repeating the subtraction), so each turn is a
decision of its own, and each is checked on its own: step k is right when its printed value is step k's operation
applied to what step k - 1 PRINTED (or equals the true k-th value), so a mistake at step 2 does not take step 3's
reward away when step 3 did its own operation right. That is the case GTPO is for (P6): a turn reward that depends
on the turn's own action only.

`steps=3` is the same task without the conversion (the answer in the story's unit): on the base model the conversion
step had no room (benchmarks/results/credit_pretrained_design.md).

Splits: a problem is in the test split by a hash of its question (one in `TEST_EVERY`), so the splits never share a
problem, whatever the seed or size. The worked examples of the prompt use stories and numbers of neither split.
"""

import ast
import hashlib
import math
import operator
import random
from typing import NamedTuple

from trl_gtpo.rewards.turn import last_printed_number


class Scenario(NamedTuple):
    """A story: a product (a things of b units each), a percentage used up, a quantity taken away; with 4 steps the
    answer is asked in a smaller unit, its factor stated (`conversion`), with 3 in the story's own unit."""

    body: str
    conversion: str
    ask: str
    units: tuple[str, str]
    factor: int

    def question(self, a: int, b: int, p: int, w: int, steps: int) -> str:
        ask = self.ask.format(unit=self.units[steps == 4])
        return f"{self.body.format(a=a, b=b, p=p, w=w)} {self.conversion + ' ' if steps == 4 else ''}{ask}"


# {a} and {b} may appear in either order. Two steps of the first design gave the packaged model no room
# (credit_pretrained_design.md): the quantity taken away named in words ("seventy-one", then tens only) was right in
# 0 of 40 greedy chains (it subtracted another number of the question), and the conversion with its factor left
# unstated in 0 of 40 (it subtracted again); stated, still 0 of 8 (hence the 3-step variant).
SCENARIOS: tuple[Scenario, ...] = (
    Scenario("A baker buys {a} bags of flour with {b} kilograms in each bag. She uses {p}% of the flour for bread. "
             "Then she gives {w} kilograms to a neighbor.", "A kilogram is 1000 grams.",
             "How many {unit} of flour does she have left?", ("kilograms", "grams"), 1000),
    Scenario("A farm fills {a} tanks with {b} liters of water each. The animals drink {p}% of the water. Then {w} "
             "liters leak out.", "A liter is 1000 milliliters.", "How many {unit} of water are left?",
             ("liters", "milliliters"), 1000),
    Scenario("A shop has {a} rolls of ribbon with {b} meters on each roll. It sells {p}% of the ribbon. Then {w} "
             "meters are cut off for a display.", "A meter is 100 centimeters.", "How many {unit} of ribbon are left?",
             ("meters", "centimeters"), 100),
    Scenario("A club collects {b} dollars from each of its {a} members. It spends {p}% of the money on a trip. Then "
             "it spends {w} dollars on snacks.", "A dollar is 100 cents.", "How many {unit} are left?",
             ("dollars", "cents"), 100),
)
PERCENTS = (10, 20, 25, 30, 40, 50, 60, 75)
FACTOR_RANGE = (12, 48)
TAKEN_RANGE = (11, 99)
TEST_EVERY = 5
STEPS = 4  # the full chain; 3 drops the unit conversion

SYSTEM_PROMPT = (
    "You are a math assistant with a Python interpreter. Solve the problem one step at a time: for each step write "
    "a ```python block that updates x and prints it. The code is run and its output is shown to you in an ```output "
    'block. After the last step, write "The answer is \\boxed{...}" with the final answer.'
)

def step_expressions(a: int, b: int, p: int, w: int, factor: int, steps: int = STEPS) -> list[str]:
    """Each step's operation as Python over the previous value `x` (the first reads the question only): what the
    worked examples write, and what the turn reward applies to the previous printed value."""
    if steps not in (3, 4):
        raise ValueError(f"the word chain has 3 or 4 steps, not {steps}")
    return [f"{a} * {b}", f"x - x * {p} / 100", f"x - {w}", f"x * {factor}"][:steps]


def evaluate_step(expression: str, x: float | None) -> float | None:
    """The value of a step's expression with `x` the previous value; None if it needs an x that is missing. Only
    numbers, x and + - * / are read (the expressions are ours, but the parser keeps them arithmetic)."""
    operations = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}

    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name) and node.id == "x":
            if x is None:
                raise LookupError
            return x
        if isinstance(node, ast.BinOp) and type(node.op) in operations:
            return operations[type(node.op)](value(node.left), value(node.right))
        raise ValueError(f"not an arithmetic step: {expression!r}")

    try:
        return float(value(ast.parse(expression, mode="eval").body))
    except LookupError:
        return None


def row(scenario: int, a: int, b: int, p: int, w: int, steps: int = STEPS) -> dict:
    story = SCENARIOS[scenario]
    question = story.question(a, b, p, w, steps)
    expressions, values, x = step_expressions(a, b, p, w, story.factor, steps), [], None
    for expression in expressions:
        x = evaluate_step(expression, x)
        values.append(x)
    return {"question": question, "prompt": prompt(question, steps), "answer": _as_text(values[-1]),
            "steps": expressions, "intermediates": [_as_text(v) for v in values], "scenario": scenario}


def split_of(question: str) -> str:
    digest = hashlib.sha256(question.encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") % TEST_EVERY == 0 else "train"


def problems(n: int, seed: int, split: str = "train", steps: int = STEPS) -> list[dict]:
    """`n` distinct problems of `split`, deterministic in (n, seed, split, steps). Every value along the right solution is a
    whole number: 3-4 digit products, a percentage that divides them, a quantity below what is left."""
    rng = random.Random(f"word_chain {split} {seed}")
    rows, seen = [], set()
    while len(rows) < n:
        scenario = rng.randrange(len(SCENARIOS))
        a, b, p = rng.randint(*FACTOR_RANGE), rng.randint(*FACTOR_RANGE), rng.choice(PERCENTS)
        w = rng.randint(*TAKEN_RANGE)
        left = a * b * (100 - p)
        if left % 100 or w >= left // 100:
            continue
        example = row(scenario, a, b, p, w, steps)
        if example["question"] in seen or split_of(example["question"]) != split:
            continue
        seen.add(example["question"])
        rows.append(example)
    return rows


def test_problems(n: int = 64, steps: int = STEPS) -> list[dict]:
    """The held-out chains: fixed, the same for every run."""
    return problems(n, 12345, "test", steps)


def solution(example: dict) -> str:
    """The right transcript of a problem: one code turn per step, the tool's outputs, the boxed answer."""
    text = ""
    for k, (expression, value) in enumerate(zip(example["steps"], example["intermediates"])):
        text += step_block(expression) + f"```output\n{_printed(float(value), k)}\n```\n"
    return text + f"The answer is \\boxed{{{example['answer']}}}."


def step_block(expression: str) -> str:
    return f"```python\nx = {expression}\nprint(x)\n```\n"


# Worked examples: stories, units and numbers of neither split (kilograms to grams and meters to centimeters, so both
# factors are shown). Written exactly as a trajectory looks.
_EXAMPLES: tuple[tuple[Scenario, tuple[int, int, int, int]], ...] = (
    (Scenario("A farmer picks {a} crates of apples with {b} kilograms in each crate. He sells {p}% of the apples at "
              "the market. Then he gives {w} kilograms to his family.", "A kilogram is 1000 grams.",
              "How many {unit} of apples does he have left?", ("kilograms", "grams"), 1000), (24, 15, 25, 30)),
    (Scenario("A tailor buys {a} bolts of cloth with {b} meters on each bolt. She uses {p}% of the cloth for coats. "
              "Then she cuts {w} meters for a curtain.", "A meter is 100 centimeters.",
              "How many {unit} of cloth are left?", ("meters", "centimeters"), 100), (16, 35, 40, 52)),
)


def worked_examples(steps: int = STEPS) -> list[tuple[str, str]]:
    """(question, transcript) pairs for the prompt, with `steps` steps like the task."""
    pairs = []
    for story, (a, b, p, w) in _EXAMPLES:
        expressions, values, x = step_expressions(a, b, p, w, story.factor, steps), [], None
        for expression in expressions:
            x = evaluate_step(expression, x)
            values.append(_as_text(x))
        example = {"steps": expressions, "intermediates": values, "answer": values[-1]}
        pairs.append((story.question(a, b, p, w, steps), solution(example)))
    return pairs


def prompt(question: str, steps: int = STEPS) -> list[dict]:
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for example_question, transcript in worked_examples(steps):
        messages += [{"role": "user", "content": example_question}, {"role": "assistant", "content": transcript}]
    return messages + [{"role": "user", "content": question}]


# ---------------------------------------------------------------------------------------------------------------
# Scoring

def step_checks(turns, steps: list[str], intermediates: list) -> list[tuple[int, int, bool]]:
    """(turn index, step, right) for each tool call of one trajectory that ran: the k-th call is step k.

    A call is right when the last number it printed equals step k's operation applied to the last number printed
    by an earlier call (what the session's x holds when the steps follow the worked examples), or equals the true
    k-th value (a step that recomputes from the question is right too). A call that failed or printed no number is
    wrong, and the next call is judged as the next step against the last number printed before: a step that raised
    (`x = x - y`) does not take the following step's reward away. A retry of a failed step is judged as the
    next step (rare with the worked examples, which never retry). Calls past the last step are wrong."""
    checks, previous = [], None
    for turn in turns:
        if not turn.ran:
            continue
        printed = last_printed_number(turn)
        k = len(checks)
        right = False
        if k < len(steps) and printed is not None:
            expected = [evaluate_step(steps[k], previous), float(intermediates[k])]
            right = any(value is not None and math.isclose(printed, value, rel_tol=1e-9, abs_tol=1e-6)
                        for value in expected)
        checks.append((turn.index, k, right))
        previous = printed if printed is not None else previous
    return checks


def step_turn_reward(turns, steps, intermediates, **kwargs) -> list[list[float | None]]:
    """GTPO turn reward (TRL's reward signature plus `turns`; dataset columns `steps` and `intermediates`): 1/n for a
    call whose step is right by `step_checks` (n steps, so the steps of a problem add up to at most 1, never more
    than the outcome), 0.0 for any other call that ran, None for a turn without a call that ran."""
    rewards = []
    for trajectory, expressions, values in zip(turns, steps, intermediates, strict=True):
        share = 1.0 / len(expressions)
        right = {index: ok for index, _, ok in step_checks(trajectory, expressions, values)}
        rewards.append([(share if right.get(turn.index) else 0.0) if turn.ran else None for turn in trajectory])
    return rewards


def boxed_answer_reward(completions, answer, **kwargs) -> list[float]:
    """1.0 if the last \\boxed{...} of the completion is the final value as a number (240000 and 240000.0 both
    count), else 0.0."""
    rewards = []
    for text, reference in zip(completions, answer):
        text = text if isinstance(text, str) else text[-1]["content"]
        start = text.rfind("\\boxed{")
        end = text.find("}", start)
        value = _as_number(text[start + 7 : end]) if start != -1 and end != -1 else None
        rewards.append(1.0 if value is not None and math.isclose(value, float(reference), abs_tol=1e-6) else 0.0)
    return rewards


def _as_number(text: str) -> float | None:
    try:
        return float(text.strip().replace(",", ""))
    except ValueError:
        return None


def _as_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _printed(value: float, step: int) -> str:
    """What print(x) shows: an int after the product, a float after the first division."""
    return str(int(value)) if step == 0 else repr(float(value))


# ---------------------------------------------------------------------------------------------------------------
# The held-out measure without sampling noise


def step_spans(text: str) -> list[tuple[int, int]]:
    """[begin, end) of each model part of a right transcript: each step's ```python block, then the answer line
    with what follows it (the tool's output blocks are not the model's)."""
    spans, position = [], 0
    while (begin := text.find("```python\n", position)) != -1:
        end = text.find("\n```\n", begin + 10) + 5
        spans.append((begin, end))
        position = end
    answer = text.find("The answer is", position)
    return spans + [(answer, len(text))]


def step_probabilities(model, tokenizer, rows: list[dict], batch_size: int = 8) -> list[list[float]]:
    """For each row: the teacher-forced probability at temperature 1 of each step's right code block, given the
    prompt and the right transcript before it, then of the answer line and EOS. One forward pass per chain, the
    prompts' shared beginning (system prompt, worked examples) computed once. Why: a held-out figure per step without
    sampling noise; a lower bound of the step being right (another right wording counts in sampling, not here)."""
    import copy

    import torch

    sequences = []
    for example in rows:
        prompt_text = tokenizer.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=False)
        text = solution(example)
        encoded = tokenizer(prompt_text + text, add_special_tokens=False, return_offsets_mapping=True)
        spans = [(len(prompt_text) + b, len(prompt_text) + e) for b, e in step_spans(text)]
        owner = [next((k for k, (lo, hi) in enumerate(spans) if lo <= b < hi), -1) for b, _ in encoded["offset_mapping"]]
        sequences.append((encoded["input_ids"] + [tokenizer.eos_token_id], owner + [len(spans) - 1]))
    shared = min(len(ids) for ids, _ in sequences) - 1
    while shared > 0 and len({tuple(ids[:shared]) for ids, _ in sequences}) > 1:
        shared -= 1
    model.eval()
    results = []
    with torch.no_grad():
        prefix = model(input_ids=torch.tensor([sequences[0][0][:shared]]), use_cache=True).past_key_values
        for i in range(0, len(sequences), batch_size):
            batch = sequences[i : i + batch_size]
            width = max(len(ids) for ids, _ in batch) - shared
            ids = torch.tensor([s[shared:] + [tokenizer.pad_token_id] * (width - len(s) + shared) for s, _ in batch])
            attention = torch.cat([torch.ones(len(batch), shared, dtype=torch.long),
                                   (torch.arange(width) < torch.tensor([len(s) - shared for s, _ in batch])[:, None]).long()], 1)
            past = copy.deepcopy(prefix)
            past.batch_repeat_interleave(len(batch))
            logits = model(input_ids=ids, attention_mask=attention, past_key_values=past).logits.float()
            logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, ids[:, 1:, None]).squeeze(2)
            for row_logps, (full, owner) in zip(logps.tolist(), batch):
                totals = [0.0] * (max(owner) + 1)
                for position in range(shared + 1, len(full)):  # token `position` predicted from the one before
                    if owner[position] >= 0:
                        totals[owner[position]] += row_logps[position - shared - 1]
                results.append([math.exp(total) for total in totals])
    return results
