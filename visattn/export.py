"""Export a trained run to ONNX, TorchScript and safetensors, each verified against the eager model.

Every file is written to a temporary folder beside ``<run>/export/``, run (ONNX through onnxruntime,
TorchScript through ``torch.jit.load``, safetensors through :func:`load`) on real images from the run's
data and on random input, compared with the eager model, and only then moved into ``export/`` together
with ``report.json``. A failed check leaves ``export/`` as it was. An export killed outright (SIGKILL,
power loss) leaves its temporary folder behind; the next export of that run removes it (see
:func:`remove_stale_staging`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visattn.config import DEFAULT_OPSET, EXPORT_FORMATS
from visattn.errors import BadValueError, ConfigError, ExportError
from visattn.extras import require
from visattn.models.spec import ModelSpec
from visattn.models.weights import read_state_dict
from visattn.registry import did_you_mean
from visattn.rundir import find_checkpoint, is_regular, read_file, read_run_files

MIN_OPSET = 18  # torch's ONNX exporter (dynamo=True) emits opset 18 and cannot convert every op below it
FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 5e-2  # half precision keeps ~3 significant digits; compared on logits
# Detections may differ where two overlapping boxes of one class score within float noise of each other (NMS
# keeps either); below this share of matched boxes the export fails.
MIN_BOX_AGREEMENT = 0.95
# A detector's export is also compared after NMS at this confidence on the decoded outputs: at the export's own
# threshold an untrained or early model may find no box at all, and "0 boxes agree" verifies nothing.
VERIFY_CONF = 0.001


def parse_formats(formats: str | Sequence[str]) -> list[str]:
    items = [f.strip() for f in formats.split(",")] if isinstance(formats, str) else list(formats)
    for item in items:
        if item not in EXPORT_FORMATS:
            raise ConfigError(f"unknown export format {item!r}.{did_you_mean(item, list(EXPORT_FORMATS))} "
                             f"Valid formats: {', '.join(EXPORT_FORMATS)}")
    if not items:
        raise ConfigError(f"no export format given; valid formats: {', '.join(EXPORT_FORMATS)}")
    return items


def load_run(run_dir: str | Path, *, checkpoint: str = "best") -> tuple[nn.Module, ModelSpec]:
    """The eval-mode model of a run directory and its spec, rebuilt from config.yaml and a checkpoint."""
    run_dir = Path(run_dir)
    config, metrics = read_run_files(run_dir)
    state = read_state_dict(find_checkpoint(run_dir, checkpoint))
    spec = ModelSpec.from_config(config, num_classes=0, in_chans=int(metrics.get("in_chans", 3)),
                                 class_names=metrics.get("class_names") or [])
    head_key = spec.class_weight_key()
    if head_key not in state:
        raise ExportError(f"checkpoint of {run_dir} has no class weight {head_key!r}; is it a visattn {spec.task} "
                          "run?")
    spec.num_classes = int(state[head_key].shape[0])
    model = spec.build()
    model.load_state_dict(state, strict=True)
    return model.eval(), spec


def read_export_values(folder: str | Path) -> dict[str, Any]:
    """An export folder's model.json, checked: valid JSON of spec keys only, a known task, whole-number sizes,
    class names matching the class count, and equal to the spec report.json recorded when the export was verified
    (an edited model.json would silently predict something else). One-line ``ExportError`` otherwise."""
    folder = Path(folder)
    path = folder / "model.json"
    try:
        values = json.loads(read_file(path))
    except ValueError as err:
        raise ExportError(f"{path} is not valid JSON ({err}); export the run again") from None
    fields = set(ModelSpec.__dataclass_fields__)
    if not isinstance(values, dict) or set(values) - fields:
        extra = sorted(set(values) - fields) if isinstance(values, dict) else type(values).__name__
        raise ExportError(f"{path} is not a visattn model spec (unexpected {extra}); export the run again")
    if values.get("task") not in ("classify", "detect"):
        raise ExportError(f"{path}: unknown task {values.get('task')!r}; valid tasks: classify, detect")
    for key in ("num_classes", "img_size", "in_chans"):
        value = values.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ExportError(f"{path}: {key} must be an integer >= 1, got {value!r}")
    names = values.get("class_names") or []
    if not isinstance(names, list) or (names and len(names) != values.get("num_classes")):
        raise ExportError(f"{path}: class_names must list one name per class ({values.get('num_classes')}), got "
                          f"{names!r}"[:300])
    report_path = folder / "report.json"
    if report_path.exists():
        try:
            recorded = json.loads(read_file(report_path)).get("spec")
        except (ValueError, AttributeError) as err:
            raise ExportError(f"{report_path} is not valid JSON ({err}); export the run again") from None
        if recorded is not None and recorded != values:
            differ = sorted(k for k in set(recorded) | set(values) if recorded.get(k) != values.get(k))
            shown = ", ".join(f"{k} {values.get(k)!r} in model.json, {recorded.get(k)!r} in report.json"
                              for k in differ[:3])
            raise ExportError(f"{path} disagrees with {report_path}, which records the spec the export was verified "
                              f"with ({shown}): it was edited after the export; export the run again")
    return values


def read_export_spec(folder: str | Path) -> ModelSpec:
    """:func:`read_export_values` as a ``ModelSpec`` (every key needed to rebuild the model)."""
    values = read_export_values(folder)
    try:
        return ModelSpec(**values)
    except TypeError as err:
        raise ExportError(f"{Path(folder) / 'model.json'} is not a whole visattn model spec ({err}); export the run "
                          "again") from None


def load(path: str | Path, *, checkpoint: str = "best") -> nn.Module:
    """Rebuild a model without Lightning: from an ``export/`` folder (model.json + model.safetensors) or a run dir."""
    path = Path(path)
    if (path / "model.json").exists():
        load_file = require("safetensors.torch", purpose="reading an export's model.safetensors").load_file
        spec = read_export_spec(path)
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{path} has no model.safetensors (exported without it); export again with "
                                    "--format safetensors, or load the run directory instead")
        try:
            state = load_file(str(weights))
        except Exception as err:  # safetensors' own error type: a truncated or foreign file
            raise ExportError(f"cannot read {weights} (truncated or not a safetensors file?): {err}") from None
        model = spec.build()
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            detail = " ".join(str(err).split())[:300]
            raise ExportError(f"{weights} does not match {path / 'model.json'} (weights of another model?): "
                              f"{detail}") from None
        model.spec = spec
        return model.eval()
    if (path / "config.yaml").is_file():
        model, spec = load_run(path, checkpoint=checkpoint)
        model.spec = spec
        return model
    raise FileNotFoundError(f"{path} holds neither model.json + model.safetensors (an export) nor config.yaml (a run)")


def sample_images(spec: ModelSpec, config: dict[str, Any], count: int, img_size: int) -> torch.Tensor | None:
    """Up to ``count`` normalised test images of the run's own data, or None when the data cannot be read here."""
    # skip_bad_images as in training: the files the run left out would otherwise stop the data from loading
    common = dict(name=config["data"], data_dir=config.get("data_dir"), img_size=img_size, batch_size=count,
                  num_workers=0, limit=count, skip_bad_images=bool(config.get("skip_bad_images", False)),
                  dataset_options=config.get("data_args") or None)
    try:
        with warnings.catch_warnings():  # "skipped N undecodable images" was reported by the training run
            warnings.simplefilter("ignore")
            if spec.task == "detect":
                from visattn.data.detect import DetectionDataModule

                data = DetectionDataModule(**common)
            else:
                from visattn.data import ClassificationDataModule

                data = ClassificationDataModule(**common)
            data.setup("test")
            images, _ = next(iter(data.test_dataloader()))
        return images
    except (ValueError, FileNotFoundError, StopIteration, TypeError) as err:
        warnings.warn(f"verification uses random input only: the run's data is not readable here ({err})",
                      stacklevel=2)
        return None


