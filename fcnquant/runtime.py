"""onnxruntime session helpers: one place that opens models (on the CPU unless an execution provider is named) with
clear errors."""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from fcnquant.errors import ModelError, ProviderError

log = logging.getLogger(__name__)

#: onnxruntime graph transformers fcnquant turns off in every session it opens. ``WeightBiasQuantization`` gives
#: a Conv/ConvTranspose/Gemm that reads a DequantizeLinear but has float weights (a layer kept in float with
#: ``--exclude`` or by ``fcnquant tune``) per-tensor int8 weights at load time: the CPU would then measure a model
#: other than the one written (and the one an accelerator runs). fcnquant measures the graph as written.
DISABLED_OPTIMIZERS = ("WeightBiasQuantization",)

#: A session config entry fcnquant sets where onnxruntime's int8 kernels saturate. On x86 CPUs without VNNI (AVX2, or
#: AVX-512 without AVX512_VNNI: Haswell to Comet Lake, Skylake-SP, AMD Zen 1 to 3) MLAS multiplies u8 activations by s8
#: weights with VPMADDUBSW, which adds each pair of products into an int16 with saturation (2 x 255 x 127 = 64770 >
#: 32767): the QLinearConv onnxruntime fuses from a QDQ Conv (optimization "extended" and up) then computes a model
#: other than the one written. Measured with onnxruntime 1.32.0 on an AMD EPYC with AVX2 and no VNNI, in the tiny net
#: of tests/test_quantize_numerics.py: pair sums reach 40510, r1 codes come out up to 59 steps low and the output up to
#: 1.18 off, where one r1 step moves it by 0.038; with the entry it is within 2.4e-7 of the numpy reference (1 and 2
#: threads alike). The entry makes the int8 weights u8 at load time (w + 128, zero point + 128: the same products) for
#: the exact U8U8 kernels. Since onnxruntime 1.25 it does so on VNNI CPUs too, whose kernels are exact and faster, so
#: it is set only where the kernels saturate or that cannot be told.
PRECISE_INT8_ENTRY = ("session.x64quantprecision", "1")


#: The providers of every session by default: onnxruntime's CPU provider alone.
CPU_PROVIDERS = ("CPUExecutionProvider",)

#: Short provider names (``--provider cuda``) and the onnxruntime provider each stands for.
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "directml": "DmlExecutionProvider",
    "dml": "DmlExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "cann": "CANNExecutionProvider",
    "vitisai": "VitisAIExecutionProvider",
}

#: The pip package that brings a provider (instead of the plain ``onnxruntime`` package).
PROVIDER_PACKAGES = {
    "CUDAExecutionProvider": "onnxruntime-gpu",
    "TensorrtExecutionProvider": "onnxruntime-gpu (and TensorRT)",
    "OpenVINOExecutionProvider": "onnxruntime-openvino",
    "DmlExecutionProvider": "onnxruntime-directml",
    "ROCMExecutionProvider": "onnxruntime-rocm",
    "MIGraphXExecutionProvider": "onnxruntime-migraphx",
    "QNNExecutionProvider": "onnxruntime-qnn",
    "CoreMLExecutionProvider": "onnxruntime (the macOS wheel)",
}


def resolve_providers(provider: str | Sequence[str] | None) -> tuple[str, ...]:
    """Returns the onnxruntime providers list of a session for ``provider``, checked against the installed build.

    ``provider``: None or ``"cpu"`` (the CPU alone, without importing onnxruntime), a short name of
    :data:`PROVIDER_ALIASES`, a full onnxruntime name (``"CUDAExecutionProvider"``), or an already resolved
    sequence. Any provider but the CPU is followed by the CPU, onnxruntime's fallback for the nodes it cannot run.
    Raises ProviderError (one line) for a name onnxruntime does not know, listing the available ones, or for a
    provider this onnxruntime build lacks, naming the package that brings it.
    """
    if provider is None:
        return CPU_PROVIDERS
    if not isinstance(provider, str):
        names = tuple(provider)
        for name in names:
            resolve_providers(name)
        return names
    name = PROVIDER_ALIASES.get(provider.lower(), provider)
    if name == CPU_PROVIDERS[0]:
        return CPU_PROVIDERS
    import onnxruntime as ort

    available = ort.get_available_providers()
    if name not in available:
        shown = ", ".join(_short(a) for a in available)
        if name not in ort.get_all_providers() and name not in PROVIDER_PACKAGES:
            raise ProviderError(f"unknown execution provider '{provider}'; available in this onnxruntime build: "
                                f"{shown}")
        package = PROVIDER_PACKAGES.get(name, "an onnxruntime build with it")
        raise ProviderError(f"execution provider '{provider}' ({name}) is not in the installed onnxruntime "
                            f"{ort.__version__} (available: {shown}); it comes with {package}: "
                            f"pip uninstall onnxruntime, then pip install {package.split()[0]}")
    return (name, *CPU_PROVIDERS)


