"""visattn: plug-in attention blocks for vision backbones."""

from visattn.attention import build_attention, list_attention

__version__ = "0.1.0"

__all__ = ["build_attention", "list_attention"]
