"""The code-interpreter loop with scripted completions: real code runs, outputs are appended and masked."""

import pytest

from trl_gtpo.interpreter.executor import CodeCall, ExecutionResult
from trl_gtpo.interpreter.loop import EXECUTOR_RETRIES, NO_CODE_MESSAGE, CodeInterpreterLoop, ExecutorError
from trl_gtpo.testing import make_tiny_tokenizer

MARKER = "```output"


@pytest.fixture(scope="module")
def tokenizer():
    return make_tiny_tokenizer()


class ScriptedModel:
    """A `generate_turn` that replays scripted text segments per trajectory, like a backend that may run on past
    the end of a turn (the loop must cut). Trajectories are recognized by their prompt."""

    def __init__(self, tokenizer, scripts: dict[str, list[str]], with_logprobs: bool = False):
        self.tokenizer = tokenizer
        self.prompts = {prompt: tokenizer.encode(prompt) for prompt in scripts}
        self.scripts = {prompt: list(segments) for prompt, segments in scripts.items()}
        self.with_logprobs = with_logprobs
        self.calls: list[list[list[int]]] = []

    def __call__(self, prompt_ids, max_new_tokens):
        self.calls.append(prompt_ids)
        outputs, logprobs = [], []
        for ids in prompt_ids:
            prompt = next(p for p, p_ids in self.prompts.items() if ids[: len(p_ids)] == p_ids)
            segments = self.scripts[prompt]
            text = segments.pop(0) if segments else ""
            new = self.tokenizer.encode(text.replace("<EOS>", ""))
            if text.endswith("<EOS>"):
                new.append(self.tokenizer.eos_token_id)
            new = new[:max_new_tokens]
            outputs.append(new)
            logprobs.append([-0.5] * len(new))
        return outputs, (logprobs if self.with_logprobs else None)


class PythonExecutor:
    """Runs code for real with exec() in one namespace per session (the sandbox has its own tests)."""

    def __init__(self):
        self.sessions, self.closed, self.batches = {}, [], []

    def run(self, calls: list[CodeCall]) -> list[ExecutionResult]:
        import contextlib
        import io

        self.batches.append(len(calls))
        results = []
        for call in calls:
            namespace = self.sessions.setdefault(call.session_id, {})
            buffer = io.StringIO()
            try:
                with contextlib.redirect_stdout(buffer):
                    exec(call.code, namespace)
                results.append(ExecutionResult(buffer.getvalue(), "ok"))
            except Exception as error:
                results.append(ExecutionResult(f"{buffer.getvalue()}{type(error).__name__}: {error}", "error"))
        return results

    def close_session(self, session_id):
        self.closed.append(session_id)
        self.sessions.pop(session_id, None)

    def close(self):
        pass


def make_loop(tokenizer, executor=None, max_turns=4, max_completion_length=256, **kwargs):
    return CodeInterpreterLoop(
        tokenizer,
        executor or PythonExecutor(),
        max_turns=max_turns,
        max_completion_length=max_completion_length,
        stop_marker=MARKER,
        eos_token_ids=[tokenizer.eos_token_id],
        **kwargs,
    )


def run(tokenizer, scripts, **kwargs):
    model = ScriptedModel(tokenizer, scripts, with_logprobs=kwargs.pop("with_logprobs", False))
    loop = make_loop(tokenizer, **kwargs)
    prompt_ids = [tokenizer.encode(prompt) for prompt in scripts]
    return loop.run(prompt_ids, model), model, loop


def split_by_mask(tokenizer, trajectory):
    """The completion as (text, is_model) runs."""
    runs, current, flag = [], [], None
    for token, mask in zip(trajectory.completion_ids, trajectory.tool_mask, strict=True):
        if flag is not None and mask != flag:
            runs.append((tokenizer.decode(current), bool(flag)))
            current = []
        current.append(token)
        flag = mask
    if current:
        runs.append((tokenizer.decode(current), bool(flag)))
    return runs


