"""The GTPO fields (`GTPOFields`), one set for GTPOConfig and AsyncGTPOConfig: documented, parsed from a command line
by TRL's parser, and the same on both configs."""

import dataclasses

import pytest
from trl import TrlParser

from trl_gtpo.gtpo_config import GTPOConfig, GTPOFields

FIELDS = [f.name for f in dataclasses.fields(GTPOFields)]


def async_config():
    pytest.importorskip("trl.experimental.async_grpo")
    from trl_gtpo.async_gtpo import AsyncGTPOConfig

    return AsyncGTPOConfig


@pytest.mark.parametrize("name", FIELDS)
def test_every_gtpo_field_has_help_and_a_parameters_entry(name):
    field = GTPOFields.__dataclass_fields__[name]
    assert field.metadata.get("help"), name
    parameters = GTPOFields.__doc__.split("Parameters:", 1)[1]
    assert f"\n        {name} (`" in parameters, name


def test_both_configs_carry_the_same_gtpo_fields_and_defaults():
    sync, asynchronous = GTPOConfig.__dataclass_fields__, async_config().__dataclass_fields__
    for name in FIELDS:
        assert sync[name].default == asynchronous[name].default == GTPOFields.__dataclass_fields__[name].default


@pytest.mark.parametrize("config", ["sync", "async"])
def test_trls_parser_reads_the_gtpo_fields_of_both_configs(config, tmp_path):
    cls = GTPOConfig if config == "sync" else async_config()
    (args,) = TrlParser(cls).parse_args_and_config(
        [
            "--output_dir", str(tmp_path), "--use_cpu", "true", "--report_to", "none", "--gamma", "0.5",
            "--shaping_similarity", "embedding", "--turn_reward_weights", "0.5", "2", "--max_turns", "3",
            "--tool_executor_kwargs", '{"preload": ["math"]}', "--tool_memory_limit_mb", "512",
        ]
    )
    assert (args.gamma, args.shaping_similarity, args.turn_reward_weights, args.max_turns) == (
        0.5, "embedding", [0.5, 2.0], 3
    )
    assert args.tool_executor_kwargs == {"preload": ["math"]}
