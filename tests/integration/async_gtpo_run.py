"""What test_vllm_async_gtpo.py runs in TRL's spawned rollout process, and the model it serves.

`build_tool_calling_model`: a tiny model overfit, under TRL's Qwen3 chat template with the `python` tool's schema, to
two behaviours: "Say hi." -> "hi" (1 turn), "Count to three." -> three `python` calls (print 1, 2, 3), then "done"
(4 turns). `RecordingRolloutLoop`: `GTPORolloutLoop` that appends, to the JSON-lines file named by
$GTPO_ASYNC_RECORD, when each rollout starts and ends (one counter for the whole process, so the order of events is
known without clocks) and each scored row with its per-token advantages. Module-level, so the spawned process
imports them by name.
"""

from __future__ import annotations

import itertools
import json
import os
import time
import types
from pathlib import Path

from trl_gtpo._trl_compat.async_grpo import GTPORolloutLoop
from trl_gtpo.interpreter.environment import PythonEnvironment

SAY_HI = "Say hi."
COUNT = "Count to three."

# What make_executor reads (a GTPOConfig's sandbox fields): a small local pool without preloaded modules.
SANDBOX = types.SimpleNamespace(
    tool_executor=None, tool_executor_kwargs={"preload": []}, tool_pool_size=2, tool_timeout=10.0,
    tool_memory_limit_mb=1024, max_tool_output_chars=256, persistent_tool_sessions=True,
)


def first_of_each_pair(completions, **kwargs):
    """Scripted outcome: the first rollout of each pair earns 1, the second 0 (a group of 2 gets +-0.5 deviations)."""
    return [1.0 if i % 2 == 0 else 0.0 for i in range(len(completions))]


def _call(code):
    return {"role": "assistant", "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "python", "arguments": {"code": code}}}]}


CONVERSATIONS = [
    [{"role": "user", "content": SAY_HI}, {"role": "assistant", "content": "hi"}],
    [{"role": "user", "content": COUNT}]
    + [m for k in (1, 2, 3) for m in (_call(f"print({k})"), {"role": "tool", "name": "python", "content": f"{k}\n"})]
    + [{"role": "assistant", "content": "done"}],
]


def chat_template_of(tokenizer):
    """The template TRL's async worker renders with (its training template when the tokenizer's is not
    prefix-preserving), so the model is taught on exactly the text it is prompted with."""
    from trl.chat_template_utils import get_training_chat_template, is_chat_template_prefix_preserving

    return None if is_chat_template_prefix_preserving(tokenizer) else get_training_chat_template(tokenizer)


def build_tool_calling_model(path, steps: int = 300) -> Path:
    import torch
    import trl

    from trl_gtpo.testing import make_tiny_model, make_tiny_tokenizer

    out = Path(path)
    if (out / "READY").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_tokenizer()
    tokenizer.chat_template = (Path(trl.__file__).parent / "chat_templates" / "qwen3.jinja").read_text()
    template = chat_template_of(tokenizer)
    tools = [PythonEnvironment().python]
    batch = []
    for messages in CONVERSATIONS:
        full = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, chat_template=template)
        spans = []  # the characters of each assistant message, as the template renders them
        for k, message in enumerate(messages):
            if message["role"] == "assistant":
                start = len(tokenizer.apply_chat_template(messages[:k], tools=tools, tokenize=False,
                                                          add_generation_prompt=True, chat_template=template))
                end = len(tokenizer.apply_chat_template(messages[: k + 1], tools=tools, tokenize=False,
                                                        chat_template=template))
                spans.append((start, end))
        encoded = tokenizer(full, return_offsets_mapping=True, add_special_tokens=False)
        labels = [token if any(s <= a and b <= e for s, e in spans) else -100
                  for token, (a, b) in zip(encoded.input_ids, encoded.offset_mapping)]
        batch.append((torch.tensor([encoded.input_ids]), torch.tensor([labels])))
    model = make_tiny_model(tokenizer, hidden_size=64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        for step in range(steps):
            input_ids, labels = batch[step % len(batch)]
            model(input_ids=input_ids, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "READY").write_text(f"{time.time()}\n")
    return out


class RecordingRolloutLoop(GTPORolloutLoop):
    """GTPORolloutLoop that records rollouts' start / end order and every scored row (see the module docstring)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._events = itertools.count()
        self._rollouts = itertools.count()

    def _record(self, **entry):
        with open(os.environ["GTPO_ASYNC_RECORD"], "a") as f:
            f.write(json.dumps(entry) + "\n")

    async def _generate_one(self, prompt, tool_dict, tools, group_id=0):
        rollout = next(self._rollouts)
        self._record(event="start", rollout=rollout, order=next(self._events), prompt=prompt[-1]["content"])
        result = await super()._generate_one(prompt, tool_dict, tools, group_id)
        turns = sum(message.get("role") == "assistant" for message in result[0])
        records = [(r.tool_call, r.status, r.tool_response) for r in result[0].records or []]
        self._record(event="end", rollout=rollout, order=next(self._events), turns=turns,
                     runs=[run.code for run in result[0].runs or []], records=records)
        return result

    async def _score_group(self, group):
        samples = await super()._score_group(group)
        position = 0
        for i, sequences in enumerate(group.completions_sequences):
            for r in range(len(sequences)):
                sample = samples[position]
                self._record(
                    event="scored", group=group.group_id, conversation=i, row=r, rows=len(sequences),
                    input_ids=sample.input_ids.tolist(), mask=sample.completion_mask.tolist(),
                    advantage=sample.advantage.tolist(), reward=sample.metrics["reward"],
                    text=self.tokenizer.decode(sample.input_ids.tolist()),
                )
                position += 1
        return samples


def counted_with_the_sandbox(completions, **kwargs):
    """1 for a rollout whose tool messages are the sandbox's outputs of print(1), print(2), print(3) in order."""
    return [
        1.0 if [m["content"].strip() for m in completion if m.get("role") == "tool"] == ["1", "2", "3"] else 0.0
        for completion in completions
    ]
