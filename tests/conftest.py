"""Fixtures: tiny models saved to disk (the helpers the trainer tests share are in tests/helpers.py: a module named
`conftest` would be shadowed by tests/integration/conftest.py)."""

import os

import pytest

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """A tiny random chat model saved with save_pretrained (loaded back through from_pretrained by the trainer)."""
    from trl_gtpo.testing import save_tiny_model

    return save_tiny_model(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="session")
def tool_using_model_path(tmp_path_factory):
    """A tiny model overfit to answer "What is 6 * 7?" with a ```python block, then \\boxed{42} after the output:
    sampling from it really writes code, so generation, stop strings and the sandbox all run for real."""
    from trl_gtpo.testing import make_tiny_model, make_tiny_tokenizer, teach

    path = str(tmp_path_factory.mktemp("tool_using"))
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer, hidden_size=64)
    teach(model, tokenizer, steps=150)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_vlm_path(tmp_path_factory):
    """A tiny random LLaVA with a processor built from local pieces (no Hub)."""
    from trl_gtpo.testing import save_tiny_vlm

    return save_tiny_vlm(str(tmp_path_factory.mktemp("tiny_vlm")))
