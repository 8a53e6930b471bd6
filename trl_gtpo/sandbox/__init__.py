"""Running the model's code: the `CodeExecutor` protocol, the local hardened process pool, and the config factory."""

from .base import CodeCall, CodeExecutor, ExecutionResult
from .factory import make_executor
from .pool import SandboxPool

__all__ = ["CodeCall", "CodeExecutor", "ExecutionResult", "SandboxPool", "make_executor"]
