"""What a user can get wrong, in one table: each bad input -> the exception and a phrase of its message.

Every row must fail loudly, naming the field, function, column or executor and the fix, and as early as it can be
known (config construction, trainer construction, or the first call that shows it). docs/RELIABILITY.md's reliability report
counts these rows (`test_the_readme_counts_this_table`).
"""

import math
import os
import types

import pytest
from datasets import Dataset

from trl_gtpo import GTPOConfig, GTPOTrainer
from trl_gtpo.interpreter.executor import CodeCall, ExecutionResult
from trl_gtpo.interpreter.loop import CodeInterpreterLoop, ExecutorError
from trl_gtpo.interpreter.rollout import CodeInterpreterRollout
from trl_gtpo.interpreter.sandbox import SandboxPool
from trl_gtpo.rewards.turn import call_turn_reward_funcs
from trl_gtpo.turn_records import TurnRecord

from helpers import QUESTION, boxed_42, trl_args

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Executor:
    def run(self, calls):
        return [ExecutionResult("ok") for _ in calls]

    def close_session(self, session_id):
        pass

    def close(self):
        pass


class _RunOnly:
    def run(self, calls):
        return []


def factory_without_options(args):
    return _Executor()


def factory_of_a_non_executor(args):
    return "not an executor"


def _config(tmp_path, **fields):
    return GTPOConfig(**trl_args(tmp_path, **fields))


def config(**fields):
    def build(tmp_path, model):
        return _config(tmp_path, **fields)

    build.fields = fields  # the same fields go to AsyncGTPOConfig (test_the_async_config_refuses_the_same_fields)
    return build


def rollout(**fields):
    """CodeInterpreterRollout is what GTPOTrainer builds at its construction for its code interpreter."""
    return lambda tmp_path, model: CodeInterpreterRollout(_config(tmp_path, **fields))


def trainer(**kwargs):
    def build(tmp_path, model):
        kwargs.setdefault("train_dataset", Dataset.from_dict({"prompt": [QUESTION] * 4}))
        args = _config(tmp_path, **kwargs.pop("config", {}))
        return GTPOTrainer(model=model(), reward_funcs=kwargs.pop("reward_funcs", boxed_42), args=args, **kwargs)

    return build


def executor_run(answer):
    """One turn's code through the loop, with an executor whose run() is `answer`."""

    def build(tmp_path, model):
        executor = types.SimpleNamespace(run=answer, close_session=lambda sid: None, close=lambda: None)
        loop = CodeInterpreterLoop(None, executor, max_turns=2, max_completion_length=8)
        return loop._execute([CodeCall("s", "print(1)")])

    return build


def turn_reward(value):
    def build(tmp_path, model):
        def judge(turns, **kwargs):
            return [[value] for _ in turns]

        record = TurnRecord(index=0, text="t", tool_call=None, tool_response=None, status="none", start=0, end=1)
        return call_turn_reward_funcs([judge], ["judge"], [[record]], prompts=["q"], completions=["c"])

    return build


def needs_answer(completions, answer, **kwargs):
    return [1.0 for _ in completions]


def raising(calls):
    raise ConnectionError("sandbox service down")


