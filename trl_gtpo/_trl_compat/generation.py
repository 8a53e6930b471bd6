"""One model turn through `GRPOTrainer._generate_single_turn` on every backend: per-turn budget, stop strings, the
prompts' images, and the padding transformers adds after a stop string."""

import weakref
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import StoppingCriteriaList

from ..prefix_cache import PrefixCache, can_cache_prefix, generate_from_shared_prefix


@dataclass
class PromptMedia:
    """The images of a rollout's prompts and what the processor made of them, one prompt at a time, so that a
    generation turn holding any subset of the trajectories can hand `_generate_single_turn` theirs.

    `images[i]`: prompt i's images (None: none). `fields[i]`: `GRPOTrainer._tokenize_prompts([prompt_i])`'s
    multimodal fields (pixel_values, image_grid_thw, ...). `per_token`: the fields with one value per prompt token
    (e.g. token_type_ids), which a turn's longer history extends with 0 (text). `rows()`: the prompt index of each
    history of the current turn (the loop's `rows`).
    """

    images: list
    fields: list[dict]
    per_token: set
    rows: object = None

    def select(self, rows: list[int], lengths: list[int]) -> tuple[list, dict]:
        """(images, multimodal_fields) of the histories `rows` (prompt indices) of token lengths `lengths`, merged as
        `GRPOTrainer._tokenize_prompts` merges per-prompt fields (its environment path): tensors concatenated over
        images/patches, lists concatenated over prompts."""
        images = [self.images[r] for r in rows]
        fields = {}
        for key in dict.fromkeys(k for r in rows for k in self.fields[r]):
            values = [self.fields[r][key] for r in rows if key in self.fields[r]]
            if isinstance(values[0], torch.Tensor):
                fields[key] = torch.cat(values)
            elif key in self.per_token:
                fields[key] = [list(v[0]) + [0] * (n - len(v[0])) for v, n in zip(values, lengths, strict=True)]
            else:
                fields[key] = [row for value in values for row in value]
        return images, fields


def prompt_media(trainer, prompts: list) -> tuple[list[list[int]], PromptMedia | None]:
    """Tokenize `prompts` as `GRPOTrainer._tokenize_prompts` does; when they hold images, one prompt at a time, with
    each prompt's images and multimodal fields kept for the generation turns (None without images)."""
    prompt_ids, images, _ = trainer._tokenize_prompts(prompts)
    if not images:
        return [list(ids) for ids in prompt_ids], None
    prompt_ids, fields = [], []
    for prompt in prompts:
        ids, _, prompt_fields = trainer._tokenize_prompts([prompt])
        prompt_ids.append(list(ids[0]))
        fields.append(prompt_fields)
    per_token = {
        key
        for key in dict.fromkeys(k for f in fields for k in f)
        if all(
            isinstance(f.get(key), list) and len(f[key]) == 1
            and isinstance(f[key][0], list) and len(f[key][0]) == len(ids)
            for f, ids in zip(fields, prompt_ids)
            if key in f
        )
    }
    return prompt_ids, PromptMedia(images, fields, per_token)


