"""Long episodes end to end (issue 30, item 1): 32 to 48 tool calls per trajectory through GTPOTrainer.

A scripted policy makes a different number of tool calls in each trajectory of one group (31, 35, 39 and 47, then
an answer turn), some of which raise; the code runs in an in-process executor. One full training step runs, and the
test reads back what was trained: the turn count of every trajectory, the tool outputs masked token by token, every
model turn's tokens carrying its own entry of the turn-advantage table, and every advantage within GRPO's bound
(G-1)/sqrt(G) at group scale.
"""

import math
import re

import pytest
import torch
from datasets import Dataset

from trl_gtpo.interpreter.rollout import CodeInterpreterRollout
from trl_gtpo.rewards.turn import tool_success_turn_reward

from helpers import QUESTION, ExecExecutor, RecordingGTPOTrainer, make_args

pytestmark = pytest.mark.slow

GROUP = 4
CALLS = {0: 31, 1: 35, 2: 39, 3: 47}  # tool calls of each trajectory; one answer turn follows
MAX_TURNS = 48


class LongScripts:
    """`generate_turn`: trajectory t (told apart by its [t] tag) writes `CALLS[t]` code blocks, turn k printing
    `k * (t + 2)` (every 7th raising instead), then answers; trajectories 0 and 2 answer right."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.unassigned = list(CALLS)

    def __call__(self, prompt_ids, max_new_tokens):
        outputs = []
        for ids in prompt_ids:
            text = self.tokenizer.decode(ids)
            found = re.search(r"\[t(\d)\]", text)
            tag = int(found.group(1)) if found else self.unassigned.pop(0)
            turn = text.count("```output")
            if turn < CALLS[tag]:
                code = "print(1 / 0)" if (turn + tag) % 7 == 3 else f"print({turn} * {tag + 2})"
                segment = f"{'' if found else f'[t{tag}]'}\n```python\n{code}\n```\n"
                new = self.tokenizer.encode(segment, add_special_tokens=False)
            else:
                answer = 42 if tag % 2 == 0 else 41
                new = self.tokenizer.encode(f"So \\boxed{{{answer}}}.", add_special_tokens=False)
                new.append(self.tokenizer.eos_token_id)
            outputs.append(new[:max_new_tokens])
        return outputs, None


def boxed_42(completions, **kwargs):
    return [1.0 if "\\boxed{42}" in completion[0]["content"] else 0.0 for completion in completions]


class TableRecordingTrainer(RecordingGTPOTrainer):
    """Also keeps the (B, K) turn-advantage table of every step."""

    def _log_turn_step(self, scored, *args):
        self.tables = getattr(self, "tables", []) + [scored.table]
        return super()._log_turn_step(scored, *args)


def test_a_training_step_with_32_to_48_tool_calls_per_trajectory(tiny_model_path, tmp_path):
    args = make_args(
        tmp_path, max_steps=1, per_device_train_batch_size=GROUP, num_generations=GROUP, max_turns=MAX_TURNS,
        max_completion_length=1600, gamma=0.95, shaping_alpha=0.0,
    )
    scripted = lambda trainer, stops: LongScripts(trainer.processing_class)  # noqa: E731
    rollout = CodeInterpreterRollout(args, executor=ExecExecutor(), generate_turn=scripted)
    trainer = TableRecordingTrainer(
        model=tiny_model_path, reward_funcs=boxed_42, args=args, rollout_func=rollout,
        turn_reward_funcs=[tool_success_turn_reward], train_dataset=Dataset.from_dict({"prompt": [QUESTION] * GROUP}),
    )
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()

    assert trainer.state.global_step == 1
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())  # the step trained
    record, table = trainer.records[0], trainer.tables[0]
    tokenizer = trainer.processing_class
    logs = trainer.state.log_history[0]
    assert logs["tools/run_ms/mean"] > 0 and logs["tools/queue_wait_ms/p90"] == 0  # an executor without a queue
    assert logs["turns/max"] == MAX_TURNS and logs["turns/mean"] == sum(n + 1 for n in CALLS.values()) / GROUP

    for i, turns in enumerate(record["turns"]):
        tag = int(re.search(r"\[t(\d)\]", turns[0].text).group(1))
        assert len(turns) == CALLS[tag] + 1  # every call read as its own turn, then the answer turn
        assert [t.status for t in turns[:-1]] == ["error" if (k + tag) % 7 == 3 else "ok" for k in range(CALLS[tag])]
        assert turns[-1].status == "none" and "boxed" in turns[-1].text
        unmasked, trained, advantages = record["unmasked"][i], record["mask"][i], record["gtpo"][i]
        ids = record["completion_ids"][i]
        assert int(unmasked.sum()) == sum(t.end - t.start for t in turns)  # the model's tokens, and only them
        for k, turn in enumerate(turns):
            assert (unmasked[turn.start : turn.end] == 1).all() and (trained[turn.start : turn.end] == 1).all()
            # every token of turn k carries the table's A_ik, its own turn's advantage
            expected = table.advantages[i, k].item()
            assert advantages[turn.start : turn.end].tolist() == pytest.approx([expected] * (turn.end - turn.start))
            if k + 1 < len(turns):  # the tool output between turn k and k+1: masked, no advantage, the real output
                gap = slice(turn.end, turns[k + 1].start)
                assert (unmasked[gap] == 0).all() and (advantages[gap] == 0).all()
                shown = tokenizer.decode(ids[gap])
                assert shown.lstrip().startswith("```output") and turn.tool_response.strip() in shown
                if turn.status == "ok":
                    assert turn.tool_response.strip() == str(k * (tag + 2))
        assert torch.isnan(table.advantages[i, len(turns) :]).all()  # no turns past the trajectory's last
    values = table.advantages[~torch.isnan(table.advantages)]
    bound = (GROUP - 1) / math.sqrt(GROUP)
    assert values.abs().max().item() <= bound + 1e-5
    assert len({round(v, 4) for v in values.tolist()}) > 40  # a real, turn-by-turn signal, not one value per row