BAD_INPUTS = [
    # GTPOConfig: types of every field GTPO adds, finite numbers, JSON, ranges
    ("gamma as text", config(gamma="0.9"), TypeError, "GTPOConfig.gamma='0.9' has type str"),
    ("format_penalty as text", config(format_penalty="-0.1"), TypeError, "GTPOConfig.format_penalty="),
    ("turn_reward_weights as text", config(turn_reward_weights="1.0"), TypeError, "GTPOConfig.turn_reward_weights="),
    ("a weight as text", config(turn_reward_weights=[1.0, "2"]), TypeError, "GTPOConfig.turn_reward_weights="),
    ("shaping_alpha as text", config(shaping_alpha="0.5"), TypeError, "GTPOConfig.shaping_alpha="),
    ("max_turns fractional", config(max_turns=2.5), TypeError, "GTPOConfig.max_turns=2.5"),
    ("max_turns as text", config(max_turns="4"), TypeError, "GTPOConfig.max_turns='4'"),
    ("tool_pool_size as text", config(tool_pool_size="2"), TypeError, "GTPOConfig.tool_pool_size="),
    ("persistent_tool_sessions as text", config(persistent_tool_sessions="no"), TypeError, "persistent_tool_sessions"),
    ("tool_executor a number", config(tool_executor=42), TypeError, "GTPOConfig.tool_executor=42"),
    ("turn_stop_marker None", config(turn_stop_marker=None), TypeError, "GTPOConfig.turn_stop_marker=None"),
    ("tool_executor_kwargs bad JSON", config(tool_executor_kwargs="{bad json"), ValueError, "not valid JSON"),
    ("tool_executor_kwargs JSON list", config(tool_executor_kwargs="[1, 2]"), ValueError, "not an object"),
    ("tool_timeout inf", config(tool_timeout=math.inf), ValueError, "GTPOConfig.tool_timeout=inf"),
    ("tool_timeout nan", config(tool_timeout=math.nan), ValueError, "GTPOConfig.tool_timeout=nan"),
    ("tool_timeout 0", config(tool_timeout=0), ValueError, "GTPOConfig.tool_timeout=0"),
    ("format_penalty -inf", config(format_penalty=-math.inf), ValueError, "finite numbers"),
    ("shaping_alpha inf", config(shaping_alpha=math.inf), ValueError, "finite numbers"),
    ("gamma nan", config(gamma=math.nan), ValueError, "GTPOConfig.gamma=nan"),
    ("gamma 1.5", config(gamma=1.5), ValueError, "GTPOConfig.gamma=1.5"),
    ("success threshold inf", config(shaping_success_threshold=math.inf), ValueError, "shaping_success_threshold"),
    ("memory below the pool's need", config(tool_memory_limit_mb=64), ValueError, "at least 256"),
    (
        "memory below a bare pool's need",
        config(tool_memory_limit_mb=64, tool_executor_kwargs={"preload": []}),
        ValueError,
        "at least 96",
    ),
    ("tool_executor_errors unknown", config(tool_executor_errors="ignore"), ValueError, "'raise' or 'contain'"),
    ("estimator unknown", config(turn_advantage_estimator="ppo"), ValueError, "turn_advantage_estimator"),
    ("importance level unknown", config(importance_sampling_level="segment"), ValueError, "importance_sampling_level"),
    # The executor, checked when the trainer (its code interpreter) is built
    ("executor= without any method", trainer(executor=object()), TypeError, "no run(), close_session(), close()"),
    ("executor= with run only", trainer(executor=_RunOnly()), TypeError, "no close_session(), close()"),
    (
        "tool_executor not importable",
        rollout(tool_executor="no_such_pkg.make_executor"),
        ValueError,
        "GTPOConfig.tool_executor='no_such_pkg.make_executor': module 'no_such_pkg' cannot be imported",
    ),
    (
        "tool_executor not importable (trainer)",
        trainer(config=dict(tool_executor="no_such_pkg.make_executor")),
        ValueError,
        "cannot be imported",
    ),
    ("pool option unknown", rollout(tool_executor_kwargs={"no_such_option": 1}), ValueError, "built-in SandboxPool"),
    ("pool option set twice", rollout(tool_executor_kwargs={"timeout": 3}), ValueError, "set tool_timeout"),
    (
        "factory kwargs unknown",
        rollout(tool_executor=f"{__name__}.factory_without_options", tool_executor_kwargs={"url": "u"}),
        ValueError,
        "does not fit its signature",
    ),
    (
        "factory returns a non-executor",
        rollout(tool_executor=f"{__name__}.factory_of_a_non_executor"),
        ValueError,
        "not a CodeExecutor",
    ),
    # The executor's answers (first code call)
    ("run() returns strings", executor_run(lambda calls: ["42"] * len(calls)), TypeError, "run() returned a str"),
    ("run() returns a string", executor_run(lambda calls: "42"), TypeError, "run() returned a str"),
    ("run() returns too few", executor_run(lambda calls: []), ValueError, "returned 0 results for 1 calls"),
    ("run() keeps raising", executor_run(raising), ExecutorError, "raised on 3 tries of the same calls (Connection"),
    # Datasets, checked at trainer construction
    (
        "dataset without prompt",
        trainer(train_dataset=Dataset.from_dict({"question": ["q"] * 4})),
        ValueError,
        "train_dataset has no `prompt` column",
    ),
    (
        "eval dataset without prompt",
        trainer(eval_dataset=Dataset.from_dict({"question": ["q"] * 4})),
        ValueError,
        "eval_dataset has no `prompt` column",
    ),
    ("empty dataset", trainer(train_dataset=Dataset.from_dict({"prompt": []})), ValueError, "empty train_dataset"),
    ("reward column missing", trainer(reward_funcs=needs_answer), ValueError, "'needs_answer' needs the argument"),
    # Turn reward functions' values
    ("turn reward text", turn_reward("good"), ValueError, "'judge' returned 'good' (str)"),
    ("turn reward inf", turn_reward(math.inf), ValueError, "'judge' returned inf"),
    ("turn reward nan", turn_reward(math.nan), ValueError, "'judge' returned nan"),
    ("turn reward 1e30", turn_reward(1e30), ValueError, "'judge' returned 1e+30"),
    # The local sandbox
    ("SandboxPool timeout 0", lambda tmp_path, model: SandboxPool(1, timeout=0), ValueError, "SandboxPool timeout=0"),
    ("SandboxPool timeout -1", lambda tmp_path, model: SandboxPool(1, timeout=-1), ValueError, "timeout=-1"),
    ("SandboxPool timeout inf", lambda tmp_path, model: SandboxPool(1, timeout=math.inf), ValueError, "timeout=inf"),
]


