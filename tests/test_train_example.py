"""examples/train_gtpo.py: its default command runs on a machine without GPU."""

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "examples" / "train_gtpo.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("train_gtpo_example", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CPU_FP32 = ["--use_cpu", "true", "--bf16", "false"]


@pytest.mark.parametrize(
    "argv, config, has_accelerator, expected",
    [
        (["--max_steps", "2", "--output_dir", "out"], None, False, CPU_FP32),
        (["--max_steps", "2", "--output_dir", "out"], None, True, []),
        (["--bf16", "--output_dir", "out"], None, False, []),  # the user's choice: TRL's error says what is wrong
        (["--bf16=false"], None, False, []),
        (["--fp16", "true"], None, False, []),
        (["--use_cpu"], None, False, []),
        (["--config", "recipe.yaml"], {"bf16": True, "max_steps": 2}, False, []),
        (["--config", "recipe.yaml"], {"max_steps": 2}, False, CPU_FP32),
        (["--bf16_full_eval", "false"], None, False, CPU_FP32),  # not a training precision flag
    ],
)
def test_cpu_fallback_only_without_accelerator_and_precision_flags(example, argv, config, has_accelerator, expected):
    assert example.cpu_fallback_args(argv, config, has_accelerator) == expected


def test_the_fallback_parses_to_cpu_fp32(example):
    argv = ["--max_steps", "2", "--output_dir", "out"]
    _, training_args, _ = example.make_parser().parse_args_and_config(argv + example.cpu_fallback_args(argv, None, False))
    assert training_args.use_cpu and not training_args.bf16 and not training_args.fp16


def test_turn_reward_funcs_are_loaded_by_name_and_unknown_names_name_the_option(example):
    from trl_gtpo.rewards.turn import tool_success_turn_reward

    script_args, training_args, _ = example.make_parser().parse_args_and_config(
        ["--turn_reward_funcs", "tool_success_turn_reward", "--turn_reward_weights", "0.5", "--use_cpu", "true",
         "--bf16", "false", "--output_dir", "out"]
    )
    assert example.load_reward_funcs(script_args.turn_reward_funcs, "--turn_reward_funcs") == [tool_success_turn_reward]
    assert training_args.turn_reward_weights == [0.5]
    with pytest.raises(ValueError, match="--turn_reward_funcs 'nope' is unknown: use 'tool_success_turn_reward'"):
        example.load_reward_funcs(["nope"], "--turn_reward_funcs")


def _report(correct: list[bool]) -> dict:
    from trl_gtpo.evaluation import benchmark_fields

    problems = [{"correct": [ok], "samples": [{"tool_calls": 1, "tool_errors": 0}]} for ok in correct]
    report = {"num_problems": len(correct), "pass@1": sum(correct) / len(correct), "problems": problems}
    return {**report, **benchmark_fields(report)}


def test_before_after_table_pairs_the_problems_and_judges_the_change_against_the_before_interval(example):
    before = _report([True] * 10 + [False] * 30)  # 0.25, 95% interval about [0.14, 0.40]
    after = _report([False] * 2 + [True] * 8 + [True] * 14 + [False] * 16)  # 0.55: 14 fixed, 2 broken
    table = example.before_after_table(before, after)
    assert "0.250 [0.142, 0.402]" in table and "10/40" in table and "22/40" in table
    assert "change +0.300 (14 problems fixed, 2 broken): after is outside the before 95% interval" in table
    close = _report([True] * 12 + [False] * 28)
    assert "after is inside the before 95% interval" in example.before_after_table(before, close)


def test_success_curve_reads_the_logged_steps_and_is_saved_as_png(example, tmp_path):
    key = "rewards/math_answer_reward/mean"
    history = [{key: 0.25, "step": 1}, {"loss": 0.1, "step": 1}, {key: 0.5, "step": 2}, {"train_runtime": 9.0}]
    assert example.success_curve(history, key) == ([1, 2], [0.25, 0.5])
    path = tmp_path / "curve.png"
    reports = {"before": _report([True, False]), "after": _report([True, True])}
    assert example.save_success_curve(history, "math_answer_reward", str(path), reports) == str(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert example.save_success_curve([{"loss": 0.1, "step": 1}], "math_answer_reward", str(tmp_path / "no.png")) is None
    assert not (tmp_path / "no.png").exists()


def _main_job_flags() -> list[str]:
    """The flags scripts/train_default.sh gives examples/train_gtpo.py (the main job), read from the script."""
    import shlex

    script = (_PATH.parents[1] / "scripts" / "train_default.sh").read_text()
    command = script.rsplit("examples/train_gtpo.py", 1)[1].split('"$@"', 1)[0]
    return shlex.split(command.replace("\\\n", " "))


@pytest.mark.slow
def test_the_main_jobs_log_has_no_repeated_warning_and_a_few_lines_per_sample(tiny_model_path, tmp_path):
    """The main job's training, 2 steps with the tiny model, its output going to a file (not a terminal): every
    warning is printed at most once, and each step's completions sample is a header and 3 lines per completion
    (TRL's rich table would be 80 columns wide there, one word per line)."""
    import collections
    import os
    import subprocess
    import sys

    flags = _main_job_flags()
    assert "--log_completions" in flags and flags[flags.index("--num_completions_to_print") + 1] == "2"
    flags += ["--model_name_or_path", tiny_model_path, "--output_dir", str(tmp_path / "run"), "--max_steps", "2",
              "--train_size", "16", "--eval_size", "0"]
    log = tmp_path / "log.txt"
    with open(log, "w") as output:
        result = subprocess.run(
            [sys.executable, str(_PATH), *flags], stdout=output, stderr=subprocess.STDOUT, timeout=600,
            env={**os.environ, "PYTHONWARNINGS": "default"}, cwd=tmp_path,
        )
    text = log.read_bytes().decode(errors="replace")  # as written: progress bar updates are "\r"-separated
    assert result.returncode == 0, text[-3000:]
    lines = [segment for line in text.split("\n") for segment in line.split("\r") if segment.strip()]
    warnings = collections.Counter(line.split("Warning: ", 1)[1] for line in lines if "Warning: " in line)
    assert warnings and max(warnings.values()) == 1, warnings
    for step in (1, 2):
        (header,) = [k for k, line in enumerate(lines) if line.startswith(f"--- step {step}: 2 of 8 completions")]
        sample = lines[header + 1 : header + 7]
        assert [line.split()[0] for line in sample] == ["[1]", "prompt:", "completion:", "[2]", "prompt:", "completion:"]
        assert "math_answer_reward" in sample[0] and "tool_calls T1:" in sample[0] and "How many" in sample[1]
    assert not any(char in text for char in "│┃━"), "a rich table was printed"
    assert len(text.split("\n")) < 40  # the whole log of two steps, the progress bar on the lines it shares
