"""One GTPO step on scripted rollouts (tests/trainer/test_reward_path.py's scripts A-D, one group of 4), single- or
multi-process. Each rank writes, for each of its trajectories, the advantage of each turn (read at the turn's first
token) to <out>/rank<RANK>.json, so runs with the group split across ranks can be compared with a 1-process run.

    python tests/integration/gtpo_scripted_run.py MODEL_DIR OUT_DIR 4
    accelerate launch --config_file accelerate_configs/multi_process.yaml tests/integration/gtpo_scripted_run.py MODEL_DIR OUT_DIR 2
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(os.path.dirname(HERE)), os.path.dirname(HERE)]  # this checkout's trl_gtpo, tests/
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from datasets import Dataset  # noqa: E402

from trl_gtpo import GTPOConfig  # noqa: E402
from trl_gtpo.interpreter.rollout import CodeInterpreterRollout  # noqa: E402

from helpers import QUESTION, SCRIPTS, RecordingGTPOTrainer, TaggedScripts, boxed_42, rows_by_tag  # noqa: E402


def main(model_dir: str, out_dir: str, per_device_batch: int):
    args = GTPOConfig(
        output_dir=os.path.join(out_dir, "trainer"), per_device_train_batch_size=per_device_batch, num_generations=4,
        max_completion_length=96, max_steps=1, report_to="none", bf16=False, use_cpu=True, save_strategy="no",
        gamma=0.9, shaping_alpha=0.5, format_penalty=-0.1, tool_pool_size=1, seed=0,
    )
    def scripted(trainer, stop_strings):
        rank = trainer.accelerator.process_index
        generator = TaggedScripts(trainer.processing_class)
        generator.unassigned = list(SCRIPTS)[rank * per_device_batch : (rank + 1) * per_device_batch]
        return generator

    trainer = RecordingGTPOTrainer(
        model=model_dir, reward_funcs=boxed_42, args=args, train_dataset=Dataset.from_dict({"prompt": [QUESTION] * 4}),
        rollout_func=CodeInterpreterRollout(args, generate_turn=scripted),
    )
    rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes
    trainer.train()

    record = trainer.records[0]
    rows = {}
    for tag, i in rows_by_tag(record, trainer.processing_class).items():
        mask = record["mask"][i]
        starts = [t for t in range(mask.shape[0]) if mask[t] == 1 and (t == 0 or mask[t - 1] == 0)]
        rows[tag] = [record["gtpo"][i, t].item() for t in starts]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as file:
        json.dump({"rank": rank, "world_size": world, "turn_advantages": rows}, file)
    trainer.end()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
