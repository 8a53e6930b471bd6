"""trl_gtpo.prefix_cache: the shared beginning of the rows is read once, and the model computes what it computes on
the full rows (evaluation here; training's TurnGenerator in tests/trainer/test_turn_generation.py)."""

import random

import pytest
import torch

from trl_gtpo import evaluation, prefix_cache
from trl_gtpo.prefix_cache import prefix_layout, shared_prefix_length


def test_shared_prefix_length_leaves_every_row_a_token_of_its_own():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter row keeps its last token
    assert shared_prefix_length([[7, 1], [8, 1]]) == 0
    assert shared_prefix_length([[1, 2, 3]]) == 2  # one row: all but its last token


def test_prefix_layout_by_hand():
    ids, mask, positions = prefix_layout([[5, 6, 7], [5, 6, 8, 9]], shared=2, width=5, pad=0)
    assert ids.tolist() == [[5, 6, 0, 0, 7], [5, 6, 0, 8, 9]]
    assert mask.tolist() == [[1, 1, 0, 0, 1], [1, 1, 0, 1, 1]]
    assert positions.tolist() == [[0, 1, 1, 1, 2], [0, 1, 1, 2, 3]]  # padding holds the last position; not attended
    ids, mask, positions = prefix_layout([[5, 6, 7]], shared=0, width=4, pad=0)  # no prefix: plain left padding
    assert (ids.tolist(), mask.tolist(), positions.tolist()) == ([[0, 5, 6, 7]], [[0, 1, 1, 1]], [[0, 0, 1, 2]])
    with pytest.raises(ValueError, match="narrower than the longest row"):
        prefix_layout([[1, 2, 3]], shared=0, width=2, pad=0)


@pytest.mark.parametrize("seed", range(50))
def test_prefix_layout_keeps_every_row_and_its_positions(seed):
    """Random rows sharing a random beginning: the attended tokens of each laid-out row are the row, in order, at
    positions 0..len-1, and every row is `width` wide."""
    rng = random.Random(seed)
    common = [rng.randrange(1, 50) for _ in range(rng.randrange(0, 8))]
    rows = [common + [rng.randrange(1, 50) for _ in range(rng.randrange(1, 6))] for _ in range(rng.randrange(1, 5))]
    shared = shared_prefix_length(rows)
    width = max(len(r) for r in rows) + rng.randrange(0, 4)
    ids, mask, positions = prefix_layout(rows, shared, width, pad=0)
    assert ids.shape == mask.shape == positions.shape == (len(rows), width)
    for row, row_ids, row_mask, row_positions in zip(rows, ids, mask, positions, strict=True):
        attended = row_mask.bool()
        assert row_ids[attended].tolist() == row
        assert row_positions[attended].tolist() == list(range(len(row)))
        assert row_ids[:shared].tolist() == rows[0][:shared]


def _opinionated_tiny_model():
    from trl_gtpo.testing import make_tiny_model, make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer, hidden_size=64).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # large weights: what it writes depends on what it read (a fresh tiny model's barely does)
        for weight in (p for p in model.parameters() if p.dim() > 1):
            weight.normal_(std=0.5, generator=generator)
    return model, tokenizer, generator


def test_a_cached_prompt_prefix_generates_exactly_what_the_full_prompts_do(monkeypatch):
    """Evaluation reuses the KV cache of the prompts' shared beginning (the worked examples) across rows and turns:
    greedy tokens must be those of reading every prompt in full, with rows of different lengths padded between the
    prefix and their own tokens."""
    model, tokenizer, generator = _opinionated_tiny_model()
    prefix = torch.randint(5, 400, (40,), generator=generator).tolist()
    prompts = [prefix + torch.randint(5, 400, (n,), generator=generator).tolist() for n in (1, 7, 3, 12, 5)]
    used = []
    expanded = prefix_cache.PrefixCache.expanded
    monkeypatch.setattr(prefix_cache.PrefixCache, "expanded", lambda self, *a: used.append(a[0]) or expanded(self, *a))
    cached, _ = evaluation.transformers_generate_turn(model, tokenizer, ["```output"], batch_size=4)(prompts, 12)
    assert used and len(used[0]) >= 40  # the cache was used, for the 40 shared tokens at least
    full, _ = evaluation.transformers_generate_turn(model, tokenizer, ["```output"], batch_size=4, cache_prefix=False)(
        prompts, 12
    )
    assert cached == full
    assert all(len(ids) == 12 for ids in cached)  # a random model runs to the limit: every token compared
    assert len({tuple(ids) for ids in full}) >= 3  # and the rows differ: the comparison reads each row's own tokens


