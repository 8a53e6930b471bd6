"""AsyncGTPOTrainer: GTPO's turn-level advantages on TRL's asynchronous GRPO (`trl.experimental.async_grpo`).

On the synchronous paths every multi-turn rollout is lockstep: turn j of all live trajectories is generated in one
call, so a step costs about the sum over turns of the slowest turn. TRL 1.16's `AsyncGRPOTrainer` runs each rollout as
its own asyncio task against a vLLM server (no barrier between trajectories) and trains while generation goes on; it
gives one advantage per conversation. `AsyncGTPOTrainer` keeps its rollouts and its loss and replaces that advantage,
when a group of `num_generations` rollouts is scored, by GTPO's turn-level ones (arXiv 2511.14846, section 3): the
group's turn records and rewards go through `scoring.score_turns` (the same pure step as `GTPOTrainer`'s), which
gives the (N, K) table, and every model token of turn j gets A_ij.
"""

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ._trl_compat import async_grpo as trl_async
from .async_turns import rewritten_turns, row_turns, token_advantages_by_row
from .gtpo_config import GTPOFields
from .interpreter.environment import TOOL_NAME, PythonEnvironment, SharedExecutor, ToolRun, expect_concurrency
from .interpreter.loop import CodeInterpreterLoop
from .interpreter.rollout import call_timing_metrics, turn_records
from .rewards.turn import call_turn_reward_funcs
from .scoring import ScoringSettings, score_turns, trajectory_records
from .turn_records import TurnRecord

try:
    from trl.experimental.async_grpo import AsyncGRPOConfig, AsyncGRPOTrainer
except ImportError:  # pragma: no cover - check_async_trl_api() explains
    AsyncGRPOConfig, AsyncGRPOTrainer = object, object

logger = logging.getLogger(__name__)


