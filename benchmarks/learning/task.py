"""The regression benchmark's task: multiply two digits, where the answer needs a value computed by code.

The reward (the final \\boxed{} equals a * b) arrives on the last turn, and what earns it is the first turn's
decision to write code and the second turn's copy. It is the only reward, so with gamma 1 and no format or shaping
terms GTPO is GRPO here: both turns always get advantages of the same sign, and there is no turn-specific credit to
find (issue 19; the task where there is: chain.py). Products are at most 81, so a guessed two-digit number could be
memorized per prompt; the held-out pairs keep that from counting. The supervised stage (`teach_format`) teaches both
behaviours on purpose, mostly the wrong one:

    tool  (P_TOOL):     ```python\\nprint(a * b)\\n```  -> ```output\\nc\\n```  The answer is \\boxed{c}.
    guess (1 - P_TOOL): The answer is \\boxed{g}.   (g a random two-digit number: rarely right)

so the starting success rate is about P_TOOL times the copy accuracy, and RL has to move probability from the first
token of "The answer" to the first token of "```python", a decision whose reward comes one turn and one tool call
later; it can also sharpen the copy in turn 2.
"""

import os
import random

P_TOOL = 0.25


def held_out(a: int, b: int) -> bool:
    """16 of the 64 operand pairs never seen in RL training: the held-out set. The supervised stage sees all 64 (it
    teaches the format, not the task), so held-out success measures whether what RL learned carries over to
    prompts it never trained on."""
    return (7 * a + b) % 4 == 0


def problem(rng: random.Random, split: str = "train") -> dict:
    while True:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        if held_out(a, b) == (split == "test"):
            break
    return {"prompt": [{"role": "user", "content": f"What is {a} * {b}?"}], "answer": str(a * b), "a": a, "b": b}


def problems(n: int, seed: int, split: str = "train") -> list[dict]:
    rng = random.Random(seed)
    return [problem(rng, split) for _ in range(n)]


def test_problems() -> list[dict]:
    """Every held-out pair once, in a fixed order."""
    pairs = [(a, b) for a in range(2, 10) for b in range(2, 10) if held_out(a, b)]
    return [{"prompt": [{"role": "user", "content": f"What is {a} * {b}?"}], "answer": str(a * b)} for a, b in pairs]


def tool_completion(a: int, b: int) -> str:
    return f"```python\nprint({a} * {b})\n```\n```output\n{a * b}\n```\nThe answer is \\boxed{{{a * b}}}."


def guess_completion(rng: random.Random) -> str:
    return f"The answer is \\boxed{{{rng.randint(10, 99)}}}."


def boxed_answer_reward(completions, answer, **kwargs) -> list[float]:
    """1.0 if the last \\boxed{...} of the completion is exactly the product, else 0.0 (exact string: fast and
    unambiguous for integers, unlike a general math verifier)."""
    rewards = []
    for completion, reference in zip(completions, answer):
        text = completion if isinstance(completion, str) else completion[-1]["content"]
        start = text.rfind("\\boxed{")
        end = text.find("}", start)
        rewards.append(1.0 if start != -1 and end != -1 and text[start + 7 : end].strip() == reference else 0.0)
    return rewards


def teach_format(path: str, steps: int = 1600, batch_size: int = 16, examples: int = 2000, seed: int = 0,
                 hidden_size: int = 64, num_layers: int = 2, lr: float = 3e-3) -> str:
    """Supervised stage: a tiny random model trained on `examples` transcripts, P_TOOL of them with code. Saved
    with save_pretrained to `path` (reused when already there: the stage is deterministic in its arguments)."""
    from trl_gtpo.testing import make_tiny_model, make_tiny_tokenizer

    marker = os.path.join(path, "taught.txt")
    signature = f"v2 {steps} {batch_size} {examples} {seed} {hidden_size} {num_layers} {lr} {P_TOOL}"
    if os.path.exists(marker) and open(marker).read() == signature:
        return path
    rng = random.Random(seed)
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer, hidden_size=hidden_size, num_layers=num_layers, seed=seed)
    sequences = []
    for _ in range(examples):
        row = problem(rng, split=rng.choice(("train", "train", "train", "test")))
        text = tool_completion(row["a"], row["b"]) if rng.random() < P_TOOL else guess_completion(rng)
        sequences.append(supervised_sequence(tokenizer, row["prompt"], text))
    loss = fit_and_save(
        model, tokenizer, sequences, rng, path, signature, steps=steps, batch_size=batch_size, lr=lr, seed=seed
    )
    print(f"taught the format in {steps} steps, final loss {loss:.3f}: {path}")
    return path


def supervised_sequence(tokenizer, prompt: list, text: str) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one taught transcript: the chat-templated prompt (not trained) and `text` + EOS."""
    prompt_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer.encode(prompt_text, add_special_tokens=False)
    completion_ids = tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
    return prompt_ids + completion_ids, [-100] * len(prompt_ids) + completion_ids


def fit_and_save(model, tokenizer, sequences, rng, path: str, signature: str, *, steps: int, batch_size: int, lr: float,
                 seed: int) -> float:
    """The supervised stage of both benchmark tasks: AdamW with a linear decay on random batches of `sequences`
    (drawn with `rng`), then the model and tokenizer saved to `path` with `signature` as its cache marker. Returns
    the last batch's loss."""
    import torch

    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / steps)
    model.train()
    for _ in range(steps):
        batch = [sequences[rng.randrange(len(sequences))] for _ in range(batch_size)]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        attention = torch.arange(width) < torch.tensor([len(ids) for ids, _ in batch])[:, None]
        loss = model(input_ids=input_ids, attention_mask=attention.long(), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    model.eval()
    os.makedirs(path, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    with open(os.path.join(path, "taught.txt"), "w") as file:
        file.write(signature)
    return loss.item()
