"""Detection heads and the anchor-point box geometry they share with the loss."""

from visattn.heads.detect import (
    DetectHead,
    FlatOutputs,
    box_distances,
    decode_boxes,
    encode_boxes,
    flatten_outputs,
    make_anchors,
)

__all__ = ["DetectHead", "FlatOutputs", "box_distances", "decode_boxes", "encode_boxes", "flatten_outputs",
           "make_anchors"]
