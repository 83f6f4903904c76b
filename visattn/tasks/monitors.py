"""Per-epoch health reports of the attention blocks in a model (e.g. an STN's transform statistics)."""

from __future__ import annotations

import sys

import lightning as L
from torch import nn


def stat_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Sub-modules that report statistics: they have ``epoch_stats()`` (and optionally ``stats_warning``)."""
    return {name or "model": module for name, module in model.named_modules()
            if callable(getattr(module, "epoch_stats", None))}


class BlockStatsMonitor(L.Callback):
    """Logs each reporting block's ``epoch_stats()`` as ``blocks/<module path>/<stat>`` once per training epoch.

    A block may also define ``stats_warning(stats) -> str | None``; a message becomes one warning line
    in the run's output (stderr) and is kept in ``warnings`` (epoch, module path, message). The task code
    never names a block: any module with ``epoch_stats`` is found by duck typing.
    """

    def __init__(self) -> None:
        self.warnings: list[tuple[int, str, str]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for path, module in stat_blocks(pl_module).items():
            stats = module.epoch_stats()
            short = path.removeprefix("model.").removesuffix(".block")  # the slot name, as in the attn spec
            for key, value in stats.items():
                pl_module.log(f"blocks/{short}/{key}", value, sync_dist=True)
            check = getattr(module, "stats_warning", None)
            message = check(stats) if callable(check) else None
            if message:
                epoch = trainer.current_epoch + 1
                self.warnings.append((epoch, short, message))
                if trainer.is_global_zero:
                    print(f"visattn: warning: epoch {epoch}: {type(module).__name__} at {short!r}: {message}",
                          file=sys.stderr, flush=True)
