"""The Python API as a user calls it (issue 23, finding 2): visattn.train(...) -> Run, visattn.load() -> Predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import visattn
from visattn.config import ConfigError
from visattn.export import export_run
from visattn.predict import predict_folder

TINY = dict(epochs=1, limit=32, batch_size=16, num_workers=0, backbone_args={"base_width": 4}, precision="32")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("api")
    return visattn.train(backbone="resnet18", attn="cbam", out=str(out), **TINY)


def test_train_takes_keywords_with_the_command_lines_defaults(run):
    assert run.dir.name == "digits-resnet18-cbam-s0" and (run.dir / "metrics.json").is_file()
    assert run.config.data == "digits" and run.config.img_size == 32  # the data set's size, as on the command line
    assert run.config.lr == 0.002 and run.config.attn_init == "paper"
    assert 0.0 <= run.metrics["test"]["acc"] <= 1.0 and run.metrics["epochs"] == 1


def test_train_config_constructed_directly_works(tmp_path):
    config = visattn.TrainConfig(backbone="resnet18", out=str(tmp_path), name="direct", **TINY)
    assert config.img_size is None  # the defaults are resolved by train, as the command line resolves them
    done = visattn.train(config)
    assert done.config.img_size == 32 and done.metrics["img_size"] == 32
    with pytest.raises(ConfigError, match=r"unknown config key 'epoch'.*Did you mean 'epochs'"):
        visattn.train(backbone="resnet18", epoch=3)
    with pytest.raises(ConfigError, match="'lr' must be a number"):
        visattn.train(visattn.TrainConfig(lr="fast"))


def test_load_predicts_paths_pil_images_arrays_and_folders(run, tmp_path):
    predictor = visattn.load(run.dir)
    assert isinstance(predictor.module, torch.nn.Module)
    names = predictor.class_names
    assert names == run.metrics["class_names"]
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (40, 30, 3), dtype=np.uint8) for _ in range(3)]
    for i, array in enumerate(arrays):
        Image.fromarray(array).save(folder / f"{i}.png")
    from_paths = predictor([folder / "0.png", str(folder / "1.png")])
    from_pil = predictor(Image.open(folder / "0.png"))
    from_array = predictor(arrays[0], top_k=3)
    from_folder = predictor(folder)
    assert len(from_paths) == 2 and len(from_pil) == 1 and len(from_folder) == 3
    assert from_paths[0].image.endswith("0.png") and from_pil[0].image is None
    assert from_paths[0].label in names and from_paths[0].label == names[from_paths[0].index]
    assert len(from_array[0].top) == 3 and from_array[0].top[0] == (from_array[0].label, from_array[0].score)
    assert from_pil[0].score == pytest.approx(from_paths[0].score, abs=1e-6)  # one preprocessing, any input kind
    assert from_array[0].score == pytest.approx(from_paths[0].score, abs=1e-6)
    # the command line's predict on the export gives the same class and probability
    export_run(run.dir, formats="safetensors")
    rows = {r["image"]: r for r in predict_folder(run.dir / "export", folder)}
    for result in from_folder:
        assert rows[result.image]["class"] == result.label
        assert rows[result.image]["probability"] == pytest.approx(result.score, abs=1e-5)
    raw = predictor(torch.zeros(2, 3, 32, 32))  # a preprocessed batch: the raw module's output
    assert raw.shape == (2, len(names))
    assert visattn.load(run.dir / "export")(arrays[0])[0].label == from_array[0].label
    with pytest.raises(FileNotFoundError, match="image not found"):
        predictor(tmp_path / "nope.png")
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        predictor(np.zeros((4, 4, 3), np.float32))


def test_load_gives_boxes_for_a_detector(tmp_path):
    det = visattn.train(task="detect", backbone="csp_n", attn="eca", img_size=64, epochs=1, batch_size=8,
                        num_workers=0, out=str(tmp_path), precision="32",
                        data_args={"num_train": 16, "num_val": 8, "num_test": 8, "cache_dir": str(tmp_path / "c")})
    predictor = visattn.load(det.dir)
    image = np.full((90, 120, 3), 128, np.uint8)
    image[20:60, 30:80] = (230, 40, 40)
    result = predictor(image, conf=0.0)[0]
    assert result.boxes.shape[1] == 4 and len(result.boxes) == len(result.scores) == len(result.labels) > 0
    assert (result.boxes[:, [0, 2]] <= 120 + 1e-3).all() and (result.boxes[:, [1, 3]] <= 90 + 1e-3).all()
    assert set(result.labels) <= set(predictor.class_names)
    decoded = predictor(torch.zeros(1, 3, 64, 64))  # raw: the detector's decoded (B, A, 4 + C) tensor
    assert decoded.shape[0] == 1 and decoded.shape[2] == 4 + len(predictor.class_names)
