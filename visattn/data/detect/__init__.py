"""Detection data: the built-in shapes set, COCO JSON and YOLO txt readers, box-aware pipelines and
``DetectionDataModule``. Classification data sets live one level up in ``visattn.data``, with the pieces both
tasks share (``base``: decoding, checks and splits; ``transforms``: normalisation and seeding;
``datamodule.split_loader``)."""

from visattn.data.detect.datamodule import (
    DETECTION_DATASETS,
    DetectionDataModule,
    DetectionDataset,
    DetectionSamples,
    detection_collate,
    list_detection_datasets,
)

__all__ = ["DETECTION_DATASETS", "DetectionDataModule", "DetectionDataset", "DetectionSamples", "detection_collate",
           "list_detection_datasets"]
