"""The graph index of compare (fcnquant.compare.graph): shape inference on the weightless skeleton."""
from __future__ import annotations


def test_shape_inference_on_the_skeleton_equals_the_whole_model(tmp_path):
    import onnx

    from fcnquant.compare.graph import _value_infos, skeleton
    from fcnquant.demo_models import demo_model_path
    from fcnquant.flow import calibrate

    quant = tmp_path / "q.onnx"
    calibrate(demo_model_path("fcn8s"), num_images=2, out=quant, progress=False)
    for path in (demo_model_path("fcn8s"), demo_model_path("fcn_r50_d8"), quant):
        m = onnx.load(str(path))
        bare, lifted = skeleton(m)
        assert lifted and len(bare.SerializeToString()) < len(m.SerializeToString()) / 2
        got, types = _value_infos(m)
        full = onnx.shape_inference.infer_shapes(m, strict_mode=False).graph
        want = {v.name: v for v in list(full.input) + list(full.value_info) + list(full.output)
                if v.type.tensor_type.elem_type}
        assert got.keys() == want.keys()
        assert all(got[k].SerializeToString() == want[k].SerializeToString() for k in want)
        assert all(types[t.name] == t.data_type for t in m.graph.initializer)