class TurnGenerator:
    """`generate_turn(prompt_ids, max_new_tokens)` for the code-interpreter loop, on transformers, vLLM colocate and
    vLLM server alike: each call is one `_generate_single_turn` of every live trajectory together, with their prompts'
    images when there are any (`media`, whose `rows()` says which prompt each history continues)."""

    def __init__(
        self, trainer, stop_strings: list[str], media: PromptMedia | None = None, cache_prompt_prefix: bool = True
    ):
        self.trainer = trainer
        # The turn's stop strings, then the user's own (`generation_kwargs`: `stop` on vLLM, `stop_strings` on
        # transformers): every turn stops at all of them, on both backends.
        self.stop_strings = list(dict.fromkeys([*stop_strings, *_user_stop_strings(trainer)]))
        self.media = media
        # transformers only: the histories' shared beginning is read once per rollout (`trl_gtpo.prefix_cache`); one
        # generator serves one rollout, so the weights do not change under its cache (built at the first turn).
        self.cache_prompt_prefix = cache_prompt_prefix and not trainer.use_vllm
        self._prefix_cache = None

    def __call__(self, prompt_ids: list[list[int]], max_new_tokens: int):
        count = len(prompt_ids)
        rows = list(self.media.rows()) if self.media is not None else None
        if _one_request_for_all_processes(self.trainer):
            # TRL sends every process's prompts in one request with the main process's max_tokens, and gives process
            # k the results [k*n:(k+1)*n]: every process must send as many prompts, with the same budget. Pad with
            # copies of a prompt and take the largest budget (the loop cuts each trajectory to its own).
            sizes = self.trainer.accelerator.gather(
                torch.tensor([[count, max_new_tokens]], device=self.trainer.accelerator.device)
            )
            width, max_new_tokens = int(sizes[:, 0].max()), int(sizes[:, 1].max())
            prompt_ids = list(prompt_ids) + [prompt_ids[0]] * (width - count)
            rows = rows + [rows[0]] * (width - count) if rows is not None else None
        images, fields = None, {}
        if rows is not None:  # a VLM prompt's images reach every turn: its image tokens are in each history
            images, fields = self.media.select(rows, [len(ids) for ids in prompt_ids])
        with self._turn_settings(max(1, max_new_tokens)):
            completion_ids, logprobs = self.trainer._generate_single_turn(
                prompt_ids, images, fields, num_generations=1  # every trajectory has its own history
            )
        completion_ids = completion_ids[:count]
        logprobs = logprobs[:count] if logprobs is not None else None
        if not self.trainer.use_vllm:
            tokenizer = self.trainer._tokenizer
            for k, ids in enumerate(completion_ids):
                history = prompt_ids[k]
                end = stop_padding_start(ids, tokenizer, self.trainer.eos_token_ids, self.stop_strings, history)
                completion_ids[k] = ids[:end]
                if logprobs is not None:
                    logprobs[k] = logprobs[k][:end]
        return completion_ids, logprobs

    @contextmanager
    def _turn_settings(self, max_new_tokens: int):
        trainer = self.trainer
        if trainer.use_vllm:
            generation = trainer.vllm_generation
            saved = generation.max_completion_length, generation.generation_kwargs
            generation.max_completion_length = max_new_tokens
            generation.generation_kwargs = {**saved[1], "stop": self.stop_strings, "include_stop_str_in_output": True}
            try:
                yield
            finally:
                generation.max_completion_length, generation.generation_kwargs = saved
        else:
            config = trainer.generation_config
            saved = config.max_new_tokens, config.stop_strings
            # Stop strings go in as a ready-made criterion, not as `config.stop_strings`: from those, transformers
            # would rebuild its tables on every call (see `stop_string_criteria`).
            config.max_new_tokens, config.stop_strings = max_new_tokens, None
            criteria = stop_string_criteria(trainer._tokenizer, self.stop_strings)
            model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
            had_attribute, attribute = "generate" in vars(model), vars(model).get("generate")
            generate = model.generate

            def generate_with_stop_strings(*args, stopping_criteria=None, **kwargs):
                stopping_criteria = StoppingCriteriaList([*(stopping_criteria or []), criteria])
                if self._can_cache_prefix(model, args, kwargs):
                    # `_generate_single_turn` left-pads the histories; they are laid out again around their shared
                    # beginning, as wide as before, so its `[:, prompt_length:]` still cuts at the new tokens.
                    input_ids, attention_mask = kwargs.pop("input_ids"), kwargs.pop("attention_mask")
                    rows = [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask, strict=True)]
                    if self._prefix_cache is None or self._prefix_cache.model is not model:
                        self._prefix_cache = PrefixCache(model)
                    return generate_from_shared_prefix(
                        generate, rows, input_ids.shape[1], trainer._tokenizer.pad_token_id, cache=self._prefix_cache,
                        device=model.device, stopping_criteria=stopping_criteria, **kwargs
                    )
                return generate(*args, stopping_criteria=stopping_criteria, **kwargs)

            model.generate = generate_with_stop_strings
            try:
                yield
            finally:
                if had_attribute:
                    model.generate = attribute
                else:
                    del model.generate
                config.max_new_tokens, config.stop_strings = saved

    def _can_cache_prefix(self, model, args, kwargs) -> bool:
        """Text-only histories (no image tensors beside the ids, not a VLM, whose position ids are its own), a model
        and generation config that compute the same with the prefix cached (`prefix_cache.can_cache_prefix`), and
        not sharded parameters: under FSDP or DeepSpeed ZeRO-3 every forward pass is a collective (ZeRO-3's hooks stay
        on during generation even with `ds3_gather_for_generation`), and a prefix read that only some processes make
        would hang the others."""
        trainer = self.trainer
        return (
            self.cache_prompt_prefix
            and not args
            and set(kwargs) <= {"input_ids", "attention_mask", "generation_config"}
            and not getattr(trainer, "_is_vlm", False)
            and trainer._tokenizer.pad_token_id is not None
            and not getattr(trainer, "is_fsdp_enabled", False)
            and _zero_stage(trainer) != 3
            and can_cache_prefix(model, kwargs.get("generation_config"))
        )


