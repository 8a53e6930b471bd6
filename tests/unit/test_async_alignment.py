"""Turn identity on the asynchronous path (issue 30): TRL's rollout loop (`_AsyncRolloutLoop._generate_one`, the real
one) runs against a scripted vLLM server (`_post`) and a scripted chat template that re-renders an earlier tool call
differently from what the model sampled, so TRL's reconciler rewrites it; the scored rows must still give every
token its own turn's advantage. Also: the packed loss terms by identity, token-in/token-out, and the staleness
stamp. CPU only, no vLLM."""

import asyncio
import collections
import queue
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import pytest
import torch

from trl_gtpo._trl_compat import async_grpo as trl_async
from trl_gtpo.advantages import AdvantageSettings
from trl_gtpo.async_gtpo import TurnScorer, python_environment_runs
from trl_gtpo.interpreter.environment import PythonEnvironment, SharedExecutor
from trl_gtpo.interpreter.executor import ExecutionResult
from trl_gtpo.scoring import ScoringSettings, score_turns
from trl_gtpo.turn_records import TurnRecord

pytest.importorskip("trl.experimental.async_grpo")
from trl.experimental.async_grpo import async_rollout_worker as worker  # noqa: E402
from trl.experimental.async_grpo.async_grpo_trainer import DataCollatorForRollout  # noqa: E402
from trl.experimental.async_grpo.packing import TreeRow  # noqa: E402


class WordTokenizer:
    """One token per word. Its chat template renders a tool-calling assistant message canonically,
    `<call> CODE </call>`, whatever the model wrote: a turn sampled as `py: CODE` is re-rendered from its first token
    (as real templates re-render a tool call's JSON), which TRL's reconciler realigns as context."""

    eos_token_id = 1
    pad_token_id = 0

    def __init__(self):
        self.vocab = {"<pad>": 0, "<eos>": 1}

    def ids(self, text):
        return [self.vocab.setdefault(word, len(self.vocab)) for word in text.split()]

    def decode(self, ids, skip_special_tokens=False):
        words = {i: w for w, i in self.vocab.items()}
        return " ".join(words[i] for i in ids if not (skip_special_tokens and i in (0, 1)))

    def render(self, message):
        if message["role"] == "assistant" and message.get("tool_calls"):
            body = " ".join(f"<call> {call['function']['arguments'].get('code', '')} </call>" for call in message["tool_calls"])
        else:
            body = message["content"]
        return f"<{message['role']}> {body} <eos>"

    def apply_chat_template(self, messages, return_dict=False, add_generation_prompt=False, tools=None,
                            chat_template=None, tokenize=True, **kwargs):
        text = " ".join(self.render(m) for m in messages) + (" <assistant>" if add_generation_prompt else "")
        return self.ids(text)


def parse_response(tokenizer, ids, prefix=None, tools=None):
    """TRL's `parse_response` for WordTokenizer: `py: CODE` and `<call> CODE </call>` are python calls."""
    words = tokenizer.decode(ids, skip_special_tokens=True).split()
    if words and words[0] in ("py:", "<call>"):
        code = " ".join(w for w in words[1:] if w != "</call>")
        return {"role": "assistant", "content": "",
                "tool_calls": [{"type": "function", "function": {"name": "python", "arguments": {"code": code}}}]}
    return {"role": "assistant", "content": " ".join(words)}


class Sandbox:
    """`boom` raises, anything else prints its length."""

    def run(self, calls):
        return [ExecutionResult("Error: boom", "error") if call.code == "boom" else ExecutionResult(str(len(call.code)))
                for call in calls]

    def close_session(self, session_id):
        pass

    def close(self):
        pass


