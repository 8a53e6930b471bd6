"""The one door into TRL's private API: it fails loudly when TRL moves, and its fixes do what they say."""

import inspect
from types import SimpleNamespace

import pytest
import torch
from trl import GRPOTrainer

from trl_gtpo import _trl_compat as trl_private
from trl_gtpo.interpreter.loop import CodeInterpreterLoop
from trl_gtpo.testing import make_tiny_tokenizer


def test_the_installed_trl_has_every_private_method_we_use():
    trl_private.check_trl_api()


def test_a_moved_trl_signature_fails_loudly_with_the_fix(monkeypatch):
    def _calculate_rewards(self, inputs, prompts, completions):  # a parameter gone
        return None

    monkeypatch.setattr(GRPOTrainer, "_calculate_rewards", _calculate_rewards)
    with pytest.raises(RuntimeError, match=r"GRPOTrainer._calculate_rewards takes .* install trl==1.16.0"):
        trl_private.check_trl_api()
    monkeypatch.undo()
    monkeypatch.delattr(GRPOTrainer, "_tokenize_prompts")
    with pytest.raises(RuntimeError, match="needs GRPOTrainer._tokenize_prompts"):
        trl_private.check_trl_api()


def test_a_missing_trl_private_fails_gtpo_trainer_construction_naming_the_module_to_update(
    monkeypatch, tiny_model_path, tmp_path
):
    from datasets import Dataset

    from trl_gtpo import GTPOTrainer

    from helpers import QUESTION, boxed_42, make_args

    monkeypatch.delattr(GRPOTrainer, "_generate_single_turn")
    with pytest.raises(RuntimeError, match=r"GRPOTrainer\._generate_single_turn.*trl_gtpo/_trl_compat/generation\.py"):
        GTPOTrainer(
            model=tiny_model_path, reward_funcs=boxed_42, args=make_args(tmp_path),
            train_dataset=Dataset.from_dict({"prompt": [QUESTION] * 4}),
        )
    monkeypatch.undo()

    def _calculate_rewards(self, inputs, prompts, completions):  # a parameter gone
        return None

    monkeypatch.setattr(GRPOTrainer, "_calculate_rewards", _calculate_rewards)
    with pytest.raises(RuntimeError, match=r"_calculate_rewards takes .* update trl_gtpo/_trl_compat/step\.py"):
        trl_private.check_trl_api()


