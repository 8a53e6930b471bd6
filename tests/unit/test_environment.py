"""PythonEnvironment: the code interpreter as a TRL environment (a `python(code)` tool over JSON function calling)."""

import inspect
import os
import pickle
import threading
import time

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from helpers import QUESTION, RecordingGTPOTrainer, make_args, trl_args
from helpers import tool_calling_tokenizer
from trl_gtpo import PythonEnvironment
from trl_gtpo.interpreter.environment import SharedExecutor, ToolRun, records_from_environment
from trl_gtpo.interpreter.executor import CodeCall, ExecutionResult
from trl_gtpo.interpreter.sandbox import SandboxPool
from trl_gtpo.rewards.turn import tool_success_turn_reward


class FakeExecutor:
    """Runs `print(...)` of an integer expression by eval; records batches and closed sessions."""

    def __init__(self):
        self.batches, self.closed, self.state = [], [], {}

    def run(self, calls):
        self.batches.append(list(calls))
        results = []
        for call in calls:
            if call.code.startswith("x = "):
                self.state[call.session_id] = call.code[4:]
                results.append(ExecutionResult("", "ok"))
            elif call.code == "print(x)":
                value = self.state.get(call.session_id)
                results.append(ExecutionResult(value, "ok") if value else ExecutionResult("NameError: x", "error"))
            else:
                results.append(ExecutionResult("SyntaxError", "error"))
        return results

    def close_session(self, session_id):
        self.closed.append(session_id)
        self.state.pop(session_id, None)

    def close(self):
        pass


def test_only_python_is_a_tool_and_its_schema_has_the_code_argument():
    from transformers.utils import get_json_schema

    tools = [name for name, _ in inspect.getmembers(PythonEnvironment, predicate=inspect.isfunction)]
    assert [name for name in tools if not name.startswith("_") and name != "reset"] == ["python"]
    schema = get_json_schema(PythonEnvironment().python)["function"]
    assert schema["name"] == "python" and schema["parameters"]["required"] == ["code"]
    assert schema["parameters"]["properties"]["code"]["type"] == "string"


def test_session_persists_within_an_episode_and_reset_starts_a_fresh_one():
    executor = FakeExecutor()
    env = PythonEnvironment.factory(executor=executor)()
    env.reset(prompt=QUESTION)
    assert env.python("x = 5") == "" and env.python("print(x)") == "5"
    first = env._session_id
    assert env.runs == [ToolRun("x = 5", "", "ok"), ToolRun("print(x)", "5", "ok")]
    env.reset(prompt=QUESTION)
    assert executor.closed == [first]  # the previous episode's session is closed
    assert env.runs == []
    assert env.python("print(x)") == "NameError: x"  # nothing leaks between episodes
    assert env.runs == [ToolRun("print(x)", "NameError: x", "error")]


def test_a_broken_executor_becomes_an_error_message_not_a_crash():
    class Broken(FakeExecutor):
        def run(self, calls):
            raise OSError("pool gone")

    env = PythonEnvironment.factory(executor=Broken())()
    env.reset()
    assert env.python("print(1)").startswith("SandboxError: the code could not be run (OSError: pool gone)")
    assert env.runs[0].status == "crash"


def test_concurrent_calls_from_threads_run_as_one_batch():
    entered, release = threading.Event(), threading.Event()

    class Gated(FakeExecutor):
        def run(self, calls):
            if not entered.is_set():
                entered.set()
                release.wait(60)  # the first batch holds the executor while the others arrive
            return super().run(calls)

    executor = Gated()
    shared = SharedExecutor(executor=executor)
    envs = [PythonEnvironment(shared) for _ in range(4)]
    for env in envs:
        env.reset()
    threads = [threading.Thread(target=env.python, args=("x = 1",)) for env in envs]
    threads[0].start()
    assert entered.wait(60)
    for thread in threads[1:]:
        thread.start()
    deadline = time.monotonic() + 60  # not a timing assertion: only a bound on waiting for the threads to queue
    while len(shared._pending) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    for thread in threads:
        thread.join(30)
    assert [len(batch) for batch in executor.batches] == [1, 3]
    assert all(env.runs == [ToolRun("x = 1", "", "ok")] for env in envs)


def test_factory_pickles_as_its_settings_and_an_executor_object_does_not(tmp_path):
    factory = PythonEnvironment.factory(make_args(tmp_path))
    copy = pickle.loads(pickle.dumps(factory))
    assert copy.executor.args.tool_timeout == 5.0 and copy.executor._executor is None
    assert isinstance(pickle.loads(pickle.dumps(PythonEnvironment)), type)
    with pytest.raises(TypeError, match="give the settings instead"):
        pickle.dumps(PythonEnvironment.factory(executor=FakeExecutor()))


