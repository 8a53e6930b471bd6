"""What the trainer tests share: CPU-sized configs, a trainer that records GRPO's and GTPO's advantages of every
batch, and scripted code-interpreter trajectories (A-D) whose advantages the tests compute by hand."""

import contextlib
import io
import os

import torch
import trl

from trl_gtpo import GTPOConfig, GTPOTrainer
from trl_gtpo.interpreter.executor import ExecutionResult
from trl_gtpo.turn_records import turn_spans

QUESTION = [{"role": "user", "content": "What is 6 * 7?"}]

# Code samples for the similarity and shaping tests: a solution, the same with other layout and comments, other code.
SOLUTION = """import math

def area(r):
    return math.pi * r ** 2

print(round(area(3), 2))
"""
SAME_SOLUTION_OTHER_LAYOUT = """import math
# the area of a circle
def area(r):  # radius
    return math.pi*r**2
print( round( area(3), 2 ) )
"""
OTHER_CODE = """total = 0
for i in range(10):
    total += i
print(total)
"""


def boxed_42(completions, **kwargs):
    return [1.0 if "\\boxed{42}" in completion[0]["content"] else 0.0 for completion in completions]


def trl_args(tmp_path, **overrides) -> dict:
    """Arguments every GRPOConfig takes, sized for the CPU."""
    return dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=64,
        max_steps=2,
        logging_steps=1,
        learning_rate=1e-3,
        report_to="none",
        bf16=False,
        use_cpu=True,
        save_strategy="no",
    ) | overrides


def make_args(tmp_path, **overrides):
    return GTPOConfig(**(trl_args(tmp_path, tool_timeout=5.0, tool_pool_size=2) | overrides))


class RecordingGTPOTrainer(GTPOTrainer):
    """Keeps GRPO's (B,) advantages and GTPO's (B, T) ones of every batch, to compare them, and the loss mask the
    batch is trained with (`mask`, after `mask_truncated_completions`)."""

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        self.records[-1]["mask"] = (output["completion_mask"] * output.get("tool_mask", 1)).clone()
        self.records[-1]["num_items_in_batch"] = output["num_items_in_batch"]
        return output

    def _turn_level_advantages(self, step, output):
        advantages = super()._turn_level_advantages(step, output)
        masks = step.tool_masks or [[1] * len(ids) for ids in step.completion_ids]
        self.records = getattr(self, "records", [])
        self.records.append(
            {
                "grpo": output["advantages"].clone(),
                "gtpo": advantages.clone(),
                "mask": (output["completion_mask"] * output.get("tool_mask", 1)).clone(),
                "unmasked": torch.tensor(
                    [list(m) + [0] * (output["completion_ids"].shape[1] - len(m)) for m in masks]
                ),
                "turns": step.extra_fields.get("turns"),
                "completion_ids": step.completion_ids,
            }
        )
        return advantages


SCRIPTS = {
    # success after one tool call
    "A": ["[A]\n```python\nprint(6 * 7)\n```\n", "The answer is \\boxed{42}.<EOS>"],
    # failure with exactly A's code: shaped
    "B": ["[B]\n```python\nprint(6 * 7)\n```\n", "The answer is \\boxed{41}.<EOS>"],
    # success without any tool call: format penalty on its only (final) turn
    "C": ["[C] The answer is \\boxed{42}.<EOS>"],
    # failure whose code does not parse: format penalty on turn 1, shaped by its similarity to A's code
    "D": ["[D]\n```python\nprint(6 *\n```\n", "The answer is \\boxed{0}.<EOS>"],
}


