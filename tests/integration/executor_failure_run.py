"""GTPO across processes whose executor fails on the last rank only (issue 30, item 6). Every rank writes what
stopped it (the exception, or "finished") to <out>/rank<RANK>.txt, then re-raises, so the test can check that every
rank stopped with the cause rather than waiting for the failed one in a collective.

    accelerate launch --config_file accelerate_configs/multi_process.yaml --num_processes 2 \
        tests/integration/executor_failure_run.py MODEL_DIR OUT_DIR
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(os.path.dirname(HERE)), os.path.dirname(HERE)]  # this checkout's trl_gtpo, tests/
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from datasets import Dataset  # noqa: E402

from trl_gtpo import GTPOConfig, GTPOTrainer  # noqa: E402
from trl_gtpo.interpreter.rollout import CodeInterpreterRollout  # noqa: E402

from helpers import QUESTION, SCRIPTS, ExecExecutor, TaggedScripts, boxed_42  # noqa: E402


class DownOnThisRank(ExecExecutor):
    def run(self, calls):
        raise ConnectionError(f"sandbox service down on rank {os.environ.get('RANK')}")


def main(model_dir: str, out_dir: str):
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    args = GTPOConfig(
        output_dir=os.path.join(out_dir, "trainer"), per_device_train_batch_size=2, num_generations=4,
        max_completion_length=96, max_steps=2, report_to="none", bf16=False, use_cpu=True, save_strategy="no",
        shaping_alpha=0.0, seed=0,
    )

    def scripted(trainer, stop_strings):
        generator = TaggedScripts(trainer.processing_class)
        generator.unassigned = list(SCRIPTS)[rank * 2 : (rank + 1) * 2]
        return generator

    executor = DownOnThisRank() if rank == world - 1 else ExecExecutor()
    trainer = GTPOTrainer(
        model=model_dir, reward_funcs=boxed_42, args=args, train_dataset=Dataset.from_dict({"prompt": [QUESTION] * 4}),
        rollout_func=CodeInterpreterRollout(args, executor=executor, generate_turn=scripted),
    )
    os.makedirs(out_dir, exist_ok=True)
    try:
        trainer.train()
    except BaseException as error:
        with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as file:
            file.write(f"{type(error).__name__}: {error}")
        raise
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as file:
        file.write("finished")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
