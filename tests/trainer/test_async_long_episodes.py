"""Long episodes end to end on the asynchronous path (issue 30, item 1): 32 to 48 turns through AsyncGTPOTrainer.

The synchronous test (test_long_episodes.py) runs GTPOTrainer; here the same shape of episode goes through what the
asynchronous trainer runs, without a vLLM server: TRL's rollout loop as GTPO patches it (`GTPORolloutLoop`, each
trajectory its own asyncio task, every turn one scripted `/v1/completions` reply, the code run in an in-process
executor), the group's scoring in that loop (`_score_group`: TRL's rewards, then `TurnScorer`), and one training
step of AsyncGTPOTrainer on the scored samples from a stub worker. The test reads back, at each stage, the turn
count of every trajectory, the tool outputs masked token by token, every trained token carrying its own turn's
advantage (against a table computed here by hand from the turn rewards) and GRPO's bound (G-1)/sqrt(G).
"""

import asyncio
import math
import queue
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from trl_gtpo._trl_compat import async_grpo as trl_async
from trl_gtpo.advantages import AdvantageSettings
from trl_gtpo.async_gtpo import AsyncGTPOConfig, AsyncGTPOTrainer, CodeInterpreterSettings, TurnScorer
from trl_gtpo.interpreter.environment import SharedExecutor
from trl_gtpo.rewards.turn import tool_success_turn_reward
from trl_gtpo.scoring import ScoringSettings
from trl_gtpo.testing import NoWeightTransfer, QueuedRolloutWorker

from helpers import QUESTION, ExecExecutor

pytest.importorskip("trl.experimental.async_grpo")
from trl.experimental.async_grpo.async_rollout_worker import RolloutGroup, RolloutSample  # noqa: E402

pytestmark = pytest.mark.slow

GROUP = 4
CALLS = {0: 31, 1: 35, 2: 39, 3: 47}  # tool calls of each trajectory; one answer turn follows
MAX_TURNS = 48  # the longest trajectory's 48 turns exactly: its 47th call is still run
MAX_TOKENS = 1900  # the trajectory budget (prompt + completion stays within the tiny model's 2048 positions)
GAMMA = 0.95
VERSION = 5  # the policy version the scripted server answers under


def turn_logprob(turn: int) -> float:
    """The log-prob the server reports for every token of a turn: its turn's own, so a misplaced one shows."""
    return -0.01 * (turn + 1)


class ScriptedServer:
    """TRL's `_post` to the vLLM server, scripted and deterministic: trajectory t (told apart by the [t] tag of its
    first turn, given to the trajectories in the order their first requests arrive) writes `CALLS[t]` code blocks, turn
    k printing `k * (t + 2)` (every 7th raising instead), then answers; trajectories 0 and 2 answer right. `replies`
    keeps each (tag, turn)'s ids."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.unassigned = list(CALLS)
        self.replies = {}
        self.payloads = []

    async def __call__(self, path, payload, timeout, max_retries=3):
        text = self.tokenizer.decode(payload["prompt"])
        found = re.search(r"\[t(\d)\]", text)
        tag = int(found.group(1)) if found else self.unassigned.pop(0)
        turn = text.count("```output")
        if turn < CALLS[tag]:
            code = "print(1 / 0)" if (turn + tag) % 7 == 3 else f"print({turn} * {tag + 2})"
            ids = self.tokenizer.encode(f"{'' if found else f'[t{tag}]'}\n```python\n{code}\n```\n",
                                        add_special_tokens=False)
        else:
            answer = 42 if tag % 2 == 0 else 41
            ids = self.tokenizer.encode(f"So \\boxed{{{answer}}}.", add_special_tokens=False)
            ids.append(self.tokenizer.eos_token_id)
        ids = ids[: payload["max_tokens"]]
        self.replies[tag, turn] = ids
        self.payloads.append(payload)
        return {"choices": [{"token_ids": ids, "logprobs": {"token_logprobs": [turn_logprob(turn)] * len(ids)}}]}


def boxed_42(completions, **kwargs):
    return [1.0 if "\\boxed{42}" in completion[0]["content"] else 0.0 for completion in completions]


class RecordingScorer(TurnScorer):
    """Keeps the group's `ScoredGroup` (its turn-advantage table and records)."""

    def score(self, **kwargs):
        self.scored = super().score(**kwargs)
        return self.scored


