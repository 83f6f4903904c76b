"""Vision Transformer (placeholder until written)."""
