"""TurnGenerator on the transformers backend: stop strings end a turn, and their tables are built once, not per turn."""

import pytest
from datasets import Dataset
from transformers.generation import stopping_criteria as transformers_stopping
from trl import GRPOConfig, GRPOTrainer

from trl_gtpo._trl_compat import TurnGenerator

from helpers import QUESTION, RecordingGTPOTrainer, make_args

pytestmark = pytest.mark.slow

STOP_STRINGS = ["```output", "\n```\n"]


@pytest.fixture
def constructions(monkeypatch):
    """Counts every StopStringCriteria built and every vocabulary table computed, by anyone (transformers included)."""
    counts = {"criteria": 0, "tables": 0}
    cls = transformers_stopping.StopStringCriteria
    init, tables = cls.__init__, cls._stop_string_create_embedding_vec

    def counting_init(self, *args, **kwargs):
        counts["criteria"] += 1
        init(self, *args, **kwargs)

    def counting_tables(*args, **kwargs):
        counts["tables"] += 1
        return tables(*args, **kwargs)

    monkeypatch.setattr(cls, "__init__", counting_init)
    monkeypatch.setattr(cls, "_stop_string_create_embedding_vec", staticmethod(counting_tables))
    return counts


def test_stop_string_tables_are_built_once_across_turns_and_steps(tool_using_model_path, tmp_path, constructions):
    args = GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2, max_completion_length=48,
        report_to="none", use_cpu=True, bf16=False, temperature=0.2,
    )
    trainer = GRPOTrainer(
        model=tool_using_model_path, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
        train_dataset=Dataset.from_dict({"prompt": ["x"] * 2}),
    )
    tokenizer = trainer.processing_class
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 6 * 7?"}], add_generation_prompt=True, tokenize=False
    )
    prompt_ids = [tokenizer.encode(prompt, add_special_tokens=False)] * 2
    texts = []
    for step in range(2):  # the rollout builds a new TurnGenerator every step
        generate_turn = TurnGenerator(trainer, STOP_STRINGS)
        for turn in range(3):
            completion_ids, _ = generate_turn(prompt_ids, 48)
            texts += [tokenizer.decode(ids) for ids in completion_ids]

    assert constructions == {"criteria": 1, "tables": 1}
    # Still a stop string criterion: the model's code block ends the turn right after its closing fence.
    assert any(text.endswith("\n```\n") and len(text) < 60 for text in texts), texts
    assert trainer.generation_config.stop_strings is None  # the turn's settings were restored


class StoppingScript:
    """`model.generate` as transformers runs it, on scripted tokens: each row's continuation (chosen by `script` from
    the row's text) comes one token at a time, the stopping criteria are asked after each, and a finished row is
    padded with the pad token while the others go on."""

    def __init__(self, model, tokenizer, script):
        self.tokenizer, self.script = tokenizer, script
        model.generate = self

    def __call__(self, input_ids, attention_mask=None, generation_config=None, stopping_criteria=None, **kwargs):
        import torch

        tokenizer = self.tokenizer
        rows = []
        for text in tokenizer.batch_decode(input_ids, skip_special_tokens=False):
            continuation = self.script(text)
            ids = tokenizer.encode(continuation.replace("<EOS>", ""), add_special_tokens=False)
            rows.append(ids + [tokenizer.eos_token_id] if continuation.endswith("<EOS>") else ids)
        done = [False] * len(rows)
        for step in range(generation_config.max_new_tokens):
            column = [tokenizer.pad_token_id if done[i] or step >= len(ids) else ids[step] for i, ids in enumerate(rows)]
            input_ids = torch.cat([input_ids, torch.tensor(column).unsqueeze(1)], dim=1)
            stopped = stopping_criteria(input_ids, None) if stopping_criteria is not None else [False] * len(rows)
            done = [d or token == tokenizer.eos_token_id or bool(s) for d, token, s in zip(done, column, stopped)]
            if all(done):
                break
        return input_ids


