"""make_executor: the `CodeExecutor` a config's `tool_*` fields ask for (GTPOConfig's, AsyncGTPOConfig's: read by name,
so the interpreter needs no config class), the local SandboxPool or a user-supplied one."""

import importlib
import inspect
import json

from .executor import CodeExecutor, check_executor


def make_executor(args, concurrency: int | None = None) -> CodeExecutor:
    """Build the executor of `args`: `args.tool_executor(args, **args.tool_executor_kwargs)` if set, else a
    `SandboxPool` sized and limited by the `tool_*` fields (with `tool_executor_kwargs` as extra `SandboxPool`
    arguments, e.g. `{"preload": ["math"]}`). `concurrency`: the most calls the process runs at once, when known
    (the asynchronous rollout process); it sizes a pool whose `tool_pool_size` is None (`concurrency_size`)."""
    kwargs = check_executor_settings(args)
    if args.tool_executor is None:
        from .sandbox import SandboxPool, concurrency_size  # the local pool: imported only when used

        size = args.tool_pool_size
        if size is None and concurrency is not None:
            size = concurrency_size(concurrency)
        return SandboxPool(size, **_pool_settings(args), **kwargs)
    executor = _import_factory(args.tool_executor)(args, **kwargs)
    try:
        check_executor(executor, f"GTPOConfig.tool_executor={args.tool_executor!r}")
    except TypeError as e:
        raise ValueError(f"{e} The factory returned it: it must return a CodeExecutor.") from None
    return executor


def check_executor_settings(args) -> dict:
    """Check, without starting anything, that `make_executor(args)` can build its executor: the factory imports and
    takes `(args, **tool_executor_kwargs)`, or those kwargs fit the local `SandboxPool`. Returns the parsed kwargs."""
    kwargs = _parse_kwargs(args.tool_executor_kwargs)
    if args.tool_executor is None:
        from .sandbox import SandboxPool

        fixed = _pool_settings(args)
        taken = sorted(set(kwargs) & set(fixed))
        if taken:
            raise ValueError(
                f"GTPOConfig.tool_executor_kwargs sets {taken}, which the local SandboxPool takes from GTPOConfig: "
                "set tool_timeout, tool_memory_limit_mb, max_tool_output_chars or persistent_tool_sessions instead."
            )
        try:
            inspect.signature(SandboxPool).bind(args.tool_pool_size, **fixed, **kwargs)
        except TypeError as e:
            raise ValueError(
                f"GTPOConfig.tool_executor_kwargs={kwargs!r} does not fit the built-in SandboxPool ({e}): use only "
                "SandboxPool keyword arguments there (e.g. preload, isolation, disk_limit_mb), or set tool_executor to "
                "your own factory."
            ) from None
        return kwargs
    factory = _import_factory(args.tool_executor)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a callable without a signature (a builtin): nothing to check
        return kwargs
    try:
        signature.bind(args, **kwargs)
    except TypeError as e:
        raise ValueError(
            f"GTPOConfig.tool_executor={args.tool_executor!r} is called as factory(args, **tool_executor_kwargs) with "
            f"tool_executor_kwargs={kwargs!r}, which does not fit its signature {signature} ({e}): make the two agree."
        ) from None
    return kwargs


def _pool_settings(args) -> dict:
    return dict(
        timeout=args.tool_timeout,
        memory_limit_mb=args.tool_memory_limit_mb,
        max_output_chars=args.max_tool_output_chars,
        persistent_sessions=args.persistent_tool_sessions,
    )


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
