"""Kept for installs made before ``visattn.cli``: their ``visattn`` script imports ``visattn.commands.main``
(``pip install -e .`` writes one that imports ``visattn.cli.main``)."""

from visattn.cli.main import main

__all__ = ["main"]
