"""The identity contract: a block built with ``init="identity"`` leaves a trained network's output as it was.

Parametrised over the registry, every slot role of every backbone family and the detection neck. "Trained" is
emulated by random weights and BatchNorm statistics everywhere (a zero-initialised last BatchNorm would hide a
block that is not the identity), loaded into the model with the block from the plain model's state dict.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import visattn
from visattn.models.detector import build_detector

BLOCKS = [name for name in visattn.list_attention() if name != "none"]
GATES = ["se", "eca", "cbam", "channel_gate", "spatial_gate"]
SIZE = 32
FAMILIES = {  # tiny members of each family; every role of their slots is exercised
    "resnet18": {"base_width": 8},
    "resnet50": {"base_width": 8},
    "vit_tiny": {"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2},
    "swin_t": {"patch_size": 2, "window_size": 4, "embed_dim": 16, "depths": (2, 2), "num_heads": (1, 2)},
    "csp_n": {},
}


def trained(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random parameters and BatchNorm statistics, as a trained network has (deterministic in ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
    return model


def roles(model: nn.Module) -> list[str]:
    return sorted({slot.role for slot in visattn.list_slots(model)})


def flat(output) -> torch.Tensor:
    return torch.cat([t.flatten() for t in (output if isinstance(output, (list, tuple)) else [output])])


@functools.cache
def trained_reference(family: str) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, dict[str, list[str]]]:
    """The plain trained network of ``family`` (state dict), an input, its eval output, and its slots by role."""
    plain = trained(build(family, None, None)).eval()
    size = 64 if family == "detector" else SIZE
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = flat(plain(images))
    by_role = {role: [s.name for s in visattn.list_slots(plain) if s.role == role] for role in roles(plain)}
    return plain.state_dict(), images, reference, by_role


def build(family: str, attn, init: str | None) -> nn.Module:
    if family == "detector":
        return build_detector("csp_n", num_classes=3, img_size=64, attn=attn, attn_init=init)
    return visattn.build_model(family, num_classes=5, img_size=SIZE, backbone_args=FAMILIES[family], attn=attn,
                               attn_init=init)


def output_change(family: str, block: str, role: str, init: str = "identity") -> float:
    """Relative L2 change of the eval-mode output when ``block`` fills every slot of ``role`` in the trained net."""
    state, images, reference, by_role = trained_reference(family)
    model = build(family, {"block": block, "at": by_role[role]}, init).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(".block." in key for key in missing)
    with torch.no_grad():
        output = flat(model(images))
    return float((output - reference).norm() / reference.norm())


@pytest.mark.parametrize("family", [*sorted(FAMILIES), "detector"])
@pytest.mark.parametrize("block", BLOCKS)
def test_identity_init_keeps_a_trained_network(family, block):
    for role in trained_reference(family)[3]:
        change = output_change(family, block, role)
        assert change <= 1e-6, f"{block} in the {role} slots of {family}: output changed by {change:.3g}"


@pytest.mark.parametrize("block", GATES)
def test_paper_init_gates_change_a_trained_network(block):
    """The reason for the option: a published sigmoid gate starts near 0.5 and visibly changes the output."""
    assert output_change("resnet18", block, "block", init="paper") > 0.05


@pytest.mark.parametrize("block", GATES)
def test_identity_gates_learn(block):
    """An identity gate is not a dead one: one optimiser step moves it off the identity."""
    module = visattn.build_attention(block, 32, init="identity")
    images = torch.randn(4, 32, 8, 8)
    loss = (module(images) * torch.randn(4, 32, 8, 8)).sum()
    loss.backward()
    grads = [p.grad for p in module.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert grads, f"{block}: no parameter gets a gradient at the identity"
    torch.optim.SGD(module.parameters(), lr=0.1).step()
    assert not torch.equal(module(images), images)


def test_every_block_takes_init_and_rejects_unknown_values():
    for name in visattn.list_attention():
        visattn.build_attention(name, 16, init="paper")
        visattn.build_attention(name, 16, init="identity")
        with pytest.raises(ValueError, match="init"):
            visattn.build_attention(name, 16, init="zero")


def test_build_model_applies_attn_init_unless_the_spec_sets_it():
    model = visattn.build_model("resnet18", num_classes=5, backbone_args={"base_width": 8}, attn_init="identity",
                                attn=[{"block": "se", "at": "layer1.*"},
                                      {"block": "se", "at": "layer2.*", "args": {"init": "paper"}}])
    inits = {s.name: model.get_submodule(s.name).block.init for s in visattn.list_slots(model) if s.block}
    assert {v for k, v in inits.items() if k.startswith("layer1")} == {"identity"}
    assert {v for k, v in inits.items() if k.startswith("layer2")} == {"paper"}
    with pytest.raises(ValueError, match="attention init"):
        visattn.build_model("resnet18", attn="se", attn_init="zeros")