def test_a_short_shared_beginning_is_not_cached(monkeypatch):
    """Below MIN_CACHED_PREFIX shared tokens the rows are left-padded as usual and no prefix is read."""
    model, tokenizer, generator = _opinionated_tiny_model()
    rows = [[3] * 5 + torch.randint(5, 400, (n,), generator=generator).tolist() for n in (2, 6)]
    calls = []
    monkeypatch.setattr(prefix_cache.PrefixCache, "expanded", lambda self, *a: calls.append(a) or None)
    out = prefix_cache.generate_from_shared_prefix(
        lambda **kw: kw, rows, width=12, pad=0, cache=prefix_cache.PrefixCache(model), device=model.device
    )
    assert calls == [] and "past_key_values" not in out
    assert out["input_ids"][0].tolist() == [0] * 5 + rows[0]


def _tiny(kind: str, **config):
    """A tiny random model of another family: Llama, or Qwen2 with every layer on a 16-token sliding window."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0) | config
    torch.manual_seed(0)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**common)).eval()
    return Qwen2ForCausalLM(Qwen2Config(**common, use_sliding_window=True, sliding_window=16, max_window_layers=0,
                                        layer_types=["sliding_attention"] * 2)).eval()


def test_only_models_that_compute_the_same_with_a_cached_prefix_qualify():
    """Padding after the prefix would take the place of context in a sliding window; one dropout draw would serve
    every row; several sequences per row or a cache of the config's own do not take an expanded cache."""
    from transformers import GenerationConfig

    llama = _tiny("llama")
    assert prefix_cache.can_cache_prefix(llama)
    assert not prefix_cache.can_cache_prefix(_tiny("qwen2-sliding"))
    assert prefix_cache.can_cache_prefix(_tiny("llama", attention_dropout=0.1))  # eval mode: no dropout at work
    assert not prefix_cache.can_cache_prefix(_tiny("llama", attention_dropout=0.1).train())
    for bad in (dict(num_return_sequences=2, do_sample=True), dict(num_beams=2), dict(cache_implementation="static"),
                dict(use_cache=False), dict(no_repeat_ngram_size=3)):
        assert not prefix_cache.can_cache_prefix(llama, GenerationConfig(**bad)), bad
    assert prefix_cache.can_cache_prefix(llama, GenerationConfig(do_sample=True, temperature=0.5, top_p=0.9))


def test_a_cache_that_is_not_plain_full_attention_is_never_expanded():
    """A sliding-window model's cache (its layers are not plain DynamicLayers) gives None: the rows are left-padded
    as usual, and greedy tokens are those of the full prompts."""
    model = _tiny("qwen2-sliding")
    cache = prefix_cache.PrefixCache(model)
    assert cache.expanded(list(range(5, 45)), 3) is None and not cache.supported
    generator = torch.Generator().manual_seed(1)
    prefix = torch.randint(5, 400, (40,), generator=generator).tolist()
    rows = [prefix + torch.randint(5, 400, (n,), generator=generator).tolist() for n in (1, 9, 3, 14)]
    options = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    width = max(len(r) for r in rows)
    through = prefix_cache.generate_from_shared_prefix(
        model.generate, rows, width, 0, cache=cache, device=model.device, **options
    )
    ids, mask, _ = prefix_layout(rows, 0, width, 0)
    assert torch.equal(through, model.generate(input_ids=ids, attention_mask=mask, **options))


