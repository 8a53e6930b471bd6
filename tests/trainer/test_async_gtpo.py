"""AsyncGTPOTrainer on the CPU without vLLM: the group scoring by hand, the packed per-token advantages, the CPU tree
attention, and a training step from a stub rollout worker (the vLLM stage runs the real worker:
tests/integration/test_vllm_async_gtpo.py)."""

import math
import os

import numpy as np
import pytest
import torch

from trl_gtpo._trl_compat import async_grpo as trl_async
from trl_gtpo.advantages import AdvantageSettings
from trl_gtpo.async_gtpo import AsyncGTPOConfig, AsyncGTPOTrainer, TurnScorer, group_call_metrics
from trl_gtpo.async_turns import row_turns, token_advantages_by_row
from trl_gtpo.interpreter.environment import ToolRun
from trl_gtpo.scoring import ScoringSettings
from trl_gtpo.testing import NoWeightTransfer, QueuedRolloutWorker
from trl_gtpo.turn_records import TurnRecord

pytest.importorskip("trl.experimental.async_grpo")
from trl.experimental.async_grpo.async_grpo_trainer import DataCollatorForRollout  # noqa: E402
from trl.experimental.async_grpo.async_rollout_worker import RolloutSample  # noqa: E402
from trl.experimental.async_grpo.packing import TreeRow  # noqa: E402


def test_row_turns_count_on_across_forked_rows():
    index, turns = row_turns([[0, 0, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0, 1, 1]])
    assert index == [[-1, -1, 0, 0, -1, 1], [-1, -1, -1, -1, -1, -1, 2, 2]] and turns == 3


def test_token_advantages_by_row_spread_each_turn_and_zero_nan():
    table = torch.tensor([[0.5, -1.0], [2.0, float("nan")], [float("nan"), float("nan")]])
    masks = [[[0, 1, 1, 0, 1]], [[0, 1]], [[1, 1]]]
    assert token_advantages_by_row(table, masks) == [[[0, 0.5, 0.5, 0, -1.0]], [[0, 2.0]], [[0.0, 0.0]]]


CALL = [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "python", "arguments": {}}}]},
        {"role": "tool", "name": "python", "content": "42"}, {"role": "assistant", "content": "42"}]
GUESS = [{"role": "assistant", "content": "7"}]


def scoring(advantages, **settings):
    """The scorer's settings, shaping off unless asked for."""
    return ScoringSettings(advantages, **{"shaping_alpha": 0.0, **settings})


def score(scorer, runs, rows, rewards):
    return scorer.score(
        prompts=[[{"role": "user", "content": "6 * 7?"}]] * 2, completions=[CALL, GUESS], completion_ids=[[1], [1]],
        row_ids=[[list(range(len(mask))) for mask in masks] for masks in rows], row_masks=rows, runs=runs,
        rewards_per_func=torch.tensor(rewards), reward_kwargs={}, decode=lambda ids: " ".join(map(str, ids)),
    )


def test_turn_scorer_by_hand_aligned_with_the_format_rule():
    # A: call ran ("ok"), then answers: 2 turns, outcome 1. B: guesses without a call: 1 turn, outcome 0, and the
    # format rule's -0.1 on its final turn (no call ran). gamma 0.9, aligned, group scale:
    #   F = [1, 0] -> deviations [0.5, -0.5], std sqrt(0.5); t_1 = [0, -0.1] -> [0.05, -0.05], std sqrt(0.005);
    #   t_2 = [0, 0]. A_A = [0.9 * 0.5 + 0.05, 0.5] / sigma = [0.5, 0.5] / sigma; A_B = [-0.5 - 0.05] / sigma;
    #   sigma = sqrt(0.5) + sqrt(0.005)
    scorer = TurnScorer(scoring(AdvantageSettings(0.9, "aligned", "group", "group"), format_penalty=-0.1), 2)
    rows = [[[0, 0, 1, 1, 0, 0, 1]], [[0, 0, 1, 1]]]
    runs = [[ToolRun("print(6 * 7)", "42", "ok")], []]
    scored = score(scorer, runs, rows, [[1.0], [0.0]])
    sigma = math.sqrt(0.5) + math.sqrt(0.005) + 1e-4
    a, b = 0.5 / sigma, -0.55 / sigma
    assert scored.token_advantages[0][0] == pytest.approx([0, 0, a, a, 0, 0, a], abs=1e-6)
    assert scored.token_advantages[1][0] == pytest.approx([0, 0, b, b], abs=1e-6)
    first = scored.turns[0][0]
    assert (first.tool_call, first.status, first.tool_response) == ("print(6 * 7)", "ok", "42")
    assert scored.turns[1][0].status == "none"
    assert scored.metrics[0]["turns/num_turns"] == 2.0


