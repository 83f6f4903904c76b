"""Any timm model as a visattn backbone: ``timm:<name>``, with slots found from what timm itself reports.

The model is ``timm.create_model(name, pretrained=False, ...)``, unedited, held as ``model``: its state-dict keys
are timm's behind a ``model.`` prefix (a timm file gets the prefix when loaded, see ``adapt_pretrained``). The slots
live in the wrapper's own tree and forward hooks on timm's modules call them:

- ``input`` on the image (role "input");
- ``stages.I.slot`` after each feature stage (role "stage"): I indexes timm's ``feature_info``, the order
  ``forward_intermediates`` uses, so a stem that timm reports (ResNet's ``act1``) is ``stages.0``;
- ``stages.I.blocks.J.slot`` after each block (role "after_block") of a stage made of a sequence of blocks: the
  blocks that run after feature I-1 up to feature I (a ``Sequential``/``ModuleList``, a stage's ``blocks``, or a
  ``*Stage`` of same-type children);
- ``stages.I.blocks.J.branch`` inside the block (role "block") for the block classes in ``BRANCH_POINTS``: on the
  residual branch before the add, or, in inverted residuals, where the family puts its squeeze-excitation.

Each place is checked by one eval forward of a zero image when the model is built: the tensor found there must be
(B, C, H, W), (B, H, W, C) or tokens (B, prefix + H*W, C) on the image's grid, and the module must run once per
forward. A place that fails gets no slot and ``unslotted`` says why. A hook returns at once while its slot is
empty, so an empty model computes exactly what timm's does; state-dict keys change only by a filled slot's
``<slot>.block.*``. Slots on tokens keep the grid of the build size (timm's ViT and Swin fix their input size).
"""

from __future__ import annotations

import contextlib
import difflib
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import timm
import torch
from torch import nn

from visattn.backbones.base import Backbone, StageInfo
from visattn.errors import BadArgumentError, BadValueError, UnknownNameError
from visattn.layers import AttentionSlot, apply_slot_nhwc, apply_slot_tokens, require
from visattn.registry import BACKBONES

PREFIX = "timm"
# Block class -> (its submodule, "after" its output | "before" its first input): where the "block" role sits.
# Residual blocks: the end of the residual branch, before drop-path and the add (where SE/CBAM sit in their papers).
# Inverted residuals (MBConv and kin): where the family puts its SE, after the depthwise conv on the expanded
# channels, after the model's own SE where it has one.
BRANCH_POINTS: dict[str, tuple[str, str]] = {
    "timm.models.resnet.BasicBlock": ("bn2", "after"),
    "timm.models.resnet.Bottleneck": ("bn3", "after"),
    "timm.models.resnest.ResNestBottleneck": ("bn3", "after"),
    "timm.models.res2net.Bottle2neck": ("bn3", "after"),
    "timm.models.senet.SEResNetBlock": ("bn2", "after"),
    "timm.models.senet.SEBottleneck": ("bn3", "after"),
    "timm.models.senet.SEResNetBottleneck": ("bn3", "after"),
    "timm.models.senet.SEResNeXtBottleneck": ("bn3", "after"),
    "timm.models.sknet.SelectiveKernelBasic": ("conv2", "after"),
    "timm.models.sknet.SelectiveKernelBottleneck": ("conv3", "after"),
    "timm.models.resnetv2.Bottleneck": ("drop_path", "before"),
    "timm.models.resnetv2.PreActBasic": ("drop_path", "before"),
    "timm.models.resnetv2.PreActBottleneck": ("drop_path", "before"),
    "timm.models.regnet.Bottleneck": ("conv3", "after"),
    "timm.models.regnet.PreBottleneck": ("conv3", "after"),
    "timm.models.nfnet.NormFreeBlock": ("drop_path", "before"),
    "timm.models.cspnet.BottleneckBlock": ("drop_path", "before"),
    "timm.models.convnext.ConvNeXtBlock": ("drop_path", "before"),
    "timm.models.byobnet.BasicBlock": ("drop_path", "before"),
    "timm.models.byobnet.BottleneckBlock": ("drop_path", "before"),
    "timm.models.efficientvit_mit.ResidualBlock": ("main", "after"),
    "timm.models.efficientvit_mit.EfficientVitBlock": ("local_module.main", "after"),
    "timm.models.efficientvit_msra.EfficientVitBlock": ("ffn1.m", "after"),
    "timm.models.vision_transformer.Block": ("drop_path2", "before"),
    "timm.models.swin_transformer.SwinTransformerBlock": ("drop_path2", "before"),
    "timm.models.swin_transformer_v2.SwinTransformerV2Block": ("drop_path2", "before"),
    "timm.models._efficientnet_blocks.InvertedResidual": ("se", "after"),
    "timm.models._efficientnet_blocks.DepthwiseSeparableConv": ("se", "after"),
    "timm.models._efficientnet_blocks.EdgeResidual": ("se", "after"),
    "timm.models._efficientnet_blocks.UniversalInvertedResidual": ("se", "after"),
    "timm.models.rexnet.LinearBottleneck": ("act_dw", "before"),
    "timm.models.ghostnet.GhostBottleneck": ("ghost2", "before"),
}
MAX_PREFIX = 16  # class, distillation and register tokens before the patch tokens
# create_model arguments the builder sets itself (or refuses: nothing is downloaded, the slots need the full model)
MANAGED_ARGS = ("model_name", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "num_classes", "in_chans",
                "features_only", "drop_rate", "drop_path_rate", "checkpoint_path", "cache_dir")


