"""make_executor: the `CodeExecutor` a GTPOConfig asks for, the local SandboxPool or a user-supplied one."""

import importlib
import json
from typing import TYPE_CHECKING

from .executor import CodeExecutor

if TYPE_CHECKING:
    from ..gtpo_config import GTPOConfig


def make_executor(args: "GTPOConfig") -> CodeExecutor:
    """Build the executor of `args`: `args.tool_executor(args, **args.tool_executor_kwargs)` if set, else a
    `SandboxPool` sized and limited by the `tool_*` fields (with `tool_executor_kwargs` as extra `SandboxPool`
    arguments, e.g. `{"preload": ["math"]}`)."""
    kwargs = _parse_kwargs(args.tool_executor_kwargs)
    if args.tool_executor is None:
        from .sandbox import SandboxPool  # the local pool: imported only when used

        try:
            return SandboxPool(
                args.tool_pool_size,
                timeout=args.tool_timeout,
                memory_limit_mb=args.tool_memory_limit_mb,
                max_output_chars=args.max_tool_output_chars,
                persistent_sessions=args.persistent_tool_sessions,
                **kwargs,
            )
        except TypeError as e:
            raise ValueError(
                f"GTPOConfig.tool_executor_kwargs={kwargs!r} does not fit the built-in SandboxPool ({e}): use only "
                "SandboxPool keyword arguments there, or set tool_executor to your own factory."
            ) from None
    factory = _import_factory(args.tool_executor)
    executor = factory(args, **kwargs)
    if not isinstance(executor, CodeExecutor):
        raise ValueError(
            f"GTPOConfig.tool_executor={args.tool_executor!r} returned {type(executor).__name__}, which is not a "
            "CodeExecutor: the factory must return an object with run(calls), close_session(session_id) and close() "
            "(see trl_gtpo.CodeExecutor)."
        )
    return executor


def _parse_kwargs(value) -> dict:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise ValueError(
                f"GTPOConfig.tool_executor_kwargs={value!r} is not valid JSON ({e}): use a JSON object such as "
                '\'{"endpoint": "http://sandbox:8080"}\' or pass a dict.'
            ) from None
    if not isinstance(value, dict):
        raise ValueError(f"GTPOConfig.tool_executor_kwargs={value!r} is not a dict: use a dict or a JSON object.")
    return value


def _import_factory(path: str):
    module_name, sep, attr = path.replace(":", ".").rpartition(".")
    fix = "use the dotted path of a callable, e.g. 'my_package.sandbox.make_remote_executor'"
    if not sep or not module_name or not attr:
        raise ValueError(f"GTPOConfig.tool_executor={path!r} is not a dotted import path: {fix}.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(
            f"GTPOConfig.tool_executor={path!r}: module {module_name!r} cannot be imported ({e}): {fix}, with its "
            "package installed or on PYTHONPATH."
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"GTPOConfig.tool_executor={path!r}: {module_name!r} has no callable {attr!r}: {fix}.")
    return factory
