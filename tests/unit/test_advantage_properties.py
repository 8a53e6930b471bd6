"""The properties every turn advantage of the default estimator must hold (GTPO.md, P1-P5 and P7), each on
hand-computed cases and on many random groups (1-5 turns per trajectory, gamma in {0.5, 0.9, 1}, outcomes, turn terms,
shaping; up to 64 turns with correlated and anti-correlated turn rewards for P7).

The two repros of the estimator review are here too: a solved group with one format penalty, and a solved group
with one +0.01 turn reward. Under the estimator this replaced they gave +2.8 and +19 to turns that earned nothing.
"""

import math
import random

import pytest
import torch

from trl_gtpo.advantages import AdvantageSettings, TurnBatch, turn_advantages
from trl_gtpo.gtpo_config import GTPOConfig

DEFAULT = GTPOConfig.__dataclass_fields__["turn_advantage_estimator"].default
GAMMAS = (0.5, 0.9, 1.0)
SCALES = ("group", "batch", "none")
CASES = 300  # random groups per property and gamma
MAX_TURNS = 5


def advantages(outcome, num_turns, terms=None, *, gamma=0.9, scale="group", shaping=None, group_size=None):
    batch = TurnBatch(
        outcome=torch.as_tensor(outcome, dtype=torch.float32),
        num_turns=torch.as_tensor(num_turns),
        group_size=group_size or len(num_turns),
        turn_terms=None if terms is None else torch.as_tensor(terms, dtype=torch.float32),
        shaping=None if shaping is None else torch.as_tensor(shaping, dtype=torch.float32),
    )
    return turn_advantages(batch, AdvantageSettings(gamma=gamma, estimator=DEFAULT, scale=scale)).advantages


def grpo(totals: list[float]) -> torch.Tensor:
    """GRPO's advantages of one group from its total rewards (TRL 1.16, scale_rewards="group")."""
    values = torch.tensor(totals)
    return (values - values.mean()) / (values.std() + 1e-4)


def real(table: torch.Tensor) -> torch.Tensor:
    """The advantages of real turns, flattened (NaN marks turns past a trajectory's end)."""
    return table[~torch.isnan(table)]


class Group:
    """A random group: G trajectories, their turn counts, outcomes (0/1 or graded), turn terms and shaping."""

    def __init__(self, rng: random.Random, *, terms: bool = True, size: int | None = None):
        self.size = size or rng.randint(2, 8)
        self.num_turns = [rng.randint(1, MAX_TURNS) for _ in range(self.size)]
        graded = rng.random() < 0.3
        self.outcome = [rng.random() if graded else float(rng.random() < 0.5) for _ in range(self.size)]
        self.terms = [[0.0] * MAX_TURNS for _ in range(self.size)]
        if terms:
            for i, k in enumerate(self.num_turns):
                for j in range(k):
                    if rng.random() < 0.4:
                        self.terms[i][j] = rng.choice([-0.1, 0.3, 1.0, rng.uniform(-1, 1)])
        self.shaping = [rng.uniform(0, 0.5) if terms and rng.random() < 0.2 else 0.0 for _ in range(self.size)]

    def advantages(self, **kwargs) -> torch.Tensor:
        return advantages(self.outcome, self.num_turns, self.terms, shaping=self.shaping, **kwargs)


def groups(seed: int, **kwargs):
    rng = random.Random(seed)
    return [Group(rng, **kwargs) for _ in range(CASES)]


# P1: a group whose trajectories earn the same outcome and no turn terms gets exactly 0, whatever its turn counts.


def test_p1_a_solved_group_of_different_lengths_gets_exactly_zero_by_hand():
    table = advantages([1.0, 1.0, 1.0, 1.0], [1, 2, 3, 5])
    assert real(table).abs().max().item() == 0.0
    assert real(table).numel() == 11


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("gamma", GAMMAS)
def test_p1_equal_outcomes_without_turn_terms_give_exactly_zero_on_random_groups(gamma, scale):
    rng = random.Random(1)
    for group in groups(int(gamma * 10), terms=False):
        outcome = rng.choice([0.0, 1.0, 0.37, -2.0])
        group.outcome = [outcome] * group.size
        table = group.advantages(gamma=gamma, scale=scale)
        assert real(table).abs().max().item() == 0.0, (group.num_turns, outcome)