class TaggedScripts:
    """`generate_turn` replaying SCRIPTS; trajectories share one prompt, so each is told apart by its [tag]."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.remaining = {tag: list(segments) for tag, segments in SCRIPTS.items()}
        self.unassigned = list(SCRIPTS)

    def __call__(self, prompt_ids, max_new_tokens):
        outputs = []
        for ids in prompt_ids:
            text = self.tokenizer.decode(ids)
            tag = next((t for t in SCRIPTS if f"[{t}]" in text), None) or self.unassigned.pop(0)
            segment = self.remaining[tag].pop(0) if self.remaining[tag] else "<EOS>"
            new = self.tokenizer.encode(segment.replace("<EOS>", ""), add_special_tokens=False)
            if segment.endswith("<EOS>"):
                new.append(self.tokenizer.eos_token_id)
            outputs.append(new[:max_new_tokens])
        return outputs, None


def rows_by_tag(record, tokenizer) -> dict[str, int]:
    """Which batch row holds which scripted trajectory."""
    rows = {}
    for i, ids in enumerate(record["completion_ids"]):
        rows[next(t for t in SCRIPTS if f"[{t}]" in tokenizer.decode(ids))] = i
    return rows


def prepared_batch(advantages: torch.Tensor, completion_mask: torch.Tensor, tool_mask=None, **extra) -> dict:
    """A batch as `_prepare_inputs` hands it to `compute_loss` (3 prompt tokens, token ids 5), with `advantages` as
    given: (B,) for GRPOTrainer, (B, T) for GTPOTrainer."""
    rows, width = completion_mask.shape
    batch = {
        "prompt_ids": torch.full((rows, 3), 5),
        "prompt_mask": torch.ones(rows, 3, dtype=torch.long),
        "completion_ids": torch.full((rows, width), 5),
        "completion_mask": completion_mask.long(),
        "advantages": advantages,
        "num_items_in_batch": (completion_mask * (1 if tool_mask is None else tool_mask)).sum().float(),
    }
    if tool_mask is not None:
        batch["tool_mask"] = tool_mask.long()
    return batch | extra


def loss_and_grad(trainer, batch: dict, logps: torch.Tensor, entropies: torch.Tensor | None = None):
    """`trainer.compute_loss` on `batch` with the forward pass replaced by the given per-token log-probs (a leaf the
    loss is differentiated by): returns (loss, d loss / d logps). The same batch and log-probs give two trainers the
    same inputs exactly, so their losses can be compared number for number."""
    theta = logps.detach().clone().requires_grad_(True)
    entropies = torch.ones_like(theta) if entropies is None else entropies

    def forward(*args, **kwargs):
        return theta, entropies, None

    trainer._get_per_token_logps_and_entropies = forward
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    try:
        loss = trainer.compute_loss(trainer.model, dict(batch))
    finally:
        del trainer._get_per_token_logps_and_entropies
    loss.backward()
    return loss.detach(), theta.grad


class ExecExecutor:
    """Runs each call with exec() in its session's namespace (the sandbox has its own tests)."""

    def __init__(self):
        self.sessions = {}

    def run(self, calls):
        results = []
        for call in calls:
            buffer = io.StringIO()
            try:
                with contextlib.redirect_stdout(buffer):
                    exec(call.code, self.sessions.setdefault(call.session_id, {}))
                results.append(ExecutionResult(buffer.getvalue(), "ok"))
            except Exception as error:
                results.append(ExecutionResult(f"{type(error).__name__}: {error}", "error"))
        return results

    def close_session(self, session_id):
        self.sessions.pop(session_id, None)

    def close(self):
        pass


def first_token_advantages(trainer_record, row) -> list[float]:
    """The advantage of each turn of a row, read at the turn's first token."""
    mask = trainer_record["unmasked"][row].tolist()
    return [trainer_record["gtpo"][row, start].item() for start, _ in turn_spans(mask)]


def pooled(returns_by_row: list[list[float]]) -> list[list[float]]:
    values = torch.tensor([value for row in returns_by_row for value in row])
    mean, std = values.mean(), values.std()
    return [[((value - mean) / (std + 1e-4)).item() for value in row] for row in returns_by_row]


def tool_calling_tokenizer(path):
    """The tiny byte-level tokenizer with TRL's Qwen3 chat template, which renders and parses JSON tool calls."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.chat_template = open(os.path.join(os.path.dirname(trl.__file__), "chat_templates", "qwen3.jinja")).read()
    return tokenizer
