"""Executors carry their onnxruntime providers to every session a shard opens."""
from __future__ import annotations

from fcnquant.execute import LocalExecutor
from fcnquant.runtime import CPU_PROVIDERS


def _providers_of_session(ctx):
    return tuple(ctx.session("model").get_providers()), ctx.providers


def test_shard_sessions_get_the_executors_providers(tmp_path, monkeypatch):
    import fcnquant.runtime
    from tests.quantize.helpers import save_model, tiny_convnet

    path = save_model(tiny_convnet(), tmp_path / "m.onnx")
    [(opened, carried)] = LocalExecutor(progress=False).map(_providers_of_session, None, [], models={"model": path})
    assert opened == carried == CPU_PROVIDERS
    seen = []
    real = fcnquant.runtime.make_session
    monkeypatch.setattr(fcnquant.runtime, "make_session",
                        lambda m, **o: seen.append(o["providers"]) or real(m, threads=o["threads"]))
    ex = LocalExecutor(progress=False)
    ex.providers = ("CUDAExecutionProvider", "CPUExecutionProvider")  # as a GPU build resolves "cuda"
    ex.map(_providers_of_session, None, [], models={"model": path})
    assert seen == [ex.providers]
