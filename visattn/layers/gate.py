"""The sigmoid gate shared by SE, ECA and CBAM, in the paper's form or starting as the identity.

``init="paper"``: ``sigmoid(z)``, the published block. Its value at initialisation is about 0.5, so a gate
inserted into a trained network halves what passes through it.

``init="identity"``: the same gate, scaled by two, with the layer that produces ``z`` zero-initialised by the
block: ``2 * sigmoid(0) = 1`` exactly, so the block returns its input bit for bit until it has trained (a
pretrained network keeps its outputs). The range is (0, 2) instead of (0, 1): the gate can damp or amplify.

Why this form and not ``x * (1 + a * (g - 1))`` with a learned scalar ``a = 0`` (the other way to start at the
identity): measured side by side (benchmarks/identity_pilot/README.md, 2 seeds each), both fine-tuned a pretrained
ResNet-18 to the same accuracy as no block at all, but with ``a = 0`` the gate's own weights get no gradient until
``a`` moves, and after the 6-epoch fine-tune ``a`` was only -0.02..-0.07: the block stayed a global scale whose gate
never learned. Here the zero layer gets its gradient at the first step. From scratch (CBAM, flagship settings)
this form gave 90.6 / 91.1 % and the scalar form 90.5 / 90.5 %; it adds no parameter and no op on the activation.
"""

from __future__ import annotations

import torch
from torch import nn

from visattn.layers.helpers import require

GATE_INITS = ("paper", "identity")


def check_init(owner: str, init: str) -> None:
    require(init in GATE_INITS, owner, "init", f"one of {list(GATE_INITS)}", init)


def gate(logits: torch.Tensor, init: str) -> torch.Tensor:
    """``sigmoid(logits)``, or ``2 * sigmoid(logits)`` for ``init="identity"`` (1 where the logits are 0)."""
    weights = torch.sigmoid(logits)
    return weights * 2.0 if init == "identity" else weights


def zero_(*modules: nn.Module) -> None:
    """Zero every parameter of ``modules`` (the layer whose output is the gate's logits)."""
    with torch.no_grad():
        for module in modules:
            for param in module.parameters():
                param.zero_()