def tool_ok(turns, **kwargs):
    return [[1.0 if turn.status == "ok" else None for turn in trajectory] for trajectory in turns]


def test_turn_scorer_pooled_with_a_turn_reward_and_a_forked_row():
    # Without an environment (TRL's own tools): no format rule. A's turns are split over two rows (a fork); a turn
    # reward 0.5 on its first turn (status "ok" from TRL's tool message). pooled, gamma 0.5:
    #   A: r = [0.5, 1] -> R = [1.0, 1.0]; B: r = [0] -> R = [0]; mean 2/3, unbiased std sqrt(1/3)
    scorer = TurnScorer(scoring(AdvantageSettings(0.5, "pooled", "group", "group")), 2, turn_reward_funcs=[tool_ok],
                        turn_reward_weights=[0.5])
    rows = [[[0, 1, 1, 0], [0, 0, 0, 0, 1]], [[0, 1]]]
    scored = score(scorer, [None, None], rows, [[1.0], [0.0]])
    std = math.sqrt(1 / 3) + 1e-4
    high, low = (1.0 - 2 / 3) / std, (0.0 - 2 / 3) / std
    assert scored.token_advantages[0][0] == pytest.approx([0, high, high, 0], abs=1e-6)
    assert scored.token_advantages[0][1] == pytest.approx([0, 0, 0, 0, high], abs=1e-6)
    assert scored.token_advantages[1][0] == pytest.approx([0, low], abs=1e-6)


def calls(*outputs):
    """A conversation of one `python` call per output, then the answer."""
    call = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "python", "arguments": {}}}]}
    turns = [message for output in outputs for message in (call, {"role": "tool", "name": "python", "content": output})]
    return turns + [{"role": "assistant", "content": outputs[-1]}]


# One group's calls, (queue wait, run time) in seconds: A's two, B's one. In ms, by hand (p90 interpolates linearly,
# position 0.9 * (3 - 1) = 1.8 of the sorted values): queue waits [0, 20, 5]: sum 25 over 3, p90 5 + 0.8 * 15 = 17;
# run times [10, 30, 50]: sum 90 over 3, p90 30 + 0.8 * 20 = 46.
TIMED_RUNS = [[ToolRun("print(42)", "42", "ok", 0.0, 0.010), ToolRun("print(43)", "43", "ok", 0.020, 0.030)],
              [ToolRun("print(5)", "5", "ok", 0.005, 0.050)]]
GROUP_TIMINGS = {"tools/queue_wait_ms/mean": (25.0, 3.0), "tools/queue_wait_ms/p90": 17.0,
                 "tools/run_ms/mean": (90.0, 3.0), "tools/run_ms/p90": 46.0}


def approx_metrics(metrics):
    return {key: pytest.approx(value, abs=1e-9) for key, value in metrics.items()}


def test_turn_scorer_gives_the_groups_call_timings():
    # The PythonEnvironment path (each conversation's call log) and the fence path (its interpreter's timings) give
    # the same group metrics; the /mean is a (sum, count) rate, which TRL's log() sums over its window.
    scorer = TurnScorer(scoring(AdvantageSettings(0.9, "aligned", "group", "group")), 2)
    common = dict(
        prompts=[[]] * 2, completions=[calls("42", "43"), calls("5")], completion_ids=[[1], [1]],
        row_ids=[[[5, 6, 7, 8, 9, 10]], [[5, 6, 7, 8]]], row_masks=[[[0, 1, 0, 1, 0, 1]], [[0, 1, 0, 1]]],
        rewards_per_func=torch.tensor([[1.0], [0.0]]), reward_kwargs={}, decode=str,
    )
    scored = scorer.score(runs=TIMED_RUNS, **common)
    assert scored.group_metrics == approx_metrics(GROUP_TIMINGS)
    assert [r.tool_call for r in scored.turns[0]] == ["print(42)", "print(43)", None]  # the records are unchanged
    timings = [[(run.queue_wait, run.run_time) for run in runs] for runs in TIMED_RUNS]
    records = [[TurnRecord(0, "t", "print(42)", "42", "ok", 0, 1)], [TurnRecord(0, "t", "print(5)", "5", "ok", 0, 1)]]
    fence = scorer.score(
        prompts=[[]] * 2, completions=[[], []], completion_ids=[[1], [1]], row_ids=[[[5, 6]], [[5, 6]]],
        row_masks=[[[0, 1]], [[0, 1]]], runs=[None, None], records=records, call_timings=timings,
        rewards_per_func=torch.tensor([[1.0], [0.0]]), reward_kwargs={}, decode=str,
    )
    assert fence.group_metrics == approx_metrics(GROUP_TIMINGS)
    assert scorer.score(runs=[None, None], **common).group_metrics == {}  # TRL's own tools: no timings, no metric


