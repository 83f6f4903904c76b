"""Training losses that are more than one call to ``torch.nn.functional``."""

from visattn.losses.detect import DetectionLoss, TaskAlignedAssigner, dfl_loss, pad_targets, pairwise_iou

__all__ = ["DetectionLoss", "TaskAlignedAssigner", "dfl_loss", "pad_targets", "pairwise_iou"]