def _short(name: str) -> str:
    """Returns ``"cpu (CPUExecutionProvider)"`` for a provider with a short name, else the name."""
    alias = next((a for a, full in PROVIDER_ALIASES.items() if full == name), None)
    return f"{alias} ({name})" if alias else name


def int8_kernels_saturate(flags: set[str] | None = None) -> bool:
    """Whether onnxruntime's x86 u8 x s8 kernels saturate on this CPU (True where that cannot be told).

    ``flags``: CPU flags as Linux's /proc/cpuinfo names them (read from it when None). MLAS's choice, in its order:
    AVX2 kernels, replaced by AVX-VNNI ones, both replaced by AVX-512 core (F, BW, DQ, VL) ones, replaced in turn by
    AVX512_VNNI ones (or AMX); only the VNNI ones sum into int32 without an int16 step.
    """
    if flags is None:
        flags = _cpu_flags()
        if flags is None:
            return True
    if "avx2" not in flags:
        return True  # SSE kernels, or not x86 (there onnxruntime compiles the entry out): setting it costs nothing
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        return "avx512_vnni" not in flags
    return "avx_vnni" not in flags


@functools.cache
def _cpu_flags() -> frozenset[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), None)
    return frozenset(line.partition(":")[2].split()) if line is not None else None


def make_session(
    model: str | os.PathLike[str] | bytes,
    *,
    threads: int = 0,
    optimization: str = "all",
    mem_arena: bool = True,
    disabled_optimizers: Sequence[str] = DISABLED_OPTIMIZERS,
    spinning: bool = True,
    providers: Sequence[str] = CPU_PROVIDERS,
    weights_dir: str | os.PathLike[str] | None = None,
):
    """Returns an ``onnxruntime.InferenceSession`` for a model path or serialized bytes (on the CPU by default).

    ``optimization`` is one of ``"all"`` (ORT_ENABLE_ALL), ``"extended"``, ``"basic"``, ``"none"``; another name
    raises ModelError. ``threads=0`` lets onnxruntime choose the intra-op thread count (its default).
    ``mem_arena=False`` turns off onnxruntime's CPU memory arena (lower peak memory when many intermediate tensors
    are fetched, e.g. in compare). ``disabled_optimizers``: onnxruntime transformers left out (see
    ``DISABLED_OPTIMIZERS``; empty: none). ``spinning=False`` stops the intra-op threads from spin-waiting after
    each run: for sessions that take turns (compare runs two or three per image), and for sessions whose runs
    alternate with numpy work on the same cores (calibration's observers), where spinning threads take the cores
    the other work needs. ``providers``: onnxruntime's providers list, in order of preference (see
    :func:`resolve_providers`, which checks it against the installed build before any work). ``weights_dir``: the
    folder that the external-data locations of serialized ``model`` bytes are relative to (see
    :func:`fcnquant.graph.weights_by_reference`).
    """
    import onnxruntime as ort

    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }
    if optimization not in levels:
        raise ModelError(f"unknown optimization level '{optimization}'; choose one of {', '.join(levels)}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = levels[optimization]
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    opts.enable_cpu_mem_arena = mem_arena
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if weights_dir is not None:
        opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(weights_dir))
    if int8_kernels_saturate():
        opts.add_session_config_entry(*PRECISE_INT8_ENTRY)
    if not isinstance(model, bytes):
        p = Path(model)
        if not p.is_file():
            raise ModelError(f"model file not found: {p}")
        model = str(p)
    wanted = providers[0] if providers else CPU_PROVIDERS[0]
    if wanted != CPU_PROVIDERS[0]:
        _preload_provider_libraries(ort)
    printed = io.StringIO()
    try:
        # onnxruntime prints an "EP Error" and retries on the CPU when a provider cannot start: captured, and
        # turned into a ProviderError below instead of a silent run on the CPU.
        with contextlib.redirect_stdout(printed):
            session = ort.InferenceSession(model, sess_options=opts, providers=list(providers),
                                           disabled_optimizers=list(disabled_optimizers) or None)
    except Exception as exc:
        name = "model" if isinstance(model, bytes) else model
        raise ModelError(f"onnxruntime cannot load {name}: {exc}") from exc
    if wanted != CPU_PROVIDERS[0]:
        check_started(session, wanted, printed.getvalue())
    return session


