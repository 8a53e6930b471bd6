"""The credit-assignment task (issue 19): a chain of arithmetic steps, one tool turn per step, each step checkable.

A prompt names a start value and 2 or 4 operations ("Start at 52. Then: * 37, + 611."; 4 steps add "% 83, * 45").
The model runs one ```python block per step in its persistent session and then copies the last output:

    ```python\\nx = 52 * 37\\nprint(x)\\n```   -> ```output\\n1924\\n```       (turn 1: step 1)
    ```python\\nx = x + 611\\nprint(x)\\n```   -> ```output\\n2535\\n```       (turn 2: step 2)
    The answer is \\boxed{2535}.                                             (turn 3: the answer)

Why this task: each step is a decision of its own that can be right or wrong, and each is checkable. Turn j's tool
output is compared with the TRUE j-th intermediate value (`trl_gtpo.rewards.turn.intermediate_value_turn_reward`
reading the `intermediates` column), so a trajectory whose step 1 is right and step 2 wrong earns the step-1 reward
and not the step-2 one; the outcome (the boxed value equals the final value) needs every step. GRPO given the same
turn rewards summed into one trajectory reward hands that total to every turn alike; GTPO hands turn j only the
rewards of turns j and later.

The supervised stage (`teach_format`) writes every step's operand from the prompt, except that each step, on its own
and with probability P_ERR, gets a wrong operand of the same number of digits: groups then mix right and wrong
steps, independently per step. Operands have 2-3 digits, so intermediates (3-5 digits) cannot be guessed: no reward
is reachable without running the steps, and a value in the answer that was not printed by the tool is almost never
right. The answer turn copies the last output (it can also be wrong, rarely).
"""

import os
import random

P_ERR = 0.25  # per-step probability of a wrong operand in the supervised data
OPERATIONS = ("*", "+", "*", "+")  # step j applies OPERATIONS[j]: 2 steps use the first two, 4 steps all four
OPERAND_RANGE = (2, 9)  # one token each: a step is one decision (its operand), not a long copy
START_RANGE = (11, 99)


def held_out(start: int, operands: tuple[int, ...]) -> bool:
    """One chain in 4 is held out (by a fixed rule, so the sets never meet): neither the supervised stage nor RL
    sees it. Until issue 29 the supervised stage drew a quarter of its chains from the held-out rule, and about 30%
    of the 64 held-out 2-step chains were among them."""
    return (start + operands[0]) % 4 == 0


def apply(x: int, operation: str, operand: int) -> int:
    return x * operand if operation == "*" else x + operand


def intermediates(start: int, operands: tuple[int, ...]) -> list[int]:
    values, x = [], start
    for operation, operand in zip(OPERATIONS, operands):
        x = apply(x, operation, operand)
        values.append(x)
    return values


def prompt_text(start: int, operands: tuple[int, ...]) -> str:
    steps = ", ".join(f"{operation} {operand}" for operation, operand in zip(OPERATIONS, operands))
    return f"Start at {start}. Then: {steps}."


def row(start: int, operands: tuple[int, ...]) -> dict:
    values = intermediates(start, operands)
    return {
        "prompt": [{"role": "user", "content": prompt_text(start, operands)}],
        "answer": str(values[-1]),
        "intermediates": [str(v) for v in values],
        "start": start,
        "operands": list(operands),
    }


def chain(rng: random.Random, steps: int, split: str = "train") -> dict:
    while True:
        start = rng.randint(*START_RANGE)
        operands = tuple(rng.randint(*OPERAND_RANGE) for _ in range(steps))
        if held_out(start, operands) == (split == "test"):
            return row(start, operands)


def problems(n: int, seed: int, steps: int, split: str = "train") -> list[dict]:
    rng = random.Random(f"{split} {steps} {seed}")
    return [chain(rng, steps, split) for _ in range(n)]


def test_problems(steps: int, n: int = 64) -> list[dict]:
    """The held-out chains: fixed, the same for every run."""
    return problems(n, 12345, steps, "test")


def step_code(j: int, start: int, operation: str, operand: int) -> str:
    source = f"x = {start} {operation} {operand}" if j == 0 else f"x = x {operation} {operand}"
    return f"```python\n{source}\nprint(x)\n```\n"


def completion(start: int, operands: tuple[int, ...], wrong: tuple[bool, ...], rng: random.Random) -> str:
    """The transcript of one chain; `wrong[j]`: step j writes a wrong operand (its output follows from it)."""
    text, x = "", start
    for j, (operation, operand) in enumerate(zip(OPERATIONS, operands)):
        if wrong[j]:
            low, high = OPERAND_RANGE
            operand = rng.choice([v for v in range(low, high + 1) if v != operand])
        text += step_code(j, start, operation, operand)
        x = apply(x, operation, operand)
        text += f"```output\n{x}\n```\n"
    return text + f"The answer is \\boxed{{{x}}}."