# P2: numerators vanish (linearly) as reward differences vanish; nothing else is divided by a std.


def perturbed(group: Group, base: float, eps: float) -> Group:
    """The tied group (every outcome `base`, no turn terms) plus eps times `group`'s reward differences."""
    tied = Group.__new__(Group)
    tied.size, tied.num_turns = group.size, group.num_turns
    tied.outcome = [base + eps * o for o in group.outcome]
    tied.terms = [[eps * t for t in row] for row in group.terms]
    tied.shaping = [eps * s for s in group.shaping]
    return tied


@pytest.mark.parametrize("gamma", GAMMAS)
def test_p2_numerators_vanish_linearly_with_the_reward_differences(gamma):
    for group in groups(20 + int(gamma * 10)):
        whole = perturbed(group, 1.0, 1.0).advantages(gamma=gamma, scale="none")
        for eps in (1e-1, 1e-2, 1e-3):
            small = perturbed(group, 1.0, eps).advantages(gamma=gamma, scale="none")
            torch.testing.assert_close(real(small), eps * real(whole), atol=2e-6, rtol=1e-3)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_p2_a_small_difference_never_gets_more_than_its_own_z_scale(gamma):
    # With std scaling, eps * N / (eps * sigma + 1e-4) grows with eps towards N / sigma: shrinking every difference
    # around a tied group can only shrink the advantages. A discount gap divided by a std of differences would grow.
    # (2e-3: float32 rounding of 1 + eps * x, about 1e-7, over a scale of about 1e-4.)
    for group in groups(40 + int(gamma * 10)):
        limit = real(perturbed(group, 1.0, 1.0).advantages(gamma=gamma)).abs()
        for eps in (1e-2, 1e-4):
            small = real(perturbed(group, 1.0, eps).advantages(gamma=gamma)).abs()
            assert (small <= limit + 2e-3).all(), (group.num_turns, group.outcome, group.terms)


# P3: a turn reward or a format penalty moves its own turn, also when the group's totals tie.


def test_p3_equal_totals_a_turn_reward_on_turn_one_beats_the_outcome_by_hand():
    # A earned a turn reward on turn 1 and failed; B earned nothing on turn 1 and succeeded: totals 1 and 1.
    table = advantages([0.0, 1.0], [2, 2], [[1.0, 0.0], [0.0, 0.0]])
    assert table[0, 0] > table[1, 0]  # the turn that earned the turn reward
    assert table[1, 1] > table[0, 1]  # the turn that earned the outcome
    # Numerators: A turn 1 = 0.9 * (-0.5) + 0.5 = 0.05, turn 2 = -0.5; sigma = std F + std t_1 = 2 sqrt(0.5).
    sigma = 2 * math.sqrt(0.5)
    expected = torch.tensor([[0.05, -0.5], [-0.05, 0.5]]) / sigma
    torch.testing.assert_close(table, expected, atol=1e-3, rtol=0)


def test_p3_equal_totals_each_format_penalty_pushes_its_own_turn_down_by_hand():
    table = advantages([0.0, 0.0], [2, 2], [[-0.1, 0.0], [0.0, -0.1]])
    assert table[0, 0] < table[1, 0] and table[1, 1] < table[0, 1]
    assert table[0, 0] < 0 and table[1, 1] < 0