def scripted_loop(monkeypatch, script, *, turn_scorer=None, token_in_token_out=False, version=None, delay=None):
    """A `GTPORolloutLoop` with TRL's own `_generate_one` / `_score_group`, a scripted server (`script[question]`:
    the model's turns, in order) and `WordTokenizer`. `delay(question, turn)`: seconds a turn takes."""
    from accelerate.state import PartialState

    PartialState()  # TRL's worker logs through accelerate, as its child process does
    tokenizer = WordTokenizer()
    monkeypatch.setattr(worker, "parse_response", parse_response)
    loop = object.__new__(trl_async.GTPORolloutLoop)
    loop.tokenizer, loop.chat_template, loop.chat_template_kwargs = tokenizer, None, {}
    loop.model_name, loop.lora_name, loop.max_tokens = "scripted", None, 64
    loop.temperature, loop.top_p, loop.top_k, loop.min_p, loop.repetition_penalty = 1.0, 1.0, 0, None, 1.0
    loop.request_timeout, loop.max_tool_calling_iterations, loop._fork_threshold_tokens = 10, None, 1024
    loop.eos_token_ids, loop.tools = [1], []
    loop._tool_pool = ThreadPoolExecutor(4)
    loop._counters, loop._rates = collections.defaultdict(float), collections.defaultdict(lambda: [0.0, 0.0])
    loop._metrics_queue = queue.Queue()
    loop.reward_funcs, loop.reward_func_names = [answer_reward], ["answer_reward"]
    loop._env_reward_types, loop._provides_rollout_reward = [], False
    loop.turn_scorer, loop.environment_runs, loop.code_interpreter = turn_scorer, python_environment_runs, None
    loop.token_in_token_out, loop.staleness_version = token_in_token_out, "last_request"
    loop._model_version_value = version or type("Version", (), {"value": 0})()

    async def post(path, payload, timeout, max_retries=3):
        text = tokenizer.decode(payload["prompt"])
        question = text.split("<user> ")[1].split(" <eos>")[0]
        turn = text.count("<assistant>") - 1
        if delay is not None:
            await asyncio.sleep(delay(question, turn))
        ids = tokenizer.ids(script[question][turn] + " <eos>")
        return {"choices": [{"token_ids": ids, "logprobs": {"token_logprobs": [-0.5] * len(ids)}}]}

    loop._post = post
    return loop


def answer_reward(completions, **kwargs):
    return [1.0 if completion[-1].get("content", "").endswith("42") else 0.0 for completion in completions]


def tool_ok(turns, **kwargs):
    return [[1.0 if turn.status == "ok" else None for turn in trajectory] for trajectory in turns]


SCRIPT = {
    # turn 0 sampled as `py: boom` (re-rendered `<call> boom </call>`: rewritten from its first token, and its call
    # failed); turn 1 sampled canonically (kept; its call ran); turn 2 answers
    "long": ["py: boom", "<call> print(42) </call>", "it is 42"],
    "short": ["it is 7"],
}


def run_group(loop, questions, sandbox=Sandbox):
    """Each question's rollout through TRL's `_generate_one`, gathered into a group as `_generate_loop` does, and
    scored by the loop's `_score_group`."""

    async def main():
        results = []
        for question in questions:
            environment = PythonEnvironment(SharedExecutor(executor=sandbox()))
            environment.reset()
            tool_dict = {"python": environment.python}
            results.append(await loop._generate_one([{"role": "user", "content": question}], tool_dict, []))
        group = worker.RolloutGroup(
            prompts=[[{"role": "user", "content": q}] for q in questions], reward_kwargs={},
            completions=[r[0] for r in results], completions_ids=[r[1] for r in results],
            completions_sequences=[r[2] for r in results], tool_call_counts=[r[3] for r in results],
            tool_failure_counts=[r[4] for r in results], model_version=0, group_id=0, env_rewards=[None] * 2,
            rollout_rewards=[None] * 2,
        )
        return results, await loop._score_group(group)

    return asyncio.run(main())