def test_code_runs_its_output_is_appended_and_masked_and_the_model_continues(tokenizer):
    scripts = {
        "Q1": [
            "Compute.\n```python\nx = 6 * 7\nprint(x)\n```\nJUNK the backend ran on",
            "The answer is \\boxed{42}.<EOS>",
        ],
        "Q2": ["```python\nprint(1/0)\n```\n", "Oops.<EOS>"],
    }
    (first, second), model, _ = run(tokenizer, scripts)
    assert split_by_mask(tokenizer, first) == [
        ("Compute.\n```python\nx = 6 * 7\nprint(x)\n```", True),
        ("\n```output\n42\n```\n", False),
        ("The answer is \\boxed{42}.<|im_end|>", True),
    ]
    assert first.stop_reason == "eos"
    assert [(t.code, t.status, t.well_formed) for t in first.turns] == [
        ("x = 6 * 7\nprint(x)", "ok", True),
        (None, None, True),
    ]
    # The failing code's error is shown to the model, training goes on.
    runs = split_by_mask(tokenizer, second)
    assert runs[1][1] is False and "ZeroDivisionError: division by zero" in runs[1][0]
    assert second.turns[0].status == "error" and second.num_tool_errors == 1
    # Both trajectories generated together in each call; the second call continued each one's own history.
    assert [len(call) for call in model.calls] == [2, 2]
    assert model.calls[1][0] == tokenizer.encode("Q1") + first.completion_ids[: -len(tokenizer.encode("The answer is \\boxed{42}.")) - 1]


def test_state_persists_across_turns_and_sessions_close(tokenizer):
    executor = PythonExecutor()
    scripts = {"Q": ["```python\na = 20\n```\n", "```python\nprint(a + 1)\n```\n", "Done.<EOS>"]}
    (trajectory,), _, _ = run(tokenizer, scripts, executor=executor)
    assert trajectory.turns[1].output == "21\n"
    assert len(executor.closed) == 1 and executor.sessions == {}


def test_stop_marker_written_by_the_model_gets_the_output_and_no_code_gets_a_message(tokenizer):
    scripts = {
        "A": ["```python\nprint(3)\n```output\nFAKE OUTPUT", "ok<EOS>"],
        "B": ["I will not write code\n```output\nmade up", "fine<EOS>"],
    }
    (a, b), _, _ = run(tokenizer, scripts)
    text_a = tokenizer.decode(a.completion_ids)
    assert "FAKE" not in text_a and "```output\n3\n```\n" in text_a
    assert a.turns[0].status == "ok"
    runs_b = split_by_mask(tokenizer, b)
    assert runs_b[0] == ("I will not write code\n```output", True)
    assert runs_b[1] == (f"\n{NO_CODE_MESSAGE}\n```\n", False)
    assert b.turns[0].status == "no_code" and not b.turns[0].well_formed


def test_a_stop_marker_mid_line_does_not_end_the_turn_and_generation_goes_on(tokenizer):
    # A backend stops at the marker anywhere (it is one of its stop strings); mid-line it is prose: the loop asks
    # for more tokens of the same turn.
    scripts = {"Q": ["Tools answer in a ```output", " block.\n```python\nprint(5)\n```\n", "It is 5.<EOS>"]}
    (trajectory,), model, _ = run(tokenizer, scripts)
    runs = split_by_mask(tokenizer, trajectory)
    assert runs[0] == ("Tools answer in a ```output block.\n```python\nprint(5)\n```", True)
    assert runs[1] == ("\n```output\n5\n```\n", False)
    assert [t.status for t in trajectory.turns] == ["ok", None] and len(model.calls) == 3


