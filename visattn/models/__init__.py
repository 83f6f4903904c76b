"""Models: a backbone with attention blocks in its slots (``build``), its weights from a file (``weights``), the
detector built on it (``detector``) and the record that rebuilds either one without the training code (``spec``)."""

from visattn.lazy import lazy_face

__getattr__, __dir__ = lazy_face(__name__, {
    "AttnSpec": "visattn.models.build",
    "SlotInfo": "visattn.models.build",
    "build_model": "visattn.models.build",
    "fill_slots": "visattn.models.build",
    "list_slots": "visattn.models.build",
    "LoadReport": "visattn.models.weights",
    "load_pretrained": "visattn.models.weights",
    "measure_output_change": "visattn.models.weights",
    "read_state_dict": "visattn.models.weights",
    "Detector": "visattn.models.detector",
    "DetectorWithNMS": "visattn.models.detector",
    "build_detector": "visattn.models.detector",
    "postprocess": "visattn.models.detector",
    "split_detections": "visattn.models.detector",
})

__all__ = ["AttnSpec", "Detector", "DetectorWithNMS", "LoadReport", "SlotInfo", "build_detector", "build_model",
           "fill_slots", "list_slots", "load_pretrained", "measure_output_change", "postprocess", "read_state_dict",
           "split_detections"]