def _zero_stage(trainer) -> int | None:
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None) if trainer.is_deepspeed_enabled else None
    return getattr(plugin, "zero_stage", None)


def _user_stop_strings(trainer) -> list[str]:
    """The stop strings the trainer's generation already has: vLLM's `generation_kwargs["stop"]`
    (`VLLMGeneration.generation_kwargs`), transformers' `GenerationConfig.stop_strings` (from `generation_kwargs`)."""
    if trainer.use_vllm:
        stops = (getattr(trainer.vllm_generation, "generation_kwargs", None) or {}).get("stop")
    else:
        stops = getattr(trainer.generation_config, "stop_strings", None)
    stops = stops or []
    return [stops] if isinstance(stops, str) else list(stops)


_STOP_STRING_CRITERIA = weakref.WeakKeyDictionary()  # tokenizer -> {(len(tokenizer), stop strings): criterion}


def stop_string_criteria(tokenizer, stop_strings: list[str]):
    """One transformers `StopStringCriteria` per tokenizer and stop strings, built once and reused by every turn.

    Why: transformers builds a `StopStringCriteria` on every `generate` call that has `stop_strings`, and its
    module-level table cache (`STOP_STRING_EMBEDDING_CACHE`) is keyed by `tuple(tokenizer.get_vocab().keys())`. A fast
    tokenizer's `get_vocab()` comes from a Rust hash map whose order changes from call to call, so that key never
    repeats: every turn re-cleans the whole vocabulary (about 1.2 s with a 151k-token Qwen vocabulary, checked with
    transformers 5.23) and the cache fills with dead entries. The criterion itself is stateless between calls.
    Keyed on the tokenizer object and its length, so a tokenizer given new tokens gets a new criterion.
    """
    from transformers.generation.stopping_criteria import StopStringCriteria

    by_strings = _STOP_STRING_CRITERIA.setdefault(tokenizer, {})
    size = len(tokenizer)
    key = (size, tuple(stop_strings))
    if key not in by_strings:
        for stale in [old for old in by_strings if old[0] != size]:  # built before tokens were added: never used again
            del by_strings[stale]
        by_strings[key] = StopStringCriteria(tokenizer, list(stop_strings))
    return by_strings[key]


def stop_padding_start(
    ids: list[int], tokenizer, eos_token_ids, stop_strings: list[str], history: Sequence[int] = ()
) -> int:
    """Length of `ids` without the padding transformers adds after a row that stopped at a stop string.

    transformers pads such a row up to the longest row of the batch, and TRL keeps everything up to the first EOS, so
    when the pad token is an EOS token (SmolLM2, Qwen2.5, any tokenizer without a pad token) the row ends with a pad
    the model never sampled. It is padding when a stop string ends within the last token before it: generation
    stopped there, so no EOS can have been sampled after it. transformers' `StopStringCriteria` matches over the
    whole sequence, so a stop string may start in `history` (the tokens the turn continues: "\n```\n" when a turn
    opens with a fence right after a tool output ending in a newline); its last tokens are read with the new ones.
    """
    pad = tokenizer.pad_token_id
    end = len(ids)
    if pad is None:
        return end
    if pad not in eos_token_ids:
        while end and ids[end - 1] == pad:
            end -= 1
        return end
    if end >= 2 and ids[end - 1] == pad:
        tail = list(history[-max((len(stop) for stop in stop_strings), default=0) :]) if stop_strings else []
        before = tokenizer.decode(tail + list(ids[: end - 1]), skip_special_tokens=False)
        earlier = tokenizer.decode(tail + list(ids[: end - 2]), skip_special_tokens=False)
        # a stop string that ends past `earlier`, i.e. within the last generated token
        if any(before.find(stop, max(0, len(earlier) - len(stop) + 1)) != -1 for stop in stop_strings):
            return end - 1
    return end


def _one_request_for_all_processes(trainer) -> bool:
    """vLLM server mode, and colocate with tensor parallelism, batch the prompts of several processes together."""
    if not trainer.use_vllm or trainer.accelerator.num_processes == 1:
        return False
    generation = trainer.vllm_generation
    return generation.mode == "server" or generation.tensor_parallel_size > 1
