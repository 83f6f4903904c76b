"""Detection data: the built-in shapes set, COCO JSON and YOLO txt readers, box-aware pipelines and
``DetectionDataModule``. Classification data sets live one level up in ``visattn.data``, with the pieces both
tasks share (``base``: decoding, checks and splits; ``transforms``: normalisation and seeding;
``datamodule.split_loader``)."""

from visattn.lazy import lazy_face
from visattn.registry import DETECTION_DATASETS

# The file that registers the detection data sets, and their names (listed without importing it).
DETECTION_DATASETS.declare("visattn.data.detect.datamodule", "coco", "shapes", "yolo")


def list_detection_datasets() -> list[str]:
    """Sorted names of the detection data sets."""
    return DETECTION_DATASETS.names()


__getattr__, __dir__ = lazy_face(__name__, {
    "DetectionDataModule": "visattn.data.detect.datamodule",
    "DetectionDataset": "visattn.data.detect.datamodule",
    "DetectionSamples": "visattn.data.detect.datamodule",
    "detection_collate": "visattn.data.detect.datamodule",
})

__all__ = ["DETECTION_DATASETS", "DetectionDataModule", "DetectionDataset", "DetectionSamples", "detection_collate",
           "list_detection_datasets"]
