"""The code interpreter as a TRL `rollout_func`, usable by GTPOTrainer and by plain GRPOTrainer alike.

GTPOTrainer installs one when no `tools`, `environment_factory` or `rollout_func` is given. Passing one to TRL's
`GRPOTrainer(rollout_func=CodeInterpreterRollout(args))` gives GRPO with the same multi-turn tool use: the baseline
GTPO is compared against (`examples/train_gtpo.py --trainer grpo`).
"""

import logging
from collections.abc import Callable, Sequence

import torch
from transformers import TrainerCallback

from .. import _trl_compat as trl_private
from ..turn_records import TurnRecord, turn_spans
from .executor import CodeCall, CodeExecutor, ExecutionResult, check_executor
from .lifecycle import CloseAtTrainEnd
from .loop import CodeInterpreterLoop, ExecutorError, GenerateTurn, Trajectory

logger = logging.getLogger(__name__)

# Each code call's wait for a free sandbox worker, and its run time (`ExecutionResult.queue_wait`, `.duration`).
CALL_TIMING_METRICS = ("tools/queue_wait_ms", "tools/run_ms")


class CodeInterpreterRollout:
    """`rollout_func(prompts, trainer)`: runs the multi-turn code-interpreter loop over the trainer's own
    single-turn generation (`_generate_single_turn`, any backend) and returns TRL's rollout dict.

    Besides TRL's keys (`prompt_ids`, `completion_ids`, `logprobs`, and `env_mask`, the tool mask) the dict has
    `turns`: per trajectory, one `TurnRecord` per model turn, and `stop_reason`: why each trajectory ended ("eos",
    "budget", "max_turns", see `Trajectory.stop_reason`). TRL hands extra keys to the reward functions as keyword
    arguments; GTPO's advantage step reads `turns` for the format rule, shaping and turn rewards, and its truncation
    masking reads `stop_reason` (a trajectory that ran out of turns is not a truncated completion).

    Prompts with images are tokenized one at a time and each keeps its images and processor fields, which go with its
    trajectories into every turn's `_generate_single_turn` (`_trl_compat.PromptMedia`). A custom `generate_turn` gets
    token ids only.

    Args:
        args: a GTPOConfig (its `max_turns`, `turn_stop_marker`, `cache_prompt_prefix` and sandbox settings are
            read).
        executor: what runs the code, checked here against the `CodeExecutor` protocol. None builds one from `args`:
            a `tool_executor` factory is called here; the local `SandboxPool` has its settings checked here and its
            workers started at the first code call, so a process whose model writes no code starts none.
        generate_turn: `f(trainer, stop_strings) -> GenerateTurn`; None uses TRL's `_generate_single_turn`
            (`trl_gtpo._trl_compat.TurnGenerator`). Tests pass a scripted generator here.
    """

    def __init__(
        self,
        args,
        executor: CodeExecutor | None = None,
        generate_turn: Callable[[object, list[str]], GenerateTurn] | None = None,
    ):
        self.args = args
        self._owns_executor = executor is None  # a user's executor is theirs to close, and is never replaced
        if executor is not None:
            check_executor(executor, "The code interpreter (GTPOTrainer(executor=...) or CodeInterpreterRollout)")
        elif getattr(args, "tool_executor", None) is None:
            from .executor_factory import check_executor_settings

            check_executor_settings(args)
        else:
            from .executor_factory import make_executor

            executor = make_executor(args)  # the user's factory, called now so that its errors surface now
        self._executor = executor
        self._generate_turn = generate_turn or trl_private.TurnGenerator
        self._warned_executor_failure = False

    @property
    def executor(self) -> CodeExecutor:
        """Started on first use, so a process that never runs code starts no sandbox workers."""
        if self._executor is None:
            from .executor_factory import make_executor

            self._executor = make_executor(self.args)
        return self._executor

    def close(self) -> None:
        """Stop the sandbox workers this rollout started (a user's executor is left alone)."""
        if self._owns_executor and self._executor is not None:
            self._executor.close()
            self._executor = None

    def callback(self) -> TrainerCallback:
        """A callback that stops the sandbox workers when training ends (they restart if used again)."""
        return CloseAtTrainEnd(self.close)

    def __call__(self, prompts: list, trainer) -> dict:
        # A VLM prompt's images go with its trajectories into every turn's generation (`PromptMedia`); the loss's
        # forward pass gets them from TRL, which processes the dataset's images itself.
        prompt_ids, media = trl_private.prompt_media(trainer, prompts)
        accelerator = trainer.accelerator
        tokenizer = trl_private.tokenizer(trainer)
        loop = CodeInterpreterLoop(
            tokenizer,
            _StartOnFirstCall(self),
            max_turns=self.args.max_turns,
            max_completion_length=trainer.max_completion_length,
            stop_marker=self.args.turn_stop_marker,
            eos_token_ids=trainer.eos_token_ids,
            keep_in_step=_ProcessesInStep(accelerator) if accelerator.num_processes > 1 else None,
            executor_errors=getattr(self.args, "tool_executor_errors", "raise"),
            user_stop_strings=user_stop_strings(trainer.args),
        )
        if self._generate_turn is trl_private.TurnGenerator:
            if media is not None:
                media.rows = lambda: loop.rows
            generate_turn = trl_private.TurnGenerator(
                trainer, loop.stop_strings, media, cache_prompt_prefix=self.args.cache_prompt_prefix
            )
        else:
            generate_turn = self._generate_turn(trainer, loop.stop_strings)
        with trl_private.vllm_sleep_once_per_rollout(trainer):
            trajectories = loop.run(prompt_ids, generate_turn)
        if loop.executor_failures and not self._warned_executor_failure:
            self._warned_executor_failure = True
            logger.warning(
                f"The code executor failed ({loop.last_executor_error!r}); its calls got a 'crash' result because "
                "GTPOConfig.tool_executor_errors='contain'. Failures are counted in the tools/executor_failures "
                "metric; this warning is not repeated."
            )
        _log_tool_metrics(trainer, trajectories, loop.seconds, self.args.max_turns, loop.executor_failures)
        log_call_timings(trainer, loop.call_timings)

        def decode(ids):
            return tokenizer.decode(ids, skip_special_tokens=True)

        return {
            "prompt_ids": prompt_ids,
            "completion_ids": [t.completion_ids for t in trajectories],
            "logprobs": [t.logprobs for t in trajectories] if trajectories[0].logprobs is not None else None,
            "env_mask": [t.tool_mask for t in trajectories],
            "turns": [turn_records(t, decode) for t in trajectories],
            "stop_reason": [t.stop_reason for t in trajectories],
        }


