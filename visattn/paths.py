"""Where visattn keeps files of its own outside a run: the per-user cache (matmul peaks, generated data sets)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Per-user cache folder: ``$XDG_CACHE_HOME/visattn`` or ``~/.cache/visattn``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "visattn"
