from visattn.layers.conv import SPPF, C2f, ConvNormAct
from visattn.layers.helpers import make_divisible, require
from visattn.layers.slot import AttentionSlot, apply_slot_nhwc, apply_slot_tokens, empty_slots, slot_modules

__all__ = ["SPPF", "AttentionSlot", "C2f", "ConvNormAct", "apply_slot_nhwc", "apply_slot_tokens", "empty_slots",
           "make_divisible", "require", "slot_modules"]
