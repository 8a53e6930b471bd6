"""Exact learning curves of each turn-advantage estimator on the chain task as a tabular decision process (issue 19).

Why: the sampled benchmark (benchmarks/learning/credit.py) mixes the estimator with sampling noise, a neural policy
and Adam. Here the chain is reduced to what the estimators see, and the expected update is computed exactly:

- K steps, one logit per step: step j is right with probability sigmoid(theta_j), independently; then an answer
  turn with no choice (the benchmark's turn K+1), which carries the outcome.
- Turn rewards (weight `weight`): "prefix" (the benchmark's `intermediate_value_turn_reward`: turn j's value is the
  true j-th intermediate only when steps 1..j are all right) or "step" (turn j rewarded when step j is right).
- Outcome F = 1 when every step is right, on the answer turn.

An update is U = (1/G) sum_i sum_j A_ij grad log pi(a_ij), A_ij from the real
`trl_gtpo.advantages.turn_advantages`. Its expectation over groups is a sum over the C(2^K + G - 1, G) multisets of
trajectory types (multinomial weights), because every estimator is symmetric in the group's order: the advantages
of each multiset are computed once, and each step of the curve is then one weighted sum. The dynamics is the
mean-field (expected-update) one, theta <- theta + lr E[U], from sigmoid(theta_j) = 1 - P_ERR (the benchmark's
supervised error rate); the curve is the expected success prod_j sigmoid(theta_j) per update step.

Two more columns, at the start: E[U] per step, and the noise trace Cov[U] / |E[U]|^2 (scale-free: the groups needed
for a unit signal-to-noise ratio). A mean-field curve sees only E[U]; an optimizer that normalizes the step size
(Adam, in the sampled benchmark) sees its direction and its noise.

Rows: each estimator of `trl_gtpo.advantages.ESTIMATORS` with the turn rewards (gamma as given), "grpo-sum" (one
turn holding F + the summed turn rewards: GRPO with the same information) and "grpo" (one turn holding F).

One command, seconds on one core:

    python benchmarks/credit_curves.py [--chain_steps 2 3 4] [--group_size 8] [--lr 0.5] [--updates 40]
"""

import argparse
import itertools
import json
import math
import os

import torch

from trl_gtpo.advantages import ESTIMATORS, AdvantageSettings, TurnBatch, turn_advantages

P_ERR = 0.25
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def trajectory_types(chain_steps: int) -> torch.Tensor:
    """(2^K, K) every right (1) / wrong (0) pattern of the K steps."""
    return torch.tensor(list(itertools.product((1.0, 0.0), repeat=chain_steps)))


def turn_terms(types: torch.Tensor, rewards: str, weight) -> torch.Tensor:
    """(2^K, K + 1) the turn reward of each step turn (the answer turn gets none); `weight`: one number, or one per
    step (0: that step's turn is not rewarded)."""
    if rewards == "prefix":
        terms = torch.cumprod(types, dim=1)
    elif rewards == "step":
        terms = types.clone()
    else:
        raise ValueError(f"Unknown turn rewards {rewards!r}: use 'prefix' or 'step'.")
    return torch.nn.functional.pad(torch.as_tensor(weight, dtype=terms.dtype) * terms, (0, 1))


class ExpectedUpdate:
    """E[U] of one estimator as a function of theta, over every multiset of G trajectory types."""

    def __init__(self, chain_steps: int, group_size: int, method: str, gamma: float, rewards: str, weight=1.0,
                 outcome_weight: float = 1.0, advantage_fn=turn_advantages):
        """`advantage_fn(batch, settings)`: the advantage step under study (tests pass broken ones)."""
        types = trajectory_types(chain_steps)
        self.types = types
        groups = torch.tensor(list(itertools.combinations_with_replacement(range(len(types)), group_size)))
        counts = torch.zeros(len(groups), len(types))
        counts.scatter_add_(1, groups, torch.ones_like(groups, dtype=counts.dtype))
        self.counts = counts.double()
        self.log_coefficient = (math.lgamma(group_size + 1) - torch.lgamma(self.counts + 1).sum(dim=1))
        rows = groups.flatten()
        outcome = outcome_weight * types.prod(dim=1)
        terms = turn_terms(types, rewards, weight)
        if method in ("grpo", "grpo-sum"):
            total = outcome + (terms.sum(dim=1) if method == "grpo-sum" else 0.0)
            batch = TurnBatch(outcome=total[rows], num_turns=torch.ones(len(rows), dtype=torch.long),
                              group_size=group_size)
            table = advantage_fn(batch, AdvantageSettings(gamma=1.0, estimator="aligned"))
            advantages = table.advantages.expand(-1, chain_steps)  # GRPO: one advantage for every turn
        else:
            batch = TurnBatch(outcome=outcome[rows], num_turns=torch.full((len(rows),), chain_steps + 1),
                              group_size=group_size, turn_terms=terms[rows])
            table = advantage_fn(batch, AdvantageSettings(gamma=gamma, estimator=method))
            advantages = table.advantages[:, :chain_steps]  # the answer turn has no choice, hence no gradient
        advantages = torch.nan_to_num(advantages.double()).view(len(groups), group_size, chain_steps)
        chosen = types[groups].double()  # (groups, G, K): 1 where step j was right
        # U_j = (1/G) sum_i A_ij (b_ij - sigmoid(theta_j)) = (S_j - sigmoid(theta_j) Q_j) / G
        self.s = (advantages * chosen).sum(dim=1) / group_size
        self.q = advantages.sum(dim=1) / group_size

    def weights(self, theta: torch.Tensor) -> torch.Tensor:
        """The probability of each multiset under theta (multinomial)."""
        right = torch.sigmoid(theta)
        log_p = (self.types.double() * torch.log(right) + (1 - self.types.double()) * torch.log1p(-right)).sum(dim=1)
        return torch.exp(self.log_coefficient + self.counts @ log_p)

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        weights = self.weights(theta)
        return weights @ self.s - torch.sigmoid(theta) * (weights @ self.q)

    def noise(self, theta: torch.Tensor) -> float:
        """trace Cov[U] / |E[U]|^2: groups needed for a unit signal-to-noise ratio (scale-free, so estimators that
        differ only by a scale factor tie)."""
        weights = self.weights(theta)
        updates = self.s - torch.sigmoid(theta) * self.q
        mean = weights @ updates
        return float((weights @ updates.pow(2).sum(dim=1) - mean.pow(2).sum()) / mean.pow(2).sum())