@pytest.mark.parametrize("gamma", GAMMAS)
def test_p3_a_turn_reward_moves_its_own_turn_when_totals_tie(gamma):
    # Copy one trajectory a into b; a earns delta on turn j, b the same delta on a later turn l: equal totals. The
    # turn that earned it leads its match (at turn l for every gamma; at turn j for gamma < 1, where b's later
    # reward reaches its turn j discounted; at gamma = 1 both turns j lead to equal totals and get equal credit).
    rng = random.Random(60)
    for group in groups(61 + int(gamma * 10)):
        a, b = rng.sample(range(group.size), 2)
        k = rng.randint(2, MAX_TURNS)
        group.num_turns[a] = group.num_turns[b] = k
        group.outcome[b], group.shaping[b], group.terms[b] = group.outcome[a], group.shaping[a], list(group.terms[a])
        j, later = sorted(rng.sample(range(k), 2))
        delta = rng.choice([-0.1, 0.3, 1.0])
        group.terms[a][j] += delta
        group.terms[b][later] += delta
        table = group.advantages(gamma=gamma)
        earned_later, missed_later = (table[b, later], table[a, later]) if delta > 0 else (table[a, later], table[b, later])
        assert earned_later > missed_later
        if gamma < 1:
            earned, missed = (table[a, j], table[b, j]) if delta > 0 else (table[b, j], table[a, j])
            assert earned > missed
        else:
            assert table[a, j].item() == pytest.approx(table[b, j].item(), abs=1e-5)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_p3_a_penalty_gives_its_own_turn_a_negative_advantage_in_an_otherwise_equal_group(gamma):
    rng = random.Random(70)
    for group in groups(71 + int(gamma * 10)):
        for i in range(1, group.size):  # every trajectory a copy of the first
            group.num_turns[i], group.outcome[i] = group.num_turns[0], group.outcome[0]
            group.terms[i], group.shaping[i] = list(group.terms[0]), group.shaping[0]
        i, j = rng.randrange(group.size), rng.randrange(group.num_turns[0])
        group.terms[i][j] -= 0.1
        table = group.advantages(gamma=gamma)
        assert table[i, j] < 0
        assert all(table[other, j] > 0 for other in range(group.size) if other != i)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_p3_a_penalty_lowers_its_own_turn_and_reaches_earlier_turns_discounted(gamma):
    # Numerators (scale "none"): a penalty p on turn j of trajectory i moves A_ij by p (1 - 1/G) (its share of the
    # group mean is the 1/G, as in GRPO), A_im (m < j) by gamma^(j - m) of that, and no later turn of i. (With std
    # scaling the group's sigma changes too, so a z-score of several places is not monotone turn by turn; the sign
    # tests above hold there.)
    rng = random.Random(80)
    for group in groups(81 + int(gamma * 10)):
        i = rng.randrange(group.size)
        j = rng.randrange(group.num_turns[i])
        before = group.advantages(gamma=gamma, scale="none")[i]
        group.terms[i][j] -= 0.1
        after = group.advantages(gamma=gamma, scale="none")[i]
        k = group.num_turns[i]
        expected = [-0.1 * (1 - 1 / group.size) * gamma ** (j - m) if m <= j else 0.0 for m in range(k)]
        torch.testing.assert_close(after[:k] - before[:k], torch.tensor(expected), atol=2e-6, rtol=1e-4)


# P4: one turn per trajectory and no turn terms: exactly GRPO's advantages, in every scale mode.
# (tests/unit/test_advantages.py::test_aligned_estimator_is_exactly_grpo_with_one_turn, on random outcomes.)


@pytest.mark.parametrize("scale", SCALES)
def test_p4_single_turn_random_groups_are_grpo(scale):
    rng = random.Random(90)
    outcome = [rng.choice([0.0, 1.0, rng.random()]) for _ in range(40)]
    table = advantages(outcome, [1] * 40, gamma=0.9, scale=scale, group_size=8)[:, 0]
    values = torch.tensor(outcome).view(5, 8)
    centered = (values - values.mean(dim=1, keepdim=True)).flatten()
    std = {"group": values.std(dim=1).repeat_interleave(8), "batch": values.flatten().std(), "none": None}[scale]
    expected = centered if std is None else centered / (std + 1e-4)
    torch.testing.assert_close(table, expected)


# P5: invariant to a positive rescaling of every reward (with std scaling), as GRPO is.


@pytest.mark.parametrize("scale", ["group", "batch"])
@pytest.mark.parametrize("gamma", GAMMAS)
def test_p5_rescaling_every_reward_leaves_the_advantages(gamma, scale):
    # Exact up to GRPO's own 1e-4 in the denominator, which does not scale: one factor per group,
    # (sigma + 1e-4) c / (c sigma + 1e-4), the same on every turn of the group and close to 1.
    for group in groups(100 + int(gamma * 10)):
        base = real(group.advantages(gamma=gamma, scale=scale))
        for c in (0.5, 7.0):
            scaled = real(perturbed(group, 0.0, c).advantages(gamma=gamma, scale=scale))
            big = base.abs() > 1e-2
            assert ((scaled - base).abs()[~big] <= 1e-3).all()
            if big.any():
                ratio = scaled[big] / base[big]
                assert ratio.max() - ratio.min() < 1e-4 and (ratio - 1).abs().max() < 0.05


