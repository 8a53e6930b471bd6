"""The local hardened process pool that runs the model's code: one implementation of `CodeExecutor`."""

from .pool import SandboxPool, concurrency_size

__all__ = ["SandboxPool", "concurrency_size"]