def sample(ids, mask, advantage, group_id=0):
    return {
        "input_ids": torch.tensor(ids), "completion_mask": torch.tensor(mask),
        "old_log_probs": torch.zeros(len(ids)), "advantage": advantage, "group_id": group_id, "metrics": {},
    }


def test_packed_loss_terms_carry_each_tokens_turn_advantage():
    # Two rollouts of one prompt share their prefix in TRL's tree row; each keeps its own per-token advantages.
    first = sample([5, 6, 7, 8, 9, 10], [0, 0, 1, 1, 0, 1], np.array([0, 0, 1.5, 1.5, 0, -2.0], dtype=np.float32))
    second = sample([5, 6, 7, 11], [0, 0, 1, 1], np.array([0, 0, 0.25, 0.25], dtype=np.float32))
    third = sample([20, 21, 22], [0, 1, 1], 3.0, group_id=1)  # a scalar (TRL's own) advantage passes through
    rows = [TreeRow(), TreeRow()]
    rows[0].add(first)
    rows[0].add(second)
    rows[1].add(third)
    collate = trl_async.TurnAdvantageCollate(DataCollatorForRollout(pad_token_id=0, num_processes=2))
    batch = collate([rows])
    row0 = batch["advantages"][0][batch["token_index"][0] >= 0].tolist()
    assert row0 == [1.5, 1.5, -2.0, 0.25, 0.25]
    assert batch["advantages"][1][batch["token_index"][1] >= 0].tolist() == [3.0, 3.0]
    # each sample keeps its per-token advantages (never replaced by their mean)
    assert first["advantage"].tolist() == [0, 0, 1.5, 1.5, 0, -2.0]


def test_cpu_tree_attention_matches_each_sample_alone(tiny_model_path):
    from transformers import AutoModelForCausalLM

    assert trl_async.use_sdpa_tree_attention("sdpa")
    from trl.experimental.async_grpo.packing import TREE_ATTENTION

    tree = AutoModelForCausalLM.from_pretrained(tiny_model_path, attn_implementation=TREE_ATTENTION).eval()
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_path, attn_implementation="eager").eval()
    samples = [sample([5, 6, 7, 8, 9], [0, 1, 1, 1, 1], 0.0), sample([5, 6, 7, 11, 12, 13], [0, 1, 1, 1, 1, 1], 0.0)]
    row = TreeRow()
    for s in samples:
        row.add(s)
    packed = row.pack()
    assert len(packed["input_ids"]) < 11  # the shared prefix is forwarded once
    with torch.no_grad():
        logits = tree(
            input_ids=packed["input_ids"][None], position_ids=packed["position_ids"][None],
            tree_kv_index=packed["tree_kv_index"], tree_cu_seqlens_q=packed["tree_cu_seqlens_q"],
            tree_cu_seqlens_k=packed["tree_cu_seqlens_k"], tree_max_seqlen_q=int(packed["tree_max_seqlens"][0]),
            tree_max_seqlen_k=int(packed["tree_max_seqlens"][1]),
        ).logits[0]
        for i, s in enumerate(samples):
            alone = plain(input_ids=s["input_ids"][None]).logits[0]
            positions = packed["token_index"][packed["segment_id"] == i]  # each predicts the sample's next token
            assert torch.allclose(logits[positions], alone[: len(positions)], atol=1e-4)


