"""Generation and scoring that read the prompts' shared beginning once.

Every turn of the tool loop generates from a trajectory's whole history, and the histories of a rollout (or of an
evaluation) begin with the same system prompt and worked examples. On the transformers backend each turn would read
that prefix again for every row; on a CPU that prefill is most of a turn's time. Here the prefix goes through the
model once, its KV cache is copied to every row, and each row is laid out as [shared prefix][padding][own tokens],
with position ids that follow the attention mask, so that every token sits where it would without padding and the
model computes what it computes on the full prompts. The loss's forward passes (policy, old policy, reference) read
the same prefix for every trajectory of a batch: scoring reads it once too, with its gradient (the rows' gradients
add up in the one copy, as they would in each row's).
"""

import copy
import inspect

import torch
from transformers.cache_utils import DynamicLayer

# Below this many shared tokens a cached prefix saves less than its bookkeeping costs.
MIN_CACHED_PREFIX = 32


def shared_prefix_length(rows: list[list[int]]) -> int:
    """Length of the longest common beginning of `rows`, leaving every row at least one token of its own (the
    model must read a token to predict the next)."""
    limit = min(len(ids) for ids in rows) - 1
    length = 0
    while length < limit and all(ids[length] == rows[0][length] for ids in rows):
        length += 1
    return length


def prefix_layout(rows: list[list[int]], shared: int, width: int, pad: int):
    """`(input_ids, attention_mask, position_ids)` of `rows`, each `width` wide, laid out as [the `shared` first
    tokens][padding][the row's own tokens]; position ids count the attended tokens only."""
    if width < max(len(ids) for ids in rows):
        raise ValueError(f"width {width} is narrower than the longest row ({max(len(ids) for ids in rows)} tokens)")
    input_ids = torch.tensor([ids[:shared] + [pad] * (width - len(ids)) + ids[shared:] for ids in rows])
    attention_mask = torch.tensor([[1] * shared + [0] * (width - len(ids)) + [1] * (len(ids) - shared) for ids in rows])
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids


def scoring_layout(input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_width: int, pad: int):
    """A scoring batch in TRL's layout ([left-padded prompt][completion], the completion the last `completion_width`
    columns) as `(prefix, suffix_ids, attention_mask, position_ids)`: the prompts' shared beginning (a `[1, P]`
    tensor), every row's rest laid out as [padding][own prompt tokens][completion] (`[B, S]`), the attention mask of
    prefix and rest together (`[B, P + S]`) and the rest's position ids (counting attended tokens only). None when the
    prompts share fewer than `MIN_CACHED_PREFIX` tokens. Each row keeps at least one prompt token of its own, so the
    first completion token is predicted from a position the rest covers."""
    prompt_width = input_ids.shape[1] - completion_width
    prompts = [ids[:prompt_width][mask[:prompt_width].bool()].tolist() for ids, mask in zip(input_ids, attention_mask)]
    shared = shared_prefix_length(prompts)
    if shared < MIN_CACHED_PREFIX:
        return None
    laid_ids, laid_mask, _ = prefix_layout(prompts, shared, max(len(ids) for ids in prompts), pad)
    device = input_ids.device
    suffix_ids = torch.cat([laid_ids[:, shared:].to(device), input_ids[:, prompt_width:]], dim=1)
    suffix_mask = torch.cat([laid_mask[:, shared:].to(device), attention_mask[:, prompt_width:]], dim=1)
    mask = torch.cat([attention_mask.new_ones(len(prompts), shared), suffix_mask], dim=1)
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)[:, shared:]
    prefix = torch.tensor([prompts[0][:shared]], device=device)
    return prefix, suffix_ids, mask, position_ids


def read_prefix(model, prefix: torch.Tensor, rows: int):
    """The KV cache of `prefix` (`[1, P]`) for `rows` rows, with its gradient when gradients are on (each row's
    gradient flows back into the one read), or None when the model's cache is not one full-attention `DynamicLayer`
    per layer."""
    past = _read(model, prefix, None)
    if not _plain_full_attention(past):
        return None
    past.batch_repeat_interleave(rows)
    return past