def check_started(session, wanted: str, printed: str = "") -> None:
    """Raises ProviderError (one line) when ``session`` does not run on provider ``wanted``: onnxruntime falls
    back to the CPU when a provider in its build cannot start (no GPU, CUDA or cuDNN libraries missing). Turns off
    onnxruntime's run-time fallback of the session too, so a provider failing later raises instead of printing."""
    if wanted not in session.get_providers():
        reason = next((line.strip() for line in printed.splitlines() if "EP Error" in line and "****" not in line),
                      "")
        reason = reason.split(" when using ")[0].replace("EP Error", "").strip(" :")
        raise ProviderError(f"execution provider '{_short(wanted)}' is installed but could not start"
                            f"{': ' + reason if reason else ''} (onnxruntime would run on the CPU instead); check "
                            f"the GPU driver and the CUDA/cuDNN libraries onnxruntime {_ort_version()} needs, or "
                            f"use --provider cpu")
    session.disable_fallback()


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__


@functools.cache
def _preload_provider_libraries(ort) -> None:
    """Loads the CUDA and cuDNN libraries of pip's nvidia-* packages where onnxruntime can (``preload_dlls``,
    onnxruntime >= 1.21; ``pip install onnxruntime-gpu[cuda,cudnn]`` brings them), once per process; what it
    prints goes to the debug log."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            preload()
    except Exception as exc:  # missing libraries show when the session starts; this is only a help
        log.debug("onnxruntime.preload_dlls failed: %s", exc)
    if printed.getvalue().strip():
        log.debug("onnxruntime.preload_dlls: %s", printed.getvalue().strip())


def input_spec(session) -> tuple[str, tuple[int | None, ...]]:
    """Returns the (name, shape) of a single-input session; dynamic dims are None.

    Raises ModelError (one line, naming the input) for an input that is not one NCHW image batch: another rank,
    or a channels-last (NHWC) layout, recognised by a last dimension of 1 or 3 after a second one that is not.
    """
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"expected a model with one image input, found {len(inputs)}: {[i.name for i in inputs]}")
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in inputs[0].shape)
    if len(shape) != 4:
        raise ModelError(f"expected an NCHW image input, got shape {inputs[0].shape} for '{inputs[0].name}'")
    if shape[3] in (1, 3) and shape[1] not in (1, 3):
        raise ModelError(f"input '{inputs[0].name}' has shape {_dims(inputs[0].shape)}, channels last (NHWC); "
                         "fcnquant feeds NCHW images (N x 3 x H x W): export the model with an NCHW input")
    return inputs[0].name, shape


def _dims(shape) -> str:
    return "x".join(str(d) if isinstance(d, int) else (d or "?") for d in shape)


def fixed_hw(session) -> tuple[int, int] | None:
    """Returns the model's fixed input (H, W), or None when either is dynamic."""
    _, shape = input_spec(session)
    h, w = shape[2], shape[3]
    return (h, w) if h is not None and w is not None else None


_NUMPY_INPUT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def input_dtype(session) -> type:
    """Returns the numpy dtype of a session's image input (float16 for an fp16 model converted with its I/O).

    Raises ModelError (one line, naming the input) for an input of another type, e.g. uint8 pixels.
    """
    first = session.get_inputs()[0]
    if first.type not in _NUMPY_INPUT_TYPES:
        kind = first.type.removeprefix("tensor(").removesuffix(")")
        raise ModelError(f"input '{first.name}' has type {kind}; fcnquant feeds normalized float images "
                         "(float, float16 or double): export the model with a float input and the "
                         "normalization outside it")
    return _NUMPY_INPUT_TYPES[first.type]


def run_logits(session, batch: np.ndarray, output_names: Sequence[str] | None = None) -> list[np.ndarray]:
    """Returns the session's outputs (the first is the [N, C, H, W] logits) for one NCHW image batch.

    The batch is cast to the model's input type (float32, or float16 for an fp16 model with fp16 I/O).
    """
    name, _ = input_spec(session)
    feed = np.ascontiguousarray(batch, input_dtype(session))
    return session.run(list(output_names) if output_names else None, {name: feed})


#: the heights and widths of the zero image :func:`check_model_runs` feeds where the model's are dynamic, in turn
#: until one runs: multiples of 32, so every stride of an FCN backbone divides them; the larger one for models whose
#: fixed-size pooling or crops need more than the smaller
PROBE_SIZES = (64, 512)