def test_a_concurrency_hint_sizes_a_pool_the_config_leaves_open_and_crosses_the_spawn(tmp_path, monkeypatch):
    sizes = []

    class Recorder:  # stands in for SandboxPool: records the size it is built with
        def __init__(self, size=None, **settings):
            sizes.append(size)

    monkeypatch.setattr("trl_gtpo.interpreter.sandbox.SandboxPool", Recorder)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)))
    open_size = make_args(tmp_path, tool_pool_size=None)
    factory = PythonEnvironment.factory(open_size)
    factory.executor.expect_concurrency(64)
    factory.executor.expect_concurrency(2)  # the first hint stays
    copy = pickle.loads(pickle.dumps(factory))  # what the spawned rollout process gets
    assert copy.executor.concurrency == 64
    copy.executor.executor
    SharedExecutor(make_args(tmp_path, tool_pool_size=3), concurrency=64).executor  # the user's size wins
    SharedExecutor(open_size, concurrency=4).executor
    SharedExecutor(concurrency=64).executor  # no settings: the pool's defaults but its size
    assert sizes == [6, 3, 4, 6]
    # too late once the pool runs; a user's own executor is sized by its user
    built = SharedExecutor(open_size)
    built.executor
    with pytest.warns(UserWarning, match="already running, so its size stays"):
        built.expect_concurrency(8)
    assert built.concurrency is None
    users = SharedExecutor(executor=FakeExecutor())
    users.expect_concurrency(8)
    assert users.concurrency is None


def test_records_from_environment_by_hand():
    # turn 0 calls python (ran, error), turn 1 calls python with bad arguments, turn 2 answers
    messages = [
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "python", "arguments": {}}}]},
        {"role": "tool", "name": "python", "content": "ZeroDivisionError: division by zero"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "python", "arguments": {}}}]},
        {"role": "tool", "name": "python", "content": "{'error': \"python() got an unexpected keyword 'src'\"}"},
        {"role": "assistant", "content": "12"},
    ]
    runs = [ToolRun("print(1/0)", "ZeroDivisionError: division by zero", "error")]
    ids = list(range(10))
    mask = [1, 1, 0, 0, 1, 1, 0, 1, 1, 1]
    records = records_from_environment(ids, mask, messages, runs, lambda ids: " ".join(map(str, ids)))
    assert [(r.start, r.end) for r in records] == [(0, 2), (4, 6), (7, 10)]
    assert records[0].tool_call == "print(1/0)" and records[0].status == "error" and records[0].ran
    assert records[0].tool_response == "ZeroDivisionError: division by zero" and records[0].well_formed
    assert records[1].status == "error" and not records[1].well_formed  # the call never ran: malformed
    assert records[2].status == "none" and records[2].tool_call is None and records[2].well_formed


class ScriptedPythonModel:
    """`generate` replaced by a script: before any tool response, even rows call `python` with `print(3 * 4)` and odd
    rows with code that raises; after a tool response every row answers with the last output line."""

    OK = '<tool_call>\n{"name": "python", "arguments": {"code": "print(3 * 4)"}}\n</tool_call>'
    FAIL = '<tool_call>\n{"name": "python", "arguments": {"code": "print(1 / 0)"}}\n</tool_call>'

    def __init__(self, model, tokenizer):
        self.tokenizer, self.rows = tokenizer, 0
        model.generate = self

    def __call__(self, input_ids, **kwargs):
        completions = []
        for text in self.tokenizer.batch_decode(input_ids, skip_special_tokens=False):
            if "<tool_response>" in text[-400:]:
                body = "The answer is 12." if "12" in text.rsplit("<tool_response>", 1)[-1] else "No answer."
            else:
                body = self.OK if self.rows % 2 == 0 else self.FAIL
                self.rows += 1
            completions.append(self.tokenizer.encode(body + "<|im_end|>", add_special_tokens=False))
        width = max(map(len, completions))
        tail = torch.tensor([ids + [self.tokenizer.pad_token_id] * (width - len(ids)) for ids in completions])
        return torch.cat([input_ids, tail.to(input_ids.device)], dim=1)


def says_12(completions, **kwargs):
    return [1.0 if "12" in str(completion[-1].get("content")) else 0.0 for completion in completions]


class RecordingGRPOTrainer(GRPOTrainer):
    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        self.records = getattr(self, "records", []) + [
            {"output": output, "runs": [list(env.runs) for env in self.environments]}
        ]
        return output


