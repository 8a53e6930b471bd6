"""One model turn through TRL's own `GRPOTrainer._generate_single_turn`, whatever the backend.

This is the only module that reaches into TRL's generation internals (the attributes a turn must set: its token
budget and its stop strings). When TRL changes how generation is configured, this is the one place to change.
"""

from contextlib import contextmanager


class TurnGenerator:
    """`generate_turn(prompt_ids, max_new_tokens)` for the code-interpreter loop, on transformers, vLLM colocate and
    vLLM server alike: each call is one `_generate_single_turn` of every live trajectory together."""

    def __init__(self, trainer, stop_strings: list[str]):
        self.trainer = trainer
        self.stop_strings = list(stop_strings)

    def __call__(self, prompt_ids: list[list[int]], max_new_tokens: int):
        with self._turn_settings(max(1, max_new_tokens)):
            completion_ids, logprobs = self.trainer._generate_single_turn(
                prompt_ids, None, {}, num_generations=1  # every trajectory has its own history
            )
        pad = self.trainer._tokenizer.pad_token_id
        if pad is not None and pad not in self.trainer.eos_token_ids:
            # transformers pads the rows that stopped early (at a stop string) up to the longest row
            for k, ids in enumerate(completion_ids):
                end = len(ids)
                while end and ids[end - 1] == pad:
                    end -= 1
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
            generation.generation_kwargs = {
                **saved[1],
                "stop": self.stop_strings,
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
            generate = model.generate
            model.generate = lambda *args, **kwargs: generate(*args, tokenizer=trainer._tokenizer, **kwargs)
            try:
                yield
            finally:
                del model.generate
                config.max_new_tokens, config.stop_strings = saved
