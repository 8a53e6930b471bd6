"""Exact bias and variance of each turn-advantage estimator on two toy decision processes: a tool-use process and a
chain where each turn's own choice earns its own turn reward (see `run_chain`).

Why a toy: on a real model the expected update of an estimator cannot be computed, only sampled, and the sampling
noise hides biases of a few percent. Here every trajectory and every ordered group of G trajectories is enumerated,
so E[update] and its covariance are exact sums (up to float32 rounding inside `turn_advantages`).

The process (at most 3 model turns, a tabular softmax policy with 2 logits per state):

    turn 1, state "start":  answer directly  -> correct w.p. 0.3, and the format penalty (a trajectory without a
                                                 tool call gets it on its final turn)
                            call the tool    -> "ok" w.p. 0.6, "error" w.p. 0.3, "malformed" w.p. 0.1 (penalty on
                                                 this turn; leads to the same state as "error")
    turn 2, state "ok" or "err": answer      -> correct w.p. 0.9 (ok) / 0.2 (err)
                                 call again  -> the tool again, as above
    turn 3 (the last allowed turn): a forced answer (no choice, so no gradient), correct as in turn 2.

Rewards are GTPO's: outcome 1/0 on the last turn, format penalty -0.1 as above, and discount gamma. The objective is
J = E[R_1] = E[sum_j gamma^(j-1) r_j]; its exact gradient comes from autograd through the enumerated probabilities.
Each estimator's update of one group is U = (1/G) sum_i sum_j A_ij grad log pi(a_ij | s_ij), the A_ij from the
real `trl_gtpo.advantages.turn_advantages`. A "loo_ungated" row is a reference written out here: the return R_ij
minus the mean first-turn return of the other trajectories (RLOO), no scaling. A "grpo" row gives every turn its trajectory's GRPO advantage (the
undiscounted total reward normalized in the group), as TRL's GRPOTrainer does with the same rollout.

Columns:
    cos        cosine of E[U] to grad J (1: no directional bias)
    |EU|/|g|-1 relative error of the norm (meaningful for scale "none" only: a std division rescales by design)
    sign       fraction of the 6 coordinates whose sign matches grad J
    cos_R      cosine to g_R = E[sum_j R_j grad log pi_j], the gradient the R_ij-weighted estimators aim at: it lacks
               the gamma^(j-1) state weighting of the true gradient (Thomas, 2014), so with gamma < 1 even an
               unbiased-baseline estimator is biased with respect to grad J; with gamma = 1 the two coincide
    |EU|/|gR|-1 relative error of the norm against g_R
    trace      trace of Cov[U] (the per-group variance)
    noise      trace / |E[U]|^2: scale-free noise-to-signal (groups needed for a unit signal-to-noise ratio)

One command, about two minutes on one core (both toys):

    python benchmarks/estimator_bias.py [--group_sizes 2 3 4] [--gammas 0.9 1.0] [--json out.json]

The scale "batch" is left out: with one prompt per batch it equals "group".
"""

import argparse
import itertools
import json
import math
from dataclasses import dataclass

import torch

from trl_gtpo.advantages import AdvantageSettings, TurnBatch, turn_advantages

STATES = ("start", "ok", "err")
ANSWER, TOOL = 0, 1
P_DIRECT = 0.3
TOOL_OUTCOMES = (("ok", 0.6, False), ("err", 0.3, False), ("err", 0.1, True))  # (next state, prob, malformed)
P_CORRECT = {"ok": 0.9, "err": 0.2}
FORMAT_PENALTY = -0.1
MAX_TURNS = 3
# Logits of the evaluation point: asymmetric so no coordinate of the gradient vanishes by symmetry.
THETA = torch.tensor([[0.2, -0.1], [0.4, -0.3], [-0.2, 0.1]], dtype=torch.float64)


@dataclass(frozen=True)
class Trajectory:
    """One complete trajectory: the (state, action) of each turn (action None: forced), the environment's probability
    of its random outcomes, the format terms t_j of each turn and the outcome (1 correct, 0 not)."""

    choices: tuple[tuple[int, int | None], ...]
    env_prob: float
    terms: tuple[float, ...]
    outcome: float

    @property
    def num_turns(self) -> int:
        return len(self.choices)