def test_no_other_module_imports_trl_internals():
    import pathlib

    import trl_gtpo

    root = pathlib.Path(trl_gtpo.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if "_trl_compat" in path.relative_to(root).parts:
            continue
        text = path.read_text()
        for needle in ("from trl.trainer", "from trl.generation", "trl.trainer.", "._metrics", "._logs", "._tokenizer",
                       "_generate_single_turn(", "_tokenize_prompts(", "_log_completion_extra("):
            if needle in text:
                offenders.append(f"{path.relative_to(root)}: {needle}")
    assert offenders == []


def test_capture_step_records_the_values_and_restores_the_methods():
    class Trainer:
        def _generate(self, prompts):
            return ("p", [[1, 2]], [[1, 0]], ["c"], None, {"turns": [[]]}, None, None)

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            return torch.ones(1, 1)

    trainer = Trainer()
    with trl_private.capture_step(trainer) as step:
        trainer._generate(["q"])
        trainer._calculate_rewards([{}], ["q"], ["c"], [[1, 2]])
    assert step.tool_masks == [[1, 0]] and step.extra_fields == {"turns": [[]]} and step.completion_ids == [[1, 2]]
    assert step.rewards_per_func.tolist() == [[1.0]] and step.reward_inputs[1] == ["q"]
    assert "_generate" not in vars(trainer) and "_calculate_rewards" not in vars(trainer)


def test_replace_logged_advantages_aligns_from_the_end_of_a_full_deque():
    from collections import deque

    trainer = SimpleNamespace(_logs={"advantages": deque([9.0, 9.0, 9.0], maxlen=3)})
    trl_private.replace_logged_advantages(trainer, [1.0, 2.0, 3.0, 4.0, 5.0])  # an eval batch larger than the deque
    assert list(trainer._logs["advantages"]) == [3.0, 4.0, 5.0]


def test_recount_clipped_completions_replaces_the_figures_trl_just_logged():
    from collections import defaultdict

    names = ["clipped_ratio", "mean_terminated_length", "min_terminated_length", "max_terminated_length"]
    logged = defaultdict(list, {f"completions/{name}": [0.5, 0.75] for name in names})  # TRL's, this step's last
    trainer = SimpleNamespace(
        _metrics={"train": logged}, model=SimpleNamespace(training=True),
        accelerator=SimpleNamespace(device="cpu", gather=lambda tensor: tensor),
    )
    trl_private.recount_clipped_completions(trainer, [False, True, False, False], [3, 9, 5, 4])
    assert [logged[f"completions/{name}"] for name in names] == [[0.5, 0.25], [0.5, 4.0], [0.5, 3.0], [0.5, 5.0]]
    trl_private.recount_clipped_completions(trainer, [True, True], [3, 9])  # nothing terminated: 0, as TRL logs it
    assert [logged[f"completions/{name}"][-1] for name in names] == [1.0, 0.0, 0.0, 0.0]


def test_a_generate_that_no_longer_logs_the_truncation_figures_fails_loudly(monkeypatch):
    def _generate(self, prompts):  # counts no clipped completions
        return prompts

    monkeypatch.setattr(GRPOTrainer, "_generate", _generate)
    with pytest.raises(RuntimeError, match=r"completions/clipped_ratio.*_trl_compat/logging\.py"):
        trl_private.check_trl_api()


def test_a_scoring_pass_that_no_longer_uses_the_fused_head_fails_loudly(monkeypatch):
    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False):  # scores through the full logits instead
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits[:, -logits_to_keep - 1 : -1].log_softmax(-1), None, None

    monkeypatch.setattr(GRPOTrainer, "_get_per_token_logps_and_entropies", _get_per_token_logps_and_entropies)
    with pytest.raises(RuntimeError, match=r"fused LM head.*cache_prompt_prefix=False.*_trl_compat/scoring\.py"):
        trl_private.check_trl_api()


class FakeLLM:
    def __init__(self):
        self.calls = []

    def wake_up(self, tags):
        self.calls.append(("wake_up", tuple(tags)))

    def sleep(self, level):
        self.calls.append(("sleep", level))


class FakeColocateGeneration:
    """TRL 1.16's VLLMGeneration as far as sleep mode goes: `generate` re-syncs weights when they sleep, and sleeps
    after each call (trl/generation/vllm_generation.py)."""

    mode = "colocate"

    def __init__(self):
        self.enable_sleep_mode, self._llm_weights_sleeping, self.llm, self.syncs = True, True, FakeLLM(), 0

    def sync_weights(self):
        self.syncs += 1
        self._llm_weights_sleeping = False

    def generate(self):
        if self.enable_sleep_mode and self._llm_weights_sleeping:
            self.sync_weights()
        if self.enable_sleep_mode:
            self.llm.wake_up(tags=["kv_cache"])
            self.llm.sleep(level=2)
            self._llm_weights_sleeping = True


def test_a_multi_turn_rollout_syncs_a_sleeping_vllm_engine_once():
    generation = FakeColocateGeneration()
    trainer = SimpleNamespace(use_vllm=True, vllm_generation=generation)
    for _ in range(4):  # without the fix: one sync per turn
        generation.generate()
    assert generation.syncs == 4
    generation.syncs = 0
    with trl_private.vllm_sleep_once_per_rollout(trainer):
        for _ in range(4):
            generation.generate()
    assert generation.syncs == 1
    assert generation.enable_sleep_mode and generation._llm_weights_sleeping  # asleep again, as TRL leaves it
    assert generation.llm.calls[-2:] == [("wake_up", ("kv_cache",)), ("sleep", 2)]


