from visattn.layers.helpers import make_divisible, require
from visattn.layers.slot import AttentionSlot, apply_slot_nhwc, apply_slot_tokens

__all__ = ["AttentionSlot", "apply_slot_nhwc", "apply_slot_tokens", "make_divisible", "require"]