def enumerate_trajectories() -> list[Trajectory]:
    """Every trajectory of the process (26 of them)."""
    out = []

    def answer(state: str, choices, env_prob, terms, used_tool: bool):
        for correct in (1.0, 0.0):
            p_correct = P_DIRECT if state == "start" else P_CORRECT[state]
            p = p_correct if correct else 1.0 - p_correct
            final_terms = list(terms)
            if not used_tool:
                final_terms[-1] += FORMAT_PENALTY
            out.append(Trajectory(tuple(choices), env_prob * p, tuple(final_terms), correct))

    def visit(state: str, turn: int, choices, env_prob, terms, used_tool: bool):
        if turn == MAX_TURNS:  # the last allowed turn: a forced answer
            answer(state, choices + [(STATES.index(state), None)], env_prob, terms + [0.0], used_tool)
            return
        s = STATES.index(state)
        answer(state, choices + [(s, ANSWER)], env_prob, terms + [0.0], used_tool)
        for next_state, p, malformed in TOOL_OUTCOMES:
            visit(next_state, turn + 1, choices + [(s, TOOL)], env_prob * p, terms + [FORMAT_PENALTY * malformed], True)

    visit("start", 1, [], 1.0, [], False)
    return out


def policy_probs(trajectories: list[Trajectory], theta: torch.Tensor) -> torch.Tensor:
    """P(tau; theta) of every trajectory (differentiable in theta)."""
    log_pi = torch.log_softmax(theta, dim=1)
    probs = []
    for t in trajectories:
        logp = sum((log_pi[s, a] for s, a in t.choices if a is not None), torch.zeros((), dtype=theta.dtype))
        probs.append(t.env_prob * torch.exp(logp))
    return torch.stack(probs)


def scores(trajectories: list[Trajectory], theta: torch.Tensor) -> torch.Tensor:
    """(M, MAX_TURNS, 6): grad_theta log pi(a_j | s_j) of each turn (0 for forced turns and padding)."""
    pi = torch.softmax(theta, dim=1)
    out = torch.zeros(len(trajectories), MAX_TURNS, *theta.shape, dtype=theta.dtype)
    for i, t in enumerate(trajectories):
        for j, (s, a) in enumerate(t.choices):
            if a is not None:
                out[i, j, s] = -pi[s]
                out[i, j, s, a] += 1.0
    return out.flatten(2)


def true_gradients(trajectories: list[Trajectory], theta: torch.Tensor, gamma: float):
    """grad J of J = E[sum_j gamma^(j-1) r_j] (autograd), and g_R = E[sum_j R_j grad log pi_j]."""
    theta = theta.clone().requires_grad_(True)
    probs = policy_probs(trajectories, theta)
    rewards, returns = reward_tables(trajectories, gamma)
    discounted = torch.nan_to_num(rewards * gamma ** torch.arange(MAX_TURNS, dtype=rewards.dtype)).sum(1)
    (probs * discounted).sum().backward()
    g_r = torch.einsum("m,mj,mjp->p", probs.detach(), torch.nan_to_num(returns), scores(trajectories, theta.detach()))
    return theta.grad.flatten(), g_r, probs.detach()


def reward_tables(trajectories: list[Trajectory], gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, MAX_TURNS) r_j and R_j of every trajectory, from the advantages module's own reward and return code."""
    settings = AdvantageSettings(gamma=gamma, estimator="pooled", scale="none")
    table = turn_advantages(as_batch(trajectories, list(range(len(trajectories))), 1), settings)
    return table.rewards.double(), table.returns.double()


def as_batch(trajectories: list[Trajectory], rows, group_size: int) -> TurnBatch:
    """The TurnBatch of the trajectories `rows` (indices), in order: consecutive `group_size` rows form a group."""
    rows = torch.as_tensor(rows)
    outcome = torch.tensor([t.outcome for t in trajectories])
    num_turns = torch.tensor([t.num_turns for t in trajectories])
    terms = torch.tensor([list(t.terms) + [0.0] * (MAX_TURNS - t.num_turns) for t in trajectories])
    return TurnBatch(outcome=outcome[rows], num_turns=num_turns[rows], group_size=group_size, turn_terms=terms[rows])


