"""TurnGenerator on the transformers backend: stop strings end a turn, and their tables are built once, not per turn."""

import pytest
from datasets import Dataset
from transformers.generation import stopping_criteria as transformers_stopping
from trl import GRPOConfig, GRPOTrainer

from trl_gtpo._trl_compat import TurnGenerator

pytestmark = pytest.mark.slow

STOP_STRINGS = ["```output", "\n```\n"]


@pytest.fixture
def constructions(monkeypatch):
    """Counts every StopStringCriteria built and every vocabulary table computed, by anyone (transformers included)."""
    counts = {"criteria": 0, "tables": 0}
    cls = transformers_stopping.StopStringCriteria
    init, tables = cls.__init__, cls._stop_string_create_embedding_vec

    def counting_init(self, *args, **kwargs):
        counts["criteria"] += 1
        init(self, *args, **kwargs)

    def counting_tables(*args, **kwargs):
        counts["tables"] += 1
        return tables(*args, **kwargs)

    monkeypatch.setattr(cls, "__init__", counting_init)
    monkeypatch.setattr(cls, "_stop_string_create_embedding_vec", staticmethod(counting_tables))
    return counts


def test_stop_string_tables_are_built_once_across_turns_and_steps(tool_using_model_path, tmp_path, constructions):
    args = GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2, max_completion_length=48,
        report_to="none", use_cpu=True, bf16=False, temperature=0.2,
    )
    trainer = GRPOTrainer(
        model=tool_using_model_path, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
        train_dataset=Dataset.from_dict({"prompt": ["x"] * 2}),
    )
    tokenizer = trainer.processing_class
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 6 * 7?"}], add_generation_prompt=True, tokenize=False
    )
    prompt_ids = [tokenizer.encode(prompt, add_special_tokens=False)] * 2
    texts = []
    for step in range(2):  # the rollout builds a new TurnGenerator every step
        generate_turn = TurnGenerator(trainer, STOP_STRINGS)
        for turn in range(3):
            completion_ids, _ = generate_turn(prompt_ids, 48)
            texts += [tokenizer.decode(ids) for ids in completion_ids]

    assert constructions == {"criteria": 1, "tables": 1}
    # Still a stop string criterion: the model's code block ends the turn right after its closing fence.
    assert any(text.endswith("\n```\n") and len(text) < 60 for text in texts), texts
    assert trainer.generation_config.stop_strings is None  # the turn's settings were restored
