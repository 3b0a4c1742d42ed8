"""RunConfig: the batch size and the execution provider, checked when the config is made."""
from __future__ import annotations

import pytest

from fcnquant.errors import DataError, ProviderError
from fcnquant.execute import LocalExecutor, RunConfig
from fcnquant.runtime import CPU_PROVIDERS


def test_the_default_and_cpu_provider_give_cpu_sessions():
    assert RunConfig().resolved().providers == CPU_PROVIDERS
    assert RunConfig(provider="cpu", threads=2).resolved().providers == CPU_PROVIDERS
    assert RunConfig(provider="cpu", threads=2).resolved().threads == 2


def test_a_provider_the_build_lacks_fails_when_the_config_is_made():
    with pytest.raises(ProviderError, match="onnxruntime-gpu"):
        RunConfig(provider="cuda")
    with pytest.raises(ProviderError, match="unknown execution provider 'nope'"):
        RunConfig(provider="nope")
    with pytest.raises(ProviderError, match="onnxruntime-gpu"):
        LocalExecutor(provider="CUDAExecutionProvider")
    with pytest.raises(DataError):
        RunConfig(batch_size=0)


def test_the_provider_of_a_given_executor_is_the_executors(monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    gpu = LocalExecutor(provider="cuda")
    assert RunConfig(executor=gpu, provider="cuda").resolved() is gpu
    assert RunConfig(executor=gpu).resolved().providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    with pytest.raises(ProviderError, match="give the provider to the executor"):
        RunConfig(executor=LocalExecutor(), provider="cuda")