def tally(loop):
    """The realign and fork counts TRL pushed (`_push_rollout_metrics`: (count, transitions) per rollout)."""
    counts = collections.Counter()
    while not loop._metrics_queue.empty():
        payload = loop._metrics_queue.get()
        for key in ("realign", "fork"):
            counts[key] += payload.get(f"rollout/{key}_frac", (0.0, 0.0))[0]
    return {key: counts[key] for key in ("realign", "fork")}


class KeepingScorer(TurnScorer):
    """A TurnScorer that keeps what it scored last (`last`)."""

    def score(self, **kwargs):
        self.last = super().score(**kwargs)
        return self.last


def scorer():
    settings = ScoringSettings(AdvantageSettings(0.9, "aligned", "group", "group"), shaping_alpha=0.0,
                               format_penalty=-0.1)
    return KeepingScorer(settings, 2, turn_reward_funcs=[tool_ok], turn_reward_weights=[1.0])


def expected_table():
    """The table of the true turns, by hand: long = [failed call, call that ran, answer] (outcome 1), short = [an
    answer without a call] (outcome 0, the format rule's -0.1 on its last turn: no call ran)."""
    records = [
        [TurnRecord(0, "", "boom", "Error: boom", "error", 0, 1), TurnRecord(1, "", "print(42)", "9", "ok", 1, 2),
         TurnRecord(2, "", None, None, "none", 2, 3)],
        [TurnRecord(0, "", None, None, "none", 0, 1)],
    ]
    settings = scorer().settings
    return score_turns(records, torch.tensor([3, 1]), torch.tensor([[1.0], [0.0]]), torch.ones(1), 2, settings,
                       interpreter=True, turn_values=[[[None, 1.0, None], [None]]], turn_weights=[1.0]).table.advantages


def test_a_turn_trl_rewrote_keeps_its_place_and_later_turns_their_own_advantage(monkeypatch):
    loop = scripted_loop(monkeypatch, SCRIPT, turn_scorer=scorer())
    results, samples = run_group(loop, ["long", "short"])
    assert tally(loop) == {"realign": 1.0, "fork": 0.0}  # TRL rewrote turn 0 of "long" from its first token
    tokenizer = loop.tokenizer
    (row,) = results[0][2]
    trained = [tokenizer.decode([t]) for t, m in zip(row.input_ids, row.completion_mask) if m]
    assert "py:" not in trained  # turn 0 keeps no trained token
    table = expected_table()
    long, short = samples
    for position, (token, mask) in enumerate(zip(long.input_ids, long.completion_mask)):
        if not mask:
            assert long.advantage[position] == 0.0
    words = [tokenizer.decode([t]) for t in long.input_ids]
    turn1 = words.index("print(42)")  # the sampled call of turn 1
    assert long.advantage[turn1] == pytest.approx(table[0, 1].item(), abs=1e-6)
    assert long.advantage[len(words) - 2] == pytest.approx(table[0, 2].item(), abs=1e-6)  # "42" of the answer
    assert short.advantage[-1] == pytest.approx(table[1, 0].item(), abs=1e-6)
    assert long.metrics["turns/num_turns"] == 3.0 and long.metrics["turns/rewritten"] == 1.0
    # the records are the turns': turn 0's own sampled text and failed call, turn 1's call that ran
    records = loop.turn_scorer.last.turns[0]
    assert [(r.index, r.status, r.tool_call) for r in records] == [(0, "error", "boom"), (1, "ok", "print(42)"),
                                                                     (2, "none", None)]
    assert records[0].text == "py: boom" and records[2].text == "it is 42"


class TimedSandbox(Sandbox):
    """`Sandbox` that reports each call's timings, and takes calls as they arrive (so they are its own, exactly):
    `boom` waited 4 ms and ran 1 ms, anything else waited 0 and ran 20 ms."""

    concurrent_runs = True

    def run(self, calls):
        return [replace(result, queue_wait=0.004, duration=0.001) if call.code == "boom"
                else replace(result, duration=0.020) for call, result in zip(calls, super().run(calls))]


