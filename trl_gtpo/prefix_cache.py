"""Generation that reads the prompts' shared beginning once.

Every turn of the tool loop generates from a trajectory's whole history, and the histories of a rollout (or of an
evaluation) begin with the same system prompt and worked examples. On the transformers backend each turn would read
that prefix again for every row; on a CPU that prefill is most of a turn's time. Here the prefix goes through the
model once, its KV cache is copied to every row, and each row is laid out as [shared prefix][padding][own tokens],
with position ids that follow the attention mask, so that every token sits where it would without padding and the
model computes what it computes on the full prompts.
"""

import copy

import torch

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


class PrefixCache:
    """The KV cache of the last shared prefix a model read (one at a time: a rollout or an evaluation reuses one
    prompt template). Valid for one set of weights: make a new one after an optimizer step."""

    def __init__(self, model):
        self.model, self.key, self.cache = model, None, None

    @torch.no_grad()
    def expanded(self, prefix: list[int], rows: int):
        """A fresh copy of the prefix's cache for `rows` rows (generation appends to it), or None if the model's
        cache cannot be copied and expanded."""
        if self.key != tuple(prefix):
            ids = torch.tensor([prefix], device=self.model.device)
            self.cache = self.model(input_ids=ids, use_cache=True).past_key_values
            self.key = tuple(prefix)
        if not hasattr(self.cache, "batch_repeat_interleave"):
            return None
        past = copy.deepcopy(self.cache)
        past.batch_repeat_interleave(rows)
        return past


def generate_from_shared_prefix(generate, cache: PrefixCache, rows: list[list[int]], width: int, pad: int, **kwargs):
    """`generate(input_ids=..., attention_mask=..., **kwargs)` over `rows` padded to `width`, with the rows' shared
    prefix read from `cache` when it is long enough (and the model's cache can be expanded); otherwise left-padded as
    usual. The output has `width` columns of input before the new tokens either way."""
    device = cache.model.device
    shared = shared_prefix_length(rows)
    past = cache.expanded(rows[0][:shared], len(rows)) if shared >= MIN_CACHED_PREFIX else None
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