class RecordingAsyncGTPOTrainer(AsyncGTPOTrainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.seen = getattr(self, "seen", []) + [inputs["advantages"][inputs["token_index"] >= 0].tolist()]
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


@pytest.mark.slow
def test_a_training_step_takes_the_per_token_advantages_into_the_loss(tiny_model_path, tmp_path):
    from datasets import Dataset

    def rollout(group, advantages):
        ids = np.array([5, 6, 7, 8, 9, 10, 11])
        mask = np.array([0, 0, 1, 1, 0, 1, 1])
        return RolloutSample([], [], ids + group, mask, np.full(7, -1.0, dtype=np.float32),
                             np.array(advantages, dtype=np.float32), 0, group, {"reward": 1.0})

    samples = [rollout(0, [0, 0, 1.0, 1.0, 0, -0.5, -0.5]), rollout(1, [0, 0, 2.0, 2.0, 0, 0.0, 0.0])]
    samples += [rollout(2, [0] * 7), rollout(3, [0] * 7)]  # the dataloader fetches one batch ahead
    args = AsyncGTPOConfig(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, num_generations=2, token_budget=0,
        learning_rate=1e-3, report_to="none", use_cpu=True, logging_steps=1, save_strategy="no",
    )
    trainer = RecordingAsyncGTPOTrainer(
        tiny_model_path, reward_funcs=[], args=args,
        train_dataset=Dataset.from_dict({"prompt": [[{"role": "user", "content": "hi"}]]}),
        rollout_worker=QueuedRolloutWorker(samples), weight_transfer=NoWeightTransfer(),
    )
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert sorted(trainer.seen[0]) == sorted([1.0, 1.0, -0.5, -0.5, 2.0, 2.0, 0.0, 0.0])
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, trainer.model.parameters()))
    assert math.isfinite(trainer.state.log_history[0]["loss"])


def test_check_async_trl_api_names_what_moved(monkeypatch):
    from trl.experimental.async_grpo import async_rollout_worker

    trl_async.check_async_trl_api()  # the installed TRL 1.16 passes

    def score_group(self, group):  # no longer a coroutine
        return []

    monkeypatch.setattr(async_rollout_worker._AsyncRolloutLoop, "_score_group", score_group)
    with pytest.raises(RuntimeError, match="_score_group as a coroutine.*trl==1.16"):
        trl_async.check_async_trl_api()