def curve(update: ExpectedUpdate, chain_steps: int, lr: float, updates: int) -> list[float]:
    """Expected success after each of `updates` mean-field steps (index 0: before training)."""
    theta = torch.full((chain_steps,), math.log((1 - P_ERR) / P_ERR), dtype=torch.float64)
    success = [float(torch.sigmoid(theta).prod())]
    for _ in range(updates):
        theta = theta + lr * update(theta)
        success.append(float(torch.sigmoid(theta).prod()))
    return success


def methods() -> list[str]:
    return [*ESTIMATORS, "grpo-sum", "grpo"]


def run(chain_steps=(2, 3, 4), group_size=8, gamma=0.9, rewards=("prefix", "step"), weight=1.0, lr=0.5,
        updates=40) -> list[dict]:
    rows = []
    for k in chain_steps:
        for reward in rewards:
            for method in methods():
                update = ExpectedUpdate(k, group_size, method, gamma, reward, weight)
                success = curve(update, k, lr, updates)
                start = torch.full((k,), math.log((1 - P_ERR) / P_ERR), dtype=torch.float64)
                first = update(start)
                rows.append({"chain_steps": k, "rewards": reward, "method": method, "gamma": gamma,
                             "group_size": group_size, "lr": lr, "success": success,
                             "auc": sum(success[1:]) / updates, "first_update": first.tolist(),
                             "first_norm": float(first.norm()), "noise": update.noise(start)})
    return rows


def table(rows: list[dict], marks=(0, 5, 10, 20, 40)) -> str:
    marks = [m for m in marks if m < len(rows[0]["success"])]
    lines = ["| steps | turn rewards | method | " + " | ".join(f"update {m}" for m in marks) + " | mean over updates "
             "| E[U] at the start | noise at the start |", "|---|---|---|" + "---|" * (len(marks) + 3)]
    for row in rows:
        cells = " | ".join(f"{row['success'][m]:.3f}" for m in marks)
        first = ", ".join(f"{v:.3f}" for v in row["first_update"])
        lines.append(f"| {row['chain_steps']} | {row['rewards']} | {row['method']} | {cells} | {row['auc']:.3f} | "
                     f"({first}) | {row['noise']:.2f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chain_steps", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--group_size", type=int, default=8)
    parser.add_argument("--gamma", type=float, default=0.9)
    parser.add_argument("--weight", type=float, default=1.0, help="weight of the turn rewards")
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--updates", type=int, default=40)
    parser.add_argument("--out", default=os.path.join(RESULTS, "credit_curves"), help="writes OUT.md and OUT.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = run(args.chain_steps, args.group_size, args.gamma, weight=args.weight, lr=args.lr, updates=args.updates)
    header = (f"Expected success under mean-field updates theta <- theta + {args.lr} E[U]; G = {args.group_size}, "
              f"gamma = {args.gamma} (GTPO rows), turn-reward weight {args.weight}, start: every step right with "
              f"probability {1 - P_ERR}. Exact: every multiset of G trajectory types enumerated.")
    text = header + "\n\n" + table(rows)
    print(text)
    with open(args.out + ".md", "w") as file:
        file.write(text + "\n")
    with open(args.out + ".json", "w") as file:
        json.dump(rows, file, indent=1)
    print(f"\nWrote {args.out}.md and {args.out}.json")


if __name__ == "__main__":
    main()