def assert_tool_tokens_masked(tokenizer, completion_ids, tool_mask):
    """Every token of a <tool_response> block is masked (0); every token of the model's own words is trained (1)."""
    ids = [int(i) for i in completion_ids]
    text_by_token = [tokenizer.decode(ids[: k + 1]) for k in range(len(ids))]
    response_start = next(k for k, text in enumerate(text_by_token) if "<tool_response>" in text)
    response_end = next(k for k, text in enumerate(text_by_token) if "</tool_response>" in text)
    assert all(int(tool_mask[k]) == 0 for k in range(response_start, response_end + 1))
    assert all(int(tool_mask[k]) == 1 for k in range(0, response_start - 20))  # the call itself


class RecordingEnvironmentGTPOTrainer(RecordingGTPOTrainer):
    def _turn_records(self, step, masks):
        turns, interpreter = super()._turn_records(step, masks)
        assert interpreter  # the environment's records are the code interpreter's: the format rule reads them
        self.environment_turns = getattr(self, "environment_turns", []) + [turns]
        return turns, interpreter


@pytest.fixture
def sandbox():
    with SandboxPool(2, timeout=5.0, memory_limit_mb=512, preload=()) as pool:
        yield pool


@pytest.mark.slow
def test_grpo_trainer_trains_with_the_python_environment(tiny_model_path, tmp_path, sandbox):
    tokenizer = tool_calling_tokenizer(tiny_model_path)
    args = GRPOConfig(**trl_args(tmp_path, max_steps=1, max_completion_length=160))
    trainer = RecordingGRPOTrainer(
        model=tiny_model_path, reward_funcs=says_12, args=args, processing_class=tokenizer,
        environment_factory=PythonEnvironment.factory(executor=sandbox),
        train_dataset=Dataset.from_dict({"prompt": [QUESTION] * 4}),
    )
    assert [tool.__name__ for tool in trainer.tools] == ["python"]
    ScriptedPythonModel(trainer.model, tokenizer)
    trainer.train()
    record = trainer.records[0]
    runs = sorted(record["runs"], key=lambda runs: runs[0].code)
    # the code ran in the sandbox: a real traceback line and a real product
    assert [run.code for run in runs[0]] == ["print(1 / 0)"] and runs[0][0].status == "error"
    assert "ZeroDivisionError" in runs[0][0].output
    assert [(run.code, run.output.strip(), run.status) for run in runs[2]] == [("print(3 * 4)", "12", "ok")]
    output = record["output"]
    for row in range(4):
        assert_tool_tokens_masked(tokenizer, output["completion_ids"][row], output["tool_mask"][row])


@pytest.mark.slow
def test_gtpo_trainer_reads_the_sandbox_status_in_its_turn_records(tiny_model_path, tmp_path, sandbox):
    tokenizer = tool_calling_tokenizer(tiny_model_path)
    args = make_args(
        tmp_path, max_steps=1, turn_advantage_estimator="pooled", gamma=0.5, max_completion_length=160,
        shaping_alpha=0.0,
    )
    trainer = RecordingEnvironmentGTPOTrainer(
        model=tiny_model_path, reward_funcs=says_12, args=args, processing_class=tokenizer,
        environment_factory=PythonEnvironment.factory(executor=sandbox), turn_reward_funcs=[tool_success_turn_reward],
        train_dataset=Dataset.from_dict({"prompt": [QUESTION] * 4}),
    )
    ScriptedPythonModel(trainer.model, tokenizer)
    trainer.train()
    record = trainer.records[0]
    ok = ["3 * 4" in tokenizer.decode(ids) for ids in record["completion_ids"]]
    assert sorted(ok) == [False, False, True, True]
    # Turn records from the sandbox: "print(3 * 4)" ran ok, "print(1 / 0)" ran and raised (TRL's own records would
    # call both "ok": the tool returned a string both times). tool_success: 1 / 0; says_12: 1 / 0. gamma 0.5:
    # ok rows r = [1, 1] -> R = [1.5, 1]; failing rows r = [0, 0] -> R = [0, 0]; pooled over each group of 4.
    from helpers import first_token_advantages, pooled

    expected = pooled([[1.5, 1.0] if v else [0.0, 0.0] for v in ok])
    assert trainer.state.log_history[0]["format/violations_per_turn"] == 0.0  # the format rule read these records
    logs = trainer.state.log_history[0]  # each sandbox call's wait for a worker and run time
    assert logs["tools/run_ms/mean"] > 0 and logs["tools/run_ms/p90"] > 0 and logs["tools/queue_wait_ms/mean"] >= 0
    for row in range(4):
        assert first_token_advantages(record, row) == pytest.approx(expected[row], abs=1e-5)
        assert_tool_tokens_masked(tokenizer, record["completion_ids"][row], record["unmasked"][row].tolist())
        turns = trainer.environment_turns[0][row]
        assert len(turns) == 2 and turns[1].status == "none" and turns[1].tool_call is None
        if ok[row]:
            assert (turns[0].tool_call, turns[0].status, turns[0].tool_response.strip()) == ("print(3 * 4)", "ok", "12")
        else:
            assert (turns[0].tool_call, turns[0].status) == ("print(1 / 0)", "error")
            assert "ZeroDivisionError" in turns[0].tool_response