def test_a_scored_group_pushes_its_calls_queue_wait_and_run_time(monkeypatch):
    # "long" runs two calls (boom: 4 ms wait, 1 ms run; print(42): 0, 20), "short" none. By hand, in ms: queue waits
    # [4, 0]: (4, 2), p90 0 + 0.9 * 4 = 3.6; run times [1, 20]: (21, 2), p90 1 + 0.9 * 19 = 18.1.
    loop = scripted_loop(monkeypatch, SCRIPT, turn_scorer=scorer())
    run_group(loop, ["long", "short"], sandbox=TimedSandbox)
    pushed = []
    while not loop._metrics_queue.empty():
        payload = loop._metrics_queue.get()
        pushed += [{key: value for key, value in payload.items() if key.startswith(("tools/queue", "tools/run"))}]
    (timings,) = [payload for payload in pushed if payload]  # one push, for the one group scored
    assert timings == {key: pytest.approx(value, abs=1e-9) for key, value in {
        "tools/queue_wait_ms/mean": (4.0, 2.0), "tools/queue_wait_ms/p90": 3.6,
        "tools/run_ms/mean": (21.0, 2.0), "tools/run_ms/p90": 18.1,
    }.items()}


def test_rollout_turns_follow_trls_realign_and_fork():
    # turn 0 sampled [10, 11]; turn 1's prompt keeps 10 but re-renders 11 as 12 (a partial realign: 10 stays turn 0's);
    # turn 2's prompt re-renders the prompt itself (a fork: a new row, only turn 2 trained there)
    log = [([1, 2], [10, 11], [-0.1, -0.1], 3), ([1, 2, 10, 12, 5], [20], [-0.2], 4),
           ([1, 3, 10, 12, 5, 20, 6], [30, 31], [-0.3, -0.3], 6)]
    turns = [worker.TurnRecord(p, o, lp) for p, o, lp, _ in log]
    sequences, _ = worker._chain_to_sequences(turns, "r", 1024)
    identity = trl_async.rollout_turns(log, sequences, 1024)
    assert identity.rows == [[-1, -1, 0, -1, -1, 1], [-1] * 7 + [2, 2]]
    assert identity.spans == [(0, 2), (2, 3), (3, 5)] and identity.versions == [3, 4, 6]
    assert (identity.transitions, identity.realigned, identity.forked) == (2, 1, 1)
    sequences[0].completion_mask[2] = 0  # rows that are not what TRL's reconciler gives: TRL changed
    with pytest.raises(RuntimeError, match="_chain_to_sequences"):
        trl_async.rollout_turns(log, sequences, 1024)


def packed_sample(ids, mask, advantage, group_id=0):
    return {"input_ids": torch.tensor(ids), "completion_mask": torch.tensor(mask), "old_log_probs": torch.zeros(len(ids)),
            "advantage": advantage, "group_id": group_id, "metrics": {}}


def two_rollouts():
    row = TreeRow()
    row.add(packed_sample([5, 6, 7, 8, 9, 10], [0, 0, 1, 1, 0, 1], np.array([0, 0, 1.5, 1.5, 0, -2.0], np.float32)))
    row.add(packed_sample([5, 6, 7, 11], [0, 0, 1, 1], np.array([0, 0, 0.25, 0.75], np.float32)))
    return row


def pack_then(change):
    """TRL's TreeRow.pack, its loss terms then permuted by `change(number of terms)`."""
    pack = TreeRow.pack

    def changed(self):
        packed = pack(self)
        order = torch.tensor(change(len(packed["token_index"])))
        for key in ("token_index", "old_log_probs", "advantages", "segment_id"):
            packed[key] = packed[key][order]
        return packed

    return changed


def collate_row(row):
    collate = trl_async.TurnAdvantageCollate(DataCollatorForRollout(pad_token_id=0, num_processes=1))
    batch = collate([[row]])
    terms = batch["token_index"][0] >= 0
    labels = batch["shift_labels"][0][batch["token_index"][0][terms]].tolist()
    return list(zip(batch["segment_id"][0][terms].tolist(), labels, batch["advantages"][0][terms].tolist()))