def test_a_user_stop_string_ends_the_trajectory_where_the_model_wrote_it(tokenizer):
    """Like EOS: the turn ends right after the stop string (a backend that ran on past it is cut), nothing in it is
    run, the trajectory ends with stop reason "stop_string"; in another turn, it ends that turn the same way."""
    executor = PythonExecutor()
    scripts = {
        "A": ["So:\n```python\nprint(1)\nEND OF IT\n```\nmore", "never"],  # before the block closes: not run
        "B": ["```python\nprint(2)\n```\n", "It is 2. END and on<EOS>"],  # in the second turn
        "C": ["It is 3.<EOS>"],
    }
    (a, b, c), model, loop = run(tokenizer, scripts, executor=executor, user_stop_strings=["END"])
    assert loop.stop_strings == [MARKER, "\n```\n", "END"]  # the backends stop there too
    assert tokenizer.decode(a.completion_ids) == "So:\n```python\nprint(1)\nEND"
    assert a.stop_reason == "stop_string" and a.turns[0].status is None and a.tool_mask == [1] * len(a.completion_ids)
    assert split_by_mask(tokenizer, b)[-1] == ("It is 2. END", True) and b.stop_reason == "stop_string"
    assert [t.status for t in b.turns] == ["ok", None] and executor.batches == [1]
    assert c.stop_reason == "eos"


def test_the_user_stop_strings_come_from_the_backends_generation_kwargs():
    from types import SimpleNamespace

    from trl_gtpo.interpreter.rollout import user_stop_strings

    kwargs = {"stop": ["A"], "stop_strings": "B"}
    assert user_stop_strings(SimpleNamespace(use_vllm=True, generation_kwargs=kwargs)) == ["A"]  # SamplingParams'
    assert user_stop_strings(SimpleNamespace(use_vllm=False, generation_kwargs=kwargs)) == ["B"]  # generate's
    assert user_stop_strings(SimpleNamespace(use_vllm=False, generation_kwargs=None)) == []


def test_a_tool_call_in_the_last_allowed_turn_ends_the_trajectory_unrun(tokenizer):
    executor = PythonExecutor()
    block = "```python\nprint('hi')\n```\n"
    invented = block + "```output\nhi\n```\nThe answer is \\boxed{99}<EOS>"  # the model writes the output itself
    (trajectory,), model, _ = run(tokenizer, {"Q": [block, invented]}, executor=executor, max_turns=2)
    assert len(trajectory.turns) == 2 and trajectory.stop_reason == "max_turns"
    assert [t.status for t in trajectory.turns] == ["ok", None]
    assert trajectory.turns[1].code == "print('hi')"  # written, never run
    assert executor.batches == [1]
    # the last turn ends at its code block: the invented output block and answer are neither kept nor trained
    runs = split_by_mask(tokenizer, trajectory)
    assert runs[-1][1] and runs[-1][0].rstrip("\n") == block.rstrip("\n")
    assert "boxed" not in tokenizer.decode(trajectory.completion_ids)


def test_max_turns_one_is_one_turn_that_ends_at_eos_or_at_its_first_tool_call(tokenizer):
    executor = PythonExecutor()
    script = ["Compute:\n```python\nprint(2)\n```\n", "so it is 2.<EOS>"]
    (trajectory,), _, _ = run(tokenizer, {"Q": script}, executor=executor, max_turns=1)
    assert executor.batches == [] and len(trajectory.turns) == 1 and all(trajectory.tool_mask)
    assert trajectory.stop_reason == "max_turns" and trajectory.turns[0].status is None
    assert tokenizer.decode(trajectory.completion_ids).rstrip("\n") == script[0].rstrip("\n")
    (plain,), _, _ = run(tokenizer, {"Q": ["It is 2.<EOS>"]}, executor=executor, max_turns=1)
    assert plain.stop_reason == "eos" and tokenizer.decode(plain.completion_ids) == "It is 2.<|im_end|>"


def test_a_closed_block_that_does_not_parse_is_malformed_in_the_last_turn_too(tokenizer):
    (trajectory,), _, _ = run(tokenizer, {"Q": ["```python\nprint(6 *\n```\n"]}, max_turns=1)
    assert trajectory.turns[0].code == "print(6 *" and not trajectory.turns[0].well_formed


def test_completion_budget_is_never_exceeded(tokenizer):
    block = "```python\nprint('a' * 50)\n```\n"
    (trajectory,), _, _ = run(tokenizer, {"Q": [block] * 10}, max_completion_length=40)
    assert len(trajectory.completion_ids) == 40 == len(trajectory.tool_mask)
    assert trajectory.stop_reason == "budget"


