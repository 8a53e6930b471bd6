"""A tiny random chat model and a byte-level tokenizer built in code: for tests, benchmarks and smoke runs, offline.

The tokenizer round-trips any text exactly (byte-level BPE), so scripted completions can be encoded and the code
interpreter's masks checked token by token.
"""

import os

_CORPUS = [
    "Let me compute this with Python.\n```python\nprint(512 * 389)\n```\n```output\n199168\n```\n",
    "The answer is \\boxed{199168}.",
    "```python\nx = 3\ny = x ** 2 + 1\nprint(y)\n```\n",
    "def f(n):\n    return sum(range(n))\nprint(f(10))\n",
    "import math\nprint(math.factorial(5) % 7)\n",
    "What is 12 + 30? Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "Traceback (most recent call last):\nZeroDivisionError: division by zero\nNameError: name 'x' is not defined\n",
    "0123456789 + - * / = ( ) [ ] { } , . : ; ' \" # % < > !",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_tiny_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_large_vocab_tokenizer(vocab_size: int = 151_665):
    """`make_tiny_tokenizer` padded with unreachable filler tokens up to a Qwen2.5-sized vocabulary (TRL's test models
    have 151,665 tokens): for costs that grow with the vocabulary, such as transformers' stop-string tables. Encoding
    is unchanged; the fillers (" w0", " w1", ...) only appear when a random model samples them."""
    import json

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    small = make_tiny_tokenizer()
    state = json.loads(small.backend_tokenizer.to_str())
    vocab = state["model"]["vocab"]
    for i in range(vocab_size - len(vocab)):
        vocab[f"\u0120w{i}"] = len(vocab)  # \u0120 is the byte-level alphabet's space
    large = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(state)),
        bos_token=None,
        eos_token=small.eos_token,
        pad_token=small.pad_token,
        unk_token=None,
    )
    large.chat_template = CHAT_TEMPLATE
    return large


def make_tiny_model(
    tokenizer, hidden_size: int = 32, num_layers: int = 2, seed: int = 0, tie_word_embeddings: bool = True
):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=tie_word_embeddings,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_tiny_model(path: str, **kwargs) -> str:
    """Build the tiny model and tokenizer and `save_pretrained` both to `path`, so the real loading code is used."""
    os.makedirs(path, exist_ok=True)
    tokenizer = make_tiny_tokenizer()
    make_tiny_model(tokenizer, **kwargs).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


TOOL_USE_EXAMPLE = (
    [{"role": "user", "content": "What is 6 * 7?"}],
    "Let me compute.\n```python\nprint(6 * 7)\n```\n```output\n42\n```\nThe answer is \\boxed{42}.",
)


def teach(model, tokenizer, examples=(TOOL_USE_EXAMPLE,), steps: int = 150, lr: float = 3e-3, seed: int = 0):
    """Overfit the tiny model on a few (prompt messages, completion) pairs, so that sampling from it really writes
    code blocks: end-to-end tests then exercise real generation, stop strings and the sandbox."""
    import torch

    torch.manual_seed(seed)
    batch = []
    for messages, completion in examples:
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
        completion_ids = tokenizer.encode(completion, add_special_tokens=False) + [tokenizer.eos_token_id]
        labels = [-100] * len(prompt_ids) + completion_ids
        batch.append((torch.tensor([prompt_ids + completion_ids]), torch.tensor([labels])))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small is fastest on one thread, and much slower on a busy machine with 2
    for step in range(steps):
        input_ids, labels = batch[step % len(batch)]
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    torch.set_num_threads(threads)
    model.eval()
    return loss.item()


VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def save_tiny_vlm(path: str, seed: int = 0) -> str:
    """A tiny random LLaVA (CLIP vision tower, projector, Llama language model) with a processor built from local
    pieces (the byte-level tokenizer plus an `<image>` token, a CLIPImageProcessor for 28x28 images), saved to `path`
    offline. An image is 2x2 patches of 14 pixels and CLIP's class token: 5 `<image>` tokens in the prompt once the
    processor expands it.

    (Qwen2-VL's processor needs a video processor, hence torchvision, which this environment does not have.)"""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    os.makedirs(path, exist_ok=True)
    tokenizer = make_tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.chat_template = VLM_CHAT_TEMPLATE
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, do_center_crop=True
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="full",
        chat_template=VLM_CHAT_TEMPLATE, image_token="<image>", num_additional_image_tokens=1,
    )
    torch.manual_seed(seed)
    text_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14,
        projection_dim=32,
    )
    config = LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="full", vision_feature_layer=-1, tie_word_embeddings=True,
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


class NoWeightTransfer:
    """A weight transfer for `AsyncGRPOTrainer(weight_transfer=...)` that sends nothing: TRL's own
    (`WeightTransferClient`) needs NCCL, i.e. CUDA, so CPU tests and smoke runs train with the vLLM server's weights
    left as they are."""

    def init_weight_transfer(self):
        pass

    def pause(self):
        pass

    def send_weights(self, iterator):
        pass

    def resume(self):
        pass

    def destroy(self):
        pass


class QueuedRolloutWorker:
    """A rollout worker for `AsyncGRPOTrainer(rollout_worker=...)` whose queue holds samples scored beforehand (for
    `AsyncGTPOTrainer`, with per-token advantages, as GTPO's rollout loop queues them): the trainer trains on them with
    no vLLM server and no rollout process. `metrics_queue` is drained by the trainer's `log()`."""

    def __init__(self, samples=()):
        import queue

        self.rollout_buffer, self.metrics_queue = queue.Queue(), queue.Queue()
        for sample in samples:
            self.rollout_buffer.put(sample)

    def start(self):
        pass

    def stop(self):
        pass

    def update_model_version(self, version):
        pass

    def check_health(self, stale_after_s):
        pass