#: numpy types of the zero inputs :func:`check_model_runs` feeds, by onnxruntime's type string
_PROBE_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
                "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int32)": np.int32,
                "tensor(int64)": np.int64, "tensor(bool)": np.bool_}


def check_model_runs(path: str | os.PathLike[str], label: str | os.PathLike[str] | None = None) -> None:
    """Raises ModelError (one line) unless onnxruntime loads the model file ``path`` and runs it on zeros.

    The session opens the file itself, so weights in external data files beside it are found. Each input gets
    zeros of its own type and shape: a dynamic batch is 1, a dynamic channel count 3 (NCHW: the last dimension
    is not a fixed 1 or 3), other dynamic sizes each of :data:`PROBE_SIZES` in turn until one runs. ``label`` names
    the model in the message (default: ``path``).
    """
    name = label if label is not None else path
    try:
        session = make_session(path, spinning=False)
    except ModelError as exc:
        cause = " ".join(str(exc.__cause__ or exc).split())
        raise ModelError(f"the model written for {name} does not load in onnxruntime ({cause}); nothing was "
                         "written") from exc
    inputs = [(i.name, [d if isinstance(d, int) and d > 0 else None for d in i.shape], i.type)
              for i in session.get_inputs()]
    dynamic = any(None in dims for _, dims, _ in inputs)
    for size in PROBE_SIZES if dynamic else PROBE_SIZES[:1]:
        feeds = {name: np.zeros(_probe_dims(dims, size), _PROBE_TYPES.get(kind, np.float32))
                 for name, dims, kind in inputs}
        try:
            session.run(None, feeds)
            return
        except Exception as exc:  # onnxruntime raises its own assorted error types
            cause = " ".join(str(exc).split())
    raise ModelError(f"the model written for {name} loads but does not run in onnxruntime ({cause}); nothing "
                     "was written")


def _probe_dims(dims: list[int | None], size: int) -> list[int]:
    """Returns ``dims`` with each dynamic one filled: batch 1, NCHW channels 3, any other ``size``."""
    nchw = len(dims) == 4 and dims[3] not in (1, 3)
    return [d if d is not None else 1 if k == 0 else 3 if k == 1 and nchw else size for k, d in enumerate(dims)]


@contextlib.contextmanager
def written_model(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` to save a model to; renamed onto ``path`` only when onnxruntime loads
    and runs it (:func:`check_model_runs`), else removed with ModelError. Otherwise like ``fcnquant._io.atomic_path``
    (inside ``all_or_nothing`` the rename waits for the end of that block)."""
    from fcnquant._io import atomic_path

    with atomic_path(path) as tmp:
        yield tmp
        check_model_runs(tmp, path)


def with_outputs(model, names: Sequence[str]):
    """Returns a copy of ``model`` (ModelProto) whose graph also outputs the intermediate tensors ``names``.

    Tensors already among the graph outputs are not duplicated. Output types are left unspecified
    (onnxruntime infers them), so the copy works for float, fp16 and quantized tensors alike.
    """
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    produced = {t for n in out.graph.node for t in n.output} | {i.name for i in out.graph.input}
    for name in names:
        if name not in produced:
            raise ModelError(f"tensor '{name}' is not produced by any node of the model")
        if name not in present:
            out.graph.output.append(onnx.ValueInfoProto(name=name))
            present.add(name)
    return out


def outputs_patch(model, names: Sequence[str]) -> bytes:
    """Returns bytes that, appended to the serialized ``model``, make its graph also output the tensors ``names``.

    Protobuf parses concatenated messages as their merge: the graph sub-messages merge and repeated fields
    (``graph.output``) are appended. So ``model_bytes + outputs_patch(model, names)`` is the serialized
    :func:`with_outputs` model without copying or re-serializing the model (61 MB for fcn8s: ~0.2 s less).
    Names must be produced by the model (ModelError otherwise); tensors already among the outputs are skipped.
    """
    import onnx

    present = {o.name for o in model.graph.output}
    produced = {t for n in model.graph.node for t in n.output} | {i.name for i in model.graph.input}
    patch = onnx.ModelProto()
    for name in dict.fromkeys(names):
        if name not in produced:
            raise ModelError(f"tensor '{name}' is not produced by any node of the model")
        if name not in present:
            patch.graph.output.append(onnx.ValueInfoProto(name=name))
    return patch.SerializeToString()