def test_the_turn_generator_sets_each_turns_budget_and_restores_the_settings():
    tokenizer = make_tiny_tokenizer()
    seen = {}

    class Model:
        def generate(self, **kwargs):
            raise AssertionError("not called")

    model = Model()
    config = SimpleNamespace(max_new_tokens=512, stop_strings=None)

    def generate_single_turn(prompt_ids, images, multimodal_fields, num_generations):
        seen.update(budget=config.max_new_tokens, stops=config.stop_strings, generate="generate" in vars(model))
        return [[5, 6]], None

    trainer = SimpleNamespace(
        use_vllm=False, generation_config=config, _tokenizer=tokenizer, eos_token_ids=[tokenizer.eos_token_id],
        accelerator=SimpleNamespace(unwrap_model=lambda m: m, num_processes=1), model_wrapped=model,
        _generate_single_turn=generate_single_turn,
    )
    stops = CodeInterpreterLoop(tokenizer, None, max_turns=2, max_completion_length=8).stop_strings
    ids, _ = trl_private.TurnGenerator(trainer, stops)([[1, 2, 3]], 7)
    # stop strings travel as a ready-made criterion through the wrapped generate, not as config.stop_strings
    assert ids == [[5, 6]] and seen == {"budget": 7, "stops": None, "generate": True}
    assert config.max_new_tokens == 512 and config.stop_strings is None and "generate" not in vars(model)
    assert list(inspect.signature(trl_private.TurnGenerator.__call__).parameters) == ["self", "prompt_ids", "max_new_tokens"]


def test_a_moved_overridden_method_or_loss_order_fails_loudly(monkeypatch):
    def get_off_policy_mask(advantages, per_token_logps, mask, off_policy_threshold):  # a parameter gone
        return None

    monkeypatch.setattr(GRPOTrainer, "get_off_policy_mask", staticmethod(get_off_policy_mask))
    with pytest.raises(RuntimeError, match="get_off_policy_mask takes"):
        trl_private.check_trl_api()
    monkeypatch.undo()

    def _compute_loss(self, model, inputs):  # reads the old log-probs first
        old = inputs.get("old_per_token_logps")
        return self._get_per_token_logps_and_entropies(model, old)

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", _compute_loss)
    with pytest.raises(RuntimeError, match="importance_sampling_level='turn'"):
        trl_private.check_trl_api()


def test_prompt_media_selects_the_rows_of_a_turn_and_extends_per_token_fields():
    media = trl_private.PromptMedia(
        images=["img0", "img1", "img2"],
        fields=[
            {"pixel_values": torch.full((1, 2), float(i)), "token_type_ids": [[1, 1, 0]], "image_sizes": [[i, i]]}
            for i in range(3)
        ],
        per_token={"token_type_ids"},
    )
    images, fields = media.select([2, 0], lengths=[5, 3])
    assert images == ["img2", "img0"]
    assert fields["pixel_values"].tolist() == [[2.0, 2.0], [0.0, 0.0]]
    assert fields["token_type_ids"] == [[1, 1, 0, 0, 0], [1, 1, 0]]  # the history's completion tokens are text
    assert fields["image_sizes"] == [[2, 2], [0, 0]]


class _RewardedBase:
    def reset(self, **kwargs):
        self.calls = []

    def get_turn_rewards(self):
        return [1.0] * len(self.calls)


class _Calc(_RewardedBase):
    def divide(self, a: float, b: float) -> float:
        """Divide a by b.

        Args:
            a: the dividend
            b: the divisor
        """
        self.calls.append(b)
        return a / b


def test_an_inherited_get_turn_rewards_is_hidden_from_trls_tool_listing():
    factory = trl_private.hide_environment_methods(_Calc, ["get_turn_rewards"])
    environment = factory()
    # TRL 1.16 lists an environment's tools this way (GRPOTrainer.__init__, _generate_and_score_completions)
    listed = [name for name, _ in inspect.getmembers(type(environment), predicate=inspect.isfunction)]
    assert listed == ["divide", "reset"]
    environment.reset()
    environment.divide(6, 3)
    assert environment.get_turn_rewards() == [1.0]  # still callable on the instance
    assert inspect.isfunction(_RewardedBase.__dict__["get_turn_rewards"])  # the base class is left as it was