def user_stop_strings(args) -> list[str]:
    """The user's stop strings, in the key of the generation backend (`generation_kwargs`): `stop` for vLLM's
    SamplingParams, `stop_strings` for transformers' generate. Both backends end the trajectory at one (the loop)."""
    kwargs = getattr(args, "generation_kwargs", None) or {}
    stops = kwargs.get("stop" if getattr(args, "use_vllm", False) else "stop_strings") or []
    return [stops] if isinstance(stops, str) else list(stops)


def turn_records(trajectory: Trajectory, decode: Callable[[list[int]], str]) -> list[TurnRecord]:
    """The `TurnRecord`s of a code-interpreter trajectory, one per model turn that has tokens (as the mask has)."""
    turns = [turn for turn in trajectory.turns if turn.num_tokens > 0]
    ids = trajectory.completion_ids
    return [
        TurnRecord(
            index=k,
            text=decode(ids[start:end]),
            tool_call=turn.code,
            tool_response=turn.output,
            status=turn.status or "none",
            start=start,
            end=end,
            well_formed=turn.well_formed,
        )
        for k, ((start, end), turn) in enumerate(zip(turn_spans(trajectory.tool_mask), turns))
    ]


class _StartOnFirstCall:
    """The rollout's executor, started at the first code call (the loop closes sessions of every trajectory, also of
    those that never ran code: nothing to close then)."""

    def __init__(self, rollout: CodeInterpreterRollout):
        self.rollout = rollout

    @property
    def executor_name(self) -> str:
        executor = self.rollout._executor
        return type(executor).__name__ if executor is not None else "SandboxPool"

    def run(self, calls: list[CodeCall]) -> list[ExecutionResult]:
        if self.rollout._executor is None:
            try:
                self.rollout.executor  # starts the pool
            except Exception as error:  # not retried nor contained: a pool that cannot start is a setup error
                raise ExecutorError(f"The local code sandbox could not start: {error}") from error
        return self.rollout.executor.run(calls)

    def close_session(self, session_id: str) -> None:
        if self.rollout._executor is not None:
            self.rollout._executor.close_session(session_id)

    def close(self) -> None:
        self.rollout.close()