def all_groups(num_trajectories: int, group_size: int) -> torch.Tensor:
    """(M^G, G) every ordered group of trajectory indices."""
    grids = torch.meshgrid(*[torch.arange(num_trajectories)] * group_size, indexing="ij")
    return torch.stack([g.flatten() for g in grids], dim=1)


def group_updates(trajectories, groups: torch.Tensor, score: torch.Tensor, estimator: str, scale: str, gamma: float):
    """(num_groups, 6) U of every group under one estimator (or "grpo")."""
    n_groups, group_size = groups.shape
    rows = groups.flatten()
    if estimator == "loo_ungated":
        # Reference: R_ij minus the mean first-turn return of the other trajectories, no scaling: its expectation is
        # exactly g_R (the baseline does not depend on the trajectory's own actions).
        settings = AdvantageSettings(gamma=gamma, estimator="pooled", scale="none")
        returns = turn_advantages(as_batch(trajectories, rows, group_size), settings).returns.double()
        first = returns[:, 0].view(n_groups, group_size)
        baseline = (first.sum(dim=1, keepdim=True) - first) / (group_size - 1)
        advantages = torch.nn.functional.pad(returns - baseline.reshape(-1, 1), (0, MAX_TURNS - returns.shape[1]))
    elif estimator == "grpo":
        # GRPO: one advantage per trajectory from its undiscounted total reward, given to every turn's tokens.
        totals = torch.tensor([t.outcome + sum(t.terms) for t in trajectories])[rows]
        batch = TurnBatch(outcome=totals, num_turns=torch.ones_like(rows), group_size=group_size)
        table = turn_advantages(batch, AdvantageSettings(gamma=1.0, estimator="aligned", scale=scale))
        advantages = table.advantages.double().expand(-1, MAX_TURNS)
    else:
        settings = AdvantageSettings(gamma=gamma, estimator=estimator, scale=scale)
        advantages = turn_advantages(as_batch(trajectories, rows, group_size), settings).advantages.double()
        advantages = torch.nn.functional.pad(advantages, (0, MAX_TURNS - advantages.shape[1]))
    advantages = torch.nan_to_num(advantages)  # past the last turn: no turn (its score is 0 anyway)
    per_row = torch.einsum("rj,rjp->rp", advantages, score[rows])
    return per_row.view(n_groups, group_size, -1).mean(dim=1)


def moments(updates: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, float]:
    """E[U] and trace Cov[U] under the group probabilities `weights`."""
    mean = weights @ updates
    second = weights @ (updates**2).sum(dim=1)
    return mean, float(second - mean.pow(2).sum())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


METHODS = [(e, s) for e in ("pooled", "aligned", "grpo") for s in ("group", "none")]
METHODS.insert(4, ("loo_ungated", "none"))


def run(group_sizes=(2, 3, 4), gammas=(0.9, 1.0), theta: torch.Tensor = THETA) -> list[dict]:
    """One row per (gamma, G, estimator, scale)."""
    trajectories = enumerate_trajectories()
    score = scores(trajectories, theta)
    rows = []
    for gamma in gammas:
        grad, g_r, probs = true_gradients(trajectories, theta, gamma)
        assert math.isclose(float(probs.sum()), 1.0, rel_tol=1e-9), "the enumeration misses trajectories"
        for group_size in group_sizes:
            groups = all_groups(len(trajectories), group_size)
            weights = probs[groups].prod(dim=1)
            for estimator, scale in METHODS:
                updates = group_updates(trajectories, groups, score, estimator, scale, gamma)
                mean, trace = moments(updates, weights)
                rows.append(
                    {
                        "gamma": gamma,
                        "G": group_size,
                        "estimator": estimator,
                        "scale": scale,
                        "cos": cosine(mean, grad),
                        "rel_norm_error": float(mean.norm() / grad.norm() - 1.0),
                        "sign_agreement": float((mean.sign() == grad.sign()).double().mean()),
                        "cos_R": cosine(mean, g_r),
                        "rel_norm_error_R": float(mean.norm() / g_r.norm() - 1.0),
                        "trace_cov": trace,
                        "noise": trace / float(mean.pow(2).sum()),
                        "mean_update": mean.tolist(),
                    }
                )
        rows.append({"gamma": gamma, "true_gradient": grad.tolist(), "g_R": g_r.tolist()})
    return rows