def test_the_turn_generator_merges_the_users_vllm_stop_strings_and_restores_the_sampling_settings():
    """vLLM (colocate or server): each turn's SamplingParams stop at the loop's stop strings and the user's own
    `stop`, with the stop string kept in the output so that the loop sees where the model wrote it."""
    tokenizer = make_tiny_tokenizer()
    user = {"stop": ["DONE"], "temperature": 0.5}
    generation = SimpleNamespace(max_completion_length=512, generation_kwargs=dict(user), mode="colocate")
    seen = {}

    def generate_single_turn(prompt_ids, images, multimodal_fields, num_generations):
        seen.update(budget=generation.max_completion_length, kwargs=dict(generation.generation_kwargs))
        return [[5, 6]], [[-0.1, -0.2]]

    trainer = SimpleNamespace(
        use_vllm=True, vllm_generation=generation, _tokenizer=tokenizer, eos_token_ids=[tokenizer.eos_token_id],
        accelerator=SimpleNamespace(num_processes=1), _generate_single_turn=generate_single_turn,
    )
    stops = CodeInterpreterLoop(tokenizer, None, max_turns=2, max_completion_length=8, user_stop_strings=["DONE"]).stop_strings
    ids, logprobs = trl_private.TurnGenerator(trainer, stops)([[1, 2, 3]], 7)
    assert ids == [[5, 6]] and logprobs == [[-0.1, -0.2]]
    assert seen == {
        "budget": 7,
        "kwargs": {"stop": ["```output", "\n```\n", "DONE"], "temperature": 0.5, "include_stop_str_in_output": True},
    }
    assert generation.generation_kwargs == user and generation.max_completion_length == 512


def test_stop_padding_start_reads_a_stop_string_that_starts_in_the_history():
    tokenizer = make_tiny_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    pad = tokenizer.pad_token_id
    history = tokenizer.encode("```output\n42\n```\n")
    fence = tokenizer.encode("```\n")
    stops = ["```output", "\n```\n"]
    assert trl_private.stop_padding_start(fence + [pad], tokenizer, [pad], stops, history) == len(fence)
    # without the history the stop string is not complete: the EOS is the model's
    assert trl_private.stop_padding_start(fence + [pad], tokenizer, [pad], stops) == len(fence) + 1
    # an EOS sampled after text that ends no stop string is kept, history or not
    text = tokenizer.encode("It is 42.")
    assert trl_private.stop_padding_start(text + [pad], tokenizer, [pad], stops, history) == len(text) + 1


def test_the_completions_sample_printer_is_swapped_only_during_the_call(capsys):
    import trl.trainer.grpo_trainer as grpo_module

    original = grpo_module.print_prompt_completions_sample
    from trl_gtpo.sample_log import compact_samples

    with trl_private.compact_completions_sample(compact_samples):
        grpo_module.print_prompt_completions_sample(["p"], ["c"], {"r": [1.0]}, [0.0], 7)
    with trl_private.compact_completions_sample(compact_samples, enabled=False):  # the end-of-training summary: nothing printed
        grpo_module.print_prompt_completions_sample(["p"], ["c"], {"r": [1.0]}, [0.0], 8)
    assert grpo_module.print_prompt_completions_sample is original
    assert capsys.readouterr().out.split("\n")[:2] == ["--- step 7: 1 of 1 completions ---", "[1] r 1.00 | advantage +0.00"]


def test_the_checkpointing_deprecation_is_silenced_exactly_and_only_inside():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with trl_private.without_trl_checkpointing_warning():
            warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
            # with gradient checkpointing on, TRL toggles it around generation at every step
            warnings.warn("`gradient_checkpointing_disable` is deprecated and will be removed in v6.", FutureWarning)
            warnings.warn("`gradient_checkpointing_enable` is deprecated and will be removed in v6.", FutureWarning)
            warnings.warn("something else is deprecated", FutureWarning)
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
    assert [str(w.message).split()[0] for w in caught] == ["something", "`is_gradient_checkpointing`"]


def test_a_moved_truncation_mask_or_sample_printer_fails_loudly(monkeypatch):
    def _generate_and_score_completions(self, inputs):  # no longer reads mask_truncated_completions
        return inputs

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", _generate_and_score_completions)
    with pytest.raises(RuntimeError, match="truncation_masking_off"):
        trl_private.check_trl_api()
    monkeypatch.undo()

    def log(self, logs, start_time=None):  # prints its sample some other way
        return logs

    monkeypatch.setattr(GRPOTrainer, "log", log)
    with pytest.raises(RuntimeError, match="compact_completions_sample"):
        trl_private.check_trl_api()
