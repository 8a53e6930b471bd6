"""Build a tiny random Llama model and a byte-level BPE tokenizer entirely in code (no Hub access).

    python tests/integration/tiny_model.py OUT_DIR        # writes config.json, model.safetensors, tokenizer files

The tokenizer is a byte-level BPE trained on a few sentences, so it encodes ANY text (backticks, "```output",
newlines...) and decodes it back exactly. It has ChatML special tokens and a ChatML chat template.
The model is a 2-layer LlamaForCausalLM with head_dim 32 (a head size that vLLM's CPU attention accepts).
Both are deterministic for a given seed, so several processes can build the same model independently.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "What is 2 + 3? Let me compute it with Python.",
    "```python\nprint(2 + 3)\n```\n```output\n5\n```\nThe answer is \\boxed{5}.",
    "def f(x):\n    return x * x\n\nprint(f(7))",
    "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9",
    "Solve for x: 3x + 4 = 10. So x = 2, and the final answer is \\boxed{2}.",
    "import math\nprint(math.sqrt(16))\n```output\n4.0\n```",
    "user assistant system tool: reason step by step, then answer.",
]


def build_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
        model_max_length=1024,
        padding_side="left",
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    return hf_tok


def build(out_dir: str | os.PathLike, seed: int = 0, hidden_size: int = 64, num_layers: int = 2) -> Path:
    """Write a tiny model + tokenizer into ``out_dir`` (idempotent) and return the path."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    if (out / "READY").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    (out / "READY").write_text(f"{time.time()}\n")
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