def test_each_loss_term_gets_its_own_tokens_advantage_whatever_the_packing_order(monkeypatch):
    # (sample, target token, advantage): what each token must carry
    truth = {(0, 7, 1.5), (0, 8, 1.5), (0, 10, -2.0), (1, 7, 0.25), (1, 11, 0.75)}
    assert set(collate_row(two_rollouts())) == truth
    monkeypatch.setattr(TreeRow, "pack", pack_then(lambda n: list(reversed(range(n)))))  # a TRL that orders otherwise
    assert set(collate_row(two_rollouts())) == truth


def test_a_packing_that_loses_a_token_is_refused_not_trained(monkeypatch):
    # the same number of terms, but the last trained token of sample 0 is dropped and another one counted twice
    monkeypatch.setattr(TreeRow, "pack", pack_then(lambda n: [0, 1, 1] + list(range(3, n))))
    with pytest.raises(RuntimeError, match="TreeRow.pack changed"):
        collate_row(two_rollouts())


def test_token_in_token_out_never_rewrites_a_turn(monkeypatch):
    """The same scripted template as above (turn 0 sampled `py: boom`, re-rendered `<call> boom </call>`): with
    token_in_token_out the conversation is held as the sampled ids plus the template's tokens for the tool messages,
    so TRL's reconciler appends every turn cleanly and every turn keeps all its sampled tokens."""
    loop = scripted_loop(monkeypatch, SCRIPT, turn_scorer=scorer(), token_in_token_out=True)
    results, samples = run_group(loop, ["long", "short"])
    assert tally(loop) == {"realign": 0.0, "fork": 0.0}
    tokenizer = loop.tokenizer
    (row,) = results[0][2]
    words = [tokenizer.decode([t]) for t in row.input_ids]
    assert " ".join(words) == (
        "<user> long <eos> <assistant> py: boom <eos> <tool> Error: boom <eos> <assistant> <call> print(42) </call> "
        "<eos> <tool> 9 <eos> <assistant> it is 42 <eos>"
    )
    trained = [w for w, m in zip(words, row.completion_mask) if m]
    assert trained == ["py:", "boom", "<eos>", "<call>", "print(42)", "</call>", "<eos>", "it", "is", "42", "<eos>"]
    long = samples[0]
    assert long.metrics["turns/rewritten"] == 0.0 and results[0][0].turns.realigned == 0
    table = expected_table()
    for word, turn in (("py:", 0), ("print(42)", 1), ("42", 2)):
        assert long.advantage[words.index(word)] == pytest.approx(table[0, turn].item(), abs=1e-6)
    assert [r.status for r in loop.turn_scorer.last.turns[0]] == ["error", "ok", "none"]


def python(code: str) -> str:
    """A tool that answers at once."""
    return "1"