def test_a_longer_prefix_is_read_from_where_the_cached_one_ends_and_a_shorter_one_is_cropped():
    """The cache a rollout keeps across turns: extending or cropping it gives the keys and values of reading the
    new prefix from scratch, and only the new tokens are read."""
    model = _tiny("llama")
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(5, 400, (60,), generator=generator).tolist()
    reads = []
    cache = prefix_cache.PrefixCache(model)
    read = cache._read
    cache._read = lambda new, past: reads.append(len(new)) or read(new, past)
    for length in (40, 52, 36, 60):
        kept = cache.expanded(ids[:length], 1)
        fresh = prefix_cache.PrefixCache(model).expanded(ids[:length], 1)
        for mine, theirs in zip(kept.layers, fresh.layers, strict=True):
            assert mine.keys.shape[-2] == length
            torch.testing.assert_close(mine.keys, theirs.keys, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(mine.values, theirs.values, rtol=1e-5, atol=1e-5)
    assert reads == [40, 12, 24]  # 40 read, 12 more, cropped to 36 with no read, 24 more


def test_scoring_layout_by_hand():
    """Two prompts sharing 32 tokens (left-padded as TRL pads them), then 3 completion columns, the second row's
    last one padding: the prefix comes out once, each rest as [padding][own prompt tokens][completion]."""
    shared = list(range(100, 132))
    input_ids = torch.tensor([[0, 0] + shared + [7, 6, 1, 2, 3], [0, 0, 0] + shared + [8, 4, 5, 0]])
    attention_mask = torch.tensor([[0, 0] + [1] * 32 + [1, 1, 1, 1, 1], [0, 0, 0] + [1] * 32 + [1, 1, 1, 0]])
    prefix, suffix_ids, mask, positions = prefix_cache.scoring_layout(input_ids, attention_mask, 3, pad=0)
    assert prefix.tolist() == [shared]
    assert suffix_ids.tolist() == [[7, 6, 1, 2, 3], [0, 8, 4, 5, 0]]
    assert mask.tolist() == [[1] * 32 + [1, 1, 1, 1, 1], [1] * 32 + [0, 1, 1, 1, 0]]
    assert positions.tolist() == [[32, 33, 34, 35, 36], [31, 32, 33, 34, 34]]
    short = torch.tensor([[5] * 31 + [7, 1], [5] * 31 + [8, 2]])
    assert prefix_cache.scoring_layout(short, torch.ones_like(short), 1, pad=0) is None  # 31 shared: below the minimum


@pytest.mark.parametrize("seed", range(50))
def test_scoring_layout_keeps_every_row_its_completion_and_its_positions(seed):
    """Random TRL-layout batches (left-padded prompts sharing a random beginning, right-padded completions): prefix +
    each rest's attended tokens are the row's attended tokens in order, at positions 0..n-1; the completion columns
    are the last columns unchanged; each rest keeps a prompt token before its completion."""
    rng = random.Random(seed)
    common = [rng.randrange(1, 50) for _ in range(rng.randrange(30, 40))]
    n_rows, width = rng.randrange(1, 5), rng.randrange(1, 6)
    prompts = [
        common + [rng.randrange(1, 50) for _ in range(rng.randrange(0 if n_rows > 1 else 1, 6))] for _ in range(n_rows)
    ]
    prompt_width = max(len(p) for p in prompts) + rng.randrange(0, 3)
    completions = [[rng.randrange(1, 50) for _ in range(rng.randrange(1, width + 1))] for _ in prompts]
    input_ids = torch.tensor(
        [[0] * (prompt_width - len(p)) + p + c + [0] * (width - len(c)) for p, c in zip(prompts, completions)]
    )
    attention_mask = torch.tensor(
        [
            [0] * (prompt_width - len(p)) + [1] * (len(p) + len(c)) + [0] * (width - len(c))
            for p, c in zip(prompts, completions)
        ]
    )
    layout = prefix_cache.scoring_layout(input_ids, attention_mask, width, pad=0)
    if shared_prefix_length(prompts) < prefix_cache.MIN_CACHED_PREFIX:
        assert layout is None
        return
    prefix, suffix_ids, mask, positions = layout
    shared = prefix.shape[1]
    assert prefix[0].tolist() == common[:shared] or prefix[0].tolist() == prompts[0][:shared]
    assert (suffix_ids[:, -width:] == input_ids[:, -width:]).all()
    assert (mask[:, -width:] == attention_mask[:, -width:]).all()
    for row, row_mask, rest, rest_mask, rest_positions in zip(
        input_ids, attention_mask, suffix_ids, mask[:, shared:], positions, strict=True
    ):
        assert prefix[0].tolist() + rest[rest_mask.bool()].tolist() == row[row_mask.bool()].tolist()
        assert rest_positions[rest_mask.bool()].tolist() == list(range(shared, int(row_mask.sum())))
        assert rest_mask[:-width].sum() >= 1  # a prompt token of its own predicts the first completion token


def test_only_models_that_read_positions_as_differences_are_scored_with_a_moved_padding():
    """TRL's scoring pass counts left padding in the positions: rotary models with fixed frequencies give the same
    numbers either way; a learned absolute position embedding, or rotary scaling that depends on the longest position
    of a pass, does not."""
    from transformers import GPT2Config, LlamaConfig

    assert prefix_cache.positions_are_relative(LlamaConfig())
    assert prefix_cache.positions_are_relative(LlamaConfig(rope_parameters={"rope_type": "linear", "factor": 2.0}))
    assert not prefix_cache.positions_are_relative(LlamaConfig(rope_parameters={"rope_type": "dynamic", "factor": 2.0}))
    assert not prefix_cache.positions_are_relative(GPT2Config())
