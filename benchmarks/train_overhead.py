"""visattn's training loop (LightningModule + Trainer as ``visattn.training`` builds them) against a plain PyTorch loop.

Same model (a copy with the same initial weights), same data loader, same batch, same optimiser and schedule, in one
process, alternating: after each visattn training epoch a callback runs one plain epoch over the same training
loader. Both are timed from the epoch's first batch request to the end of its last optimiser step (validation is
timed separately). The first epoch of each is a warm-up and is left out. Reported: images/s of both, and the ratio
visattn / plain (median and min-max over the epoch pairs).

    .venv/bin/python benchmarks/train_overhead.py --preset digits --epochs 4
    .venv/bin/python benchmarks/train_overhead.py --preset cluttered --epochs 4
    .venv/bin/python benchmarks/train_overhead.py --preset detect --epochs 4
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from visattn.config import make_config
from visattn.perf import cpu_model
from visattn.tasks.common import make_optimizer, warmup_cosine

PRESETS: dict[str, dict[str, Any]] = {
    "digits": dict(task="classify", data="digits", backbone="resnet18", img_size=32, batch_size=64, limit=1024),
    "cluttered": dict(task="classify", data="cluttered-digits", backbone="resnet18", img_size=64, batch_size=64,
                      limit=512),
    "detect": dict(task="detect", data="shapes", backbone="csp_n", img_size=160, batch_size=16, limit=128),
}


class PlainLoop(L.Callback):
    """After every visattn training epoch, one epoch of a plain loop: forward, loss, backward, step, schedule."""

    def __init__(self, module: L.LightningModule, datamodule: L.LightningDataModule, task: str,
                 mode: str = "epoch") -> None:
        self.mode = mode
        self.step_pairs: list[tuple[float, float]] = []  # (visattn step s, plain step s) on the same batch
        self.step_start = 0.0
        self.model = copy.deepcopy(module.model)
        self.criterion = copy.deepcopy(getattr(module, "criterion", None))
        self.loader = datamodule.train_dataloader()
        self.task = task
        hp = module.hparams
        self.optimizer = make_optimizer(self.model, name=hp.optimizer, lr=hp.lr, weight_decay=hp.weight_decay,
                                        momentum=hp.momentum)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_cosine(1000, 10))
        self.visattn: list[float] = []  # images/s per epoch
        self.plain: list[float] = []
        self.val_s: list[float] = []
        self.val_start = 0.0

    def loss(self, batch: Any) -> torch.Tensor:
        images, targets = batch
        if self.task == "detect":
            return self.criterion(self.model.forward_raw(images), targets)["total"]
        return F.cross_entropy(self.model(images), targets)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.val_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val_s.append(time.perf_counter() - self.val_start)

    def plain_step(self, batch: Any) -> None:
        loss = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self.step_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if self.mode != "step":
            return
        visattn = time.perf_counter() - self.step_start
        self.model.train()
        start = time.perf_counter()
        self.plain_step(batch)
        self.step_pairs.append((visattn, time.perf_counter() - start))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.mode == "step":
            return
        monitor = next(c for c in trainer.callbacks if type(c).__name__ == "ThroughputMonitor")
        self.visattn.append(monitor.history[-1]["throughput_img_s"])
        self.model.train()
        self.loader.sampler.set_epoch(trainer.current_epoch) if hasattr(self.loader.sampler, "set_epoch") else None
        images = 0
        start = time.perf_counter()
        for batch in self.loader:
            self.plain_step(batch)
            images += len(batch[0])
        self.plain.append(images / (time.perf_counter() - start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="digits")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--limit", type=int, default=None, help="samples per split (default: the preset's)")
    parser.add_argument("--num-workers", type=int, default=None, help="default: visattn's")
    parser.add_argument("--precision", default="32")
    parser.add_argument("--mode", choices=["epoch", "step"], default="epoch",
                        help="epoch: alternate whole epochs (everything per epoch counted); step: after each visattn "
                             "step, one plain step on the same batch (tighter pairs, data loading not compared)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="further TrainConfig keys")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from visattn.config import key_values
    from visattn.training import prepare

    values = dict(PRESETS[args.preset], epochs=args.epochs, precision=args.precision, seed=0)
    if args.limit:
        values["limit"] = args.limit
    if args.num_workers is not None:
        values["num_workers"] = args.num_workers
    values.update(key_values(args.set, "--set"))
    with tempfile.TemporaryDirectory() as out:
        config = make_config({}, {**values, "out": out, "name": "overhead"})
        prepared = prepare(config)
        plain = PlainLoop(prepared.module, prepared.datamodule, config.task, args.mode)
        prepared.trainer.callbacks.append(plain)
        start = time.perf_counter()
        prepared.trainer.fit(prepared.module, datamodule=prepared.datamodule)
        total = time.perf_counter() - start
    if args.mode == "step":
        pairs = plain.step_pairs[len(plain.step_pairs) // 4:]  # the first quarter is warm-up
        ratios = [p / v for v, p in pairs]  # visattn throughput / plain throughput on the same batch
        batch = values["batch_size"]
        print(f"CPU: {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads, preset "
              f"{args.preset} {values}, step mode")
        print("| preset | visattn step ms (median) | plain step ms (median) | visattn/plain throughput, per step "
              "(median, IQR) | ratio of summed times | steps |")
        quart = statistics.quantiles(ratios, n=4)
        total_ratio = sum(p for _, p in pairs) / sum(v for v, _ in pairs)
        print(f"| {args.preset} | {1e3 * statistics.median(v for v, _ in pairs):.1f} | "
              f"{1e3 * statistics.median(p for _, p in pairs):.1f} | {statistics.median(ratios):.3f} "
              f"({quart[0]:.3f}-{quart[2]:.3f}) | {total_ratio:.3f} | {len(pairs)} (batch {batch}) |")
        return
    pairs = list(zip(plain.visattn[1:], plain.plain[1:], strict=True))
    ratios = [v / p for v, p in pairs]
    print(f"CPU: {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"workers {prepared.datamodule.num_workers}, preset {args.preset} {values}")
    print("| preset | visattn img/s (median, min-max) | plain img/s (median, min-max) | visattn/plain "
          "(median, min-max) | val s/epoch | epochs timed |")
    print(f"| {args.preset} | {statistics.median(plain.visattn[1:]):.1f} ({min(plain.visattn[1:]):.1f}-"
          f"{max(plain.visattn[1:]):.1f}) | {statistics.median(plain.plain[1:]):.1f} ({min(plain.plain[1:]):.1f}-"
          f"{max(plain.plain[1:]):.1f}) | {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) | "
          f"{statistics.median(plain.val_s):.2f} | {len(pairs)} |")
    print(f"(wall time of the whole fit incl. the plain epochs: {total:.0f} s)")


if __name__ == "__main__":
    main()
