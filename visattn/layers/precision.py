"""Run a block's numerically sensitive ops in float32 inside mixed precision."""

from __future__ import annotations

from typing import Any

import torch


class full_precision:  # noqa: N801 - used like torch.autocast / torch.no_grad
    """``with full_precision(x) as x32:`` runs the body with autocast off and ``x32 = x.float()``.

    Only when autocast is on for ``x``'s device; otherwise ``x32`` is ``x`` itself and nothing is
    entered, so fp32 and bf16-weight models, tracing and export see exactly the plain ops. The caller
    casts its result back to ``x.dtype``.
    """

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self.device = x.device.type
        self.active = torch.is_autocast_enabled(self.device)
        self.context: Any = None

    def __enter__(self) -> torch.Tensor:
        if not self.active:
            return self.x
        self.context = torch.autocast(device_type=self.device, enabled=False)
        self.context.__enter__()
        return self.x.float()

    def __exit__(self, *exc: Any) -> None:
        if self.context is not None:
            self.context.__exit__(*exc)
            self.context = None