def table(rows: list[dict]) -> str:
    lines, previous = [], None
    header = f"{'gamma':>5} {'G':>2} {'estimator':<15}{'scale':<6}{'cos':>8}{'|EU|/|g|-1':>12}{'sign':>6}{'cos_R':>8}{'|EU|/|gR|-1':>13}{'trace':>10}{'noise':>8}"
    for row in rows:
        if "true_gradient" in row:
            g = ", ".join(f"{v:+.4f}" for v in row["true_gradient"])
            lines.append(f"gamma={row['gamma']}: grad J = [{g}]")
            continue
        if not lines or lines[-1].startswith("gamma=") or row["G"] != previous:
            lines += ["", header] if lines else [header]
        previous = row["G"]
        lines.append(
            f"{row['gamma']:>5} {row['G']:>2} {row['estimator']:<15}{row['scale']:<6}{row['cos']:>8.4f}"
            f"{row['rel_norm_error']:>+12.4f}{row['sign_agreement']:>6.2f}{row['cos_R']:>8.4f}{row['rel_norm_error_R']:>+13.4f}"
            f"{row['trace_cov']:>10.4f}{row['noise']:>8.2f}"
        )
    return "\n".join(lines)


# The chain toy: each turn's own choice earns or loses its own turn reward, and the outcome needs every choice right.
#
#     turn j = 1..S, one logit theta_j:  right w.p. sigmoid(theta_j) -> turn reward CHAIN_TURN_REWARD (a verified
#                                         intermediate value); wrong -> 0
#     outcome (on turn S):                1 when every turn was right, else 0
#
# The objective is the expected total reward E[sum_j t_j + outcome] (what GRPO on the summed rewards optimizes), so
# grad_j = sigma'(theta_j) (CHAIN_TURN_REWARD + prod_{k != j} p_k). A turn's own reward is information about that
# turn's choice only: an estimator that places it on its turn has less noise than one that spreads every reward over
# every turn (GRPO). Groups are enumerated as multisets of the 2^S trajectory types, weighted by their multinomial
# probability (advantages do not depend on the order of a group), so G = 8 takes seconds.

CHAIN_TURN_REWARD = 0.3
CHAIN_THETA = torch.tensor([0.3, -0.2, 0.1, -0.4], dtype=torch.float64)
CHAIN_METHODS = [("aligned", "group"), ("aligned", "none"), ("pooled", "group"), ("pooled", "none"),
                 ("grpo", "group"), ("grpo", "none"), ("grpo_outcome", "group")]


def chain_types(steps: int) -> torch.Tensor:
    """(2^steps, steps) every trajectory of the chain: 1 where the turn was right."""
    return torch.tensor(list(itertools.product([1.0, 0.0], repeat=steps)), dtype=torch.float64)


