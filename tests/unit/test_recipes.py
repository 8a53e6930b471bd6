"""recipes/*.yaml parse with examples/train_gtpo.py's own parser (TRL's `--config`), without training."""

import shlex
from pathlib import Path

import pytest
import yaml
from trl import ModelConfig

from trl_gtpo import GTPOConfig

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def train_script():
    from trl_gtpo.cli import train

    return train


def parse(args: list[str]):
    return train_script().make_parser().parse_args_and_config(args)  # a fresh parser: --config changes its defaults


def test_there_are_cpu_one_gpu_and_eight_gpu_recipes():
    assert {path.name.split("_")[0] for path in RECIPES} >= {"cpu", "gpu1", "gpu8"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.name)
def test_every_recipe_field_reaches_the_training_script(recipe, monkeypatch):
    # GPU recipes ask for bf16, which TrainingArguments refuses on a machine without a GPU: pretend to have one.
    monkeypatch.setattr("transformers.training_args.is_torch_bf16_gpu_available", lambda: True)
    script_args, training_args, model_args = parse(["--config", str(recipe)])
    assert isinstance(training_args, GTPOConfig) and isinstance(model_args, ModelConfig)
    values = yaml.safe_load(recipe.read_text())
    for key, value in values.items():
        owners = [args for args in (script_args, training_args, model_args) if hasattr(args, key)]
        assert owners, f"{recipe.name}: {key} is no field of the script"
        parsed = getattr(owners[0], key)
        parsed = getattr(parsed, "value", parsed)  # enums such as save_strategy / lr_scheduler_type
        if key == "report_to" and value == "none":
            value = []
        assert parsed == value, f"{recipe.name}: {key} parsed as {parsed!r}, the file says {value!r}"
    if "gpu" in recipe.name:
        assert training_args.use_vllm and training_args.bf16
        assert "NOT RUN HERE" in recipe.read_text() and "time per step" in recipe.read_text()


def test_the_main_job_runs_the_cpu_recipe_and_nothing_else():
    """scripts/train_default.sh passes recipes/cpu_default.yaml and the user's own flags, so the settings live once."""
    script = (ROOT / "scripts" / "train_default.sh").read_text()
    command = script[script.rindex("examples/train_gtpo.py") : script.rindex('"$@"')]  # the launch line
    assert shlex.split(command.replace("\\\n", " "))[1:] == ["--config", "recipes/cpu_default.yaml"]
    script_args, training_args, model_args = parse(["--config", str(ROOT / "recipes" / "cpu_default.yaml")])
    assert model_args.model_name_or_path == "default" and training_args.use_cpu and not training_args.bf16
    # a flag after the recipe overrides it, as the script's "$@" does
    _, overridden, _ = parse(["--config", str(ROOT / "recipes" / "cpu_default.yaml"), "--max_steps", "3"])
    assert overridden.max_steps == 3