def test_a_block_that_is_never_closed_runs_to_the_budget_and_is_malformed(tokenizer):
    (trajectory,), model, _ = run(tokenizer, {"Q": ["```python\nwhile True:\n    x = 1 " + "+ 1 " * 100]}, max_completion_length=30)
    assert trajectory.stop_reason == "budget"
    assert len(trajectory.completion_ids) == 30 and all(trajectory.tool_mask)
    assert len(trajectory.turns) == 1 and not trajectory.turns[0].well_formed
    assert trajectory.turns[0].status is None


def test_code_that_does_not_parse_runs_shows_the_error_and_is_malformed(tokenizer):
    (trajectory,), _, _ = run(tokenizer, {"Q": ["```python\nprint(1 +\n```\n", "hm<EOS>"]})
    assert trajectory.turns[0].status == "error" and "SyntaxError" in trajectory.turns[0].output
    assert not trajectory.turns[0].well_formed


def test_a_stop_string_that_does_not_end_the_turn_continues_the_same_turn(tokenizer):
    # A backend stops at "\n```\n" (the opening of a plain block): no tool call, the turn goes on.
    scripts = {"Q": ["Plain block:\n```\n", "not code\n```\nThe end.<EOS>"]}
    (trajectory,), model, _ = run(tokenizer, scripts)
    assert len(model.calls) == 2 and len(trajectory.turns) == 1
    assert all(trajectory.tool_mask) and trajectory.stop_reason == "eos"


def test_logprobs_stay_aligned_with_tokens(tokenizer):
    scripts = {"Q": ["```python\nprint(5)\n```\nrun-on", "Five.<EOS>"]}
    (trajectory,), _, _ = run(tokenizer, scripts, with_logprobs=True)
    assert len(trajectory.logprobs) == len(trajectory.completion_ids)
    assert [lp for lp, m in zip(trajectory.logprobs, trajectory.tool_mask, strict=True) if not m] == [0.0] * (
        len(trajectory.tool_mask) - sum(trajectory.tool_mask)
    )
    assert {lp for lp, m in zip(trajectory.logprobs, trajectory.tool_mask, strict=True) if m} == {-0.5}


def test_a_broken_executor_is_contained_only_when_asked(tokenizer):
    class Broken(PythonExecutor):
        def run(self, calls):
            raise RuntimeError("worker pool is gone")

    (trajectory,), _, loop = run(
        tokenizer, {"Q": ["```python\nprint(1)\n```\n", "ok<EOS>"]}, executor=Broken(), executor_errors="contain"
    )
    assert trajectory.turns[0].status == "crash"
    assert "worker pool is gone" in trajectory.turns[0].output
    assert trajectory.stop_reason == "eos"
    assert loop.executor_failures == 1 and "worker pool is gone" in str(loop.last_executor_error)


def test_an_executor_that_keeps_raising_fails_the_step_with_the_cause(tokenizer):
    class Broken(PythonExecutor):
        tries = 0

        def run(self, calls):
            Broken.tries += 1
            raise RuntimeError("worker pool is gone")

    with pytest.raises(ExecutorError, match="Broken raised on 3 tries.*worker pool is gone.*tool_executor_errors") as e:
        run(tokenizer, {"Q": ["```python\nprint(1)\n```\n", "ok<EOS>"]}, executor=Broken())
    assert Broken.tries == 1 + EXECUTOR_RETRIES and isinstance(e.value.__cause__, RuntimeError)


def test_an_executor_that_raises_once_is_retried(tokenizer):
    class Flaky(PythonExecutor):
        failed = False

        def run(self, calls):
            if not Flaky.failed:
                Flaky.failed = True
                raise ConnectionError("sandbox service restarting")
            return super().run(calls)

    (trajectory,), _, loop = run(tokenizer, {"Q": ["```python\nprint(6 * 7)\n```\n", "ok<EOS>"]}, executor=Flaky())
    assert (trajectory.turns[0].status, trajectory.turns[0].output) == ("ok", "42\n")
    assert loop.executor_failures == 0