@pytest.mark.parametrize("build, error, phrase", [row[1:] for row in BAD_INPUTS], ids=[row[0] for row in BAD_INPUTS])
def test_bad_input_fails_loudly_naming_the_fix(build, error, phrase, tmp_path, request):
    with pytest.raises(error) as caught:
        build(tmp_path, lambda: request.getfixturevalue("tiny_model_path"))
    assert phrase in str(caught.value), str(caught.value)


def test_the_readme_counts_this_table():
    """docs/RELIABILITY.md (the reliability report moved there from the README) counts this table."""
    with open(os.path.join(REPO, "docs", "RELIABILITY.md")) as f:
        readme = f.read()
    assert f"{len(BAD_INPUTS)} / {len(BAD_INPUTS)} bad inputs" in readme


# The config rows, less GRPOConfig's own field that GTPOConfig widens (the asynchronous trainer has no such field).
ASYNC_CONFIG_ROWS = [
    row for row in BAD_INPUTS if "importance_sampling_level" not in getattr(row[1], "fields", {"importance_sampling_level"})
]


@pytest.mark.parametrize(
    "build, error, phrase", [row[1:] for row in ASYNC_CONFIG_ROWS], ids=[row[0] for row in ASYNC_CONFIG_ROWS]
)
def test_the_async_config_refuses_the_same_fields_naming_its_own_class(build, error, phrase, tmp_path):
    """AsyncGTPOConfig has GTPOConfig's GTPO fields and checks (GTPOFields): every config row above, with the
    error naming AsyncGTPOConfig."""
    pytest.importorskip("trl.experimental.async_grpo")
    from trl_gtpo.async_gtpo import AsyncGTPOConfig

    with pytest.raises(error) as caught:
        AsyncGTPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", **build.fields)
    assert phrase.replace("GTPOConfig.", "AsyncGTPOConfig.") in str(caught.value), str(caught.value)