def rollout_loop(tokenizer, server, scorer):
    """GTPORolloutLoop built as TRL's child process would have it, without its process, server or dataset."""
    loop = object.__new__(trl_async.GTPORolloutLoop)
    loop.tokenizer, loop.chat_template_kwargs, loop.max_tokens = tokenizer, {}, MAX_TOKENS
    loop.eos_token_ids, loop._tool_pool, loop._post = [tokenizer.eos_token_id], ThreadPoolExecutor(GROUP), server
    loop.model_name, loop.lora_name, loop.request_timeout = "scripted", None, 10
    loop.temperature, loop.top_p, loop.top_k, loop.min_p, loop.repetition_penalty = 1.0, 1.0, 0, None, 1.0
    loop.code_interpreter = CodeInterpreterSettings(SharedExecutor(executor=ExecExecutor()), MAX_TURNS, "```output")
    loop._model_version_value = type("Version", (), {"value": VERSION})()  # TRL's shared policy version
    # what `_score_group` reads: TRL's reward functions, GTPO's scorer, TRL's metrics queue and accumulators
    loop.reward_funcs, loop.reward_func_names, loop._env_reward_types = [boxed_42], ["boxed_42"], []
    loop.turn_scorer, loop.staleness_version = scorer, "last_request"
    loop._metrics_queue, loop._counters = queue.Queue(), defaultdict(float)
    loop._rates = defaultdict(lambda: [0.0, 0.0])
    return loop


def expected_table(records, outcome) -> np.ndarray:
    """(G, K) turn advantages by hand, in float64, from the group's turn rewards (the "aligned" estimator at group
    scale, `advantages.aligned_advantages`'s formula): tool_success r_ij (1 ok, 0 error, none on the answer turn, 0
    past a trajectory's end), outcome F_i, deviations d from the group mean at each place (0 where the place does
    not vary), sigma the sum of the places' unbiased stds, and
    A_ij = [gamma^(K_i - 1 - j) dF_i + sum_{m >= j} gamma^(m - j) dr_im] / (sigma + 1e-4) for j < K_i."""
    lengths = [len(turns) for turns in records]
    width = max(lengths)
    rewards = np.zeros((GROUP, width))
    for i, turns in enumerate(records):
        rewards[i, : len(turns)] = [{"ok": 1.0}.get(turn.status, 0.0) for turn in turns]
    places = np.concatenate([np.asarray(outcome, dtype=np.float64)[:, None], rewards], axis=1)
    deviations = places - places.mean(axis=0)
    varies = places.max(axis=0) > places.min(axis=0)
    deviations[:, ~varies] = 0.0
    sigma = places.std(axis=0, ddof=1)[varies].sum()
    table = np.full((GROUP, width), np.nan)
    for i, k in enumerate(lengths):
        for j in range(k):
            future = sum(GAMMA ** (m - j) * deviations[i, 1 + m] for m in range(j, width))
            table[i, j] = (GAMMA ** (k - 1 - j) * deviations[i, 0] + future) / (sigma + 1e-4)
    return table


