"""Tensor operations visattn needs beyond torch/torchvision (with their ONNX translations)."""

from visattn.ops.nms import nms_select, onnx_translations

__all__ = ["nms_select", "onnx_translations"]