# P7: bounded. No advantage grows with the number of turns: at group scale |A| <= (G - 1) / sqrt(G), GRPO's own
# bound; at batch scale |A| <= GRPO's largest batch-scaled advantage of a single place's rewards.


def grpo_bound(size: int) -> float:
    return (size - 1) / math.sqrt(size)


def long_tool_user(calls: int, gamma: float, scale: str = "group", ordinary_group: bool = False) -> torch.Tensor:
    """The issue's group of 8: one trajectory makes `calls` tool calls, each earning a turn reward of 1, then
    answers right (calls + 1 turns); seven answer right in one turn. With `ordinary_group`, a second group of 8
    (2 turns, no turn rewards, outcomes 1 0 1 0 1 1 0 0) shares the batch."""
    width = calls + 1
    terms = [[1.0] * calls + [0.0]] + [[0.0] * width] * 7
    outcome, num_turns = [1.0] * 8, [width] + [1] * 7
    if ordinary_group:
        terms, outcome = terms + [[0.0] * width] * 8, outcome + [1.0, 0, 1, 0, 1, 1, 0, 0]
        num_turns = num_turns + [2] * 8
    return advantages(outcome, num_turns, terms, gamma=gamma, scale=scale, group_size=8)


@pytest.mark.parametrize("calls", [4, 10, 30])
def test_p7_many_rewarded_calls_get_grpos_advantage_at_gamma_one_by_hand(calls):
    # Every turn-reward place m <= calls: values (1, 0 x 7), deviations +7/8 and -1/8, std sqrt(1/8); F ties. So
    # sigma = calls sqrt(1/8); turn 1 of the long trajectory: calls (7/8) / (calls sqrt(1/8)) = 7 / sqrt(8) = 2.475,
    # GRPO's z-score of its total (calls + 1 against 1); the seven: -(calls / 8) / sigma = -1 / sqrt(8) = -0.354,
    # GRPO's. Measured before the bound: 4.95 / 7.83 / 13.55 and -0.71 / -1.12 / -1.94.
    table = long_tool_user(calls, 1.0)
    reference = grpo([calls + 1.0] + [1.0] * 7)
    assert table[0, 0].item() == pytest.approx(reference[0].item(), rel=1e-4)
    assert table[1:, 0].tolist() == pytest.approx(reference[1:].tolist(), rel=1e-4)
    assert real(table).abs().max().item() <= grpo_bound(8) + 1e-5


@pytest.mark.parametrize("calls", [4, 10, 30])
def test_p7_with_discount_the_first_call_gets_the_discounted_share_by_hand(calls):
    # Turn j of the long trajectory: (7/8) sum_{m=j..calls} 0.9^(m-j) / (calls sqrt(1/8)); turn 1:
    # 7/sqrt(8) (1 - 0.9^calls) / (0.1 calls) = 2.128 / 1.612 / 0.790. Measured before the bound: 4.25 / 5.10 / 4.33.
    table = long_tool_user(calls, 0.9)
    sigma = calls * math.sqrt(1 / 8)
    expected = [7 / 8 * sum(0.9 ** (m - j) for m in range(j, calls)) / sigma for j in range(calls)] + [0.0]
    torch.testing.assert_close(table[0], torch.tensor(expected), atol=1e-4, rtol=1e-4)
    assert real(table).abs().max().item() <= grpo_bound(8) + 1e-5


