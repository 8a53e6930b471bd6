"""Time of GTPO's advantage computation (turn spans, rewards, returns, normalization, broadcast to tokens) for a
large batch, against the time of GRPO's own advantage computation on the same rewards, in the same run.

    python benchmarks/bench_advantages.py --trajectories 4096 --turns 8 --tokens 1024
"""

import argparse
import statistics
import time

import torch

from trl_gtpo.advantages import discounted_returns, normalize_returns, token_advantages, turn_rewards
from trl_gtpo.turn_records import turn_index


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


def turn_level(num_turns, outcome, format_rewards, group_size):
    """The GTPO math proper, on (B, K): turn rewards, discounted returns, group normalization."""
    rewards = turn_rewards(num_turns, outcome, format_rewards.shape[1], format_rewards)
    return normalize_returns(discounted_returns(rewards, 0.9), group_size)


def token_level(mask, advantages):
    """Reading the turns off the (B, T) mask and broadcasting the turn advantages back to the tokens."""
    index, _ = turn_index(mask)
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
    _, num_turns = turn_index(mask)
    advantages = turn_level(num_turns, outcome, format_rewards, args.group_size)
    turns = timed(lambda: turn_level(num_turns, outcome, format_rewards, args.group_size), args.repeats)
    tokens = timed(lambda: token_level(mask, advantages), args.repeats)
    grpo = timed(lambda: grpo_advantages(outcome, args.group_size), args.repeats)
    # Baseline for the token part: one elementwise op over the same (B, T) tensor, of which TRL's loss does dozens.
    loss_like = mask.float()
    elementwise = timed(lambda: loss_like * 0.5, args.repeats)

    print(f"batch: {args.trajectories} trajectories x {args.turns} turns x {args.tokens} tokens, "
          f"{torch.get_num_threads()} torch thread(s)")
    print(f"turn level  (rewards, returns, normalization on {args.trajectories}x{args.turns}): "
          f"{turns * 1e3:7.2f} ms   target < 10 ms: {'met' if turns < 0.010 else 'NOT met'}")
    print(f"  GRPO's advantage on the same rewards (baseline):                  {grpo * 1e3:7.2f} ms   ratio {turns / grpo:.0f}x")
    print(f"token level (turn spans from the mask, broadcast to {args.trajectories}x{args.tokens}):      "
          f"{tokens * 1e3:7.2f} ms")
    print(f"  one elementwise multiply over the same (B, T) tensor (baseline):  {elementwise * 1e3:7.2f} ms   "
          f"ratio {tokens / elementwise:.1f}x")


if __name__ == "__main__":
    main()