def multisets(num_types: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, G) every multiset of G trajectory types (sorted indices) and (C,) its number of orderings."""
    groups = torch.tensor(list(itertools.combinations_with_replacement(range(num_types), group_size)))
    counts = torch.stack([(groups == t).sum(dim=1) for t in range(num_types)], dim=1)
    orderings = math.factorial(group_size) / torch.lgamma(counts.double() + 1).exp().prod(dim=1)
    return groups, orderings


def chain_group_advantages(right: torch.Tensor, groups: torch.Tensor, estimator: str, scale: str, gamma: float):
    """(C * G, S) A_ij of every enumerated group under one estimator; `right` is (M, S)."""
    steps = right.shape[1]
    rows = right[groups.flatten()]
    terms = (CHAIN_TURN_REWARD * rows).float()
    outcome = rows.prod(dim=1).float()
    group_size, n = groups.shape[1], rows.shape[0]
    if estimator in ("grpo", "grpo_outcome"):
        total = outcome + (terms.sum(dim=1) if estimator == "grpo" else 0.0)
        batch = TurnBatch(outcome=total, num_turns=torch.ones(n, dtype=torch.long), group_size=group_size)
        table = turn_advantages(batch, AdvantageSettings(gamma=1.0, estimator="aligned", scale=scale))
        return table.advantages.double().expand(-1, steps)
    batch = TurnBatch(outcome=outcome, num_turns=torch.full((n,), steps), group_size=group_size, turn_terms=terms)
    return turn_advantages(batch, AdvantageSettings(gamma=gamma, estimator=estimator, scale=scale)).advantages.double()


def run_chain(steps: int = 3, group_sizes=(2, 4, 8), gammas=(0.9, 1.0), theta: torch.Tensor = CHAIN_THETA) -> list[dict]:
    """One row per (gamma, G, estimator, scale) on the chain of `steps` turns."""
    right = chain_types(steps)
    p = torch.sigmoid(theta[:steps])
    probs = torch.where(right > 0, p, 1 - p).prod(dim=1)
    score = torch.where(right > 0, 1 - p, -p)  # d log pi(a_j) / d theta_j
    grad = p * (1 - p) * (CHAIN_TURN_REWARD + torch.stack([p[torch.arange(steps) != j].prod() for j in range(steps)]))
    out = []
    for gamma in gammas:
        for group_size in group_sizes:
            groups, orderings = multisets(len(right), group_size)
            weights = orderings * probs[groups].prod(dim=1)
            assert math.isclose(float(weights.sum()), 1.0, rel_tol=1e-9), "the enumeration misses groups"
            for estimator, scale in CHAIN_METHODS:
                advantages = torch.nan_to_num(chain_group_advantages(right, groups, estimator, scale, gamma))
                updates = (advantages * score[groups.flatten()]).view(len(groups), group_size, steps).mean(dim=1)
                mean, trace = moments(updates, weights)
                out.append(
                    {
                        "toy": f"chain{steps}",
                        "gamma": gamma,
                        "G": group_size,
                        "estimator": estimator,
                        "scale": scale,
                        "cos": cosine(mean, grad),
                        "sign_agreement": float((mean.sign() == grad.sign()).double().mean()),
                        "trace_cov": trace,
                        "noise": trace / float(mean.pow(2).sum()),
                        "mean_update": mean.tolist(),
                    }
                )
    out.append({"toy": f"chain{steps}", "true_gradient": grad.tolist()})
    return out


def chain_table(rows: list[dict]) -> str:
    lines = [f"{'gamma':>5} {'G':>2} {'estimator':<14}{'scale':<6}{'cos':>8}{'sign':>6}{'trace':>10}{'noise':>8}"]
    for row in rows:
        if "true_gradient" in row:
            lines.append(f"{row['toy']}: grad E[total] = [{', '.join(f'{v:+.4f}' for v in row['true_gradient'])}]")
            continue
        lines.append(
            f"{row['gamma']:>5} {row['G']:>2} {row['estimator']:<14}{row['scale']:<6}{row['cos']:>8.4f}"
            f"{row['sign_agreement']:>6.2f}{row['trace_cov']:>10.4f}{row['noise']:>8.2f}"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--group_sizes", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.9, 1.0])
    parser.add_argument("--chain_steps", type=int, default=3)
    parser.add_argument("--chain_group_sizes", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    trajectories = enumerate_trajectories()
    rows = run(args.group_sizes, args.gammas)
    print(f"{len(trajectories)} trajectories; all ordered groups of G enumerated; U = (1/G) sum_ij A_ij grad log pi")
    print(table(rows))
    chain = run_chain(args.chain_steps, args.chain_group_sizes, args.gammas)
    print(f"\nThe chain toy: {args.chain_steps} turns, each right w.p. sigmoid(theta_j) for a turn reward of "
          f"{CHAIN_TURN_REWARD}, outcome 1 when all are right; every multiset of G trajectories enumerated.")
    print("cos to grad E[total]; noise = trace Cov[U] / |E U|^2 (groups needed for a unit signal-to-noise ratio)")
    print(chain_table(chain))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(rows + chain, file, indent=1)
        print(f"\nWrote {args.json}")


if __name__ == "__main__":
    main()
