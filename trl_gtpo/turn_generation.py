"""One model turn through TRL's own `GRPOTrainer._generate_single_turn`, whatever the backend.

This is the only module that reaches into TRL's generation internals (the attributes a turn must set: its token
budget and its stop strings). When TRL changes how generation is configured, this is the one place to change.
"""

from contextlib import contextmanager

import torch


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
            config.max_new_tokens, config.stop_strings = max_new_tokens, self.stop_strings
            # transformers needs the tokenizer to match stop strings, and `_generate_single_turn` does not pass one.
            model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
            had_attribute, attribute = "generate" in vars(model), vars(model).get("generate")
            generate = model.generate
            model.generate = lambda *args, **kwargs: generate(*args, tokenizer=trainer._tokenizer, **kwargs)
            try:
                yield
            finally:
                if had_attribute:
                    model.generate = attribute
                else:
                    del model.generate
                config.max_new_tokens, config.stop_strings = saved


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
