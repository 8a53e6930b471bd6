"""recipes/*.yaml parse with examples/train_gtpo.py's own parser (TRL's `--config`), without training."""

import importlib.util
import shlex
from pathlib import Path

import pytest
import yaml
from trl import ModelConfig

from trl_gtpo import GTPOConfig

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def train_script():
    spec = importlib.util.spec_from_file_location("train_gtpo", ROOT / "examples" / "train_gtpo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def test_cpu_recipe_is_the_main_job():
    """scripts/train_default.sh and recipes/cpu_default.yaml must give the script the same arguments."""
    script = (ROOT / "scripts" / "train_default.sh").read_text()
    command = script[script.rindex("examples/train_gtpo.py") : script.rindex('"$@"')]  # the launch line
    flags = shlex.split(command.replace("\\\n", " "))[1:]
    from_script = parse(flags)
    from_recipe = parse(["--config", str(ROOT / "recipes" / "cpu_default.yaml")])
    for script_side, recipe_side in zip(from_script, from_recipe):
        script_side = script_side.to_dict() if hasattr(script_side, "to_dict") else dict(vars(script_side))
        recipe_side = recipe_side.to_dict() if hasattr(recipe_side, "to_dict") else dict(vars(recipe_side))
        if script_side.get("model_name_or_path", 0) is None:  # the script leaves it unset: the packaged model
            script_side["model_name_or_path"] = "default"
        differences = {k: (script_side[k], recipe_side.get(k)) for k in script_side if script_side[k] != recipe_side.get(k)}
        assert not differences, f"(train_default.sh, cpu_default.yaml) differ: {differences}"