def route_probability(model, tokenizer, rows: list[dict], batch_size: int = 32) -> list[float]:
    """P(the model at temperature 1 writes the right transcript) for each chain of `rows`, exactly: the product of the
    probabilities of its model tokens (every step with the right operand, the right answer, EOS), the tool's output
    blocks given. A lower bound of the sampled success (another wording that also boxes the right value would count
    there), without sampling noise; the model is taught only this wording, so the bound is close."""
    import torch

    sequences = []
    for row_ in rows:
        start, operands = row_["start"], tuple(row_["operands"])
        text = completion(start, operands, (False,) * len(operands), random.Random(0))
        prompt = tokenizer.apply_chat_template(row_["prompt"], add_generation_prompt=True, tokenize=False)
        encoded = tokenizer(prompt + text, add_special_tokens=False, return_offsets_mapping=True)
        outputs, position = [], 0
        while (begin := text.find("```output\n", position)) != -1:  # [begin, end) of each tool output block
            end = text.find("\n```\n", begin + 10) + 5
            outputs.append((len(prompt) + begin, len(prompt) + end))
            position = end
        scored = [int(b >= len(prompt) and not any(lo <= b < hi for lo, hi in outputs))
                  for b, _ in encoded["offset_mapping"]]
        sequences.append((encoded["input_ids"] + [tokenizer.eos_token_id], scored + [1]))
    probabilities = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(sequences), batch_size):
            batch = sequences[i : i + batch_size]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.tensor([s + [tokenizer.pad_token_id] * (width - len(s)) for s, _ in batch])
            scored = torch.tensor([m + [0] * (width - len(m)) for _, m in batch], dtype=torch.bool)
            attention = torch.arange(width) < torch.tensor([len(s) for s, _ in batch])[:, None]
            logits = model(input_ids=ids, attention_mask=attention.long()).logits.float()
            logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(2, ids[:, 1:, None]).squeeze(2)
            probabilities += torch.exp((logps * scored[:, 1:]).sum(dim=1)).tolist()
    return probabilities


def boxed_answer_reward(completions, answer, **kwargs) -> list[float]:
    """1.0 if the last \\boxed{...} of the completion is exactly the final value, else 0.0."""
    rewards = []
    for text, reference in zip(completions, answer):
        text = text if isinstance(text, str) else text[-1]["content"]
        start = text.rfind("\\boxed{")
        end = text.find("}", start)
        rewards.append(1.0 if start != -1 and end != -1 and text[start + 7 : end].strip() == reference else 0.0)
    return rewards


def supervised_examples(rng: random.Random, examples: int) -> list[tuple[dict, str]]:
    """The supervised stage's (chain, transcript) pairs: chains of 2 and 4 steps from the train split only (the
    held-out chains are seen by no stage), each step wrong with probability P_ERR on its own."""
    pairs = []
    for _ in range(examples):
        chain_steps = rng.choice((2, 4))
        example = chain(rng, chain_steps, split="train")
        wrong = tuple(rng.random() < P_ERR for _ in range(chain_steps))
        pairs.append((example, completion(example["start"], tuple(example["operands"]), wrong, rng)))
    return pairs


def teach_format(path: str, seed: int = 0, steps: int = 1500, batch_size: int = 16, examples: int = 4000,
                 hidden_size: int = 64, num_layers: int = 2, lr: float = 3e-3) -> str:
    """Supervised stage: a tiny random model (seed `seed`: its own initialization and data) trained on
    `supervised_examples`. Saved to `path`, reused when there (the signature's "v3": train-split chains only)."""
    from task import fit_and_save, supervised_sequence  # this folder is on sys.path for the scripts that teach

    from trl_gtpo.testing import make_tiny_model, make_tiny_tokenizer

    marker = os.path.join(path, "taught.txt")
    signature = f"chain v3 {seed} {steps} {batch_size} {examples} {hidden_size} {num_layers} {lr} {P_ERR}"
    if os.path.exists(marker) and open(marker).read() == signature:
        return path
    rng = random.Random(f"teach {seed}")
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer, hidden_size=hidden_size, num_layers=num_layers, seed=seed)
    sequences = [supervised_sequence(tokenizer, example["prompt"], text)
                 for example, text in supervised_examples(rng, examples)]
    loss = fit_and_save(
        model, tokenizer, sequences, rng, path, signature, steps=steps, batch_size=batch_size, lr=lr, seed=seed
    )
    print(f"taught the chain format (seed {seed}) in {steps} steps, final loss {loss:.3f}: {path}")
    return path
