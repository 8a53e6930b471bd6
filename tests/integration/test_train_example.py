"""examples/train_gtpo.py and its parts (trl_gtpo.cli.train): its default command runs on a machine without GPU."""

from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "examples" / "train_gtpo.py"


@pytest.fixture(scope="module")
def example():
    """The script's parts, from the package module it imports them from."""
    from trl_gtpo.cli import train

    return train


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


def _main_job_flags() -> list[str]:
    """The flags scripts/train_default.sh gives examples/train_gtpo.py (the main job): its recipe, read from the
    script, with the path made absolute."""
    import shlex

    script = (_PATH.parents[1] / "scripts" / "train_default.sh").read_text()
    command = script.rsplit("examples/train_gtpo.py", 1)[1].split('"$@"', 1)[0]
    flags = shlex.split(command.replace("\\\n", " "))
    return [str(_PATH.parents[1] / flag) if flag.endswith(".yaml") else flag for flag in flags]


@pytest.mark.slow
def test_the_main_jobs_log_has_no_repeated_warning_and_a_few_lines_per_sample(tiny_model_path, tmp_path):
    """The main job's training, 2 steps with the tiny model, its output going to a file (not a terminal): every
    warning is printed at most once, and each step's completions sample is a header and 3 lines per completion
    (TRL's rich table would be 80 columns wide there, one word per line)."""
    import collections
    import os
    import subprocess
    import sys

    import yaml

    flags = _main_job_flags()
    recipe = yaml.safe_load(open(flags[flags.index("--config") + 1]).read())
    assert recipe["log_completions"] and recipe["num_completions_to_print"] == 2
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
        per_step = recipe["per_device_train_batch_size"] * recipe["gradient_accumulation_steps"]
        (header,) = [
            k for k, line in enumerate(lines) if line.startswith(f"--- step {step}: 2 of {per_step} completions")
        ]
        sample = lines[header + 1 : header + 7]
        assert [line.split()[0] for line in sample] == ["[1]", "prompt:", "completion:", "[2]", "prompt:", "completion:"]
        assert "math_answer_reward" in sample[0] and "tool_calls T1:" in sample[0] and "How many" in sample[1]
    assert not any(char in text for char in "│┃━"), "a rich table was printed"
    assert len(text.split("\n")) < 40  # the whole log of two steps, the progress bar on the lines it shares


def test_bad_trainer_and_eval_kinds_name_the_flag(example):
    from types import SimpleNamespace

    script_args = example.GTPOScriptArguments(dataset_name="gsm8k", eval_size=4, eval_kinds=["word"])
    with pytest.raises(ValueError, match="--eval_kinds word names kinds of the synthetic task.*--dataset_name synthetic"):
        example.load_eval_splits(script_args, SimpleNamespace(seed=0), None)
    script_args = example.GTPOScriptArguments(trainer="ppo", reward_funcs=[])
    with pytest.raises(ValueError, match="--trainer 'ppo' is unknown: use 'gtpo'"):
        example.build_trainer(script_args, SimpleNamespace(turn_reward_weights=None, eval_strategy="no"),
                              example.ModelConfig(), "unused", None, None)


def test_eval_kinds_give_one_split_per_kind_on_fixed_problems(example):
    from types import SimpleNamespace

    script_args = example.GTPOScriptArguments(
        dataset_name="synthetic", synthetic_kinds=["word", "word_two_step"], eval_kinds=["word_reworded", "word_two_step"],
        few_shot_examples="word_steps", eval_size=3, synthetic_seed=0,
    )
    splits = example.load_eval_splits(script_args, SimpleNamespace(seed=5), None)
    assert list(splits) == ["word_reworded", "word_two_step"]
    assert [set(split["kind"]) for split in splits.values()] == [{"word_reworded"}, {"word_two_step"}]
    other_seed = example.load_eval_splits(script_args, SimpleNamespace(seed=6), None)
    assert splits["word_two_step"]["question"] == other_seed["word_two_step"]["question"]  # --seed leaves them alone


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["gtpo", "grpo"])
def test_the_main_job_runs_with_either_trainer_and_prints_every_split(trainer, tool_using_model_path, tmp_path):
    """The main job's flags, one step on a tiny model that writes code, with 2 problems per split: the per-split
    table is printed, the reports and the log history are written, and GRPO logs the summed turn reward and format
    penalty it trains on."""
    import json
    import subprocess
    import sys

    out = tmp_path / trainer
    flags = _main_job_flags() + ["--model_name_or_path", tool_using_model_path, "--output_dir", str(out),
                                 "--max_steps", "1", "--train_size", "8", "--eval_size", "2", "--trainer", trainer,
                                 "--log_completions", "false"]
    result = subprocess.run([sys.executable, str(_PATH), *flags], capture_output=True, text=True, timeout=900,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = result.stdout[result.stdout.index("Held-out pass@1 before / after training"):]
    assert f"({trainer}, greedy; problems: word 2, word_reworded 2, word_two_step 2)" in table
    assert [line.split()[0] for line in table.splitlines()[3:7]] == ["word", "word_reworded", "word_two_step", "all"]
    for label in ("before", "after"):
        for split in ("word", "word_reworded", "word_two_step"):
            assert json.loads((out / f"eval_{label}_{split}.json").read_text())["num_problems"] == 2
    logged = json.loads((out / "log_history.json").read_text())[0]
    if trainer == "grpo":
        assert {"rewards/summed_intermediate_value_turn_reward/mean", "rewards/format_penalty/mean"} <= set(logged)
    else:
        assert "turn_rewards/intermediate_value_turn_reward/mean" in logged
