"""examples/evaluate.py --benchmarks: the table, the JSON summary and the traces, on a tiny model; and the numbers."""

import json
import math
from pathlib import Path

import pytest

from trl_gtpo.evaluation import benchmark_fields, wilson_interval

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "successes, n, expected",
    [(0, 10, (0.0, 0.2775)), (5, 10, (0.2366, 0.7634)), (10, 10, (0.7225, 1.0)), (30, 40, (0.5981, 0.8581))],
)
def test_wilson_interval_matches_reference_values(successes, n, expected):
    low, high = wilson_interval(successes, n)
    assert low == pytest.approx(expected[0], abs=1e-4) and high == pytest.approx(expected[1], abs=1e-4)


def test_wilson_interval_of_nothing_is_undefined():
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_tool_error_rate_is_over_calls_and_calls_are_per_attempt():
    def sample(calls, errors):
        return {"tool_calls": calls, "tool_errors": errors}

    report = {
        "problems": [
            {"correct": [True, False], "samples": [sample(2, 1), sample(0, 0)]},
            {"correct": [False, False], "samples": [sample(1, 0), sample(1, 0)]},
        ]
    }
    fields = benchmark_fields(report)
    assert fields["tool_calls_per_problem"] == 1.0  # 4 calls over 4 attempts
    assert fields["tool_error_rate"] == 0.25
    assert (fields["pass@1_low"], fields["pass@1_high"]) == pytest.approx(wilson_interval(1, 2))
    no_calls = benchmark_fields({"problems": [{"correct": [True], "samples": [sample(0, 0)]}]})
    assert math.isnan(no_calls["tool_error_rate"])


@pytest.mark.slow
def test_benchmarks_command_prints_one_table_and_writes_summary_and_traces(
    tool_using_model_path, tmp_path, capsys
):
    from trl_gtpo.cli import evaluate as script

    local = tmp_path / "times_table.jsonl"  # a local data set by path, in the question the tiny model was taught
    local.write_text("".join(
        json.dumps({"prompt": [{"role": "user", "content": "What is 6 * 7?"}], "answer": "42"}) + "\n" for _ in range(3)
    ))
    out = tmp_path / "eval"
    script.main([
        "--model_name_or_path", tool_using_model_path, "--benchmarks", f"gsm8k,{local}", "--limit", "2",
        "--max_turns", "2", "--max_completion_length", "64", "--backend", "transformers", "--output_dir", str(out),
    ])

    table = capsys.readouterr().out
    assert "pass@1" in table and "95% interval" in table and "tool error rate" in table
    assert any(line.startswith("gsm8k ") for line in table.splitlines())
    assert any(line.startswith(str(local)) for line in table.splitlines())
    [directory] = [path for path in out.iterdir() if path.is_dir()]
    summary = json.loads((directory / "summary.json").read_text())["benchmarks"]
    assert set(summary) == {"gsm8k", str(local)}
    taught = summary[str(local)]
    assert taught["num_problems"] == 2  # --limit applies to local data too
    assert taught["pass@1"] == 1.0 and taught["tool_calls_per_problem"] >= 1.0 and taught["tool_error_rate"] == 0.0
    assert taught["pass@1_low"] < taught["pass@1"] <= taught["pass@1_high"]
    traces = [json.loads(line) for line in Path(taught["traces"]).read_text().splitlines()]
    assert len(traces) == 2
    first_turn = traces[0]["samples"][0]["turns"][0]
    assert first_turn["status"] == "ok" and first_turn["output"].strip() == "42"  # the code ran in the sandbox
    assert len(Path(summary["gsm8k"]["traces"]).read_text().splitlines()) == 2


def test_evaluate_reads_the_main_jobs_synthetic_task_as_train_gtpo_does():
    """`--synthetic_kinds word --few_shot_examples word` give the problems and prompts the training script holds out."""
    from types import SimpleNamespace

    from trl_gtpo.cli import evaluate, train
    argv = ["--benchmarks", "synthetic", "--synthetic_kinds", "word", "--few_shot_examples", "word", "--limit", "4",
            "--seed", "7"]
    evaluated = evaluate.load_benchmark("synthetic", evaluate.parse_args(argv))
    script_args = train.GTPOScriptArguments(
        dataset_name="synthetic", synthetic_kinds=["word"], few_shot_examples="word", train_size=1, eval_size=4
    )
    _, held_out = train.load_splits(script_args, SimpleNamespace(seed=7, eval_strategy="no"))
    assert evaluated["prompt"] == held_out["prompt"] and evaluated["answer"] == held_out["answer"]
    default = evaluate.load_benchmark("synthetic", evaluate.parse_args(argv[:2] + ["--limit", "4", "--seed", "7"]))
    assert default["prompt"] != held_out["prompt"]  # the defaults are another task: the flags matter


def test_evaluate_reads_each_held_out_split_of_the_main_job_as_train_gtpo_does():
    """docs/MAIN_JOB.md's evaluate.py flags for a split (`--synthetic_kinds KIND --few_shot_examples word_steps --seed 0`)
    give the problems and prompts that the main job's --eval_kinds evaluates, whatever the training --seed."""
    from types import SimpleNamespace

    import yaml

    from trl_gtpo.cli import evaluate, train
    recipe = yaml.safe_load((ROOT / "recipes" / "cpu_default.yaml").read_text())
    script_args = train.GTPOScriptArguments(**{key: recipe[key] for key in (
        "dataset_name", "synthetic_kinds", "synthetic_seed", "few_shot_examples", "eval_kinds")}, eval_size=4)
    splits = train.load_eval_splits(script_args, SimpleNamespace(seed=43), None)
    assert list(splits) == ["word", "word_reworded", "word_two_step"]
    for kind, held_out in splits.items():
        argv = ["--benchmarks", "synthetic", "--synthetic_kinds", kind, "--few_shot_examples", "word_steps",
                "--seed", "0", "--limit", "4"]
        evaluated = evaluate.load_benchmark("synthetic", evaluate.parse_args(argv))
        assert evaluated["prompt"] == held_out["prompt"] and evaluated["answer"] == held_out["answer"]