class HookedSlot(AttentionSlot):
    """An ``AttentionSlot`` applied by a forward hook on a timm module: on its output (``when`` "after") or on its
    first input ("before"), in the layout found there: "nchw", "nhwc" or "tokens" (B, prefix + H*W, C) on ``grid``.

    The module is held outside the module tree (it belongs to the timm model), so the slot adds no state-dict key
    and no second path to timm's parameters. While the slot is empty the hook returns None: the tensor passes as is.
    """

    def __init__(self, channels: int, *, role: str, target: nn.Module, site: str, when: str, layout: str,
                 grid: tuple[int, int] | None = None, prefix: int = 0) -> None:
        super().__init__(channels, role=role)
        self.site, self.when, self.layout, self.grid, self.prefix = site, when, layout, grid, prefix
        object.__setattr__(self, "_target", target)  # not a child module: timm's model owns it
        if when == "after":
            target.register_forward_hook(self._after)
        else:
            target.register_forward_pre_hook(self._before)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Run the block on ``x`` laid out as found at build time."""
        if self.layout == "nchw":
            return self(x)
        if self.layout == "nhwc":
            return apply_slot_nhwc(self, x)
        height, width = self.grid or (0, 0)
        if x.shape[1] != self.prefix + height * width:
            raise BadValueError(f"slot at model.{self.site} was built for {self.prefix} + {height}x{width} tokens, got "
                             f"{x.shape[1]}; build the model at this image size (img_size)")
        return apply_slot_tokens(self, x, (height, width), self.prefix)

    def _after(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor | None:
        return None if self.block is None else self.apply(output)

    def _before(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        return None if self.block is None else (self.apply(args[0]), *args[1:])

    def extra_repr(self) -> str:
        grid = f" {self.prefix}+{self.grid[0]}x{self.grid[1]}" if self.layout == "tokens" and self.grid else ""
        return f"{super().extra_repr()}, {self.when} model.{self.site} ({self.layout}{grid})"


class StageSlots(nn.Module):
    """The slots of one feature stage: ``slot`` after it and, per block J, ``blocks.J.slot`` / ``blocks.J.branch``."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()


@contextlib.contextmanager
def probing(model: nn.Module) -> Iterator[None]:
    """Eval mode and no grad for a probe forward; every module's own mode is restored afterwards."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            yield
    finally:
        for module, training in modes.items():
            module.training = training


def class_path(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def is_sequence(module: nn.Module) -> bool:
    return isinstance(module, (nn.Sequential, nn.ModuleList))


def is_block(module: nn.Module) -> bool:
    """A module with sub-modules and parameters: a block, not a single conv, norm or activation."""
    return next(module.children(), None) is not None and next(module.parameters(), None) is not None


def blocks_of(path: str, module: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The blocks a stage container holds, or None when ``module`` is not one."""
    blocks = getattr(module, "blocks", None)
    if is_sequence(module):
        children = [(f"{path}.{name}", child) for name, child in module.named_children()]
    elif isinstance(blocks, nn.Module) and is_sequence(blocks):
        children = [(f"{path}.blocks.{name}", child) for name, child in blocks.named_children()]
    elif type(module).__name__.endswith("Stage") and len({type(c) for c in module.children()}) == 1:
        children = [(f"{path}.{name}", child) for name, child in module.named_children()]  # e.g. RegNet's RegStage
    else:
        return None
    return [(name, child) for name, child in children if is_block(child)]


