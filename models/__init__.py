"""FCN model zoo (installed as fcnquant.models); needs torch.

Models: awesome-semantic-segmentation-pytorch's VGG16 FCN-32s/16s/8s, mmsegmentation's fcn_r50-d8/fcn_r101-d8 and
torchvision's fcn_resnet50/fcn_resnet101 (no torchvision needed), with checkpoint-compatible module trees, a width
multiplier for tiny variants, and ONNX export.
"""
from __future__ import annotations

from .checkpoint import load_checkpoint, read_state_dict
from .export import export_module, export_onnx
from .zoo import MODEL_NAMES, SPECS, ModelSpec, build_model, count_parameters, get_spec, init_random_weights

__all__ = [
    "MODEL_NAMES", "SPECS", "ModelSpec", "build_model", "count_parameters", "get_spec", "init_random_weights",
    "load_checkpoint", "read_state_dict", "export_module", "export_onnx",
]
