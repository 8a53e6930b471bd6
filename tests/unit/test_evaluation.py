"""The evaluation report: what its figures count."""

from trl_gtpo.evaluation import SampleResult, _model_turns, _report
from trl_gtpo.interpreter.loop import Trajectory
from trl_gtpo.rewards import math_answer_reward


def _sample(statuses: list) -> dict:
    return {"turns": [{"status": status} for status in statuses], "wrote_code": True}


def test_mean_tool_calls_counts_only_code_that_ran():
    # A turn with no code (None) and a stop marker without code ("no_code") are not tool calls.
    result = SampleResult("q", "1", [_sample([None]), _sample(["ok", "no_code", "error"])], [True, False])
    assert _report([result], k=2)["mean_tool_calls"] == 1.0


def test_the_reward_reads_the_model_turns_from_the_tool_mask():
    class Characters:  # one token per character
        @staticmethod
        def decode(ids, skip_special_tokens=True):
            return "".join(map(chr, ids))

    model, tool = "```python\nprint('```\\n\\\\boxed{72}')\n```", "\n```output\n```\n\\boxed{72}\n```\n"
    ids = [ord(c) for c in model + tool + "Not sure."]
    mask = [1] * len(model) + [0] * len(tool) + [1] * len("Not sure.")
    turns = _model_turns(Trajectory(completion_ids=ids, tool_mask=mask), Characters())
    assert turns == [model, "Not sure."]
    assert math_answer_reward(["ignored"], answer=["72"], model_turns=[turns]) == [0.0]


def test_shared_prefix_length_leaves_every_row_a_token_of_its_own():
    from trl_gtpo.evaluation import _shared_prefix_length

    assert _shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert _shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2  # the shorter row keeps its last token
    assert _shared_prefix_length([[7, 1], [8, 1]]) == 0


def test_a_cached_prompt_prefix_generates_exactly_what_the_full_prompts_do(monkeypatch):
    """Evaluation reuses the KV cache of the prompts' shared beginning (the worked examples) across rows and turns:
    greedy tokens must be those of reading every prompt in full, with rows of different lengths padded between the
    prefix and their own tokens."""
    import torch

    from trl_gtpo import evaluation
    from trl_gtpo.testing import make_tiny_model, make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer, hidden_size=64).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # large weights: what it writes depends on what it read (a fresh tiny model's barely does)
        for weight in (p for p in model.parameters() if p.dim() > 1):
            weight.normal_(std=0.5, generator=generator)
    prefix = torch.randint(5, 400, (40,), generator=generator).tolist()
    prompts = [prefix + torch.randint(5, 400, (n,), generator=generator).tolist() for n in (1, 7, 3, 12, 5)]
    used = []
    expanded = evaluation._PrefixCache.expanded
    monkeypatch.setattr(evaluation._PrefixCache, "expanded", lambda self, *a: used.append(a[0]) or expanded(self, *a))
    cached, _ = evaluation.transformers_generate_turn(model, tokenizer, ["```output"], batch_size=4)(prompts, 12)
    assert used and len(used[0]) >= 40  # the cache was used, for the 40 shared tokens at least
    full, _ = evaluation.transformers_generate_turn(model, tokenizer, ["```output"], batch_size=4, cache_prefix=False)(
        prompts, 12
    )
    assert cached == full
    assert all(len(ids) == 12 for ids in cached)  # a random model runs to the limit: every token compared
    assert len({tuple(ids) for ids in full}) >= 3  # and the rows differ: the comparison reads each row's own tokens
