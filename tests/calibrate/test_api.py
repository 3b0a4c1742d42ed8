"""The calibration entry points on the tiny FCN: table and statistics in one call, and the int8 model with out=."""
from __future__ import annotations

import pytest

from fcnquant.errors import CalibrationError


def test_calibrate_api_returns_table_and_stats(model, voc):
    from fcnquant.calibrate import calibrate, compute_table

    table, stats = calibrate(model, voc.root, method="percentile", num_images=3, params={"percentile": 99.0},
                             progress=False, return_stats=True)
    assert len(table.image_ids) == 3 and table.method == "percentile" and table.params["percentile"] == 99.0
    assert table.to_dict()["tensors"] == compute_table(stats, "percentile", percentile=99.0).to_dict()["tensors"]
    with pytest.raises(CalibrationError, match="bogus"):  # refused before any inference
        calibrate(model, voc.root, params={"bogus": 1}, progress=False)


def test_calibrate_api_out_emits_the_int8_model(model, voc, tmp_path):
    import onnx

    from fcnquant.flow import calibrate

    table = calibrate(model, voc.root, method="minmax", num_images=2, target="tensorrt", progress=False,
                      out=tmp_path / "m.int8.onnx").table
    q = onnx.load(str(tmp_path / "m.int8.onnx"))
    zero_points = [i for i in q.graph.initializer if i.name.endswith("zero_point")]
    assert zero_points and all(not onnx.numpy_helper.to_array(z).any() for z in zero_points)  # tensorrt: zp 0
    scales = {onnx.numpy_helper.to_array(i).item() for i in q.graph.initializer
              if i.name.endswith("_scale") and onnx.numpy_helper.to_array(i).size == 1}
    assert any(abs(s - e.scale) <= 1e-7 * e.scale for e in table.tensors.values() for s in scales)
