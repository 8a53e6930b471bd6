"""Time of GTPO's advantage computation (turn spans, rewards, returns, normalization, broadcast to tokens) for a
large batch, against the time of GRPO's own advantage computation on the same rewards, in the same run.

    python benchmarks/bench_advantages.py --trajectories 4096 --turns 8 --tokens 1024
"""

import argparse
import statistics
import time

import torch

from trl_gtpo.turns import discounted_returns, normalize_returns, token_advantages, turn_index, turn_rewards


def make_batch(trajectories: int, turns: int, tokens: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    span = tokens // (2 * turns)
    mask = torch.zeros(trajectories, tokens, dtype=torch.long)
    num_turns = torch.randint(1, turns + 1, (trajectories,), generator=generator)
    for k in range(turns):  # turn k: tokens [2k*span, (2k+1)*span), then tool output
        rows = num_turns > k
        mask[rows, 2 * k * span : (2 * k + 1) * span] = 1
    outcome = torch.randint(0, 2, (trajectories,), generator=generator).float()
    format_rewards = -0.1 * (torch.rand(trajectories, turns, generator=generator) < 0.1).float()
    return mask, outcome, format_rewards


def gtpo_advantages(mask, outcome, format_rewards, group_size):
    index, num_turns = turn_index(mask)
    width = int(num_turns.max())
    rewards = turn_rewards(num_turns, outcome, width, format_rewards)
    returns = discounted_returns(rewards, 0.9)
    advantages = normalize_returns(returns, group_size)
    return token_advantages(advantages, index)


def grpo_advantages(outcome, group_size):
    """What GRPOTrainer does for the same rewards (group mean and std, one value per trajectory)."""
    grouped = outcome.view(-1, group_size)
    mean = grouped.mean(dim=1).repeat_interleave(group_size)
    std = grouped.std(dim=1).repeat_interleave(group_size)
    return (outcome - mean) / (std + 1e-4)


def timed(function, repeats):
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--trajectories", type=int, default=4096)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--group_size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    mask, outcome, format_rewards = make_batch(args.trajectories, args.turns, args.tokens)
    gtpo = timed(lambda: gtpo_advantages(mask, outcome, format_rewards, args.group_size), args.repeats)
    grpo = timed(lambda: grpo_advantages(outcome, args.group_size), args.repeats)
    # The (B, T) broadcast alone, the part GRPO does not need (its loss broadcasts a (B, 1) tensor for free).
    index, _ = turn_index(mask)
    per_turn = torch.randn(args.trajectories, args.turns)
    broadcast = timed(lambda: token_advantages(per_turn, index), args.repeats)
    print(f"batch: {args.trajectories} trajectories x {args.turns} turns x {args.tokens} tokens, torch threads {torch.get_num_threads()}")
    print(f"GTPO advantages (turns + returns + normalization + broadcast): {gtpo * 1e3:8.2f} ms  (target < 10 ms)")
    print(f"  of which the broadcast to tokens:                              {broadcast * 1e3:8.2f} ms")
    print(f"GRPO advantages (baseline, same rewards):                        {grpo * 1e3:8.2f} ms")
    print(f"ratio GTPO / GRPO: {gtpo / grpo:.1f}x; GTPO / target: {gtpo / 0.010:.2f}")


if __name__ == "__main__":
    main()
