"""Lightning callback: attention figures for a fixed set of validation images every N epochs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn

from visattn.data.base import IMAGENET_MEAN, IMAGENET_STD
from visattn.errors import BadValueError
from visattn.viz.figures import write_figures  # imported with the callback, not mid-run


class AttentionFigures(L.Callback):
    """Write ``visattn.viz.write_figures`` output to ``out_dir/epoch_XXX/`` (0-based epoch) every ``every_n_epochs``.

    The images are the first ``n_images`` of the data module's ``split`` (read once through its
    ``raw_samples``); figures also go to a TensorBoard logger when one is attached (``--logger tensorboard``).
    Runs on global rank 0, in eval mode, without touching gradients or the random state. A figure that fails to
    draw is reported as a warning (``failures`` keeps the messages) and training goes on.
    """

    def __init__(
        self,
        every_n_epochs: int,
        out_dir: str | Path,
        *,
        n_images: int = 8,
        split: str = "val",
        pattern: str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("every_n_epochs", every_n_epochs), ("n_images", n_images)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BadValueError(f"AttentionFigures: {name} must be an int >= 1, got {value!r}")
        self.every_n_epochs = every_n_epochs
        self.out_dir = Path(out_dir)
        self.n_images = n_images
        self.split = split
        self.pattern = pattern
        self._samples: Any = None
        self._disabled = False
        self.written: list[Path] = []
        self.failures: list[str] = []

    def samples(self, trainer: L.Trainer) -> Any:
        if self._samples is None:
            datamodule = trainer.datamodule
            if datamodule is None or not hasattr(datamodule, "raw_samples"):
                rank_zero_warn("AttentionFigures: the data module has no raw_samples(); no attention figures")
                self._disabled = True
                return None
            self._samples = datamodule.raw_samples(self.split, self.n_images)
        return self._samples

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._disabled or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        samples = self.samples(trainer)
        if samples is None:
            return
        augment = getattr(trainer.datamodule, "augment", None)
        mean = getattr(augment, "mean", IMAGENET_MEAN)
        std = getattr(augment, "std", IMAGENET_STD)
        model = getattr(pl_module, "model", pl_module)
        out = self.out_dir / f"epoch_{trainer.current_epoch:03d}"
        try:
            paths = write_figures(model, samples.images, mean=mean, std=std, out_dir=out, pattern=self.pattern,
                                  boxes=samples.boxes, labels=samples.labels, class_names=samples.class_names)
        except Exception as err:  # a figure is not worth the training run
            message = f"epoch {trainer.current_epoch}: {type(err).__name__}: {err}"
            self.failures.append(message)
            rank_zero_warn(f"AttentionFigures: no figures for {message}")
            return
        self.written.extend(paths)
        self.log_to_tensorboard(trainer, paths)

    def log_to_tensorboard(self, trainer: L.Trainer, paths: list[Path]) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger  # imports no tensorboard: --logger tensorboard did

        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            return
        from matplotlib.image import imread

        for path in paths:
            image = imread(path)[..., :3]  # (H, W, 3) float in [0, 1]
            for logger in loggers:
                logger.experiment.add_image(f"attention/{path.stem}", image, global_step=trainer.current_epoch,
                                            dataformats="HWC")