class RecordingAsyncGTPOTrainer(AsyncGTPOTrainer):
    """Keeps, of row 0 of every packed batch, what identifies each loss term (its sample, the position predicting
    its token, the label) and the advantage the loss takes for it."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        terms = inputs["token_index"][0] >= 0
        self.seen = getattr(self, "seen", []) + [{
            "segment": inputs["segment_id"][0][terms].tolist(), "index": inputs["token_index"][0][terms].tolist(),
            "position": inputs["position_ids"][0].tolist(), "label": inputs["shift_labels"][0].tolist(),
            "advantage": inputs["advantages"][0][terms].tolist(),
        }]
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def test_async_rollout_scoring_and_step_with_32_to_48_turns_per_trajectory(tiny_model_path, tmp_path):
    from accelerate.state import PartialState
    from datasets import Dataset
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    server = ScriptedServer(tokenizer)
    scorer = RecordingScorer(ScoringSettings(AdvantageSettings(GAMMA, "aligned", "group", "group"), shaping_alpha=0.0),
                             GROUP, turn_reward_funcs=[tool_success_turn_reward], turn_reward_weights=[1.0])
    loop = rollout_loop(tokenizer, server, scorer)

    # 1. The rollouts: the group's four trajectories as concurrent tasks of one asyncio loop, as TRL runs them.
    async def rollouts():
        return await asyncio.gather(*[loop._generate_one(QUESTION, {}, [], group_id=0) for _ in range(GROUP)])

    results = asyncio.run(rollouts())
    loop._tool_pool.shutdown()
    tags = [int(re.search(r"\[t(\d)\]", completion[0]["content"]).group(1)) for completion, *_ in results]
    assert sorted(tags) == list(CALLS)
    results = [result for _, result in sorted(zip(tags, results), key=lambda pair: pair[0])]  # trajectory t is row t
    assert len(server.payloads) == sum(n + 1 for n in CALLS.values())  # one request per turn, nothing more
    assert all(p["max_tokens"] <= MAX_TOKENS and p["stop"] and p["include_stop_str_in_output"] for p in server.payloads)
    prompt_ids = tokenizer.apply_chat_template(QUESTION, return_dict=False, add_generation_prompt=True)
    for tag, (completion, ids, rows, calls, errors, _) in enumerate(results):
        raises = [(k + tag) % 7 == 3 for k in range(CALLS[tag])]
        records = completion.records
        assert len(records) == CALLS[tag] + 1 and calls == CALLS[tag] and errors == sum(raises)
        assert [r.status for r in records] == ["error" if bad else "ok" for bad in raises] + ["none"]
        assert completion.versions == [VERSION] * (CALLS[tag] + 1) and len(completion.timings) == CALLS[tag]
        (row,) = rows
        assert len(row.input_ids) <= 2048 and list(row.input_ids) == prompt_ids + ids  # within the tiny model
        assert row.completion_mask[: len(prompt_ids)] == [0] * len(prompt_ids)
        mask, logprobs = row.completion_mask[len(prompt_ids):], row.old_log_probs[len(prompt_ids):]
        assert sum(mask) == sum(r.end - r.start for r in records)  # the model's tokens, and only them, are trained
        for k, record in enumerate(records):
            # turn k's tokens are the server's reply to request k (the loop cuts a turn at its closing fence: only
            # the newline after it goes, to the tool's output), trained, with the log-probs they came with
            reply = server.replies[tag, k]
            assert ids[record.start : record.end] == reply[: record.end - record.start]
            assert tokenizer.decode(reply[record.end - record.start :]) in ("", "\n")
            assert mask[record.start : record.end] == [1] * (record.end - record.start)
            assert logprobs[record.start : record.end] == [turn_logprob(k)] * (record.end - record.start)
            gap = slice(record.end, records[k + 1].start if k + 1 < len(records) else len(ids))
            assert mask[gap] == [0] * len(mask[gap]) and logprobs[gap] == [0.0] * len(mask[gap])
            if k + 1 < len(records):  # the tool's output between turn k and k + 1: masked token by token
                shown = tokenizer.decode(ids[gap])
                assert shown.lstrip().startswith("```output") and record.tool_response.strip() in shown
                expected = "ZeroDivisionError" if raises[k] else str(k * (tag + 2))
                assert expected in record.tool_response
            else:
                assert record.end == len(ids) and ids[-1] == tokenizer.eos_token_id

    # 2. The scoring: TRL's `_score_group` (its reward functions, its one advantage per conversation), then GTPO's.
    group = RolloutGroup(
        prompts=[QUESTION] * GROUP, reward_kwargs={}, completions=[r[0] for r in results],
        completions_ids=[r[1] for r in results], completions_sequences=[r[2] for r in results],
        tool_call_counts=[r[3] for r in results], tool_failure_counts=[r[4] for r in results],
        model_version=0, group_id=0, env_rewards=[None] * GROUP, rollout_rewards=[None] * GROUP,
    )
    PartialState()  # as TRL's rollout process starts: its logger needs accelerate's state
    samples = asyncio.run(loop._score_group(group))
    table = expected_table([r[0].records for r in results], [1.0, 0.0, 1.0, 0.0])
    scored = scorer.scored.advantages.numpy()
    assert scored.shape == (GROUP, MAX_TURNS) and np.array_equal(np.isnan(scored), np.isnan(table))
    assert np.allclose(scored[~np.isnan(table)], table[~np.isnan(table)], rtol=1e-5, atol=1e-6)
    bound = (GROUP - 1) / math.sqrt(GROUP)
    assert np.nanmax(np.abs(table)) <= bound and np.nanmax(np.abs(scored)) <= bound + 1e-6
    assert len({round(v, 4) for v in table[~np.isnan(table)]}) > 40  # a turn-by-turn signal, not one value per row
    assert len(samples) == GROUP
    for tag, (sample, (completion, ids, _, _, _, _)) in enumerate(zip(samples, results)):
        assert sample.metrics["turns/num_turns"] == CALLS[tag] + 1 and sample.metrics["rewards/boxed_42"] == float(tag % 2 == 0)
        assert sample.model_version == VERSION  # stamped with its last request's version, not the group's first
        advantage = sample.advantage[len(prompt_ids):]
        for k, record in enumerate(completion.records):
            assert advantage[record.start : record.end] == pytest.approx([table[tag, k]] * (record.end - record.start),
                                                                          rel=1e-5, abs=1e-6)
        assert not advantage[sample.completion_mask[len(prompt_ids):] == 0].any()  # nothing on a tool token
        assert not sample.advantage[: len(prompt_ids)].any()
    timings = loop._metrics_queue.get_nowait()
    assert timings["tools/run_ms/mean"][1] == sum(CALLS.values())  # every code call of the group timed once

    # 3. One training step of AsyncGTPOTrainer on the scored samples (the dataloader fetches one batch ahead).
    ahead = [RolloutSample([], [], s.input_ids, s.completion_mask, s.old_log_probs, 0.0, VERSION, 1, {})
             for s in samples]
    args = AsyncGTPOConfig(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=GROUP, num_generations=GROUP,
        token_budget=0, learning_rate=1e-3, report_to="none", use_cpu=True, logging_steps=1, save_strategy="no",
    )
    trainer = RecordingAsyncGTPOTrainer(
        tiny_model_path, reward_funcs=[], args=args, train_dataset=Dataset.from_dict({"prompt": [QUESTION]}),
        rollout_worker=QueuedRolloutWorker(samples + ahead), weight_transfer=NoWeightTransfer(),
    )
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert trainer.state.global_step == 1 and math.isfinite(trainer.state.log_history[0]["loss"])
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, trainer.model.parameters()))
    (seen,) = trainer.seen
    # every loss term is a trained token of its sample (segment = the sample's place in the group), and carries the
    # table's entry for the turn that token belongs to
    turn_of = []
    for sample, (completion, *_) in zip(samples, results):
        index = np.full(len(sample.input_ids), -1)
        for k, record in enumerate(completion.records):
            index[len(prompt_ids) + record.start : len(prompt_ids) + record.end] = k
        turn_of.append(index)
    assert len(seen["advantage"]) == sum(int(s.completion_mask.sum()) for s in samples)
    for segment, source, value in zip(seen["segment"], seen["index"], seen["advantage"]):
        position = seen["position"][source] + 1
        assert seen["label"][source] == samples[segment].input_ids[position]
        assert value == pytest.approx(table[segment, turn_of[segment][position]], rel=1e-5, abs=1e-6)
    assert {(s, seen["position"][i] + 1) for s, i in zip(seen["segment"], seen["index"])} == {
        (s, p) for s, index in enumerate(turn_of) for p in np.flatnonzero(index >= 0)
    }  # each trained token exactly once
