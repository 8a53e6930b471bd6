"""The multi-turn code-interpreter loop, written against a `generate_turn` callable and a `CodeExecutor`.

It knows nothing of trainers or backends: the trainer passes TRL's own `_generate_single_turn` (through
`trl_gtpo._trl_compat.TurnGenerator`), tests pass a scripted generator. Token ids are only ever concatenated, never
re-tokenized, so the tool mask and the sampling log-probs stay aligned with what the model saw.
"""

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .executor import CodeCall, CodeExecutor, ExecutionResult, check_results
from .transcript import code_blocks, tool_output_text, turn_end

# generate_turn(prompt_ids_per_trajectory, max_new_tokens) -> (new_ids_per_trajectory, logprobs_per_trajectory | None)
GenerateTurn = Callable[[list[list[int]], int], tuple[list[list[int]], list[list[float]] | None]]

logger = logging.getLogger(__name__)

NO_CODE_MESSAGE = "No ```python block to run: write the code in a ```python block, then close it with ```."
EXECUTOR_RETRIES = 2  # extra tries of a turn's calls when the executor's run() raises


class ExecutorError(RuntimeError):
    """The executor failed (it raised on every try, or could not start): training cannot go on as configured."""


@dataclass
class Turn:
    """One model turn and the tool call that ended it (if any)."""

    code: str | None = None  # the turn's last ```python block (run or not), None if it wrote none
    output: str | None = None  # what the model was shown
    status: str | None = None  # ExecutionResult.status, "no_code" for a stop marker without code, None if not run
    well_formed: bool = True  # False: an unclosed ```python block, code that does not parse, or a marker w/o code
    num_tokens: int = 0  # model tokens of the turn


@dataclass
class Trajectory:
    """A finished rollout: completion tokens with their tool mask (1 = model, 0 = tool) and what each turn did."""

    completion_ids: list[int] = field(default_factory=list)
    tool_mask: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None
    turns: list[Turn] = field(default_factory=list)
    # "eos", "budget", "max_turns" (a tool call in the last allowed turn) or "stop_string" (one of the user's)
    stop_reason: str = ""

    @property
    def num_tool_calls(self) -> int:
        """Code blocks that were run."""
        return sum(turn.status not in (None, "no_code") for turn in self.turns)

    @property
    def num_tool_errors(self) -> int:
        """Code blocks that were run and failed (raised, timed out, broke a limit, crashed the worker)."""
        return sum(turn.status not in (None, "ok", "no_code") for turn in self.turns)

    @property
    def code(self) -> str:
        """All code written over all turns (run or not): what reward shaping compares."""
        return "\n".join(turn.code for turn in self.turns if turn.code)


@dataclass
class _Rollout:
    row: int  # index of its prompt in `run`'s prompt_ids
    prompt_ids: list[int]
    session_id: str
    trajectory: Trajectory
    turn_ids: list[int] = field(default_factory=list)  # tokens of the current turn so far
    turn_logprobs: list[float] = field(default_factory=list)
    pending_text: str = ""  # text of a turn whose code is running; its output block is appended after the call
    done: bool = False


