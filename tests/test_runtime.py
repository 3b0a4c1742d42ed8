"""The collection session's model bytes: the output patch, and models whose weights are external data."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fcnquant.calibrate.collect import collect_stats
from fcnquant.data import get_preset, iter_batches, open_dataset
from fcnquant.errors import ModelError
from fcnquant.runtime import outputs_patch, with_outputs
from tests.calibrate.helpers import OBSERVED, tiny_fcn


@pytest.fixture(scope="module")
def voc(synthetic_voc):
    return synthetic_voc(train=3, val=0, size=40, seed=5)


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


def test_external_data_model_collects_the_same_statistics(tmp_path, voc):
    path = tiny_fcn(tmp_path / "m.onnx")
    ext = tmp_path / "ext" / "m.onnx"
    ext.parent.mkdir()
    onnx.save(onnx.load(str(path)), str(ext), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    assert (ext.parent / "weights.bin").is_file()
    ds = open_dataset(voc, "train")
    a = collect_stats(path, ds, None, progress=False)
    b = collect_stats(ext, ds, None, progress=False)
    assert list(a.tensors) == list(b.tensors) == OBSERVED
    for name in OBSERVED:
        np.testing.assert_array_equal(a.tensors[name].hist.counts, b.tensors[name].hist.counts)
        assert (a.tensors[name].min, a.tensors[name].max) == (b.tensors[name].min, b.tensors[name].max)
    # and the values are the model's: min/max of r1 from an independent session
    sess = ort.InferenceSession(with_outputs(onnx.load(str(path)), ["r1"]).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    pre = get_preset("awesome", model_hw=(32, 32))
    r1 = np.concatenate([sess.run(["r1"], {"input": bt.images})[0] for bt in iter_batches(ds, pre, batch_size=1)])
    assert (b.tensors["r1"].min, b.tensors["r1"].max) == (float(r1.min()), float(r1.max()))
