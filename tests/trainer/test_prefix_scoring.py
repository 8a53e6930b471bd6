"""The loss's forward passes read the prompts' shared beginning once (GTPOTrainer._get_per_token_logps_and_entropies,
`_trl_compat.scoring`): the same log-probabilities, entropies and gradients as TRL's own forward pass, and TRL's own
call wherever the shortcut does not apply."""

import pytest
import torch
from datasets import Dataset
from trl import GRPOTrainer

from trl_gtpo import GTPOConfig, GTPOTrainer

pytestmark = pytest.mark.slow


def _trainer(model_path, tmp_path, peft_config=None, **overrides):
    args = GTPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=16,
        report_to="none",
        use_cpu=True,
        bf16=False,
        **overrides,
    )
    return GTPOTrainer(
        model=model_path,
        reward_funcs=lambda completions, **kw: [0.0] * len(completions),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["x"] * 4}),
        peft_config=peft_config,
    )


def _batch(seed, vocab, pad, rows=4, shared=40, width=9):
    """A batch in TRL's layout: left-padded prompts sharing `shared` tokens and own tails of different lengths (none
    when `rows` repeat one prompt, as a step's trajectories of one prompt do), right-padded completions."""
    generator = torch.Generator().manual_seed(seed)
    common = torch.randint(5, vocab, (shared,), generator=generator).tolist()
    tails = [int(n) for n in torch.randint(0, 8, (rows,), generator=generator)] if seed % 3 else [3] * rows
    tail = torch.randint(5, vocab, (8,), generator=generator).tolist()
    prompts = [
        common + (tail[:n] if seed % 3 == 0 else torch.randint(5, vocab, (n,), generator=generator).tolist())
        for n in tails
    ]
    prompt_width = max(len(p) for p in prompts)
    prompt_ids = torch.tensor([[pad] * (prompt_width - len(p)) + p for p in prompts])
    prompt_mask = torch.tensor([[0] * (prompt_width - len(p)) + [1] * len(p) for p in prompts])
    completion_ids = torch.randint(5, vocab, (rows, width), generator=generator)
    lengths = torch.randint(1, width + 1, (rows,), generator=generator)
    completion_mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    completion_ids = completion_ids.masked_fill(completion_mask == 0, pad)
    return torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1), completion_mask


@pytest.fixture
def prefix_reads(monkeypatch):
    """Every prefix the scoring path read, with whether gradients were on."""
    from trl_gtpo._trl_compat import scoring

    reads = []
    read = scoring.read_prefix

    def recording(model, prefix, rows):
        reads.append((prefix.shape[1], rows, torch.is_grad_enabled()))
        return read(model, prefix, rows)

    monkeypatch.setattr(scoring, "read_prefix", recording)
    return reads


def _scores_and_grads(trainer, model, input_ids, attention_mask, completion_mask, **kwargs):
    """(log-probs, entropies, every parameter's gradient of the summed completion log-probs) from TRL's pass and
    from GTPOTrainer's, in that order."""
    width = completion_mask.shape[1]
    results = []
    for forward in (GRPOTrainer._get_per_token_logps_and_entropies.__get__(trainer),
                    trainer._get_per_token_logps_and_entropies):
        model.zero_grad()
        logps, entropies, _ = forward(model, input_ids, attention_mask, width, compute_entropy=True, **kwargs)
        (logps * completion_mask).sum().backward()
        grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
        results.append((logps.detach(), entropies.detach(), grads))
    return results


@pytest.mark.parametrize("seed", range(6))
def test_the_shared_prefix_is_read_once_and_the_loss_forward_computes_the_same(
    tiny_model_path, tmp_path, prefix_reads, seed
):
    """Random batches (prompts of different lengths sharing 40 tokens, or one prompt repeated; right-padded
    completions): log-probabilities, entropies and every parameter's gradient equal TRL's forward pass, and the
    prefix was read once per chunk, with its gradient."""
    trainer = _trainer(tiny_model_path, tmp_path)
    model = trainer.model.train()
    input_ids, attention_mask, completion_mask = _batch(seed, model.config.vocab_size, trainer._tokenizer.pad_token_id)
    batch_size = 2 if seed % 2 else None
    expected, got = _scores_and_grads(trainer, model, input_ids, attention_mask, completion_mask, batch_size=batch_size)
    mask = completion_mask.bool()
    torch.testing.assert_close(got[0][mask], expected[0][mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1][mask], expected[1][mask], atol=1e-5, rtol=1e-5)
    for grad, expected_grad in zip(got[2], expected[2], strict=True):
        torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-4)
    assert sum(g.abs().sum() for g in expected[2]) > 0
    chunks = 2 if batch_size else 1
    assert len(prefix_reads) == chunks and all(grad for _, _, grad in prefix_reads)
    assert all(length >= 39 for length, _, _ in prefix_reads)  # a row with no tail of its own keeps its last token


