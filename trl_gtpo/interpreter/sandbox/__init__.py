"""The local hardened process pool that runs the model's code: one implementation of `CodeExecutor`."""

from .pool import SandboxPool

__all__ = ["SandboxPool"]