class CodeInterpreterLoop:
    """Runs trajectories turn by turn until EOS, one of the user's stop strings, a tool call in turn `max_turns`, or
    the completion budget.

    All live trajectories generate together each turn; the code blocks that end their turns run in one executor call
    (in parallel). A turn ends at a closed ```python block, at the stop marker, or at EOS; the tokens generated past
    that point are cut, so a backend that does not honour stop strings still yields the same trajectories.
    """

    def __init__(
        self,
        tokenizer,
        executor: CodeExecutor,
        *,
        max_turns: int,
        max_completion_length: int,
        stop_marker: str = "```output",
        eos_token_ids: Sequence[int] = (),
        keep_in_step: Callable[[bool], bool] | None = None,
        executor_errors: str = "raise",
        user_stop_strings: Sequence[str] = (),
    ):
        self.tokenizer = tokenizer
        # The user's own stop strings (generation_kwargs): like EOS, one ends the trajectory where the model wrote it.
        self.user_stop_strings = [stop for stop in user_stop_strings if stop]
        self.executor = executor
        self.max_turns = max_turns
        self.max_completion_length = max_completion_length
        self.stop_marker = stop_marker
        self.eos_token_ids = set(eos_token_ids)
        # Distributed runs: returns True while any process still has a live trajectory. Collective backends
        # (ZeRO-3 parameter gathering, vLLM server mode) need every process to generate the same number of times.
        # When this process's executor failed (see `_step`), it is called as keep_in_step(False, failure=error) at the
        # next agreement, which every process reaches: an implementation that knows failures (the trainer's, see
        # `rollout._ProcessesInStep`) raises on every process, naming the process that failed; otherwise the loop
        # raises the failure here.
        self.keep_in_step = keep_in_step
        self._failure: Exception | None = None
        # An executor whose run() raises on every try: "raise" (an ExecutorError with the cause) or "contain" (the
        # calls get a "crash" result; counted in `executor_failures`, the last cause in `last_executor_error`).
        self.executor_errors = executor_errors
        self.executor_failures = 0
        self.last_executor_error: BaseException | None = None
        self.seconds = {"generation": 0.0, "tools": 0.0}  # where the time of the last `run` went
        # (queue wait, run time) in seconds of each code call of the last `run` (`ExecutionResult.queue_wait`,
        # `.duration`), logged as tools/queue_wait_ms and tools/run_ms
        self.call_timings: list[tuple[float, float]] = []
        # The prompt index (in `run`'s prompt_ids) of each history in the current `generate_turn` call: what a
        # generator that needs more than the token ids (a VLM prompt's images) looks up.
        self.rows: list[int] = []

    @property
    def stop_strings(self) -> list[str]:
        """Strings a backend may stop at: the turn ends (a closing fence is usually followed by a newline; the rest
        is cut after), then the user's stop strings."""
        return list(dict.fromkeys([self.stop_marker, "\n```\n", *self.user_stop_strings]))

    def run(self, prompt_ids: list[list[int]], generate_turn: GenerateTurn) -> list[Trajectory]:
        rollouts = [_Rollout(row, list(ids), uuid.uuid4().hex, Trajectory()) for row, ids in enumerate(prompt_ids)]
        self.seconds = {"generation": 0.0, "tools": 0.0}
        self.call_timings = []
        self._failure = None
        try:
            while True:
                live = [r for r in rollouts if not r.done]
                if self.keep_in_step is not None:
                    if self._failure is not None:  # every process learns of it at this agreement, and stops
                        failure, self._failure = self._failure, None
                        self.keep_in_step(False, failure=failure)
                        raise failure
                    if not self.keep_in_step(bool(live)):
                        break
                    if not live:  # other processes still generate: take part in the collective with a dummy call
                        start = time.perf_counter()
                        self.rows = [0]
                        generate_turn([rollouts[0].prompt_ids], 1)
                        self.seconds["generation"] += time.perf_counter() - start
                        continue
                elif not live:
                    break
                self._step(live, generate_turn)
        finally:
            for rollout in rollouts:
                try:
                    self.executor.close_session(rollout.session_id)
                except Exception as error:  # a failing cleanup must not kill training or hide the real error
                    logger.warning(f"Could not close sandbox session {rollout.session_id}: {error!r}")
        return [r.trajectory for r in rollouts]

    def _step(self, live: list[_Rollout], generate_turn: GenerateTurn) -> None:
        room = [self.max_completion_length - len(r.trajectory.completion_ids) - len(r.turn_ids) for r in live]
        inputs = [r.prompt_ids + r.trajectory.completion_ids + r.turn_ids for r in live]
        start = time.perf_counter()
        self.rows = [r.row for r in live]
        new_ids, new_logprobs = generate_turn(inputs, max(room))
        self.seconds["generation"] += time.perf_counter() - start
        calls: list[tuple[_Rollout, CodeCall]] = []
        for k, rollout in enumerate(live):
            budget = room[k]
            if new_logprobs is not None and rollout.trajectory.logprobs is None:
                rollout.trajectory.logprobs = []
            ids = list(new_ids[k][:budget])
            logprobs = list(new_logprobs[k][:budget]) if new_logprobs is not None else None
            call = self._extend_turn(rollout, ids, logprobs)
            if call is not None:
                calls.append((rollout, call))
        if calls:
            start = time.perf_counter()
            try:
                results = self._execute([call for _, call in calls])
            except Exception as error:
                if self.keep_in_step is None:
                    raise
                # Distributed: raising here would leave the other processes waiting for this one in their next
                # collective; the failure is raised on every process at the next agreement (`run`) instead.
                self._failure = error
                return
            finally:
                wall = time.perf_counter() - start
                self.seconds["tools"] += wall
            for result in results:  # an executor that does not time its calls: the turn's wall time
                self.call_timings.append((result.queue_wait, result.duration if result.duration > 0 else wall))
            for (rollout, _), result in zip(calls, results, strict=True):
                self._append_output(rollout, result)

    def _extend_turn(self, rollout: _Rollout, ids: list[int], logprobs: list[float] | None) -> CodeCall | None:
        """Add freshly generated tokens to the current turn; return the code to run if the turn ended with a call.

        Generation never runs on past the end of a turn (arXiv 2511.14846, section 3: a turn is one model message
        before a tool response). A tool call in the last allowed turn (`max_turns`) ends the trajectory there: its
        code is not run and nothing after it is generated, so a model-written ```output block is never trained as
        if it were the tool's.
        """
        trajectory = rollout.trajectory
        cut = self._turn_cut(rollout.turn_ids, ids)
        user_stop = self._user_stop_cut(rollout.turn_ids, ids)
        if user_stop is not None and (cut is None or user_stop < cut):  # the user's stop string ends it all, as EOS
            ids, logprobs = ids[:user_stop], logprobs[:user_stop] if logprobs is not None else None
            rollout.turn_ids += ids
            if logprobs is not None:
                rollout.turn_logprobs += logprobs
            blocks = code_blocks(self.tokenizer.decode(rollout.turn_ids, skip_special_tokens=True))
            turn = Turn(code=blocks[-1].code if blocks else None, well_formed=not blocks or blocks[-1].well_formed)
            self._close_turn(rollout, turn, stop_reason="stop_string")
            return None
        if cut is not None:
            ids = ids[:cut]
            logprobs = logprobs[:cut] if logprobs is not None else None
        rollout.turn_ids += ids
        if logprobs is not None:
            rollout.turn_logprobs += logprobs
        text = self.tokenizer.decode(rollout.turn_ids, skip_special_tokens=True)
        blocks = code_blocks(text)
        used = len(trajectory.completion_ids) + len(rollout.turn_ids)

        if cut is not None:  # the turn ended with a tool call
            turn = Turn(code=blocks[-1].code if blocks else None, well_formed=bool(blocks) and blocks[-1].well_formed)
            if len(trajectory.turns) + 1 >= self.max_turns:  # no turn could follow: the code is not run
                self._close_turn(rollout, turn, stop_reason="max_turns")
                return None
            if used >= self.max_completion_length:  # no room for an output: the code is not run
                self._close_turn(rollout, turn, stop_reason="budget")
                return None
            self._close_turn(rollout, turn, stop_reason=None)
            if not blocks:
                turn.status, turn.output = "no_code", NO_CODE_MESSAGE
                self._append_tool_tokens(rollout, tool_output_text(text, NO_CODE_MESSAGE, self.stop_marker))
                return None
            rollout.pending_text = text
            return CodeCall(rollout.session_id, blocks[-1].code)

        hit_eos = bool(ids) and ids[-1] in self.eos_token_ids
        if hit_eos or used >= self.max_completion_length or not ids:
            # An unclosed block (cut by EOS or the budget) or a closed one that does not parse is malformed.
            turn = Turn(code=blocks[-1].code if blocks else None, well_formed=not blocks or blocks[-1].well_formed)
            self._close_turn(rollout, turn, stop_reason="eos" if hit_eos else "budget")
        # Otherwise the backend stopped at a string that did not end the turn (e.g. a plain ``` block): go on.
        return None

    def _turn_cut(self, turn_ids: list[int], ids: list[int]) -> int | None:
        """Fewest of the new tokens whose text ends the turn, or None if they do not end it."""
        return self._fewest(turn_ids, ids, lambda text: turn_end(text, self.stop_marker) is not None)

    def _user_stop_cut(self, turn_ids: list[int], ids: list[int]) -> int | None:
        """Fewest of the new tokens whose turn text holds one of the user's stop strings, or None."""
        if not self.user_stop_strings:
            return None
        return self._fewest(turn_ids, ids, lambda text: any(stop in text for stop in self.user_stop_strings))

    def _fewest(self, turn_ids: list[int], ids: list[int], ends: Callable[[str], bool]) -> int | None:
        """Fewest of the new tokens after which `ends(turn text)` holds, or None; `ends` must stay true once true."""
        decode = self.tokenizer.decode
        if not ends(decode(turn_ids + ids, skip_special_tokens=True)):
            return None
        low, high = 1, len(ids)  # binary search: once true on a prefix, true on every longer one
        while low < high:
            middle = (low + high) // 2
            if not ends(decode(turn_ids + ids[:middle], skip_special_tokens=True)):
                low = middle + 1
            else:
                high = middle
        return low

    def _close_turn(self, rollout: _Rollout, turn: Turn, stop_reason: str | None) -> None:
        trajectory = rollout.trajectory
        trajectory.completion_ids += rollout.turn_ids
        trajectory.tool_mask += [1] * len(rollout.turn_ids)
        if trajectory.logprobs is not None:
            trajectory.logprobs += rollout.turn_logprobs
        turn.num_tokens = len(rollout.turn_ids)
        trajectory.turns.append(turn)
        rollout.turn_ids, rollout.turn_logprobs = [], []
        if stop_reason is not None:
            trajectory.stop_reason = stop_reason
            rollout.done = True

    def _append_output(self, rollout: _Rollout, result: ExecutionResult) -> None:
        turn = rollout.trajectory.turns[-1]
        turn.output, turn.status = result.output, result.status
        self._append_tool_tokens(rollout, tool_output_text(rollout.pending_text, result.output, self.stop_marker))

    def _append_tool_tokens(self, rollout: _Rollout, text: str) -> None:
        trajectory = rollout.trajectory
        room = self.max_completion_length - len(trajectory.completion_ids)
        ids = self.tokenizer.encode(text, add_special_tokens=False)[:room]
        trajectory.completion_ids += ids
        trajectory.tool_mask += [0] * len(ids)
        if trajectory.logprobs is not None:
            trajectory.logprobs += [0.0] * len(ids)
        if len(trajectory.completion_ids) >= self.max_completion_length:
            trajectory.stop_reason, rollout.done = "budget", True

    def _execute(self, calls: list[CodeCall]) -> list[ExecutionResult]:
        """Run one turn's code. The model's code failing is a result the model reads; the executor raising is retried
        `EXECUTOR_RETRIES` times, then raised (or, with executor_errors="contain", a "crash" result); results that are
        not one `ExecutionResult` per call are the executor's bug and raised, naming it."""
        name = getattr(self.executor, "executor_name", None) or type(self.executor).__name__
        error: Exception | None = None
        for attempt in range(1 + EXECUTOR_RETRIES):
            try:
                results = self.executor.run(calls)
            except ExecutorError:
                raise
            except Exception as e:  # noqa: BLE001 -- the executor's own failure, retried then reported
                error = e
                tries = f"try {attempt + 1} of {1 + EXECUTOR_RETRIES}"
                logger.warning(f"{name}.run() raised {type(e).__name__}: {e} ({tries})")
                continue
            return check_results(results, calls, name)
        self.executor_failures += 1
        self.last_executor_error = error
        if self.executor_errors != "contain":
            raise ExecutorError(
                f"The code executor {name} raised on {1 + EXECUTOR_RETRIES} tries of the same calls "
                f"({type(error).__name__}: {error}). Fix the executor, or set GTPOConfig.tool_executor_errors="
                "'contain' to give such calls a 'crash' result the model reads and train on."
            ) from error
        message = f"SandboxError: the code could not be run ({type(error).__name__}: {error})"
        return [ExecutionResult(output=message, status="crash") for _ in calls]