class _ProcessesInStep:
    """The loop's `keep_in_step` across processes: one gather of a (live, failed) flag pair per turn, so every process
    generates as many times as the longest one (ZeRO-3 and vLLM server generation are collectives), and a process
    whose executor failed stops every process at the same turn, each raising an `ExecutorError` that names the
    process and the cause (otherwise the others would wait for it in their next collective until the backend's
    timeout, 30 minutes by default)."""

    def __init__(self, accelerator):
        self.accelerator = accelerator

    def __call__(self, live: bool, failure: Exception | None = None) -> bool:
        accelerator = self.accelerator
        flags = torch.tensor([[int(live), int(failure is not None)]], device=accelerator.device)
        flags = accelerator.gather(flags).reshape(-1, 2)
        if not flags[:, 1].any():
            return bool(flags[:, 0].sum().item())
        from accelerate.utils import gather_object

        causes = gather_object([None if failure is None else f"{type(failure).__name__}: {str(failure).rstrip('.')}"])
        failed = [(rank, cause) for rank, cause in enumerate(causes) if cause is not None]
        described = "; ".join(f"process {rank} of {len(causes)}: {cause}" for rank, cause in failed)
        message = (
            f"The code executor failed on {described}. Every process stops at this turn, so that none waits for it "
            "in a collective."
        )
        raise ExecutorError(message) from failure


def _log_tool_metrics(
    trainer, trajectories: list[Trajectory], seconds: dict[str, float], max_turns: int, executor_failures: int
) -> None:
    stats = torch.tensor(
        [
            [
                len(t.turns),
                t.num_tool_calls,
                t.num_tool_errors,
                sum(turn.status == "timeout" for turn in t.turns),
                len(t.turns) >= max_turns,
                executor_failures if i == 0 else 0,
            ]
            for i, t in enumerate(trajectories)
        ],
        dtype=torch.float32,
        device=trainer.accelerator.device,
    )
    stats = trainer.accelerator.gather(stats)
    metrics = trl_private.metrics(trainer)
    metrics["turns/mean"].append(stats[:, 0].mean().item())
    metrics["turns/max"].append(stats[:, 0].max().item())
    metrics["tools/calls_per_trajectory"].append(stats[:, 1].mean().item())
    metrics["tools/errors_per_trajectory"].append(stats[:, 2].mean().item())
    metrics["tools/timeouts"].append(stats[:, 3].sum().item())
    metrics["turns/frac_max_turns"].append(stats[:, 4].mean().item())
    metrics["tools/executor_failures"].append(stats[:, 5].sum().item())  # executor run() calls that failed every try
    # Where the rollout's time went (this process): generation calls, and the sandbox running the code.
    metrics["timing/generation_seconds"].append(seconds["generation"])
    metrics["timing/tool_seconds"].append(seconds["tools"])
    # One readable line per trajectory in the completions table: each turn's tool call and how it went.
    trl_private.log_completion_column(trainer, "tool_calls", [_describe_turns(t) for t in trajectories])


def log_call_timings(trainer, timings: list[tuple[float, float]]) -> None:
    """Log the step's code calls of every process: tools/queue_wait_ms (waiting for a free sandbox worker) and
    tools/run_ms (running), each as /mean and /p90. Collective: every process calls it, with its own calls."""
    from accelerate.utils import gather_object

    everyone = [pair for pairs in gather_object([list(timings)]) for pair in pairs]
    metrics = trl_private.metrics(trainer)
    for key, value in call_timing_metrics(everyone).items():
        metrics[key].append(value)


def call_timing_metrics(
    timings: Sequence[tuple[float, float]], *, mean_as_rate: bool = False
) -> dict[str, float | tuple[float, float]]:
    """tools/queue_wait_ms and tools/run_ms, each /mean and /p90 (linear interpolation), of calls given as (queue
    wait, run time) in seconds; {} without calls. One definition for both trainers' logs.

    `mean_as_rate`: each /mean as (sum, count), the rate TRL's asynchronous trainer sums over its logging window, so
    the calls of several pushes average as one set (a mean of means would weigh a group of few calls like one of
    many)."""
    if not timings:
        return {}
    table = torch.tensor([list(pair) for pair in timings], dtype=torch.float64) * 1000.0
    metrics: dict[str, float | tuple[float, float]] = {}
    for k, name in enumerate(CALL_TIMING_METRICS):
        column = table[:, k]
        metrics[f"{name}/mean"] = (column.sum().item(), float(column.numel())) if mean_as_rate else column.mean().item()
        metrics[f"{name}/p90"] = torch.quantile(column, 0.9).item()
    return metrics


def _describe_turns(trajectory: Trajectory) -> str:
    parts = []
    for j, turn in enumerate(trajectory.turns, start=1):
        call = turn.status or ("no call" if turn.code is None else "not run")
        parts.append(f"T{j}: {call}{'' if turn.well_formed else ' (malformed)'}")
    return " | ".join(parts) + f" | end: {trajectory.stop_reason}"
