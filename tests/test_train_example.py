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
