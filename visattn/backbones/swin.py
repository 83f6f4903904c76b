"""Swin Transformer (placeholder until written)."""