def _pad_is_eos_trainer(model_path, tmp_path, **generation_kwargs):
    """A GRPOTrainer on the transformers backend whose tokenizer pads with its EOS token (as SmolLM2 and Qwen do)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.pad_token = tokenizer.eos_token
    args = GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2, max_completion_length=64,
        report_to="none", use_cpu=True, bf16=False, generation_kwargs=generation_kwargs or None,
    )
    return GRPOTrainer(
        model=model_path, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
        processing_class=tokenizer, train_dataset=Dataset.from_dict({"prompt": ["x"] * 2}),
    )


HISTORY = "What is 6 * 7?\n```python\nprint(6 * 7)\n```\n```output\n42\n```\n"  # ends right after a tool output


def test_a_pad_after_a_stop_string_that_starts_in_the_history_is_not_read_as_eos(tiny_model_path, tmp_path):
    """The turn opens with a fence right after the tool output: "\\n```\\n" is matched across the history boundary
    and the row stops while the other row goes on; its pad (= EOS) was never sampled, so it is cut, not kept as the
    model's EOS (which the loop would read as the end of the trajectory, and TRL would train)."""
    trainer = _pad_is_eos_trainer(tiny_model_path, tmp_path)
    tokenizer = trainer.processing_class
    StoppingScript(
        trainer.model, tokenizer,
        lambda text: "```\nSo it is 42.<EOS>" if text.endswith("```\n") else "Let me think about it for a while.<EOS>",
    )
    histories = [tokenizer.encode(HISTORY), tokenizer.encode("What is 6 * 7?\n")]
    ids, _ = TurnGenerator(trainer, STOP_STRINGS)(histories, 48)
    assert tokenizer.decode(ids[0]) == "```\n"  # stopped at the stop string, nothing after it
    assert ids[1][-1] == tokenizer.eos_token_id  # a sampled EOS stays
    assert tokenizer.decode(ids[1]) == "Let me think about it for a while.<|im_end|>"


def test_a_users_stop_strings_stop_every_turn_on_transformers(tiny_model_path, tmp_path):
    """`generation_kwargs={"stop_strings": [...]}` reaches the turn's generation (it used to be replaced by None)."""
    trainer = _pad_is_eos_trainer(tiny_model_path, tmp_path, stop_strings=["DONE"])
    tokenizer = trainer.processing_class
    StoppingScript(
        trainer.model, tokenizer,
        lambda text: "It is 42. DONE and more<EOS>" if "6" in text else "Let me think about it for a long while.<EOS>",
    )
    generate_turn = TurnGenerator(trainer, STOP_STRINGS)
    assert generate_turn.stop_strings == [*STOP_STRINGS, "DONE"]
    ids, _ = generate_turn([tokenizer.encode("What is 6 * 7?\n"), tokenizer.encode("Why?\n")], 48)
    assert tokenizer.decode(ids[0]) == "It is 42. DONE"  # stopped there; its pad is not an EOS
    assert trainer.generation_config.stop_strings == ["DONE"]  # the user's setting is back after the turn


