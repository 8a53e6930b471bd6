"""make_executor: the local SandboxPool from a GTPOConfig, a user's executor factory, and errors that name the fix."""

import json
import types

import pytest

from trl_gtpo.interpreter.executor import CodeCall, CodeExecutor, ExecutionResult
from trl_gtpo.interpreter.executor_factory import make_executor
from trl_gtpo.interpreter.sandbox import SandboxPool

TIMEOUT = 2.0


class _FakeExecutor:
    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def run(self, calls):
        return [ExecutionResult("fake") for _ in calls]

    def close_session(self, session_id):
        pass

    def close(self):
        pass


def fake_factory(args, **kwargs):
    return _FakeExecutor(**kwargs)


def not_an_executor_factory(args, **kwargs):
    return object()


def _args(**overrides):
    fields = dict(
        tool_timeout=TIMEOUT,
        tool_memory_limit_mb=256,
        max_tool_output_chars=64,
        tool_pool_size=1,
        persistent_tool_sessions=True,
        tool_executor=None,
        tool_executor_kwargs=None,
    )
    return types.SimpleNamespace(**{**fields, **overrides})


def test_make_executor_builds_the_pool():
    executor = make_executor(_args(tool_executor_kwargs=json.dumps({"preload": []})))
    try:
        assert isinstance(executor, SandboxPool) and isinstance(executor, CodeExecutor)
        assert executor.size == 1 and executor.max_output_chars == 64
        assert executor.run([CodeCall("s", "print('z' * 100)")])[0].output.startswith("z" * 20)
    finally:
        executor.close()


def test_make_executor_user_factory():
    executor = make_executor(_args(tool_executor=f"{__name__}.fake_factory", tool_executor_kwargs={"url": "u"}))
    assert isinstance(executor, _FakeExecutor) and executor.kwargs == {"url": "u"}
    with pytest.raises(ValueError, match="tool_executor=.*cannot be imported"):
        make_executor(_args(tool_executor="no_such_module_xyz.factory"))
    with pytest.raises(ValueError, match="has no callable"):
        make_executor(_args(tool_executor=f"{__name__}.no_such_factory"))
    with pytest.raises(ValueError, match="not a dotted import path"):
        make_executor(_args(tool_executor="factory"))
    with pytest.raises(ValueError, match="not a CodeExecutor"):
        make_executor(_args(tool_executor=f"{__name__}.not_an_executor_factory"))
    with pytest.raises(ValueError, match="tool_executor_kwargs.*not valid JSON"):
        make_executor(_args(tool_executor=f"{__name__}.fake_factory", tool_executor_kwargs="{bad"))
    with pytest.raises(ValueError, match="tool_executor_kwargs"):
        make_executor(_args(tool_executor_kwargs={"no_such_option": 1}))


def test_make_executor_with_gtpo_config(tmp_path):
    pytest.importorskip("trl")
    from trl_gtpo.gtpo_config import GTPOConfig

    args = GTPOConfig(
        output_dir=str(tmp_path),
        tool_executor=f"{__name__}.fake_factory",
        tool_executor_kwargs='{"url": "u"}',
        report_to="none",
        use_cpu=True,
        bf16=False,
    )
    assert make_executor(args).kwargs == {"url": "u"}