def test_a_lora_adapter_gets_the_same_gradients(tiny_model_path, tmp_path, prefix_reads):
    """A PEFT LoRA model (TRL's fused head sits on its base model): the adapter's gradients equal TRL's pass."""
    from peft import LoraConfig

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    trainer = _trainer(tiny_model_path, tmp_path, peft_config=lora)
    model = trainer.model.train()
    input_ids, attention_mask, completion_mask = _batch(4, model.config.vocab_size, trainer._tokenizer.pad_token_id)
    expected, got = _scores_and_grads(trainer, model, input_ids, attention_mask, completion_mask)
    torch.testing.assert_close(got[0][completion_mask.bool()], expected[0][completion_mask.bool()], atol=1e-5, rtol=1e-5)
    trained = [(g, e) for g, e, p in zip(got[2], expected[2], model.parameters(), strict=True) if p.requires_grad]
    assert trained and all(e.abs().sum() > 0 for _, e in trained)
    for grad, expected_grad in trained:
        torch.testing.assert_close(grad, expected_grad, atol=1e-5, rtol=1e-4)
    assert len(prefix_reads) == 1


def test_without_gradients_and_in_chunks_with_and_without_a_shared_prefix(tiny_model_path, tmp_path, prefix_reads):
    """The old-policy and reference passes (no gradient, chunked by TRL's batch size): a chunk whose prompts share
    40 tokens reads them once; a chunk whose prompts share nothing is TRL's; together, TRL's numbers."""
    trainer = _trainer(tiny_model_path, tmp_path)
    model = trainer.model.eval()
    pad, vocab = trainer._tokenizer.pad_token_id, model.config.vocab_size
    shared_ids, shared_mask, completion_mask = _batch(1, vocab, pad, rows=2)
    other_ids, other_mask, other_completion = _batch(2, vocab, pad, rows=2, shared=0)
    width = completion_mask.shape[1]
    columns = max(shared_ids.shape[1], other_ids.shape[1])

    def left_pad(t, value):
        return torch.nn.functional.pad(t, (columns - t.shape[1], 0), value=value)

    input_ids = torch.cat([left_pad(shared_ids, pad), left_pad(other_ids, pad)])
    attention_mask = torch.cat([left_pad(shared_mask, 0), left_pad(other_mask, 0)])
    mask = torch.cat([completion_mask, other_completion]).bool()
    with torch.no_grad():
        expected = GRPOTrainer._get_per_token_logps_and_entropies(trainer, model, input_ids, attention_mask, width, 2)
        got = trainer._get_per_token_logps_and_entropies(model, input_ids, attention_mask, width, 2)
    torch.testing.assert_close(got[0][mask], expected[0][mask], atol=1e-5, rtol=1e-5)
    assert got[1] is None and got[2] is None
    assert prefix_reads == [(40, 2, False)]


