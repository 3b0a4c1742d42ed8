"""fcnquant.runtime: model bytes with extra graph outputs (outputs_patch) equal the model rebuilt with them;
sessions ask for exact int8 kernels on CPUs whose kernels saturate."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fcnquant.errors import ModelError
from fcnquant.graph import parse_without_weights, weights_by_reference
from fcnquant.runtime import PRECISE_INT8_ENTRY, int8_kernels_saturate, make_session, outputs_patch, with_outputs
from tests.calibrate.helpers import tiny_fcn
from tests.quantize.helpers import save_model, tiny_convnet


def test_patched_bytes_are_the_model_with_outputs(tmp_path):
    path = tiny_fcn(tmp_path / "m.onnx")
    raw = path.read_bytes()
    model = onnx.load_from_string(raw)
    names = ["r1", "s1", "a", "output"]  # "output" is already a graph output: not repeated
    patched = onnx.load_from_string(raw + outputs_patch(model, names))
    want = with_outputs(model, names)
    assert [o.name for o in patched.graph.output] == [o.name for o in want.graph.output] == ["output", "r1", "s1", "a"]
    assert patched.graph.node == want.graph.node and patched.graph.initializer == want.graph.initializer
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    a = ort.InferenceSession(raw + outputs_patch(model, names), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(want.SerializeToString(), providers=["CPUExecutionProvider"])
    for u, v in zip(a.run(None, {"input": x}), b.run(None, {"input": x})):
        np.testing.assert_array_equal(u, v)
    with pytest.raises(ModelError, match="nope"):
        outputs_patch(model, ["nope"])


_AVX512_CORE = {"avx2", "avx512f", "avx512bw", "avx512dq", "avx512vl"}


@pytest.mark.parametrize("flags, saturate", [
    ({"avx", "avx2", "fma"}, True),  # Haswell to Comet Lake, AMD Zen 1 to 3: VPMADDUBSW
    ({"avx2", "avx_vnni"}, False),  # Alder Lake and later client CPUs: VPDPBUSD
    (_AVX512_CORE, True),  # Skylake-SP: VPMADDUBSW on 512 bits
    (_AVX512_CORE | {"avx_vnni"}, True),  # MLAS's AVX-512 core kernels replace the AVX-VNNI ones
    (_AVX512_CORE | {"avx512_vnni"}, False),  # Cascade Lake and later Xeons, AMD Zen 4 and later: VPDPBUSDS
    (_AVX512_CORE | {"avx512_vnni", "avx_vnni", "amx_int8"}, False),  # Sapphire Rapids: AMX tiles
    (set(), True),  # no AVX2 or not x86: the entry costs nothing there
])
def test_int8_kernel_saturation_by_cpu_flags(flags, saturate):
    assert int8_kernels_saturate(set(flags)) is saturate


def test_sessions_ask_for_exact_int8_kernels_where_they_saturate(tmp_path):
    src = save_model(tiny_convnet(), tmp_path / "net.onnx")
    key, value = PRECISE_INT8_ENTRY
    opts = make_session(str(src)).get_session_options()
    if int8_kernels_saturate():
        assert opts.get_session_config_entry(key) == value
    else:  # a VNNI CPU: its exact kernels are kept (the entry would trade them for slower U8U8 ones)
        with pytest.raises(RuntimeError):
            opts.get_session_config_entry(key)


def test_provider_names_resolve_with_the_cpu_as_fallback(monkeypatch):
    from fcnquant.runtime import CPU_PROVIDERS, resolve_providers

    assert resolve_providers(None) == resolve_providers("cpu") == resolve_providers("CPU") == CPU_PROVIDERS
    assert resolve_providers("CPUExecutionProvider") == CPU_PROVIDERS
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert resolve_providers("cuda") == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert resolve_providers("TensorrtExecutionProvider") == ("TensorrtExecutionProvider", "CPUExecutionProvider")


def test_a_provider_missing_from_the_build_names_its_package(monkeypatch):
    from fcnquant.errors import ProviderError
    from fcnquant.runtime import resolve_providers

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ProviderError, match=r"CUDAExecutionProvider.*onnxruntime-gpu") as exc:
        resolve_providers("cuda")
    assert "\n" not in str(exc.value) and "cpu (CPUExecutionProvider)" in str(exc.value)
    with pytest.raises(ProviderError, match="onnxruntime-openvino"):
        resolve_providers("openvino")
    with pytest.raises(ProviderError, match=r"unknown execution provider 'warp'; available .*CPUExecutionProvider"):
        resolve_providers("warp")


def test_sessions_open_on_the_cpu_unless_told(tmp_path):
    from fcnquant.runtime import CPU_PROVIDERS

    path = save_model(tiny_convnet(), tmp_path / "m.onnx")
    assert make_session(path).get_providers() == list(CPU_PROVIDERS)
    assert make_session(path, providers=CPU_PROVIDERS).get_providers() == list(CPU_PROVIDERS)


def test_a_provider_that_cannot_start_is_an_error_not_a_silent_cpu_run(tmp_path, capsys):
    """onnxruntime opens the session on the CPU when a requested provider cannot start; fcnquant refuses it."""
    from fcnquant.errors import ProviderError

    path = save_model(tiny_convnet(), tmp_path / "m.onnx")
    # this CPU build of onnxruntime has no CUDA provider: it warns and opens the session on the CPU alone
    assert "CUDAExecutionProvider" not in ort.get_available_providers()
    started = r"'cuda \(CUDAExecutionProvider\)' is installed but could not start"
    with pytest.warns(UserWarning), pytest.raises(ProviderError, match=started) as exc:
        make_session(path, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert "\n" not in str(exc.value) and "--provider cpu" in str(exc.value)


def test_the_reason_onnxruntime_prints_for_a_failed_provider_is_kept_and_nothing_printed(tmp_path, monkeypatch, capsys):
    from fcnquant.errors import ProviderError

    path = save_model(tiny_convnet(), tmp_path / "m.onnx")
    real = ort.InferenceSession

    def falling_back(model, sess_options=None, providers=None, **kw):  # what onnxruntime-gpu does without a GPU
        print("*************** EP Error ***************")
        print(f"EP Error CUDA failure 100: no CUDA-capable device is detected when using {providers}")
        print("Falling back to ['CPUExecutionProvider'] and retrying.")
        print("****************************************")
        return real(model, sess_options=sess_options, providers=["CPUExecutionProvider"], **kw)

    monkeypatch.setattr(ort, "InferenceSession", falling_back)
    with pytest.raises(ProviderError) as exc:
        make_session(path, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert str(exc.value).startswith("execution provider 'cuda (CUDAExecutionProvider)' is installed but could not "
                                     "start: CUDA failure 100: "
                                     "no CUDA-capable device is detected (onnxruntime would run on the CPU instead)")
    assert capsys.readouterr().out == ""


def test_a_started_provider_keeps_the_session_and_turns_off_the_run_time_fallback():
    from fcnquant.runtime import check_started

    class Session:
        fallback = True

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

        def disable_fallback(self):
            self.fallback = False

    s = Session()
    check_started(s, "CUDAExecutionProvider")
    assert s.fallback is False


def _two_convs() -> onnx.ModelProto:
    """Conv 3->64 (3x3) + Relu, Conv 64->64 (3x3, 147 kB of weights: stored by reference) + Relu."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.2).astype(np.float32), n)
             for n, s in (("w1", (64, 3, 3, 3)), ("b1", (64,)), ("w2", (64, 64, 3, 3)), ("b2", (64,)))]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 3, 16, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 64, 16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_session_reads_weights_by_reference_from_the_model_file(tmp_path):
    """The model's structure with its weights referred to in the file, plus an outputs patch, built with the file's
    folder, gives what onnxruntime gives for the whole model with those outputs, bit for bit; with another folder
    onnxruntime cannot find the weights: ModelError."""
    model = _two_convs()
    path = save_model(model, tmp_path / "fcn model.onnx")
    raw = path.read_bytes()
    structure = parse_without_weights(raw)
    assert [t.name for t in structure.graph.initializer if not t.raw_data] == ["w2"]
    names = ["c1", "r1", "c2"]
    by_reference = weights_by_reference(raw, path.name) + outputs_patch(structure, names)
    assert len(by_reference) < len(raw) / 10
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    got = make_session(by_reference, weights_dir=tmp_path).run(None, {"input": x})
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    want = ort.InferenceSession(with_outputs(model, names).SerializeToString(), sess_options=opts,
                                providers=["CPUExecutionProvider"]).run(None, {"input": x})
    assert len(got) == len(want) == 4 and all(np.array_equal(a, b) for a, b in zip(got, want))
    with pytest.raises(ModelError, match="cannot load"):
        make_session(by_reference, weights_dir=tmp_path / "elsewhere")