@pytest.mark.parametrize(
    "answer, error, phrase",
    [
        (lambda calls: ["42"] * len(calls), TypeError, "Wrong.run\\(\\) returned a str"),
        (lambda calls: "42", TypeError, "Wrong.run\\(\\) returned a str"),
        (lambda calls: [], ValueError, "Wrong.run\\(\\) returned 0 results for 1 calls"),
    ],
)
def test_wrong_results_of_an_executor_are_raised_naming_it(tokenizer, answer, error, phrase):
    class Wrong(PythonExecutor):
        def run(self, calls):
            return answer(calls)

    with pytest.raises(error, match=phrase):
        run(tokenizer, {"Q": ["```python\nprint(1)\n```\n", "ok<EOS>"]}, executor=Wrong())


def test_processes_keep_in_step_with_dummy_calls(tokenizer):
    # This process finishes after one call; another still generates for two more rounds.
    rounds = iter([True, True, True, False])
    seen = []

    def keep_in_step(live: bool) -> bool:
        seen.append(live)
        return next(rounds)

    scripts = {"Q": ["Done.<EOS>"]}
    model = ScriptedModel(tokenizer, scripts)
    loop = make_loop(tokenizer, keep_in_step=keep_in_step)
    (trajectory,) = loop.run([tokenizer.encode("Q")], model)
    assert seen == [True, False, False, False]
    assert len(model.calls) == 3  # one real call and two dummy calls
    assert tokenizer.decode(trajectory.completion_ids) == "Done.<|im_end|>"


def test_each_generation_call_tells_which_prompt_each_history_continues(tokenizer):
    """`loop.rows`: a generator that needs more than token ids (a VLM prompt's images) looks its prompts up there."""
    scripts = {"Q1": ["Done.<EOS>"], "Q2": ["```python\nprint(2)\n```\n", "2.<EOS>"], "Q3": ["```python\nprint(3)\n```\n", "3.<EOS>"]}
    model = ScriptedModel(tokenizer, scripts)
    loop = make_loop(tokenizer)
    seen = []

    def generate_turn(prompt_ids, max_new_tokens):
        seen.append(list(loop.rows))
        return model(prompt_ids, max_new_tokens)

    loop.run([tokenizer.encode(prompt) for prompt in scripts], generate_turn)
    assert seen == [[0, 1, 2], [1, 2]]  # Q1 ended at EOS in turn 1


def test_a_failing_executor_is_raised_at_the_next_agreement_of_the_processes(tokenizer):
    """Distributed (a keep_in_step is given): the executor's failure is not raised where it happens, which would leave
    the other processes waiting in their next collective, but handed to the next agreement, which every process
    reaches; an agreement that does not raise it leaves the loop to raise it."""

    class Broken(PythonExecutor):
        def run(self, calls):
            raise ConnectionError("sandbox service down")

    seen = []

    class Stop(Exception):
        pass

    def agreement(live, failure=None):
        seen.append((live, failure))
        if failure is not None:
            raise Stop("every process stops") from failure
        return True

    scripts = {"Q": ["```python\nprint(1)\n```\n", "ok<EOS>"]}
    loop = make_loop(tokenizer, executor=Broken(), keep_in_step=agreement)
    with pytest.raises(Stop) as caught:
        loop.run([tokenizer.encode("Q")], ScriptedModel(tokenizer, scripts))
    assert [live for live, _ in seen] == [True, False]  # turn 1 ran, its calls failed, then the agreement
    assert isinstance(seen[1][1], ExecutorError) and "sandbox service down" in str(seen[1][1])
    assert isinstance(caught.value.__cause__, ExecutorError)

    seen.clear()
    loop = make_loop(tokenizer, executor=Broken(), keep_in_step=lambda live, failure=None: seen.append(failure) or True)
    with pytest.raises(ExecutorError, match="sandbox service down"):
        loop.run([tokenizer.encode("Q")], ScriptedModel(tokenizer, scripts))
    assert seen[0] is None and isinstance(seen[1], ExecutorError)