def join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def find_stages(model: nn.Module, feature_info: list[dict[str, Any]]) -> list[list[tuple[str, nn.Module]]]:
    """Per feature, the blocks that run after the previous feature up to it (see the module docstring)."""
    stages = []
    previous: tuple[str, int] | None = None  # (parent path, index) of the previous feature, if in a sequence
    for info in feature_info:
        path = info["module"]
        parent_path, _, leaf = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        members: list[tuple[str, nn.Module]] = []
        in_sequence = is_sequence(parent) and leaf.isdigit()
        if previous is not None and previous[0] != parent_path:  # what ran after the previous feature's sequence
            before = model.get_submodule(previous[0])
            members += [(join(previous[0], str(i)), before[i]) for i in range(previous[1] + 1, len(before))
                        if not path.startswith(join(previous[0], str(i)) + ".")]  # not the one holding this feature
        if in_sequence:
            start = previous[1] + 1 if previous is not None and previous[0] == parent_path else 0
            members += [(join(parent_path, str(i)), parent[i]) for i in range(start, int(leaf) + 1)]
            previous = (parent_path, int(leaf))
        else:
            members.append((path, model.get_submodule(path)))
            previous = None
        blocks: list[tuple[str, nn.Module]] = []
        for member_path, member in members:
            inner = blocks_of(member_path, member)
            if inner is not None:
                blocks += inner
            elif is_block(member) and (in_sequence or member_path != path):
                blocks.append((member_path, member))
        stages.append(list(dict((name, (name, block)) for name, block in blocks).values()))  # each block once
    return stages


def stage_site(model: nn.Module, path: str) -> str:
    """The module whose output is the feature at ``path``: itself, or the last entry of a ``ModuleList`` (which is
    iterated, never called, so a hook on it would not run)."""
    module = model.get_submodule(path)
    while isinstance(module, nn.ModuleList) and len(module):
        path, module = f"{path}.{len(module) - 1}", module[len(module) - 1]
    return path


def blocks_after(model: nn.Module, feature_info: list[dict[str, Any]]) -> list[str]:
    """Blocks in the last feature's sequence that run after it (GhostNet's last stride-32 blocks): no stage owns
    them, so they get no slot."""
    parent_path, _, leaf = feature_info[-1]["module"].rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if not (is_sequence(parent) and leaf.isdigit()):
        return []
    out = []
    for index in range(int(leaf) + 1, len(parent)):
        path = join(parent_path, str(index))
        inner = blocks_of(path, parent[index])
        out += [name for name, _ in inner] if inner is not None else [path] if is_block(parent[index]) else []
    return out


def on_grid(rows: int, cols: int, height: int, width: int) -> bool:
    """Whether a (rows, cols) map is the (height, width) image at one integer stride, to within a cell (convs with
    and without padding)."""
    return any(abs(rows - height / s) <= 1 and abs(cols - width / s) <= 1 for s in range(1, max(height, width) + 1))


def token_grid(count: int, height: int, width: int) -> tuple[int, int] | None:
    """(rows, cols) of ``count`` tokens laid on the (height, width) image at one integer stride, if any."""
    for stride in range(1, max(height, width) + 1):
        for rows in range(max(1, int(height / stride) - 1), int(height / stride) + 2):
            cols, rest = divmod(count, rows)
            if rest == 0 and abs(cols - width / stride) <= 1 and abs(rows - height / stride) <= 1:
                return rows, cols
    return None