def simulate_staleness(monkeypatch, staleness_version, *, turn_counts=(1, 2, 4, 8), groups=48, turn_s=0.004,
                       step_samples=8, step_s=0.012, max_staleness=1):
    """TRL's own `_generate_loop` and `_score_loop` (GTPORolloutLoop) against a scripted server whose every turn
    takes `turn_s` (a rollout of k turns takes k * turn_s), prompts cycling through `turn_counts`, 4 rollouts a
    group; a trainer that takes `step_samples` samples per step, trains `step_s`, then bumps the policy version, and
    drops a sample as TRL's `RolloutQueueDataset.__iter__` does (version - sample.model_version > max_staleness).
    Returns {turn count: (dropped, consumed)} over the first `groups` groups."""
    script = {f"k{k}": ["<call> print(1) </call>"] * (k - 1) + ["it is 42"] for k in turn_counts}
    version = type("Version", (), {"value": 0})()
    loop = scripted_loop(monkeypatch, script, turn_scorer=scorer_for(4), version=version,
                         delay=lambda question, turn: turn_s)
    loop.staleness_version = staleness_version
    # TRL sizes max_inflight_tasks to max(max_staleness, 1) * samples per step (AsyncGRPOTrainer.__init__)
    loop.num_generations, loop.max_inflight_tasks, loop.queue_maxsize = 4, max(max_staleness, 1) * step_samples, 0
    loop.dataset = [{"prompt": [{"role": "user", "content": f"k{k}"}]} for k in turn_counts]
    loop._dataset_iter = iter(loop.dataset)
    loop.environment_factories, loop._multi_environment = None, False
    loop.tools = loop._standalone_tools = [python]
    loop._heartbeat_value = type("Beat", (), {"value": 0.0})()
    loop._total_completion_tokens = loop._pushed_completion_tokens = loop._total_groups_scored = 0
    loop._pushed_at, loop.log_completions, loop._inflight = 0.0, False, 0
    loop.rollout_buffer = queue.Queue()
    counts = collections.defaultdict(lambda: [0, 0])

    async def trainer(stop):
        taken = 0
        while taken < groups * 4:
            try:
                sample = loop.rollout_buffer.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.001)
                continue
            taken += 1
            kept = version.value - sample.model_version <= max_staleness  # TRL's RolloutQueueDataset rule
            counts[int(sample.metrics["turns/num_turns"])][0] += not kept
            counts[int(sample.metrics["turns/num_turns"])][1] += 1
            if kept:
                loop._step_fill = getattr(loop, "_step_fill", 0) + 1
                if loop._step_fill == step_samples:
                    loop._step_fill = 0
                    await asyncio.sleep(step_s)
                    version.value += 1
        stop.set()

    async def main():
        loop._groups_to_score = asyncio.Queue(maxsize=16)
        stop = asyncio.Event()
        await asyncio.gather(loop._generate_loop(stop_event=stop), loop._score_loop(stop_event=stop), trainer(stop))

    asyncio.run(main())
    return {k: tuple(v) for k, v in sorted(counts.items())}


def scorer_for(group_size):
    settings = ScoringSettings(AdvantageSettings(0.9, "aligned", "group", "group"), shaping_alpha=0.0)
    return TurnScorer(settings, group_size)


def drop_rates(counts):
    return {k: dropped / consumed for k, (dropped, consumed) in counts.items()}


@pytest.mark.slow
def test_staleness_no_longer_drops_long_rollouts_more(monkeypatch):
    # Measured (200 groups, max_staleness 1): TRL's stamp drops 0 / 0 / 26 / 82 % of the 1 / 2 / 4 / 8-turn samples,
    # "last_request" 4 / 8 / 6 / 4 % (benchmarks/results/async_staleness.md)
    trl = drop_rates(simulate_staleness(monkeypatch, "first_request", groups=96))
    gtpo = drop_rates(simulate_staleness(monkeypatch, "last_request", groups=96))
    print(f"\ndrop rate by turn count: TRL's stamp {trl}; last_request {gtpo}")
    assert trl[8] >= trl[1] + 0.3  # TRL's stamp: 8-turn groups are dropped far more often than 1-turn ones
    assert gtpo[8] <= gtpo[1] + 0.15 and gtpo[8] <= trl[8] - 0.3


def test_group_version_stamps_the_last_request_or_trls_first_dispatch(tmp_path):
    from trl_gtpo.async_gtpo import AsyncGTPOConfig

    completions = [trl_async.TurnCompletion([], versions=[3, 4, 6]), trl_async.TurnCompletion([], versions=[3])]
    group = type("Group", (), {"completions": completions, "model_version": 3})()
    assert trl_async.group_version(group, "last_request") == (6, 3)
    assert trl_async.group_version(group, "first_request") == (3, 3)
    with pytest.raises(ValueError, match="staleness_version"):
        AsyncGTPOConfig(output_dir=str(tmp_path), use_cpu=True, staleness_version="oldest")