@dataclass
class AsyncGTPOConfig(GTPOFields, AsyncGRPOConfig):
    r"""
    Configuration class for [`AsyncGTPOTrainer`]: TRL's [`AsyncGRPOConfig`] plus the GTPO fields of [`GTPOFields`]
    (the same fields, defaults and checks as [`GTPOConfig`]'s), with two differences of the asynchronous trainer:

    - A group is scored alone, when its last rollout finishes, so `turn_advantage_scope` is `"group"` only and the
      scale is the group's. The outcome is the sum of the reward functions, as TRL's asynchronous trainer sums them.
    - TRL's asynchronous loss has no `importance_sampling_level`: its ratio is per token, between the trainer's policy
      and the vLLM policy that sampled the token (up to `max_staleness` versions old), clipped per token; each
      token's clipped ratio multiplies its turn's advantage. A turn-level ratio (GTPOConfig's
      `importance_sampling_level="turn"`) would replace TRL's loss, which this trainer keeps.

    The `tool_*` fields configure the sandbox of GTPO's code interpreter in the rollout process (used when neither
    `tools` nor `environment_factory` is given).

    Parameters:
        token_in_token_out (`bool`, *optional*, defaults to `False`):
            On TRL's tool path (`tools` / `environment_factory`, e.g. `PythonEnvironment`): hold each conversation
            as token ids instead of re-rendering its messages through the chat template every turn. The sampled ids
            of a turn are kept as they are, its tool messages are appended as the template's tokens for them, and
            the next request continues from exactly those ids, so no turn is ever re-rendered differently from what
            was sampled (TRL's `rollout/realign_frac` and `rollout/fork_frac` are 0 and every turn trains all its
            tokens). Off (TRL's way), a turn the template re-renders differently (a tool call re-rendered as the
            template's JSON, dropped reasoning) is rewritten into context by TRL's reconciler: GTPO then keeps the
            turn in the table but it trains only its tokens that remain (`turns/rewritten` counts the turns left with
            none). On, the model sees its own tokens rather than the template's rendering of them, as in the
            synchronous trainers' tool loop; the template must render an assistant turn as a prefix of that turn
            followed by its tool messages (checked each turn).
        staleness_version (`str`, *optional*, defaults to `"last_request"`):
            The policy version a scored group is stamped with, against which TRL's `max_staleness` drops it:
            `"last_request"` (the version under which the group's last turn was requested, so a group is judged by
            how long it waited after generation, whatever its number of turns) or `"first_request"` (TRL's stamp:
            the version when the group's first rollout was dispatched, which drops groups of long multi-turn
            rollouts more often). The versions a group's turns were sampled under are logged as
            `rollout/version_span`; TRL's per-token ratio against the sampling policy covers each token either way.
        tree_attention (`str`, *optional*, defaults to `"auto"`):
            How the trainer's packed forward attends: `"kernel"` (TRL's FlashAttention-3 kernel, which the `kernels`
            package fetches from the Hub: CUDA and a Hub connection or cache), `"sdpa"` (the same attention on
            PyTorch SDPA, a loop over the packed segments: any device, offline) or `"auto"` (kernel with CUDA, SDPA
            without).
    """

    _VALID_DICT_FIELDS = getattr(AsyncGRPOConfig, "_VALID_DICT_FIELDS", []) + ["tool_executor_kwargs"]

    token_in_token_out: bool = field(
        default=False,
        metadata={
            "help": "Hold each tool-path conversation as token ids (the sampled ids, then the template's tokens for "
            "the tool messages): no turn is re-rendered, so TRL never rewrites one (realign/fork fractions 0)."
        },
    )
    staleness_version: str = field(
        default="last_request",
        metadata={
            "help": "Policy version a group is stamped with for max_staleness: 'last_request' (its last turn's, "
            "judges how long it waited, not how many turns it had) or 'first_request' (TRL's: its first dispatch)."
        },
    )
    tree_attention: str = field(
        default="auto",
        metadata={
            "help": "Attention of the packed forward: 'kernel' (TRL's FlashAttention-3 from the Hub, CUDA), 'sdpa' "
            "(PyTorch SDPA: any device, offline) or 'auto' (kernel with CUDA, SDPA without)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.turn_advantage_scope != "group":
            raise ValueError(
                f"AsyncGTPOConfig.turn_advantage_scope={self.turn_advantage_scope!r} is not allowed: use 'group'. A "
                "group is scored alone, when its last rollout finishes, so there is no batch to pool over."
            )
        self._check(self.tree_attention in ("auto", "kernel", "sdpa"), "tree_attention", "'auto', 'kernel' or 'sdpa'")
        self._check(self.staleness_version in ("last_request", "first_request"), "staleness_version",
                    "'last_request' or 'first_request'")


@dataclass(frozen=True)
class CodeInterpreterSettings:
    """GTPO's markdown-fence code interpreter in the rollout process: the shared sandbox executor (it pickles as its
    settings), the turn limit and the stop marker. `run` is one rollout, which TRL's loop drives turn by turn."""

    executor: SharedExecutor
    max_turns: int
    stop_marker: str

    def run(self, tokenizer, prompt_ids, max_tokens, eos_token_ids, request, decode):
        """One trajectory of the same loop as the synchronous trainers' (`CodeInterpreterLoop`: ```python blocks,
        stop strings, sandbox calls, token ids only ever concatenated); `request(fields)` is one `/v1/completions`
        request to the server (`server_turn`). Returns the trajectory, its turn records and its code calls' (queue
        wait, run time) in seconds, which the group's scoring turns into tools/queue_wait_ms and tools/run_ms."""
        interpreter = CodeInterpreterLoop(
            tokenizer, self.executor, max_turns=self.max_turns, max_completion_length=max_tokens,
            stop_marker=self.stop_marker, eos_token_ids=eos_token_ids,
        )

        def generate_turn(histories, max_new_tokens):
            ids, logprobs = server_turn(request, histories[0], max_new_tokens, interpreter.stop_strings)
            return [ids], [logprobs]

        (trajectory,) = interpreter.run([prompt_ids], generate_turn)
        return trajectory, turn_records(trajectory, decode), list(interpreter.call_timings)


def server_turn(request, prompt_ids, max_tokens: int, stop: list[str]) -> tuple[list[int], list[float]]:
    """One turn of the fence interpreter from vLLM's `/v1/completions`: the conversation so far as token ids in,
    the sampled ids and their log-probs out, stopped at the interpreter's stop strings and keeping them (the loop
    reads the closing fence). `request(fields)` adds the trainer's model and sampling settings and posts. A seed per
    request keeps the samples of one prompt independent across data-parallel vLLM engines."""
    reply = request({
        "prompt": list(prompt_ids), "max_tokens": max_tokens, "n": 1, "return_token_ids": True, "logprobs": 0,
        "stop": stop, "include_stop_str_in_output": True, "seed": random.getrandbits(63),
    })
    choice = reply["choices"][0]
    return choice["token_ids"], choice["logprobs"]["token_logprobs"]


def python_environment_runs(tool_dict: dict) -> list[ToolRun] | None:
    """The call log of the `PythonEnvironment` whose `python` tool a rollout used (None: no such environment): the
    environment returns to TRL's pool, and is reset by another rollout, before the group is scored."""
    environment = getattr(tool_dict.get(TOOL_NAME), "__self__", None)
    return list(environment.runs) if isinstance(environment, PythonEnvironment) else None


@dataclass(frozen=True)
class ScoredGroup:
    """What scoring a group gives: per conversation, per row, the advantage of each token (0 off the model's
    tokens), the (N, K) table and the turn records it came from, and per conversation metrics for TRL's logs;
    `group_metrics`: the group's own, pushed once for it (its code calls' tools/queue_wait_ms and tools/run_ms)."""

    token_advantages: list[list[list[float]]]
    advantages: torch.Tensor
    turns: list[list[TurnRecord]]
    metrics: list[dict[str, float]]
    group_metrics: dict[str, float | tuple[float, float]] = field(default_factory=dict)


@dataclass
class TurnScorer:
    """GTPO's scoring of one group of asynchronous rollouts; runs in TRL's rollout process (it pickles).

    It gathers the group's turn records and turn rewards, lets `scoring.score_turns` (the same step as
    `GTPOTrainer`'s) make the table, and spreads it over the rows. The outcome is the sum of TRL's reward columns, as
    TRL sums them. It also returns the group's code-call timings (`group_call_metrics`), which the rollout loop pushes
    to TRL's metrics queue: the synchronous trainers' tools/queue_wait_ms and tools/run_ms.
    """

    settings: ScoringSettings
    group_size: int
    turn_reward_funcs: list[Callable] = field(default_factory=list)
    turn_reward_weights: list[float] = field(default_factory=list)

    def score(
        self, *, prompts, completions, completion_ids, row_ids, row_masks, runs, rewards_per_func, reward_kwargs,
        decode, run_async=None, records=None, row_turn_ids=None, turn_spans=None, call_timings=None,
    ) -> ScoredGroup:
        """`row_ids[i][r]` / `row_masks[i][r]`: the tokens and completion mask of conversation i's training row r;
        `runs[i]`: its `PythonEnvironment` call log (None: no such environment); `records[i]`: the code
        interpreter's own turn records (None: not that path); `call_timings[i]`: the fence interpreter's (queue
        wait, run time) of each code call (None: not that path; a call log has its own); `rewards_per_func`: (N, F).

        Turn identity, when the rollout loop knows it (None per conversation: the turns are the runs of its masks):
        `row_turn_ids[i][r][t]` is the turn that sampled token t of row r (-1 off the trained tokens) and
        `turn_spans[i][k]` turn k's [start, end) in `completion_ids[i]`. Then conversation i has `len(turn_spans[i])`
        turns, record k is built from turn k's own sampled tokens and its k-th assistant message (TRL appends one per
        request), and each trained token gets its own turn's advantage; a turn TRL rewrote into context keeps its
        place in the table and trains only the tokens of it that remain (`turns/rewritten` counts the turns left
        with none)."""
        n = len(row_ids)
        row_turn_ids = list(row_turn_ids) if row_turn_ids is not None else [None] * n
        turn_spans = list(turn_spans) if turn_spans is not None else [None] * n
        records = records or [None] * n
        counts, turns = [], []
        for i in range(n):
            masks, spans, own = row_masks[i], turn_spans[i], records[i]
            if spans is not None and own is None:
                replies = sum(isinstance(m, dict) and m.get("role") == "assistant" for m in completions[i])
                if replies != len(spans):
                    raise RuntimeError(
                        f"conversation {i} has {len(spans)} requests but {replies} assistant messages: TRL's tool "
                        "loop no longer appends one assistant message per request; update trl_gtpo/_trl_compat."
                    )
                counts.append(len(spans))
                turns.append(trajectory_records(completion_ids[i], None, list(completions[i]), decode, runs=runs[i],
                                                spans=spans))
            else:
                counts.append(row_turns(masks)[1])
                turns.append(trajectory_records(
                    [token for row in row_ids[i] for token in row], [value for row in masks for value in row],
                    list(completions[i]), decode, own=own, runs=runs[i],
                ))
        num_turns = torch.tensor(counts)
        names = [getattr(func, "__name__", type(func).__name__) for func in self.turn_reward_funcs]
        values = []
        if self.turn_reward_funcs:
            values = call_turn_reward_funcs(
                self.turn_reward_funcs, names, turns, run_async=run_async, prompts=prompts, completions=completions,
                completion_ids=completion_ids, **reward_kwargs,
            )
        scored = score_turns(
            turns, num_turns, rewards_per_func, torch.ones(rewards_per_func.shape[1]), self.group_size,
            self.settings, interpreter=all(calls is not None or own is not None for calls, own in zip(runs, records)),
            turn_values=values, turn_weights=self.turn_reward_weights or [1.0] * len(names),
        )
        advantages = scored.table.advantages
        rewritten = [len(rewritten_turns(ids, k)) if ids is not None else 0
                     for ids, k in zip(row_turn_ids, num_turns.tolist())]
        if any(rewritten):
            logger.info(
                f"{sum(rewritten)} turn(s) of this group were rewritten into context by TRL's reconciler and keep no "
                "trained token; they keep their place in the turn-advantage table"
            )
        metrics = [
            {"turns/num_turns": float(k), "turns/rewritten": float(r), "advantages/turn_mean": _nanmean(advantages[i])}
            for i, (k, r) in enumerate(zip(num_turns.tolist(), rewritten))
        ]
        return ScoredGroup(
            token_advantages_by_row(advantages, row_masks, row_turn_ids), advantages, turns, metrics,
            group_call_metrics(runs, call_timings or [None] * n),
        )


def group_call_metrics(runs, call_timings) -> dict[str, float | tuple[float, float]]:
    """tools/queue_wait_ms and tools/run_ms of a group's code calls, as the synchronous trainers log a step's: from
    each conversation's fence-interpreter timings or `PythonEnvironment` call log. The /mean is a (sum, count) rate,
    so TRL's logging window averages over every call of the groups it scored; the /p90 is the group's."""
    timings = []
    for calls, own in zip(runs, call_timings, strict=True):
        if own is not None:
            timings.extend(own)
        elif calls is not None:
            timings.extend((run.queue_wait, run.run_time) for run in calls)
    return call_timing_metrics(timings, mean_as_rate=True)


def _nanmean(values: torch.Tensor) -> float:
    real = values[~torch.isnan(values)]
    return real.mean().item() if real.numel() else 0.0


class AsyncGTPOTrainer(AsyncGRPOTrainer):
    """
    GTPO (https://arxiv.org/abs/2511.14846) on TRL's asynchronous GRPO trainer (`trl.experimental.async_grpo`, TRL
    1.16's experimental API; every private use goes through `trl_gtpo._trl_compat.async_grpo`).

    Rollouts are TRL's: one asyncio task per conversation against a vLLM server, so a trajectory's turns never wait
    for other trajectories. The tool calls: `tools` / `environment_factory` (use
    `environment_factory=PythonEnvironment.factory(args)` for GTPO's sandboxed code interpreter as a JSON
    `python(code)` tool), or, when neither is given, GTPO's markdown-fence code interpreter (the model writes
    ```python blocks; `max_turns`, `turn_stop_marker`), each turn one request, each block run in the sandbox.

    What changes: when a group's last rollout finishes, `TurnScorer` takes its turns by identity (the turn that
    sampled each trained token, as TRL's reconciler left the rows: a turn TRL rewrote into context keeps its place
    in the table and trains the tokens of it that remain; `turns/rewritten` counts those left with none), gathers its
    records, turn rewards and TRL's rewards, lets `scoring.score_turns` make the turn-advantage table, and gives
    every trained token its own turn's advantage; the packed loss terms carry those per-token advantages into TRL's
    loss, each matched to its token (sample, position). `AsyncGTPOConfig.token_in_token_out` holds tool-path
    conversations as token ids, so TRL never rewrites a turn.

    Off-policy staleness: samples up to `max_staleness` policy versions old are trained with TRL's per-token
    importance ratio (there is no `importance_sampling_level` here; see `AsyncGTPOConfig`); a group is stamped with
    the version of its last request (`AsyncGTPOConfig.staleness_version`), so long multi-turn groups are not dropped
    more often than short ones.

    Args:
        turn_reward_funcs (`Callable` or `list[Callable]`, *optional*):
            Turn reward functions as for `GTPOTrainer` (they must pickle: module-level functions).
        sandbox_settings (*optional*):
            What `make_executor` reads to build the fence interpreter's sandbox in the rollout process; None: `args`
            (its `tool_*` fields).
        Every other argument is [`AsyncGRPOTrainer`]'s.
    """

    _tag_names = ["trl", "async-grpo", "gtpo"]
    _name = "AsyncGTPO"

    def __init__(self, model, reward_funcs=None, args: AsyncGTPOConfig | None = None, *, turn_reward_funcs=None,
                 sandbox_settings=None, **kwargs):
        trl_async.check_async_trl_api()
        if args is None:
            args = AsyncGTPOConfig(f"{str(model).split('/')[-1]}-AsyncGTPO")
        elif not isinstance(args, AsyncGTPOConfig):
            raise TypeError(
                f"AsyncGTPOTrainer needs `args` to be an AsyncGTPOConfig, got {type(args).__name__}: AsyncGTPOConfig "
                "takes every AsyncGRPOConfig argument."
            )
        funcs = [] if turn_reward_funcs is None else list(turn_reward_funcs) if isinstance(
            turn_reward_funcs, (list, tuple)) else [turn_reward_funcs]
        weights = args.turn_reward_weights
        if weights is not None and len(weights) != len(funcs):
            raise ValueError(
                f"AsyncGTPOConfig.turn_reward_weights has {len(weights)} weights for {len(funcs)} turn reward "
                "functions: give one weight per function, or None (all 1.0)."
            )
        with trl_async.cpu_safe_init():  # TRL 1.16's __init__ asks CUDA for its MFU metric
            super().__init__(model, reward_funcs, args=args, **kwargs)
        self.turn_scorer = TurnScorer(
            ScoringSettings.from_config(args),
            args.num_generations,
            turn_reward_funcs=funcs,
            turn_reward_weights=list(weights) if weights is not None else [1.0] * len(funcs),
        )
        # One rollout process runs every rollout of the job, up to max_inflight_tasks at once (TRL has resolved it by
        # now), each in a tool thread: size its sandbox pool for them rather than for one rank's share of the node.
        concurrency = args.max_inflight_tasks if args.max_inflight_tasks > 0 else None
        code_interpreter = None
        if not kwargs.get("tools") and kwargs.get("environment_factory") is None:
            settings = sandbox_settings if sandbox_settings is not None else args
            code_interpreter = CodeInterpreterSettings(
                SharedExecutor(settings, concurrency=concurrency), args.max_turns, args.turn_stop_marker
            )
        elif concurrency is not None:
            expect_concurrency(kwargs.get("environment_factory"), concurrency)
        trl_async.use_sdpa_tree_attention(args.tree_attention)
        if self.rollout_worker is not None:
            trl_async.use_turn_scoring(
                self.rollout_worker, self.turn_scorer, python_environment_runs, code_interpreter,
                token_in_token_out=args.token_in_token_out, staleness_version=args.staleness_version,
            )

    def get_train_dataloader(self):
        # Overrides AsyncGRPOTrainer.get_train_dataloader only to wrap its collator: TRL's packer stamps one
        # advantage per sample on its loss terms; GTPO's samples carry one per token (`TurnAdvantageCollate`).
        dataloader = super().get_train_dataloader()
        trl_async.use_turn_advantage_collate(dataloader)
        return dataloader