def find_layout(shape: tuple[int, ...], image: tuple[int, int], *, prefix: int, channels: int | None,
                prefer: str | None) -> tuple[str, int, tuple[int, int] | None] | str:
    """(layout, channels, token grid) of a tensor of ``shape`` seen on an ``image``-sized input, or why none fits."""
    if len(shape) == 4:
        options = []
        if on_grid(shape[2], shape[3], *image):
            options.append(("nchw", shape[1], None))
        if on_grid(shape[1], shape[2], *image):
            options.append(("nhwc", shape[3], None))
        if len(options) == 2:
            options = [o for o in options if o[1] == channels] or [o for o in options if o[0] == prefer] or options
        return options[0] if options else f"a {tuple(shape[1:])} map is not on the image's grid"
    if len(shape) == 3:
        # the model's own prefix (class/register tokens) first, then the fewest that leave a grid: some models
        # add their class token late (CaiT, ConViT) or do not report it (CoaT)
        for extra in dict.fromkeys([prefix, *range(MAX_PREFIX + 1)]):
            grid = token_grid(shape[1] - extra, *image) if shape[1] > extra else None
            if grid is not None:
                return "tokens", shape[2], grid
        return (f"{shape[1]} tokens do not lie on a grid of the {image[0]}x{image[1]} image after a prefix of "
                f"<= {MAX_PREFIX}")
    return f"a {len(shape)}-D tensor {tuple(shape)} is not a feature map"