@pytest.mark.parametrize(
    "case", ["setting_off", "aux_loss", "images", "gradient_checkpointing", "dropout", "dynamic_rope"]
)
def test_calls_the_shortcut_does_not_cover_are_trl_s(tiny_model_path, tmp_path, prefix_reads, monkeypatch, case):
    """The setting off, a call that asks for more than log-probabilities and entropies or brings images, gradient
    checkpointing (no cache), dropout at work (one draw would serve every row), positions not read as differences:
    TRL's forward pass, untouched."""
    trainer = _trainer(tiny_model_path, tmp_path, cache_prompt_prefix=case != "setting_off")
    model = trainer.model.train()
    kwargs = {"aux_loss": {"compute_aux_loss": True}, "images": {"pixel_values": torch.zeros(4, 3, 8, 8)}}.get(case, {})
    if case == "gradient_checkpointing":
        model.gradient_checkpointing_enable()
    if case == "dropout":
        model.config.attention_dropout = 0.1
    if case == "dynamic_rope":  # positions read through the longest one of each pass
        model.config.rope_parameters = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    calls = []
    monkeypatch.setattr(
        GRPOTrainer,
        "_get_per_token_logps_and_entropies",
        lambda self, *args, **kw: calls.append((args, kw)) or ("trl's", None, None),
    )
    input_ids, attention_mask, completion_mask = _batch(1, model.config.vocab_size, trainer._tokenizer.pad_token_id)
    got = trainer._get_per_token_logps_and_entropies(
        model, input_ids, attention_mask, completion_mask.shape[1], **kwargs
    )
    assert got == ("trl's", None, None) and len(calls) == 1 and calls[0][1] == kwargs
    assert prefix_reads == []


def test_training_with_the_shared_prefix_read_once_reaches_the_same_weights(
    tool_using_model_path, tmp_path, prefix_reads
):
    """Two GTPO steps on the code interpreter (sampled with one seed, prompts sharing a system prompt), with and without
    cache_prompt_prefix: the prefix is read in training and the weights come out the same. Plain SGD, so that a weight
    differs by the learning rate times its gradient's difference (Adam's normalized step turns float rounding in
    a near-zero gradient into a full step)."""
    from transformers import AutoModelForCausalLM

    initial = [p.detach().clone() for p in AutoModelForCausalLM.from_pretrained(tool_using_model_path).parameters()]
    system = "You are a careful assistant. Write Python in a fenced block, read its output, then answer the question."
    questions = ["What is 6 * 7?", "What is 7 * 6? Show your work.", "What is 6 * 7?", "Compute 6 * 7."]
    dataset = Dataset.from_dict(
        {"prompt": [[{"role": "system", "content": system}, {"role": "user", "content": q}] for q in questions]}
    )
    weights = {}
    for cache in (True, False):
        args = GTPOConfig(
            output_dir=str(tmp_path / str(cache)),
            per_device_train_batch_size=4,
            num_generations=2,
            max_completion_length=32,
            max_turns=2,
            max_steps=2,
            learning_rate=0.5,
            optim="sgd",
            report_to="none",
            use_cpu=True,
            bf16=False,
            temperature=1.0,
            cache_prompt_prefix=cache,
            seed=0,
            save_strategy="no",
            gradient_checkpointing=False,
            shuffle_dataset=False,
        )
        trainer = GTPOTrainer(
            model=tool_using_model_path,
            args=args,
            train_dataset=dataset,
            reward_funcs=lambda completions, **kw: [float(len(str(c)) % 3) for c in completions],
        )
        trainer.train()
        weights[cache] = [p.detach().clone() for p in trainer.model.parameters()]
        if cache:
            assert prefix_reads and any(grad for _, _, grad in prefix_reads)
            reads_with_cache = len(prefix_reads)
    assert len(prefix_reads) == reads_with_cache  # none with the setting off
    for cached, plain in zip(weights[True], weights[False], strict=True):
        torch.testing.assert_close(cached, plain, atol=1e-6, rtol=1e-5)
    assert max((w - p).abs().max() for w, p in zip(weights[True], initial, strict=True)) > 1e-3  # it trained


def test_a_cache_that_cannot_be_expanded_falls_back_to_trl_s_pass(tiny_model_path, tmp_path, monkeypatch):
    """When the model's cache is not plain full attention (`read_prefix` gives None), the chunk is TRL's pass."""
    from trl_gtpo._trl_compat import scoring

    trainer = _trainer(tiny_model_path, tmp_path)
    model = trainer.model.eval()
    monkeypatch.setattr(scoring, "read_prefix", lambda *args: None)
    input_ids, attention_mask, completion_mask = _batch(2, model.config.vocab_size, trainer._tokenizer.pad_token_id)
    width = completion_mask.shape[1]
    with torch.no_grad():
        expected = GRPOTrainer._get_per_token_logps_and_entropies(trainer, model, input_ids, attention_mask, width)
        got = trainer._get_per_token_logps_and_entropies(model, input_ids, attention_mask, width)
    torch.testing.assert_close(got[0], expected[0])