@pytest.mark.parametrize("gamma", [0.9, 1.0])
@pytest.mark.parametrize("calls", [4, 10, 30])
def test_p7_at_batch_scale_no_more_than_grpos_batch_scaling_of_the_same_totals(calls, gamma):
    # Measured before the bound (long group's largest |A|, gamma 0.9): 4.49 / 6.27 / 5.82 against GRPO's 3.03 / 3.36
    # / 3.46; now at most GRPO's figure (at gamma 1: 2.42 / 2.97 / 3.30).
    table = long_tool_user(calls, gamma, scale="batch", ordinary_group=True)
    totals = torch.tensor([calls + 1.0] + [1.0] * 7 + [1.0, 0, 1, 0, 1, 1, 0, 0])
    grouped = totals.view(2, 8)
    reference = ((grouped - grouped.mean(dim=1, keepdim=True)).flatten() / (totals.std() + 1e-4)).abs().max()
    assert real(table[:8]).abs().max().item() <= reference.item() + 1e-5


class LongGroup(Group):
    """A random group of agent-length trajectories (1-64 turns) whose turn rewards are correlated within a
    trajectory (every call earns the trajectory's own value), anti-correlated (its first calls earn +v, its later
    ones -v, so the totals nearly tie while partial sums grow), or independent."""

    def __init__(self, rng: random.Random, kind: str):
        self.size = rng.randint(2, 8)
        self.num_turns = [rng.randint(1, 64) for _ in range(self.size)]
        self.outcome = [float(rng.random() < 0.5) for _ in range(self.size)]
        self.terms, self.shaping = [], [0.0] * self.size
        for i, k in enumerate(self.num_turns):
            value = rng.choice([-1.0, -0.1, 0.3, 1.0, rng.uniform(-1, 1)])
            if kind == "correlated":
                row = [value] * k
            elif kind == "anti":
                half = rng.randint(0, k)
                row = [value] * half + [-value] * (k - half)
            else:
                row = [rng.choice([0.0, value, rng.uniform(-1, 1)]) for _ in range(k)]
            self.terms.append(row + [0.0] * (64 - k))


def place_z_bound(group: LongGroup, scale: str, others: list[LongGroup] = ()) -> torch.Tensor:
    """Reference for the batch bound: per trajectory, the largest |z| of its own places (outcome, and the turn terms
    of its real turns and of the group's other turn indices, 0 past its end), each place z-scored as GRPO would
    (group mean; std over the batch for scale "batch")."""
    def table(g):
        return torch.tensor([[o] + row for o, row in zip(g.outcome, g.terms)], dtype=torch.float64)

    values = table(group)
    pool = torch.cat([values] + [table(o) for o in others]) if scale == "batch" else values
    std = pool.std(dim=0)
    z = (values - values.mean(dim=0)) / std
    z = torch.where(std > 0, z, torch.zeros_like(z))
    return z.abs().amax(dim=1)


@pytest.mark.parametrize("kind", ["correlated", "anti", "independent"])
@pytest.mark.parametrize("gamma", GAMMAS)
def test_p7_agent_length_random_groups_stay_within_grpos_group_bound(gamma, kind):
    rng = random.Random(110 + int(gamma * 10))
    for _ in range(100):
        group = LongGroup(rng, kind)
        table = group.advantages(gamma=gamma)
        assert real(table).abs().max().item() <= grpo_bound(group.size) + 1e-4, (kind, group.num_turns)
        # Each turn is a discounted convex combination of its places' z-scores, so no more than the largest of them.
        assert (table.nan_to_num().abs().amax(dim=1).double() <= place_z_bound(group, "group") + 1e-4).all()


@pytest.mark.parametrize("kind", ["correlated", "anti", "independent"])
@pytest.mark.parametrize("gamma", [0.9, 1.0])
def test_p7_agent_length_random_batches_stay_within_each_places_batch_z_score(gamma, kind):
    rng = random.Random(130 + int(gamma * 10))
    for _ in range(50):
        size = rng.randint(2, 8)
        members = []
        while len(members) < 3:
            group = LongGroup(rng, kind)
            if group.size == size:
                members.append(group)
        outcome = [o for g in members for o in g.outcome]
        num_turns = [k for g in members for k in g.num_turns]
        terms = [row for g in members for row in g.terms]
        table = advantages(outcome, num_turns, terms, gamma=gamma, scale="batch", group_size=size)
        n = 3 * size
        assert real(table).abs().max().item() <= math.sqrt((n - 1) * (size - 1) / size) + 1e-4  # GRPO's batch bound
        for index, group in enumerate(members):
            others = members[:index] + members[index + 1 :]
            rows = table[index * size : (index + 1) * size].nan_to_num().abs().amax(dim=1).double()
            assert (rows <= place_z_bound(group, "batch", others) + 1e-4).all()