class TimmBackbone(Backbone):
    """A timm model with visattn slots (see the module docstring). ``unslotted``: place -> why it has no slot."""

    def __init__(self, name: str, *, num_classes: int = 1000, in_chans: int = 3, img_size: int | None = None,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, timm_args: Mapping[str, Any] | None = None,
                 pretrained_file: str | None = None) -> None:
        super().__init__()
        label = f"{PREFIX}:{name}"
        require(num_classes >= 0, label, "num_classes", ">= 0", num_classes)
        require(in_chans >= 1, label, "in_chans", ">= 1", in_chans)
        require(img_size is None or img_size >= 1, label, "img_size", "None or >= 1", img_size)
        self.timm_name = name
        self.num_classes = num_classes
        self.pretrained_file = pretrained_file  # build_model loads it after the slots are filled
        self.input = AttentionSlot(in_chans, role="input")
        args = dict(timm_args or {})
        cfg = timm.models.get_pretrained_cfg(name)
        self.fixed_size = bool(cfg is not None and cfg.fixed_input_size)
        if self.fixed_size and img_size is not None:
            args.setdefault("img_size", img_size)
        rates = {key: value for key, value in (("drop_rate", drop_rate), ("drop_path_rate", drop_path_rate)) if value}
        try:  # rates only when set: not every timm model takes them (GhostNet has no drop_path_rate)
            self.model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                           **rates, **args)
        except TypeError as err:
            raise BadArgumentError(
                f"timm cannot build {label} with {rates | args or 'these arguments'}: {err}") from err
        side = args.get("img_size", img_size)
        self.default_size = tuple(cfg.input_size[-2:]) if cfg is not None and cfg.input_size else (224, 224)
        self.input_size = ((side, side) if isinstance(side, int) else tuple(side)) if side else self.default_size
        head = (cfg.classifier if cfg is not None else None) or "head"
        self.classifier_name = f"model.{head if isinstance(head, str) else head[0]}"
        self.num_features = int(getattr(self.model, "num_features", 0))
        self.num_prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 0) or 0)
        feature_info = self._feature_info(label)
        self.stage_info = [StageInfo(f"model.{f['module']}", int(f["num_chs"]), int(f["reduction"]), f"stages.{i}")
                           for i, f in enumerate(feature_info)]
        self.unslotted: dict[str, str] = {}
        self.stages = nn.ModuleList(StageSlots() for _ in feature_info)
        self.stages_problem = self._add_slots(label, feature_info)
        roles = {s.role for s in self.modules() if isinstance(s, AttentionSlot)}
        # the default slots: inside the blocks where the branch is known, else after each block, else each stage
        # (none of them: "block", so a bare block name is an error listing the slots there are)
        self.default_slot_role = next((r for r in ("block", "after_block", "stage") if r in roles), "block")

    def _feature_info(self, label: str) -> list[dict[str, Any]]:
        info = getattr(self.model, "feature_info", None)
        if not isinstance(info, list) or not info:
            raise BadValueError(f"{label} ({type(self.model).__name__}) reports no feature_info, the list of its "
                                "feature "
                             "stages (module, channels, stride) that visattn reads its stage and block slots from; "
                             "models whose timm class defines feature_info work (e.g. timm:convnext_atto)")
        for entry in info:
            missing = [k for k in ("module", "num_chs", "reduction") if k not in entry]
            if missing:
                raise BadValueError(f"{label}: a feature_info entry {entry} lacks {', '.join(missing)}")
            try:
                self.model.get_submodule(entry["module"])
            except AttributeError as err:
                raise BadValueError(f"{label}: its feature_info names module {entry['module']!r}, which the model "
                                 f"does not have ({err}); visattn places the stage and block slots by feature_info, "
                                 "so it cannot wrap this model") from err
        return info

    def _probe_image(self) -> list[tuple[int, int]]:
        """Probe sizes to try: the fixed input size; else a non-square image (its H:W tells layouts apart), then
        square ones: the build size, 64 px or twice the deepest stride, timm's default (some models need it)."""
        if self.fixed_size:
            return [self.input_size]
        side = max(64, 2 * max(info.stride for info in self.stage_info))
        return list(dict.fromkeys([(side, side * 3 // 2), self.input_size, (side, side), self.default_size]))

    def _record(self, sites: dict[tuple[str, str], nn.Module]) -> tuple[tuple[int, int], dict[tuple[str, str], list]]:
        """Shapes seen at every (path, when) site in one eval forward of a zero image (module modes restored)."""
        seen: dict[tuple[str, str], list] = {key: [] for key in sites}

        def keep(key: tuple[str, str], value: Any) -> None:
            seen[key].append(tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__)

        handles = []
        for key, module in sites.items():
            if key[1] == "after":
                handles.append(module.register_forward_hook(lambda m, a, out, key=key: keep(key, out)))
            else:
                handles.append(module.register_forward_pre_hook(
                    lambda m, a, key=key: keep(key, a[0] if a else None)))
        errors: list[str] = []
        try:
            for image in self._probe_image():
                for values in seen.values():
                    values.clear()
                try:
                    with probing(self.model):
                        self.model(torch.zeros(1, self.input.channels, *image))
                    self.probe_errors = errors  # sizes the model refused: check_input_size then tries the size asked
                    return image, seen
                except Exception as err:  # noqa: BLE001 - a model that rejects this probe size may take the next
                    errors.append(f"{image[0]}x{image[1]}: {type(err).__name__}{': ' if str(err) else ''}{err}")
        finally:
            for handle in handles:
                handle.remove()
        raise BadValueError(f"{PREFIX}:{self.timm_name} failed on a zero probe image ({'; '.join(errors)})")

    def _add_slots(self, label: str, feature_info: list[dict[str, Any]]) -> str | None:
        """Find, check and create every slot; returns why ``forward_stages`` cannot work, or None."""
        try:
            stage_blocks = find_stages(self.model, feature_info)
            for path in blocks_after(self.model, feature_info):
                self.unslotted[path] = f"runs after the last feature timm reports ({feature_info[-1]['module']})"
        except (AttributeError, IndexError, TypeError) as err:
            raise BadValueError(f"{label}: cannot follow feature_info through the model's modules: {err}") from err
        sites: dict[tuple[str, str], nn.Module] = {}
        for info, blocks in zip(feature_info, stage_blocks, strict=True):
            if not info["module"]:  # TResNet reports its stem as the model itself
                continue
            sites[(stage_site(self.model, info["module"]), "after")] = self.model.get_submodule(
                stage_site(self.model, info["module"]))
            for path, block in blocks:
                sites[(path, "after")] = block
                point = BRANCH_POINTS.get(class_path(block))
                if point is not None:
                    try:
                        sites[(join(path, point[0]), point[1])] = block.get_submodule(point[0])
                    except AttributeError:
                        self.unslotted[join(path, point[0])] = f"{type(block).__name__} has no {point[0]}"
        image, seen = self._record(sites)
        self.probe_size = image

        def place(key: tuple[str, str], role: str, channels: int | None, prefer: str | None) -> HookedSlot | None:
            """A slot at ``key`` in the layout seen there, hooked now; None (and the reason kept) if none fits."""
            path, when = key
            shapes = seen[key]
            if len(shapes) != 1 or not isinstance(shapes[0], tuple):
                side = "output" if when == "after" else "input"
                self.unslotted[path] = (f"runs {len(shapes)} times per forward" if len(shapes) != 1 else
                                        f"its {side} is a {shapes[0]}, not a tensor")
                return None
            found = find_layout(shapes[0], image, prefix=self.num_prefix_tokens, channels=channels, prefer=prefer)
            if isinstance(found, str):
                self.unslotted[path] = found
                return None
            layout, width, grid = found
            if layout == "tokens" and not self.fixed_size:
                self.unslotted[path] = ("tokens whose grid changes with the input size (timm does not fix this "
                                        "model's size); slots on tokens need a fixed size")
                return None
            prefix = shapes[0][1] - grid[0] * grid[1] if grid else 0
            return HookedSlot(width, role=role, target=sites[key], site=path, when=when, layout=layout, grid=grid,
                              prefix=prefix)

        for index, (info, blocks) in enumerate(zip(feature_info, stage_blocks, strict=True)):
            if not info["module"]:
                self.unslotted[f"stages.{index}"] = "timm names the whole model ('') as this feature"
                continue
            stage_key = (stage_site(self.model, info["module"]), "after")
            stage_shape = seen[stage_key][0] if len(seen[stage_key]) == 1 else None
            stage_layout = (find_layout(stage_shape, image, prefix=self.num_prefix_tokens,
                                        channels=int(info["num_chs"]), prefer=None)
                            if isinstance(stage_shape, tuple) else None)
            prefer = stage_layout[0] if isinstance(stage_layout, tuple) else None
            stage = self.stages[index]
            for path, block in blocks:  # block slots are hooked before the stage's: a ViT block is also its stage
                holder = nn.Module()
                point = BRANCH_POINTS.get(class_path(block))
                branch_key = (join(path, point[0]), point[1]) if point is not None else None
                if branch_key in sites:
                    branch = place(branch_key, "block", None, prefer)
                    if branch is not None:
                        holder.branch = branch
                after = place((path, "after"), "after_block", None, prefer)
                if after is not None:
                    holder.slot = after
                stage.blocks.append(holder)
            stage_slot = place(stage_key, "stage", int(info["num_chs"]), None)
            if stage_slot is not None:
                stage.slot = stage_slot
        return self._check_intermediates(label, image)

    def _check_intermediates(self, label: str, image: tuple[int, int]) -> str | None:
        """Why ``forward_intermediates`` does not give one (B, C, H, W) map per feature_info entry, or None."""
        if not hasattr(self.model, "forward_intermediates"):
            return (f"{label} ({type(self.model).__name__}) has no forward_intermediates, so its stage features "
                    "(for a detection neck) cannot be read")
        try:
            with probing(self.model):
                outputs = self.model.forward_intermediates(torch.zeros(1, self.input.channels, *image),
                                                           intermediates_only=True)
        except Exception as err:  # noqa: BLE001 - reported when a detector asks for the stages
            return f"{label}: forward_intermediates failed: {type(err).__name__}: {err}"
        if len(outputs) != len(self.stage_info):
            return (f"{label}: forward_intermediates gives {len(outputs)} maps but feature_info lists "
                    f"{len(self.stage_info)} stages")
        for out, info in zip(outputs, self.stage_info, strict=True):
            if out.ndim != 4 or out.shape[1] != info.channels:
                return (f"{label}: forward_intermediates gives a {tuple(out.shape)} map for {info.name}, not "
                        f"(B, {info.channels}, H, W)")
        return None

    def check_input_size(self, height: int, width: int) -> None:
        super().check_input_size(height, width)
        label = f"{PREFIX}:{self.timm_name}"
        if self.fixed_size and (height, width) != tuple(self.input_size):
            raise BadValueError(f"{label} was built for {self.input_size[0]}x{self.input_size[1]} images (timm fixes "
                             f"this model's input size); got {height}x{width}. Build it at that size (img_size)")
        stride = max(info.stride for info in self.stage_info)
        if min(height, width) < stride:
            raise BadValueError(f"{label}: image size {height}x{width} is smaller than its deepest stride {stride}")
        if self.probe_errors:  # a model with its own size rules (e.g. HaloNet's blocks): ask it
            try:
                with probing(self.model):
                    self.model(torch.zeros(1, self.input.channels, height, width))
            except Exception as err:  # noqa: BLE001 - timm asserts; the user gets one paragraph
                raise BadValueError(f"{label} cannot take {height}x{width} images: {type(err).__name__} {err}".strip()
                                 + f" (it ran at {self.probe_size[0]}x{self.probe_size[1]})") from err

    def reset_classifier(self, num_classes: int) -> None:
        self.model.reset_classifier(num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.input(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(self.input(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(x)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One (B, C, H, W) map per ``stage_info`` entry, from timm's ``forward_intermediates``."""
        if self.stages_problem is not None:
            raise BadValueError(self.stages_problem)
        return list(self.model.forward_intermediates(self.input(x), intermediates_only=True))

    def adapt_pretrained(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A timm state dict (or this wrapper's): timm's keys get the ``model.`` prefix after timm's own
        ``checkpoint_filter_fn`` for the model's module (e.g. ViT's position-embedding resampling), and a stem
        convolution made for another channel count is adapted as timm does (``adapt_input_conv``)."""
        wrapped = any(key.startswith("model.") for key in state_dict)
        inner = {k.removeprefix("model."): v for k, v in state_dict.items() if not wrapped or k.startswith("model.")}
        own = {k: v for k, v in state_dict.items() if wrapped and not k.startswith("model.")}
        convert = getattr(sys.modules.get(type(self.model).__module__), "checkpoint_filter_fn", None)
        if convert is not None:
            try:
                inner = convert(inner, self.model)
            except Exception as err:  # noqa: BLE001 - timm's converter met a file it was not written for
                raise BadValueError(f"timm's checkpoint_filter_fn for {self.timm_name} cannot convert these weights: "
                                 f"{type(err).__name__}: {err}") from err
        first_conv = getattr(self.model, "pretrained_cfg", {}).get("first_conv")
        for conv in [first_conv] if isinstance(first_conv, str) else list(first_conv or []):
            key = f"{conv}.weight"
            weight = inner.get(key)
            if weight is not None and weight.ndim == 4 and weight.shape[1] != self.input.channels:
                from timm.models import adapt_input_conv

                inner[key] = adapt_input_conv(self.input.channels, weight)
        return {**{f"model.{k}": v for k, v in inner.items()}, **own}


def overlay_file(overlay: Mapping[str, Any] | None, label: str) -> str | None:
    """The local file of timm's ``pretrained_cfg_overlay``; anything that would download is refused."""
    if overlay is None:
        return None
    if not isinstance(overlay, Mapping) or set(overlay) != {"file"} or not isinstance(overlay["file"], str):
        raise BadValueError(f"{label}: pretrained_cfg_overlay must be {{file: PATH}} (a local weights file; nothing is "
                         f"downloaded, so url/hf_hub_id are not taken), got {overlay!r}")
    return overlay["file"]


def nearest_timm_names(name: str, count: int = 5) -> list[str]:
    return difflib.get_close_matches(name, timm.list_models(), n=count, cutoff=0.5)


def timm_builder(name: str) -> Any:
    """The builder of ``timm:<name>``; an unknown name raises with the nearest names in ``timm.list_models()``."""
    label = f"{PREFIX}:{name}"
    if not isinstance(name, str) or not name or not timm.is_model(name):
        close = nearest_timm_names(str(name))
        hint = f" Nearest timm names: {', '.join(f'{PREFIX}:{n}' for n in close)}." if close else ""
        raise UnknownNameError(f"unknown backbone {label!r}: timm {timm.__version__} has no model {name!r}.{hint} "
                               "Any name "
                       f"in timm.list_models() works after '{PREFIX}:' ({len(timm.list_models())} of them)")

    def build(*, num_classes: int = 1000, in_chans: int = 3, img_size: int | None = None, drop_rate: float = 0.0,
              drop_path_rate: float = 0.0, timm_args: Mapping[str, Any] | None = None,
              pretrained_cfg_overlay: Mapping[str, Any] | None = None) -> TimmBackbone:
        args = dict(timm_args or {})
        managed = [key for key in args if key in MANAGED_ARGS]
        if managed:
            raise BadValueError(f"{label}: timm_args must not set {', '.join(managed)}; visattn sets them "
                                "(num_classes, "
                             "in_chans, drop_rate, drop_path_rate are backbone arguments of their own, weights come "
                             "from pretrained or pretrained_cfg_overlay: {file: PATH})")
        return TimmBackbone(name, num_classes=num_classes, in_chans=in_chans, img_size=img_size, drop_rate=drop_rate,
                            drop_path_rate=drop_path_rate, timm_args=args,
                            pretrained_file=overlay_file(pretrained_cfg_overlay, label))

    build.__name__ = label
    build.__doc__ = (f"{label}: timm.create_model({name!r}, pretrained=False) with visattn slots. ``timm_args``: "
                     "further create_model arguments (e.g. window_size); ``img_size`` reaches models whose input size "
                     "timm fixes (ViT, Swin, ...).")
    return build


BACKBONES.register_family(PREFIX, timm_builder, f"{PREFIX}:<name> (any of timm.list_models())")