def test_a_users_stop_string_ends_gtpo_trajectories_which_stay_trained(tiny_model_path, tmp_path):
    """End to end on transformers: the code interpreter's trajectory ends where the model wrote the user's stop
    string (stop reason "stop_string", nothing after it), and `mask_truncated_completions` does not drop it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    tokenizer.pad_token = tokenizer.eos_token
    stops = []

    def reward(completions, **kwargs):
        stops.extend(kwargs["stop_reason"])
        return [0.0] * len(completions)

    args = make_args(tmp_path, max_steps=1, generation_kwargs={"stop_strings": ["DONE"]}, mask_truncated_completions=True)
    trainer = RecordingGTPOTrainer(
        model=tiny_model_path, reward_funcs=reward, args=args, processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"prompt": [QUESTION] * 4}),
    )
    StoppingScript(trainer.model, tokenizer, lambda text: "It is 42. DONE and then more text<EOS>")
    trainer.train()
    record = trainer.records[0]
    assert stops == ["stop_string"] * 4
    assert [tokenizer.decode(ids) for ids in record["completion_ids"]] == ["It is 42. DONE"] * 4
    assert (record["mask"].sum(dim=1) == record["unmasked"].sum(dim=1)).all()  # trained, not masked as truncated


@pytest.mark.parametrize("pad_to_multiple_of", [None, 8])
def test_a_cached_prompt_prefix_generates_the_same_turns_in_training(
    tool_using_model_path, tmp_path, monkeypatch, pad_to_multiple_of
):
    """The rollout's TurnGenerator reads the histories' shared beginning once (GTPOConfig.cache_prompt_prefix, on by
    default) and greedy turns are token for token those of TRL's own left-padded generate, over two turns of rows of
    different lengths (TRL's padding to a multiple included); the second turn reuses the first turn's prefix."""
    from trl_gtpo import prefix_cache

    args = GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=3, num_generations=3, max_completion_length=40,
        report_to="none", use_cpu=True, bf16=False, generation_kwargs={"do_sample": False},
        pad_to_multiple_of=pad_to_multiple_of,
    )
    trainer = GRPOTrainer(
        model=tool_using_model_path, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
        train_dataset=Dataset.from_dict({"prompt": ["x"] * 3}),
    )
    tokenizer = trainer.processing_class
    system = "You are a careful assistant. Write Python in a fenced block, read its output, then answer."
    histories = [
        tokenizer.encode(
            tokenizer.apply_chat_template(
                [{"role": "system", "content": system}, {"role": "user", "content": question}],
                add_generation_prompt=True, tokenize=False,
            ),
            add_special_tokens=False,
        )
        for question in ("What is 6 * 7?", "What is 6 * 7? Show your work.", "What is 7 * 6?")
    ]
    computed = []
    expanded = prefix_cache.PrefixCache.expanded

    def counting(self, prefix, rows):
        computed.append(self.key != tuple(prefix))
        past = expanded(self, prefix, rows)
        assert past is not None  # the cache is really used, not a fallback to left padding
        return past

    monkeypatch.setattr(prefix_cache.PrefixCache, "expanded", counting)
    turns = {}
    for cache in (True, False):
        generate_turn = TurnGenerator(trainer, STOP_STRINGS, cache_prompt_prefix=cache)
        first, _ = generate_turn(histories, 40)
        second, _ = generate_turn([h + ids for h, ids in zip(histories, first, strict=True)], 40)
        turns[cache] = (first, second)
    assert computed == [True, False]  # read once, reused by the second turn; never with the cache off
    assert turns[True] == turns[False]
    assert len({tuple(ids) for ids in turns[True][0]}) >= 2  # rows of their own, each compared


def test_the_rollout_hands_its_config_s_cache_setting_to_every_turn(tool_using_model_path, tmp_path, monkeypatch):
    """CodeInterpreterRollout builds each rollout's TurnGenerator with GTPOConfig.cache_prompt_prefix."""
    from trl_gtpo import GTPOConfig, _trl_compat
    from trl_gtpo.interpreter.rollout import CodeInterpreterRollout

    seen = []

    class Recording(TurnGenerator):
        def __init__(self, *args, cache_prompt_prefix=True, **kwargs):
            super().__init__(*args, cache_prompt_prefix=cache_prompt_prefix, **kwargs)
            seen.append((cache_prompt_prefix, self.cache_prompt_prefix))

    monkeypatch.setattr(_trl_compat, "TurnGenerator", Recording)
    common = dict(output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2, max_completion_length=8,
                  report_to="none", use_cpu=True, bf16=False)
    # Configs first: building a TrainingArguments resets the accelerator state a built trainer uses.
    rollouts = [CodeInterpreterRollout(GTPOConfig(**common, max_turns=1, cache_prompt_prefix=c)) for c in (False, True)]
    trainer = GRPOTrainer(
        model=tool_using_model_path, reward_funcs=lambda completions, **kw: [0.0] * len(completions),
        args=GRPOConfig(**common), train_dataset=Dataset.from_dict({"prompt": ["x"] * 2}),
    )
    for rollout in rollouts:
        rollout([[{"role": "user", "content": "What is 6 * 7?"}]] * 2, trainer)
        rollout.close()
    assert seen == [(False, False), (True, True)]  # (the setting, whether the generator caches)


@pytest.mark.parametrize(
    ("sharding", "cached"), [(None, True), ("fsdp", False), ("zero3", False), ("zero2", True)]
)
def test_sharded_parameters_are_never_read_for_a_prefix(sharding, cached):
    """Under FSDP or ZeRO-3 a forward pass is a collective (ZeRO-3's hooks stay on during generation), so a prefix read
    made by only some processes would hang the others (it did, in the two-process ZeRO-3 launch test): no cache."""
    from types import SimpleNamespace

    from trl_gtpo.testing import make_tiny_model, make_tiny_tokenizer

    stage = {"zero3": 3, "zero2": 2}.get(sharding)
    trainer = SimpleNamespace(
        use_vllm=False, _is_vlm=False, _tokenizer=SimpleNamespace(pad_token_id=0),
        generation_config=SimpleNamespace(stop_strings=None), is_fsdp_enabled=sharding == "fsdp",
        is_deepspeed_enabled=stage is not None,
        accelerator=SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=stage))),
    )
    model = make_tiny_model(make_tiny_tokenizer()).eval()
    kwargs = {"input_ids": None, "attention_mask": None}
    assert TurnGenerator(trainer, STOP_STRINGS)._can_cache_prefix(model, (), kwargs) is cached
