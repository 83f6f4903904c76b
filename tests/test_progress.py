"""The epoch line, progress lines in a log and the TTY bar say what they show (issue 23, finding 4)."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import torch

from visattn.tasks.common import EpochSummary, ThroughputMonitor, format_duration, metric_label
from visattn.tasks.progress import EpochBar, ProgressLines


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)
        self.complexity = {"macs": 8}

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        loss = torch.nn.functional.cross_entropy(self.layer(batch[0]), batch[1])
        self.log("train/loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        self.log("val/acc", (self.layer(batch[0]).argmax(-1) == batch[1]).float().mean())

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(n: int) -> torch.utils.data.DataLoader:
    data = torch.utils.data.TensorDataset(torch.randn(n, 4), torch.randint(0, 2, (n,)))
    return torch.utils.data.DataLoader(data, batch_size=4)


def test_log_gets_progress_lines_and_epoch_lines_that_name_their_numbers(capsys):
    throughput = ThroughputMonitor(measure_peak=False)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[throughput, EpochSummary(throughput, monitor="val/acc"),
                                   ProgressLines(every_steps=2)])
    trainer.fit(Tiny(), loader(24), loader(8))
    lines = capsys.readouterr().out.splitlines()
    steps = [line for line in lines if "step" in line]
    epochs = [line for line in lines if line.startswith("epoch") and "step" not in line]
    assert len(steps) == 4 and steps[0].startswith("epoch 1/2  step 2/6  train loss ") and "ETA epoch" in steps[0]
    assert len(epochs) == 2 and "train loss" in epochs[0] and "val acc" in epochs[0]
    assert epochs[0].rstrip().split("ETA")[1].strip() != "-" and epochs[1].rstrip().endswith("ETA      0s")


def test_metric_labels_and_durations():
    assert metric_label("val/map") == "val mAP50-95" and metric_label("val/acc") == "val acc"
    assert [format_duration(s) for s in (5, 185, 7620)] == ["5s", "3m05s", "2h07m"]


def test_tty_bar_shows_the_epoch_lines_columns_with_mfu():
    throughput = ThroughputMonitor(measure_peak=False)
    throughput.history = [{"throughput_img_s": 85.24, "matmul_peak_share": 0.0123, "epoch": 0}]
    bar = EpochBar(throughput, monitor="val/map")
    trainer = SimpleNamespace(callback_metrics={"train/loss_step": torch.tensor(1.5), "val/map": torch.tensor(0.25),
                                                "train/matmul_peak_share": torch.tensor(0.0123)})
    assert bar.get_metrics(trainer, None) == {"train loss": "1.5000", "val mAP50-95": "0.2500", "img/s": "85.2",
                                              "of mm peak": "1.2%"}
