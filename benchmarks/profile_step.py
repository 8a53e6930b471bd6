"""Where a training step of examples/train_gtpo.py spends its time: generation split into prefill (prompt and, from
the second turn on, the re-encoded history) and decoding, the loss's forward (the log-prob pass), backward, optimizer,
rewards and the sandbox. Wall-clock timers around TRL's and transformers' own functions; the training itself is
unchanged. Arguments after `--` go to the training script.

    python benchmarks/profile_step.py -- --max_steps 1 --eval_size 0 ...   (e.g. scripts/train_default.sh's flags)
"""

import collections
import importlib.util
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

TOTALS = collections.defaultdict(float)
COUNTS = collections.Counter()
TURNS = []  # per _generate_single_turn call: rows, prompt width, new tokens, prefill s, decode s
_current = None


@contextmanager
def timed(name):
    start = time.perf_counter()
    try:
        yield
    finally:
        TOTALS[name] += time.perf_counter() - start
        COUNTS[name] += 1


def wrap(owner, attribute, name, around=None):
    original = getattr(owner, attribute)

    def wrapper(*args, **kwargs):
        with timed(name):
            return original(*args, **kwargs) if around is None else around(original, *args, **kwargs)

    setattr(owner, attribute, wrapper)


def install():
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer
    from transformers.models.llama.modeling_llama import LlamaForCausalLM
    from trl import GRPOTrainer

    def generate_single_turn(original, self, prompt_ids, *args, **kwargs):
        global _current
        _current = {"rows": len(prompt_ids), "prompt_width": max(len(p) for p in prompt_ids),
                    "prompt_tokens": sum(len(p) for p in prompt_ids), "prefill_s": 0.0, "decode_s": 0.0, "steps": 0}
        try:
            result = original(self, prompt_ids, *args, **kwargs)
        finally:
            TURNS.append(_current)
            _current = None
        _current_tokens = sum(len(ids) for ids in result[0])
        TURNS[-1]["new_tokens"] = _current_tokens
        return result

    def forward(original, self, *args, **kwargs):
        if _current is None or torch.is_grad_enabled():
            return original(self, *args, **kwargs)
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        start = time.perf_counter()
        output = original(self, *args, **kwargs)
        key = "prefill_s" if input_ids is not None and input_ids.shape[1] > 1 else "decode_s"
        _current[key] += time.perf_counter() - start
        _current["steps"] += key == "decode_s"
        return output

    wrap(GRPOTrainer, "_generate_single_turn", "generation (all turns)", generate_single_turn)
    wrap(LlamaForCausalLM, "forward", "model forward (all)", forward)
    wrap(GRPOTrainer, "_get_per_token_logps_and_entropies", "log-prob forward passes")
    wrap(GRPOTrainer, "_calculate_rewards", "rewards")
    wrap(Accelerator, "backward", "backward")
    wrap(AcceleratedOptimizer, "step", "optimizer step")
    wrap(GRPOTrainer, "training_step", "training_step (total)")


def main():
    argv = sys.argv[1:]
    argv = argv[argv.index("--") + 1 :] if "--" in argv else argv
    install()
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("train_gtpo", root / "examples" / "train_gtpo.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script_args, training_args, model_args = script.make_parser().parse_args_and_config(argv)
    start = time.perf_counter()
    script.main(script_args, training_args, model_args)
    wall = time.perf_counter() - start

    print(f"\n==== profile (wall {wall:.1f} s, of which training_step {TOTALS['training_step (total)']:.1f} s)")
    for name in sorted(TOTALS, key=TOTALS.get, reverse=True):
        print(f"{name:<28}{TOTALS[name]:>9.2f} s  ({COUNTS[name]} calls)")
    prefill = sum(t["prefill_s"] for t in TURNS)
    decode = sum(t["decode_s"] for t in TURNS)
    print(f"generation: prefill {prefill:.2f} s, decode {decode:.2f} s over {sum(t['steps'] for t in TURNS)} steps")
    print(f"{'turn call':<10}{'rows':>5}{'prompt width':>13}{'prompt tokens':>14}{'new tokens':>11}"
          f"{'decode steps':>13}{'prefill s':>10}{'decode s':>9}")
    for i, t in enumerate(TURNS):
        print(f"{i:<10}{t['rows']:>5}{t['prompt_width']:>13}{t['prompt_tokens']:>14}{t.get('new_tokens', 0):>11}"
              f"{t['steps']:>13}{t['prefill_s']:>10.2f}{t['decode_s']:>9.2f}")


if __name__ == "__main__":
    main()