@pytest.mark.parametrize("gamma", GAMMAS)
def test_p7_without_scaling_correlated_rewards_get_no_more_than_grpo_on_the_totals(gamma):
    # scale "none" divides by nothing, so advantages are in reward units; when a trajectory's rewards all lean the
    # same way (here: every place of trajectory i is q_i, its quality), no turn gets more than GRPO's none-mode
    # advantage of the totals, whatever the number of turns.
    rng = random.Random(150)
    for _ in range(100):
        size = rng.randint(2, 8)
        k = rng.randint(1, 64)
        quality = [rng.random() for _ in range(size)]
        terms = [[q] * k for q in quality]
        table = advantages(quality, [k] * size, terms, gamma=gamma, scale="none")
        totals = torch.tensor([q * (k + 1) for q in quality])
        assert real(table).abs().max().item() <= (totals - totals.mean()).abs().max().item() * (1 + 1e-4) + 1e-5


def test_p7_pooled_the_papers_formula_is_not_bounded():
    # Kept with its exact numbers: one short trajectory among seven of 30 equal turns is a z-score over 211 pooled
    # returns, far past GRPO's bound (P7 fails there, as P1 does).
    table = turn_advantages(
        TurnBatch(outcome=torch.tensor([1.0] + [0.0] * 7), num_turns=torch.tensor([1] + [30] * 7), group_size=8),
        AdvantageSettings(gamma=1.0, estimator="pooled"),
    ).advantages
    assert table[0, 0].item() > 4 * grpo_bound(8)


# The repros of the estimator review (gamma 0.9, groups where every trajectory succeeded).


def test_repro_a_format_penalty_in_a_solved_group_pushes_the_prose_answer_down_no_harder_than_grpo():
    # Seven trajectories write code, then answer correctly: r = [0, 1]. One answers correctly in prose in one turn:
    # outcome 1 and the no-tool-call penalty -0.1 on that turn: r = [0.9]. Replaced estimator: +2.82 on the seven
    # answer turns, 0 on the prose turn.
    table = advantages([1.0] * 8, [2] * 7 + [1], [[0.0, 0.0]] * 7 + [[-0.1, 0.0]])
    reference = grpo([1.0] * 7 + [0.9])
    assert table[7, 0] < 0
    assert real(table).abs().max() <= reference.abs().max() * (1 + 1e-4)
    assert table[:7, 1].abs().max().item() == 0.0  # the answer turns tied with each other and with the prose answer
    assert table[7, 0].item() == pytest.approx(reference[7].item(), abs=1e-4)  # GRPO's -2.47, on the prose turn


@pytest.mark.parametrize("turn", [0, 1])
def test_repro_a_small_turn_reward_in_a_solved_group_stays_within_grpos_scale(turn):
    # Four correct 2-turn trajectories, one with a +0.01 turn reward. Replaced estimator: about +19 on every final turn.
    terms = [[0.0, 0.0]] * 3 + [[0.01 if j == turn else 0.0 for j in range(2)]]
    table = advantages([1.0] * 4, [2] * 4, terms)
    reference = grpo([1.0, 1.0, 1.0, 1.01])
    assert real(table).abs().max() <= reference.abs().max() * (1 + 1e-4)
    assert table[3, turn] > 0 and (table[:3, turn] < 0).all()  # the turn that earned it, against its matches
    if turn == 0:
        assert table[:, 1].abs().max().item() == 0.0  # the final turns earned the same


def test_the_replaced_defects_are_in_pooled_which_keeps_the_papers_numbers():
    # "pooled" is kept exactly: it still gives a solved group unit-sized advantages from the discount alone (P1 fails).
    batch = TurnBatch(outcome=torch.ones(4), num_turns=torch.tensor([2, 2, 1, 1]), group_size=4)
    pooled = turn_advantages(batch, AdvantageSettings(gamma=0.9, estimator="pooled")).advantages
    assert real(pooled).abs().max() > 0.5
    assert not math.isnan(pooled[0, 1].item())