# ---- calls dispatched as they arrive (issue 30, item 3) ----------------------------------------------------------


def test_an_executor_that_takes_concurrent_runs_gets_each_call_as_it_arrives():
    """Two threads' calls are inside the executor's run() at the same time: each waits at a barrier for the other,
    which a SharedExecutor that runs one batch after the other never lets happen (the barrier breaks: 'crash')."""
    barrier = threading.Barrier(2, timeout=30)

    class Concurrent(FakeExecutor):
        concurrent_runs = True

        def run(self, calls):
            barrier.wait()
            return super().run(calls)

    shared = SharedExecutor(executor=Concurrent())
    envs = [PythonEnvironment(shared) for _ in range(2)]
    threads = [threading.Thread(target=env.python, args=("x = 1",)) for env in envs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [env.runs for env in envs] == [[ToolRun("x = 1", "", "ok")]] * 2


def _interval(output: str) -> tuple[float, float]:
    start, end = map(float, output.split())
    return start, end


SLEEP = "import time\nstart = time.monotonic()\ntime.sleep(1.5)\nprint(start, time.monotonic())"


def _run_in_threads(target, arguments):
    results = [None] * len(arguments)

    def work(k):
        results[k] = target(*arguments[k])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(arguments))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


@pytest.mark.slow
def test_sandbox_calls_from_two_threads_overlap_and_a_busy_pool_queues_them():
    """Two sleeping calls from two threads: with 2 workers each starts before the other ends (before, the pool ran
    one thread's run() after the other under one lock); with 1 worker they run one after the other and the second
    reports its wait for the worker. Ordering evidence only, no wall-clock threshold."""
    for size in (2, 1):
        with SandboxPool(size, timeout=30.0, memory_limit_mb=512, preload=()) as pool:
            shared = SharedExecutor(executor=pool)
            results = _run_in_threads(shared.run_one, [(CodeCall(f"s{k}", SLEEP),) for k in range(2)])
        assert [r.status for r in results] == ["ok", "ok"], results
        (a_start, a_end), (b_start, b_end) = (_interval(r.output) for r in results)
        if size == 2:
            assert a_start < b_end and b_start < a_end  # the two ran at the same time
        else:
            first, second = sorted(results, key=lambda r: _interval(r.output)[0])
            assert _interval(first.output)[1] <= _interval(second.output)[0]  # one after the other
            assert second.queue_wait > first.queue_wait and second.duration > 0


@pytest.mark.slow
def test_a_sessions_calls_stay_ordered_and_errors_come_back_per_call_while_threads_share_the_pool(sandbox):
    """Four threads, each with its own session, submit five calls one after another (each adds to the session's
    counter, every other thread's third call raises); meanwhile one run() holds three calls of one session."""

    def session(k):
        outputs = []
        for step in range(5):
            code = "n = 0" if step == 0 else ("1 / 0" if step == 2 and k % 2 else "n += 1\nprint(n)")
            (result,) = sandbox.run([CodeCall(f"t{k}", code)])
            outputs.append((result.status, result.output.strip().splitlines()[-1] if result.output.strip() else ""))
        return outputs

    def one_run():
        calls = [CodeCall("batch", "v = [1]"), CodeCall("batch", "v.append(2)"), CodeCall("batch", "print(v)")]
        return [(r.status, r.output.strip()) for r in sandbox.run(calls)]

    results = _run_in_threads(lambda k: session(k) if k < 4 else one_run(), [(k,) for k in range(5)])
    for k in range(4):
        if k % 2:
            assert results[k][2][0] == "error" and "ZeroDivisionError" in results[k][2][1]
            assert [value for _, value in results[k][3:]] == ["2", "3"]
        else:
            assert [value for _, value in results[k][1:]] == ["1", "2", "3", "4"]
    assert results[4] == [("ok", ""), ("ok", ""), ("ok", "[1, 2]")]