def compare(name: str, exported: torch.Tensor, eager: torch.Tensor, tolerance: float) -> dict[str, Any]:
    diff = float((exported.float() - eager.float()).abs().max())
    agree = float((exported.argmax(-1) == eager.argmax(-1)).float().mean())
    return {"input": name, "batch": int(eager.shape[0]), "max_abs_diff": diff, "top1_agreement": agree,
            "passed": bool(diff <= tolerance)}


def detection_agreement(exported: torch.Tensor, eager: torch.Tensor) -> float:
    """Share of detections (K, 7 rows from ``DetectorWithNMS``) found in both: same image and class, IoU >= 0.99,
    score within 1e-3; 1.0 when both are empty."""
    from torchvision.ops import box_iou

    if len(exported) == 0 and len(eager) == 0:
        return 1.0
    matched = 0
    for row in eager.float():
        same = exported[(exported[:, 0] == row[0]) & (exported[:, 6] == row[6])].float()
        if len(same):
            iou = box_iou(row[None, 1:5], same[:, 1:5])[0]  # (n,)
            best = int(iou.argmax())
            matched += bool(iou[best] >= 0.99 and (same[best, 5] - row[5]).abs() <= 1e-3)
    return matched / max(len(exported), len(eager))


def compare_detection(name: str, exported: Any, eager: tuple[torch.Tensor, torch.Tensor], tolerance: float,
                      nms: Any, side: int, low_conf: float | None = None) -> dict[str, Any]:
    """``exported``: (decoded, detections), or decoded alone (NMS then runs here through ``nms``).

    ``max_abs_diff`` is the larger of the class-score difference and the box difference in units of the
    input side (boxes are pixels, hundreds for real inputs, where float32 keeps ~1e-5 px per 100 px).
    """
    decoded, detections = exported if isinstance(exported, (tuple, list)) else (exported, None)
    if detections is None:
        detections = nms(decoded.float())
    reference = eager[0].float()
    delta = (decoded.float() - reference).abs()  # (B, A, 4 + C)
    box_px = float(delta[..., :4].max())
    score = float(delta[..., 4:].max())
    diff = max(score, box_px / side)
    agree = detection_agreement(detections.float(), eager[1].float())
    result = {"input": name, "batch": int(reference.shape[0]), "max_abs_diff": diff, "max_score_diff": score,
              "max_box_diff_px": box_px, "detections": int(len(eager[1])), "box_agreement": agree}
    if low_conf is not None:  # candidates (anchor, class) scoring >= low_conf in the decoded outputs, before NMS:
        # boxes to compare even before training, and no NMS tie among near-equal low scores to flip the match
        eager_kept, exported_kept = reference[..., 4:] >= low_conf, decoded.float()[..., 4:] >= low_conf  # (B, A, C)
        count = int(eager_kept.sum())
        low_agree = float((eager_kept & exported_kept).sum()) / max(count, int(exported_kept.sum()), 1)
        result.update(detections_low_conf=count, box_agreement_low_conf=low_agree if count else 1.0)
        agree = min(agree, low_agree if count else 1.0)
    return {**result, "passed": bool(diff <= tolerance and agree >= MIN_BOX_AGREEMENT)}


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, *, dynamic_batch: bool, opset: int,
                output_names: Sequence[str] = ("logits",), translations: dict | None = None) -> Any:
    onnx = require("onnx", purpose="ONNX export")
    ort = require("onnxruntime", purpose="checking the ONNX export")
    require("onnxscript", purpose="torch's ONNX exporter")

    if opset < MIN_OPSET:
        blocks = sorted({m.block_name for m in model.modules() if getattr(m, "block_name", None)})
        need = " (STN's grid_sample alone needs opset >= 16)" if "stn" in blocks else ""
        raise ConfigError(f"opset {opset} is too old: visattn exports with torch's dynamo exporter, which needs "
                         f"opset >= {MIN_OPSET}{need}")
    dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None  # by position
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=opset, dynamic_shapes=dynamic,
                              input_names=["x"], output_names=list(output_names), verbose=False, external_data=False,
                              custom_translation_table=translations)
    except Exception as err:  # the exporter's own message is long; keep its gist and name the blocks
        blocks = sorted({m.block_name for m in model.modules() if getattr(m, "block_name", None)})
        raise ExportError(f"ONNX export failed for a model with blocks {blocks or ['none']}: "
                          f"{type(err).__name__}: {str(err).splitlines()[0][:400]}") from err
    imports = onnx.load(str(path), load_external_data=False).opset_import
    got = max(o.version for o in imports if o.domain in ("", "ai.onnx"))
    if got != opset:
        raise ExportError(f"asked for ONNX opset {opset} but the exporter produced {got}; use --opset {got}")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    if len(output_names) == 1:
        return lambda x: torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
    return lambda x: tuple(torch.from_numpy(out) for out in session.run(None, {"x": x.numpy()}))


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
    traced.save(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path))
    return lambda x: loaded(x)


