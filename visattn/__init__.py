"""visattn: plug-in attention blocks for vision backbones.

The names below are imported on first use (PEP 562), so ``import visattn`` and ``visattn --help`` import no torch.
"""

from visattn.lazy import lazy_face

__version__ = "0.1.0"

__getattr__, __dir__ = lazy_face(__name__, {
    "build_attention": "visattn.attention",
    "list_attention": "visattn.attention",
    "list_backbones": "visattn.backbones",
    "build_model": "visattn.models.build",
    "fill_slots": "visattn.models.build",
    "list_slots": "visattn.models.build",
    "load_pretrained": "visattn.models.weights",
    "count": "visattn.complexity",
    "load": "visattn.api",
    "train": "visattn.api",
    "Run": "visattn.api",
    "Predictor": "visattn.api",
    "TrainConfig": "visattn.config",
})

__all__ = [
    "Predictor",
    "Run",
    "TrainConfig",
    "train",
    "build_attention",
    "build_model",
    "count",
    "fill_slots",
    "list_attention",
    "list_backbones",
    "list_slots",
    "load",
    "load_pretrained",
]