def test_the_async_trainer_and_config_are_public_names_imported_on_first_use():
    """`from trl_gtpo import AsyncGTPOTrainer` works; a bare `import trl_gtpo` imports neither them nor TRL's
    experimental package (nor TRL at all), as for every public name."""
    import subprocess
    import sys

    import trl_gtpo

    assert trl_gtpo.AsyncGTPOTrainer is AsyncGTPOTrainer and trl_gtpo.AsyncGTPOConfig is AsyncGTPOConfig
    assert {"AsyncGTPOConfig", "AsyncGTPOTrainer"} <= set(trl_gtpo.__all__)
    code = (
        "import sys, trl_gtpo\n"
        "loaded = [m for m in ('trl', 'trl_gtpo.async_gtpo', 'trl.experimental') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "from trl_gtpo import AsyncGTPOTrainer\n"
        "assert 'trl.experimental.async_grpo' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


@pytest.mark.parametrize(
    "field, value", [("turn_advantage_scope", "batch"), ("gamma", 1.5), ("tree_attention", "flash"),
                     ("format_penalty", 0.5), ("turn_advantage_estimator", "trajectory")],
)
def test_config_errors_name_the_field(tmp_path, field, value):
    with pytest.raises(ValueError, match=field if field != "turn_advantage_estimator" else "trajectory"):
        AsyncGTPOConfig(output_dir=str(tmp_path), use_cpu=True, **{field: value})


def test_turn_scorer_reads_the_code_interpreters_own_records():
    # The fence interpreter hands its records on: the format rule reads them. A: one turn whose call ran, outcome 1.
    # B: one turn with an unclosed ```python block (malformed, -0.1) in a trajectory where no call ran (-0.1),
    # outcome 0.
    #   F = [1, 0] -> +-0.5, std sqrt(0.5); t_1 = [0, -0.2] -> [0.1, -0.1], std sqrt(0.02);
    #   A = [0.6, -0.6] / (sqrt(0.5) + sqrt(0.02))
    scorer = TurnScorer(scoring(AdvantageSettings(0.9, "aligned", "group", "group"), format_penalty=-0.1), 2)
    records = [[TurnRecord(0, "t", "print(6 * 7)", "42", "ok", 0, 2)],
               [TurnRecord(0, "t", "print(", None, "none", 0, 1, well_formed=False)]]
    scored = scorer.score(
        prompts=[[]] * 2, completions=[[], []], completion_ids=[[1], [1]], row_ids=[[[5, 6, 7]], [[5, 6]]],
        row_masks=[[[0, 1, 1]], [[0, 1]]], runs=[None, None], records=records,
        rewards_per_func=torch.tensor([[1.0], [0.0]]), reward_kwargs={}, decode=str,
    )
    sigma = math.sqrt(0.5) + math.sqrt(0.02) + 1e-4
    assert scored.token_advantages[0][0] == pytest.approx([0, 0.6 / sigma, 0.6 / sigma], abs=1e-6)
    assert scored.token_advantages[1][0] == pytest.approx([0, -0.6 / sigma], abs=1e-6)


def test_the_async_trainer_shapes_with_the_configured_similarity(tiny_model_path, tmp_path, monkeypatch):
    """The drift this guards: the asynchronous scorer once shaped with the lexical similarity whatever the config
    said (it had no `shaping_similarity`). Built from the config, it now asks for the configured one, and takes the
    sandbox of its code interpreter from the config's `tool_*` fields (no GTPOConfig needed)."""
    from datasets import Dataset

    args = AsyncGTPOConfig(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, num_generations=2, token_budget=0,
        report_to="none", use_cpu=True, save_strategy="no", shaping_similarity="embedding",
        shaping_embedding_model="/models/e5", tool_timeout=3.0,
    )
    trainer = AsyncGTPOTrainer(
        tiny_model_path, reward_funcs=[], args=args,
        train_dataset=Dataset.from_dict({"prompt": [[{"role": "user", "content": "hi"}]]}),
        rollout_worker=QueuedRolloutWorker([]), weight_transfer=NoWeightTransfer(),
    )
    asked = []

    def make_similarity(name, model_path=None):
        asked.append((name, model_path))
        return lambda a, b: np.full((len(a), len(b)), 0.5)

    monkeypatch.setattr("trl_gtpo.shaping.make_similarity", make_similarity)
    records = [[TurnRecord(0, "t", "print(6 * 7)", "42", "ok", 0, 2)],
               [TurnRecord(0, "t", "print(6 * 8)", "48", "ok", 0, 1)]]
    trainer.turn_scorer.score(
        prompts=[[]] * 2, completions=[[], []], completion_ids=[[1], [1]], row_ids=[[[5, 6, 7]], [[5, 6]]],
        row_masks=[[[0, 1, 1]], [[0, 1]]], runs=[None, None], records=records,
        rewards_per_func=torch.tensor([[1.0], [0.0]]), reward_kwargs={}, decode=str,
    )
    assert asked == [("embedding", "/models/e5")]
    assert trainer.turn_scorer.settings.shaping_alpha == 0.5


def test_the_async_trainer_logs_the_scored_groups_call_timings(tiny_model_path, tmp_path):
    """The rollout worker pushes each scored group's `group_metrics` to TRL's metrics queue; the trainer's log()
    drains it: /mean over every call of the window's groups, /p90 the mean of the groups' p90s (as the synchronous
    trainers log the mean of their steps' p90s)."""
    from datasets import Dataset

    args = AsyncGTPOConfig(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, num_generations=2, token_budget=0,
        report_to="none", use_cpu=True, save_strategy="no",
    )
    worker = QueuedRolloutWorker([])
    trainer = AsyncGTPOTrainer(
        tiny_model_path, reward_funcs=[], args=args,
        train_dataset=Dataset.from_dict({"prompt": [[{"role": "user", "content": "hi"}]]}),
        rollout_worker=worker, weight_transfer=NoWeightTransfer(),
    )
    # a second group of one call: queue wait 40 ms, run 70 ms
    worker.metrics_queue.put(group_call_metrics(TIMED_RUNS, [None, None]))
    worker.metrics_queue.put(group_call_metrics([None, None], [[(0.040, 0.070)], []]))
    trainer.model.train()
    trainer.log({})
    logged = {key: value for key, value in trainer.state.log_history[-1].items() if key.startswith("tools/")}
    assert logged == approx_metrics({
        "tools/queue_wait_ms/mean": (25 + 40) / 4, "tools/queue_wait_ms/p90": (17 + 40) / 2,
        "tools/run_ms/mean": (90 + 70) / 4, "tools/run_ms/p90": (46 + 70) / 2,
    })


def test_the_rollout_process_sandbox_is_sized_for_the_rollouts_in_flight(tiny_model_path, tmp_path, monkeypatch):
    """TRL's rollout process runs up to max_inflight_tasks rollouts at once, each in a tool thread: the fence
    interpreter's pool and a PythonEnvironment.factory's are sized for them (when tool_pool_size leaves it open),
    not for one rank's share of the node."""
    from datasets import Dataset

    from trl_gtpo import PythonEnvironment

    given = {}
    monkeypatch.setattr(trl_async, "use_turn_scoring",
                        lambda worker, scorer, runs, code_interpreter, **kw: given.update(code=code_interpreter))

    def trainer(**kwargs):
        args = AsyncGTPOConfig(
            output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, num_generations=2, token_budget=0,
            report_to="none", use_cpu=True, save_strategy="no", max_staleness=3,
        )
        return AsyncGTPOTrainer(
            tiny_model_path, reward_funcs=[], args=args,
            train_dataset=Dataset.from_dict({"prompt": [[{"role": "user", "content": "hi"}]]}),
            rollout_worker=QueuedRolloutWorker([]), weight_transfer=NoWeightTransfer(), **kwargs,
        )

    fence = trainer()
    assert fence.args.max_inflight_tasks > 2  # TRL's default: max_staleness x the samples of a step
    assert given["code"].executor.concurrency == fence.args.max_inflight_tasks
    factory = PythonEnvironment.factory(fence.args)
    with_environment = trainer(environment_factory=factory)
    assert factory.executor.concurrency == with_environment.args.max_inflight_tasks


def test_the_fence_interpreter_runs_in_trls_rollout_loop_turn_by_turn(tiny_model_path):
    """GTPORolloutLoop (the TRL adapter) drives `CodeInterpreterSettings.run` (GTPO's side): one request per turn,
    the code run in the sandbox, one training row with the tool output masked, and the interpreter's records."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from transformers import AutoTokenizer

    from trl_gtpo.async_gtpo import CodeInterpreterSettings
    from trl_gtpo.interpreter.environment import SharedExecutor
    from trl_gtpo.interpreter.executor import ExecutionResult

    class Executor:
        concurrent_runs = True  # each call as it arrives, its timings as the executor gives them

        def run(self, calls):
            return [ExecutionResult("42\n", "ok", duration=0.015, queue_wait=0.002) for _ in calls]

        def close_session(self, session_id):
            pass

        def close(self):
            pass

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    turns = iter(["```python\nprint(6 * 7)\n```", " The answer is 42."])
    requests = []

    async def post(path, payload, timeout, max_retries=3):  # TRL's `_post` to the vLLM server, scripted
        requests.append((path, payload))
        ids = tokenizer.encode(next(turns), add_special_tokens=False) + ([tokenizer.eos_token_id] if len(requests) == 2 else [])
        return {"choices": [{"token_ids": ids, "logprobs": {"token_logprobs": [-0.5] * len(ids)}}]}

    loop = object.__new__(trl_async.GTPORolloutLoop)
    loop.tokenizer, loop.chat_template_kwargs, loop.max_tokens = tokenizer, {}, 64
    loop.eos_token_ids, loop._tool_pool, loop._post = [tokenizer.eos_token_id], ThreadPoolExecutor(1), post
    loop.model_name, loop.lora_name, loop.request_timeout = "scripted", None, 10
    loop.temperature, loop.top_p, loop.top_k, loop.min_p, loop.repetition_penalty = 0.7, 1.0, 0, None, 1.0
    loop.code_interpreter = CodeInterpreterSettings(SharedExecutor(executor=Executor()), 3, "```output")
    loop._model_version_value = type("Version", (), {"value": 5})()  # TRL's shared policy version
    completion, ids, rows, calls, errors, _ = asyncio.run(
        loop._generate_one([{"role": "user", "content": "6 * 7?"}], {}, [])
    )
    assert len(requests) == 2 and calls == 1 and errors == 0 and completion.versions == [5, 5]
    path, payload = requests[0]  # TRL's model and sampling settings, the interpreter's stop strings kept in the output
    assert path == "/v1/completions" and payload["model"] == "scripted" and payload["temperature"] == 0.7
    assert payload["stop"] and payload["include_stop_str_in_output"] and "min_p" not in payload
    assert payload["max_tokens"] <= 64 and payload["return_token_ids"]
    (row,) = rows
    assert [(r.tool_call, r.status) for r in completion.records] == [("print(6 * 7)", "ok"), (None, "none")]
    assert completion.timings == [(0.002, 0.015)]  # (queue wait, run time) of its call, for the group's metrics
    masked = [t for t, m in zip(row.input_ids, row.completion_mask) if m == 0]
    assert "42" in tokenizer.decode(masked[-8:])  # the sandbox's output is a tool token, not trained
