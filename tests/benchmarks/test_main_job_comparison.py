"""benchmarks/learning/main_job.py: the GTPO-vs-GRPO table of the main job, on hand-made runs (no training)."""

import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def main_job():
    from benchmarks.learning import main_job

    return main_job


def write_run(directory: Path, correct: dict[str, list[bool]], success: list[float]) -> None:
    from trl_gtpo.evaluation import benchmark_fields

    directory.mkdir(parents=True)
    for split, values in correct.items():
        problems = [{"correct": [ok], "samples": [{"tool_calls": 1, "tool_errors": 0}]} for ok in values]
        report = {"num_problems": len(values), "pass@1": sum(values) / len(values), "problems": problems}
        (directory / f"eval_after_{split}.json").write_text(json.dumps({**report, **benchmark_fields(report)}))
    history = [{"rewards/math_answer_reward/mean": value, "step": k + 1} for k, value in enumerate(success)]
    (directory / "log_history.json").write_text(json.dumps(history + [{"train_runtime": 1.0}]))


def test_the_runs_are_the_recipe_with_only_trainer_and_seed_changed(main_job):
    command = main_job.command("grpo", 43, "out/grpo-43", False, ["--max_steps", "2"])
    assert command[1].endswith("examples/train_gtpo.py")
    flags = command[2:]
    assert flags[:2] == ["--config", str(ROOT / "recipes" / "cpu_default.yaml")]
    pairs = dict(zip(flags[2::2], flags[3::2]))
    assert pairs == {"--trainer": "grpo", "--seed": "43", "--output_dir": "out/grpo-43", "--eval_before": "false",
                     "--max_steps": "2"}


def test_summary_by_hand(main_job, tmp_path):
    n = 10
    # pass@1 per (arm, seed, split); two_step is the primary split
    table = {
        ("gtpo", 1): {"word": 9, "word_reworded": 8, "word_two_step": 5},
        ("gtpo", 2): {"word": 10, "word_reworded": 7, "word_two_step": 4},
        ("gtpo", 3): {"word": 8, "word_reworded": 8, "word_two_step": 6},
        ("grpo", 1): {"word": 9, "word_reworded": 6, "word_two_step": 2},
        ("grpo", 2): {"word": 9, "word_reworded": 7, "word_two_step": 3},
        ("grpo", 3): {"word": 8, "word_reworded": 5, "word_two_step": 2},
    }
    for (arm, seed), solved in table.items():
        write_run(tmp_path / f"{arm}-{seed}", {split: [k < solved[split] for k in range(n)] for split in solved},
                  [0.5, 1.0] if arm == "gtpo" else [0.25, 0.75])
    runs = {arm: {seed: main_job.load_run(str(tmp_path), arm, seed) for seed in (1, 2, 3)} for arm in ("gtpo", "grpo")}
    summary = main_job.summarize(runs, None)
    two_step = summary["comparisons"]["word_two_step"]
    assert two_step["differences"] == pytest.approx([0.3, 0.1, 0.4])
    assert two_step["mean"] == pytest.approx(0.8 / 3)
    sd = math.sqrt(((0.3 - 0.8 / 3) ** 2 + (0.1 - 0.8 / 3) ** 2 + (0.4 - 0.8 / 3) ** 2) / 2)
    assert two_step["t_half_width"] == pytest.approx(4.302653 * sd / math.sqrt(3), rel=1e-5)
    gtpo = summary["arms"]["gtpo"]["splits"]["word_two_step"]
    assert gtpo["per_seed"] == pytest.approx([0.5, 0.4, 0.6]) and gtpo["pooled"] == pytest.approx(0.5)
    assert summary["arms"]["grpo"]["training_success"] == pytest.approx(0.5)
    # Holm over the two secondary splits only; the primary one is not corrected
    assert set(summary["holm"]) == {"word", "word_reworded"}
    text = main_job.table(summary)
    assert "gtpo - grpo on word_two_step (PRIMARY): +0.267" in text
    assert "gtpo - grpo on word (secondary)" in text and "Holm threshold" in text
    assert "0.500 [" in text and "| 0.500 [0." in text  # mean [t interval] | pooled [Wilson]