def export_safetensors(model: nn.Module, spec: ModelSpec, folder: Path) -> Any:
    save_file = require("safetensors.torch", purpose="safetensors export").save_file
    save_file({k: v.float().contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "model.json").write_text(json.dumps(spec.__dict__, indent=2))
    rebuilt = load(folder)  # float32, as the weights are stored
    return lambda x: rebuilt(x.float())


def export_model(
    model: nn.Module,
    spec: ModelSpec,
    folder: Path,
    *,
    formats: Sequence[str],
    dynamic_batch: bool = True,
    opset: int = DEFAULT_OPSET,
    half: bool = False,
    images: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Write and verify each format into ``folder``; raises ExportError with the numbers when one does not match.

    A detector's ONNX file holds box decoding and class-wise NMS (outputs ``decoded`` (B, A, 4 + C) and
    ``detections`` (K, 7): batch, x0, y0, x1, y1, score, class); its TorchScript file and safetensors
    weights give ``decoded``, and NMS runs outside (``visattn.models.postprocess``).
    """
    model = model.eval()
    dtype = torch.float16 if half else torch.float32
    if half:
        model = model.half()
    detect = spec.task == "detect"
    if detect:
        from visattn.models.detector import DetectorWithNMS
        from visattn.ops import onnx_translations

        with_nms = DetectorWithNMS(model, conf_threshold=spec.conf_threshold, iou_threshold=spec.iou_threshold,
                                   max_det=spec.max_det)
        low_conf = min(VERIFY_CONF, spec.conf_threshold)
    tolerance = FP16_TOLERANCE if half else FP32_TOLERANCE
    size = spec.img_size
    gen = torch.Generator().manual_seed(0)
    inputs = {"random": torch.randn(2 if dynamic_batch else 1, spec.in_chans, size, size, generator=gen)}
    if images is not None:
        inputs["data"] = images if dynamic_batch else images[:1]
    if dynamic_batch:
        inputs["random_batch1"] = inputs["random"][:1]
    inputs = {k: v.to(dtype) for k, v in inputs.items()}
    example = inputs["random"]
    report: dict[str, Any] = {"tolerance": tolerance, "dtype": str(dtype), "dynamic_batch": dynamic_batch,
                              "formats": {}}
    if detect:
        report["nms"] = {"onnx": "in the graph (NonMaxSuppression); outputs decoded, detections",
                         "torchscript": "outside: the file gives decoded boxes and scores; run "
                                        "visattn.models.postprocess (torchvision batched_nms) on them",
                         "safetensors": "outside, as for torchscript"}
        report.update(conf_threshold=spec.conf_threshold, iou_threshold=spec.iou_threshold, max_det=spec.max_det)
    with torch.no_grad():
        eager = {k: (with_nms(v) if detect else model(v)) for k, v in inputs.items()}
        for fmt in formats:
            if fmt == "onnx" and detect:
                path, run = folder / "model.onnx", export_onnx(with_nms, example, folder / "model.onnx",
                                                               dynamic_batch=dynamic_batch, opset=opset,
                                                               output_names=("decoded", "detections"),
                                                               translations=onnx_translations())
            elif fmt == "onnx":
                path, run = folder / "model.onnx", export_onnx(model, example, folder / "model.onnx",
                                                               dynamic_batch=dynamic_batch, opset=opset)
            elif fmt == "torchscript":
                path, run = folder / "model.torchscript.pt", export_torchscript(model, example,
                                                                               folder / "model.torchscript.pt")
            else:
                path, run = folder / "model.safetensors", export_safetensors(model, spec, folder)
            if detect:
                checks = [compare_detection(name, run(x), eager[name], tolerance, with_nms.select, size, low_conf)
                          for name, x in inputs.items()]
                if not sum(c["detections_low_conf"] for c in checks):
                    raise ExportError(f"{fmt}: 0 detections compared: the model gives no box scoring {low_conf:g} "
                                      "or more on any verification input, so the export cannot be checked; "
                                      "train the run longer")
            else:
                checks = [compare(name, run(x), eager[name], tolerance) for name, x in inputs.items()]
            report["formats"][fmt] = {"file": path.name, "bytes": path.stat().st_size, "checks": checks,
                                      "passed": all(c["passed"] for c in checks)}
    failed = {f: r for f, r in report["formats"].items() if not r["passed"]}
    if failed:
        worst = {f: max(c["max_abs_diff"] for c in r["checks"]) for f, r in failed.items()}
        extra = ""
        if detect:
            extra = f"; box agreement {({f: min(c['box_agreement'] for c in r['checks']) for f, r in failed.items()})}"
        raise ExportError(f"exported model does not match eager within {tolerance:g}: max abs diff {worst}{extra}")
    return report


# Staging folders are named ``.export-<pid>@<host>-<random>``, and the previous export, moved aside while the new
# one takes its place, ``.export-previous-<staging name>``: the owner is in the name, so a later export can tell
# a folder left by a killed process from one in use.
STAGING = re.compile(r"\.export-(?:previous-\.export-)?(?P<pid>\d+)@(?P<host>[A-Za-z0-9._-]+)-[a-z0-9_]{8}")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_staging(run_dir: Path) -> list[Path]:
    """Remove the staging folders of exports of ``run_dir`` that were killed; returns what it removed.

    Only folders named by this module are touched, and only when the process named in them (on this
    host) no longer runs; anything else (older unnamed ``.export-*`` folders included) is left alone.
    A stale previous export is put back as ``export/`` if the kill came between the two renames that
    replace it, and removed otherwise.
    """
    host, removed = _host(), []
    stale = []
    for folder in sorted(run_dir.glob(".export-*")):
        match = STAGING.fullmatch(folder.name)
        if match and folder.is_dir() and match["host"] == host and not _process_alive(int(match["pid"])):
            stale.append(folder)
    target = run_dir / "export"
    previous = sorted((f for f in stale if f.name.startswith(".export-previous-")), key=lambda f: f.stat().st_mtime)
    if previous and not target.exists():
        previous[-1].rename(target)  # the newest complete export: the new one never arrived
        stale.remove(previous[-1])
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _checkpoint_identity(path: Path) -> dict[str, Any]:
    info = path.stat()
    return {"checkpoint": str(path.resolve()), "bytes": info.st_size, "mtime_ns": info.st_mtime_ns}


def _carry_over(target: Path, staging: Path, report: dict[str, Any], formats: Sequence[str]) -> tuple[list[str],
                                                                                                    list[str]]:
    """Keep the previous export's files of the formats not exported now, when they were made from the same
    checkpoint file with the same spec and settings (as its report.json records); returns (kept files, removed
    files with the reason). Their report entries are kept with them."""
    try:
        previous = json.loads(read_file(target / "report.json"))
    except (OSError, ValueError):
        previous = None
    others = {}
    if isinstance(previous, dict) and isinstance(previous.get("formats"), dict):
        others = {f: e for f, e in previous["formats"].items() if f not in formats and isinstance(e, dict)}
    elif target.is_dir():  # an export without a (readable) report: its model files cannot be vouched for
        others = {p.suffix: {"file": p.name} for p in target.iterdir()
                  if p.name not in ("model.json", "report.json") and p.name.startswith("model.")}
    kept, removed = [], []
    new_files = {str(e.get("file")) for e in report["formats"].values()}
    same_keys = ("spec", "source", "dtype", "dynamic_batch", "opset", "img_size")
    same = isinstance(previous, dict) and all(previous.get(k) == report.get(k) for k in same_keys)
    for fmt, entry in others.items():
        name = str(entry.get("file", ""))
        source = target / name
        if not name or "/" in name or name in new_files or not is_regular(source):
            continue
        if same and fmt in EXPORT_FORMATS:
            try:
                os.link(source, staging / name)
            except OSError:
                shutil.copy2(source, staging / name)
            report["formats"][fmt] = entry
            kept.append(name)
        else:
            removed.append(f"{name} (made from another checkpoint or with other settings)")
    return kept, removed


def export_run(
    run_dir: str | Path,
    *,
    checkpoint: str = "best",
    formats: str | Sequence[str] = EXPORT_FORMATS,
    dynamic_batch: bool = False,
    img_size: int | None = None,
    opset: int = DEFAULT_OPSET,
    half: bool = False,
    conf_threshold: float | None = None,
    iou_threshold: float | None = None,
) -> dict[str, Any]:
    """Export a run's model into ``<run>/export/`` (verified; see the module docstring); returns the report.

    Detection: ``conf_threshold`` / ``iou_threshold`` (default: the spec's, 0.25 / 0.6) go into the ONNX file's
    NMS and model.json; ``visattn predict --conf`` may go down to the exported confidence with the ONNX file.

    Formats not asked for this time are kept from the previous export when they were made from the same checkpoint
    file with the same spec and settings (report.json records both); otherwise they are removed, and the returned
    report lists them under ``removed_from_previous`` (``kept_from_previous``: the files kept). ``export/`` is
    replaced only once the new files have passed their checks.
    """
    formats = parse_formats(formats)
    if "onnx" in formats:  # before the model is loaded: a missing package stops the command at once
        for module in ("onnx", "onnxruntime", "onnxscript"):
            require(module, purpose="visattn export --format onnx")
    run_dir = Path(run_dir)
    if run_dir.is_dir():
        remove_stale_staging(run_dir)
    model, spec = load_run(run_dir, checkpoint=checkpoint)
    if img_size is not None:
        model.check_input_size(img_size, img_size)
        spec.img_size = img_size
    for key, value, flag in (("conf_threshold", conf_threshold, "--conf"), ("iou_threshold", iou_threshold, "--iou")):
        if value is None:
            continue
        if spec.task != "detect":
            raise BadValueError(f"{flag} applies to detection runs; {run_dir} is a {spec.task!r} run")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise BadValueError(f"{flag} must be a number in [0, 1), got {value!r}")
        setattr(spec, key, float(value))
    config, _ = read_run_files(run_dir)
    images = sample_images(spec, config, 4, spec.img_size)
    target = run_dir / "export"
    staging = Path(tempfile.mkdtemp(prefix=f".export-{os.getpid()}@{_host()}-", dir=run_dir))
    try:
        report = export_model(model, spec, staging, formats=formats, dynamic_batch=dynamic_batch, opset=opset,
                              half=half, images=images)
        report.update({"run": str(run_dir), "checkpoint": checkpoint, "opset": opset, "img_size": spec.img_size,
                       "real_images": images is not None, "spec": json.loads(json.dumps(spec.__dict__)),
                       "source": _checkpoint_identity(find_checkpoint(run_dir, checkpoint))})
        kept, removed = _carry_over(target, staging, report, formats)
        (staging / "model.json").write_text(json.dumps(spec.__dict__, indent=2))  # predict/load read it beside any
        (staging / "report.json").write_text(json.dumps(report, indent=2))
        staging.chmod(0o755)  # mkdtemp makes it private
        previous = run_dir / f".export-previous-{staging.name}"
        if target.exists():
            target.rename(previous)  # kept until the new export is in place
        staging.rename(target)
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {**report, "kept_from_previous": kept, "removed_from_previous": removed}
