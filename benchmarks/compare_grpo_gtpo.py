"""GRPO vs GTPO from the same model, data, seed and step budget, on the CPU, in one go.

Both use the same multi-turn code interpreter (GRPO: TRL's GRPOTrainer with `CodeInterpreterRollout` as its
rollout_func; GTPO: GTPOTrainer). Reports the training success rate per step and held-out pass@1 after training for
both, as a table (stdout + results.json) and a PNG plot, plus what GTPO's turn advantages looked like.

    python benchmarks/compare_grpo_gtpo.py --max_steps 20 --out runs/compare
"""

import argparse
import json
import os
import time

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from trl_gtpo import GTPOConfig, GTPOTrainer  # noqa: E402
from trl_gtpo.demo.data import load_math_dataset  # noqa: E402
from trl_gtpo.evaluation import evaluate, summary_table  # noqa: E402
from trl_gtpo.demo.models import resolve_model_name_or_path  # noqa: E402
from trl_gtpo.rewards import math_answer_reward  # noqa: E402
from trl_gtpo.interpreter.rollout import CodeInterpreterRollout  # noqa: E402
from trl_gtpo.interpreter.sandbox import SandboxPool  # noqa: E402


class History(TrainerCallback):
    def __init__(self):
        self.rows = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "reward" in logs:
            self.rows.append({"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}})


def train(kind: str, model_path: str, train_set, args) -> tuple[str, list[dict], float]:
    common = dict(
        output_dir=os.path.join(args.out, kind),
        per_device_train_batch_size=args.batch // args.gradient_accumulation_steps,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        gradient_checkpointing=False,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        temperature=1.0,
        beta=0.0,
        logging_steps=1,
        report_to="none",
        bf16=False,
        use_cpu=True,
        save_strategy="no",
        seed=args.seed,
    )
    gtpo_fields = dict(max_turns=args.max_turns)
    history = History()
    start = time.time()
    if kind == "gtpo":
        trainer = GTPOTrainer(
            model=model_path, reward_funcs=math_answer_reward, args=GTPOConfig(**common, **gtpo_fields),
            train_dataset=train_set, callbacks=[history],
        )
    else:
        rollout = CodeInterpreterRollout(GTPOConfig(**common, **gtpo_fields))
        trainer = GRPOTrainer(
            model=model_path, reward_funcs=math_answer_reward, args=GRPOConfig(**common),
            train_dataset=train_set, rollout_func=rollout, callbacks=[history, rollout.callback()],
        )
    trainer.train()
    trainer.save_model(common["output_dir"])
    return common["output_dir"], history.rows, time.time() - start


def held_out(model_path: str, test_set, args) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    with SandboxPool() as executor:
        return evaluate(model, tokenizer, test_set, executor, math_answer_reward, k=args.eval_k, max_turns=args.max_turns,
                        max_completion_length=args.max_completion_length, temperature=args.eval_temperature,
                        progress=False)


def plot(histories: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in histories.items():
        steps = [r["step"] for r in rows]
        axes[0].plot(steps, [r.get("rewards/math_answer_reward/mean", r["reward"]) for r in rows], marker="o", label=name)
        axes[1].plot(steps, [r.get("turns/mean", 0) for r in rows], marker="o", label=name)
    axes[0].set(xlabel="step", ylabel="success rate (training batch)", title="Success rate per step")
    axes[1].set(xlabel="step", ylabel="turns per trajectory", title="Turns per trajectory")
    for axis in axes:
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_name_or_path", default="default")
    parser.add_argument("--dataset_name", default="synthetic")
    parser.add_argument("--max_steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8, help="trajectories per step")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=2)
    parser.add_argument("--num_generations", type=int, default=4)
    parser.add_argument("--max_completion_length", type=int, default=160)
    parser.add_argument("--max_turns", type=int, default=3)
    parser.add_argument("--learning_rate", type=float, default=5e-6)
    parser.add_argument("--train_size", type=int, default=512)
    parser.add_argument("--eval_size", type=int, default=24)
    parser.add_argument("--eval_k", type=int, default=4)
    parser.add_argument("--eval_temperature", type=float, default=1.0, help="the training temperature: avg@k")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/compare")
    args = parser.parse_args()

    model_path = resolve_model_name_or_path(args.model_name_or_path)
    train_set = load_math_dataset(args.dataset_name, "train", limit=args.train_size, seed=args.seed)
    test_set = load_math_dataset(args.dataset_name, "test", limit=args.eval_size, seed=args.seed)
    os.makedirs(args.out, exist_ok=True)

    reports = {"base": held_out(model_path, test_set, args)}
    histories, seconds = {}, {}
    for kind in ("grpo", "gtpo"):
        path, histories[kind], seconds[kind] = train(kind, model_path, train_set, args)
        reports[kind] = held_out(path, test_set, args)

    print("\nTraining success rate per step (mean math_answer_reward of the batch):")
    print("step   " + "".join(f"{k:>8}" for k in histories))
    for i in range(max(len(rows) for rows in histories.values())):
        cells = [rows[i].get("rewards/math_answer_reward/mean", float("nan")) if i < len(rows) else float("nan") for rows in histories.values()]
        print(f"{i + 1:<7}" + "".join(f"{c:8.3f}" for c in cells))
    print(f"\nHeld-out ({args.dataset_name}/test, {len(test_set)} problems, {args.eval_k} samples each at "
          f"temperature {args.eval_temperature}):")
    print(summary_table(reports))
    print("\nSeconds of training: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    turn_keys = sorted({k for r in histories["gtpo"] for k in r if k.startswith("advantages/turn_")})
    if turn_keys:
        print("GTPO's mean advantage per turn index, averaged over steps: " + ", ".join(
            f"{k.split('/')[1]} {sum(r.get(k, 0) for r in histories['gtpo']) / len(histories['gtpo']):+.3f}" for k in turn_keys))
    results = {"args": vars(args), "histories": histories, "seconds": seconds,
               "held_out": {k: {m: v for m, v in r.items() if m != "problems"} for k, r in reports.items()}}
    with open(os.path.join(args.out, "results.json"), "w") as file:
        json.dump(results, file, indent=1)
    plot(histories, os.path.join(args.out, "learning_curves.png"))
    print(f"\nWrote {args.out}/results.json and {args.out}/learning_curves.png")


if __name__ == "__main__":
    main()