def _read(model, ids: torch.Tensor, past):
    """`past` extended by `ids` (`[1, n]`; None: a new cache), asking the model for one position's logits only."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT passes the option through
    options = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base.forward).parameters else {}
    return model(input_ids=ids, past_key_values=past, use_cache=True, **options).past_key_values


def _plain_full_attention(cache) -> bool:
    """One full-attention `DynamicLayer` per layer: the only cache copied and expanded to rows safely."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def positions_are_relative(config) -> bool:
    """Whether the model reads positions only as differences (rotary embeddings with fixed frequencies), so that a row
    scored with its padding moved after the shared prefix gets TRL's numbers: TRL's scoring pass counts left padding
    in the positions, which a learned absolute position embedding (GPT-2) would see; "dynamic" and "longrope" scaling
    choose frequencies from the largest position of each forward pass, which differs between the prefix and the rest."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    if rope is None and getattr(config, "rope_theta", None) is None:
        return False
    return (rope or {}).get("rope_type", (rope or {}).get("type", "default")) not in ("dynamic", "longrope")


def can_cache_prefix(model, generation_config=None) -> bool:
    """Whether `model` computes the same thing with the rows' shared beginning cached and padding after it.

    Only a decoder-only model whose every layer attends to the whole context qualifies: in a sliding, chunked or
    linear-attention layer the padding inside the window would take the place of context. Not with dropout at work
    (one draw would serve every row), a PEFT prompt-learning adapter (it brings its own cache), or a generation config
    that decodes several sequences per row, brings its own cache or reads n-grams of the input (they would cross the
    padding)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        return False
    config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    if getattr(base.config, "is_encoder_decoder", False) or getattr(config, "attention_chunk_size", None):
        return False
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        if any(kind != "full_attention" for kind in layer_types):
            return False
    elif getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    if "position_ids" not in inspect.signature(base.forward).parameters:
        return False
    if base.training and _dropout_at_work(base, config):
        return False
    for generation in (generation_config, getattr(base, "generation_config", None)):
        if generation is None:
            continue
        if (
            getattr(generation, "cache_implementation", None) is not None
            or getattr(generation, "use_cache", True) is False
            or (getattr(generation, "num_beams", 1) or 1) != 1
            or (getattr(generation, "num_return_sequences", 1) or 1) != 1
            or getattr(generation, "no_repeat_ngram_size", None)
            or getattr(generation, "bad_words_ids", None)
        ):
            return False
    return True


def _dropout_at_work(model, config) -> bool:
    names = ("attention_dropout", "hidden_dropout", "resid_pdrop", "attn_pdrop")
    rates = [getattr(config, name, 0.0) for name in names]
    modules = (m.p for m in model.modules() if isinstance(m, torch.nn.Dropout))
    return any(isinstance(rate, (int, float)) and rate > 0 for rate in rates) or any(p > 0 for p in modules)


class PrefixCache:
    """The KV cache of the last shared prefix a model read (one at a time: a rollout or an evaluation reuses one
    prompt template). A longer prefix that starts with it is read from where it ends, a shorter one is cropped from
    it. Valid for one set of weights: make a new one after an optimizer step."""

    def __init__(self, model):
        self.model, self.key, self.cache = model, None, None
        self.supported = True  # False once the model's cache turned out not to be plain full attention

    @torch.no_grad()
    def expanded(self, prefix: list[int], rows: int):
        """A fresh copy of the prefix's cache for `rows` rows (generation appends to it), or None if the model's
        cache is not one full-attention `DynamicLayer` per layer (nothing else is copied and expanded safely)."""
        if not self.supported:
            return None
        key, known = tuple(prefix), self.key or ()
        if self.key is not None and key[: len(known)] == known:
            if len(key) > len(known):
                self.cache = self._read(prefix[len(known) :], self.cache)
        elif self.key is not None and known[: len(key)] == key:
            self.cache.crop(len(key) - len(known))  # a negative count removes that many tokens from the end
        else:
            self.cache = self._read(prefix, None)
        self.key = key
        if not _plain_full_attention(self.cache):
            self.supported, self.key, self.cache = False, None, None
            return None
        past = copy.deepcopy(self.cache)
        past.batch_repeat_interleave(rows)
        return past

    def _read(self, ids: list[int], past):
        return _read(self.model, torch.tensor([ids], device=self.model.device), past)


def generate_from_shared_prefix(
    generate, rows: list[list[int]], width: int, pad: int, *, cache: PrefixCache | None, device, **kwargs
):
    """`generate(input_ids=..., attention_mask=..., **kwargs)` over `rows` padded to `width` on `device`, with the rows'
    shared prefix read from `cache` when there is one, the prefix is long enough and the model's cache can be expanded;
    otherwise left-padded as usual. The output has `width` columns of input before the new tokens either way."""
    shared = shared_prefix_length(rows)
    past = cache.expanded(rows[0][:shared], len(rows)) if cache is not None and shared >= MIN_CACHED_PREFIX else None
    input_ids, attention_mask, position_ids = prefix_layout(rows, shared if past is not None else 0, width, pad)
    if past is None:
        return generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **kwargs)
    return generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
        past_key_values=past,
        **kwargs,
    )
