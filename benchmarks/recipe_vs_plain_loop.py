"""visattn's default classification recipe beside a plain PyTorch loop: same data, model, epochs and test split.

The recipe is ``tools/train.py`` with its defaults (run as a user would, in a subprocess): the data set's
default augmentation, AdamW at its default lr and weight decay, warm-up + cosine, the default label smoothing,
test accuracy of the best-validation checkpoint. The plain loop is what one would write by hand: the same
model from ``visattn.build_model``, the same training images in the same order (the data module's seeded
sampler, augmentation disabled), AdamW (torch's default weight decay), ``OneCycleLR`` with the same peak lr,
cross-entropy with label smoothing 0.1, and the last epoch's weights on the same test split.

    python benchmarks/recipe_vs_plain_loop.py --data digits --img-size 32 --base-width 16 --seeds 0,1,2
    python benchmarks/recipe_vs_plain_loop.py --data cluttered-digits --img-size 48 --base-width 16 \\
        --seeds 0,1 --epochs 10

Writes ``<out>/results.json`` (one record per data set, seed and method) and prints a Markdown table: mean ±
std of test accuracy per method and the paired difference per seed (recipe minus plain, 95 % t interval).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def run_recipe(*, data: str, img_size: int, epochs: int, seed: int, batch_size: int, backbone: str,
               base_width: int | None, data_args: dict[str, Any], out: Path, threads: int) -> dict[str, Any]:
    """``tools/train.py`` with its defaults; only data, size, width, epochs, batch and seed given."""
    name = f"recipe-{data}-s{seed}"
    cmd = [sys.executable, str(REPO / "tools" / "train.py"), "--data", data, "--img-size", str(img_size),
           "--epochs", str(epochs), "--batch-size", str(batch_size), "--seed", str(seed), "--backbone", backbone,
           "--out", str(out), "--name", name, "--num-workers", "0", "--overwrite"]
    if base_width:
        cmd += ["--set", f"backbone_args.base_width={base_width}"]
    for key, value in data_args.items():
        cmd += ["--set", f"data_args.{key}={value}"]
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    metrics = json.loads((out / name / "metrics.json").read_text())
    config = yaml.safe_load((out / name / "config.yaml").read_text())
    recipe = {k: config.get(k) for k in ("lr", "weight_decay", "optimizer", "label_smoothing", "warmup_epochs",
                                         "augment")}
    recipe["precision"] = metrics.get("precision", config.get("precision"))  # as run ("auto" resolves per CPU)
    return {"acc": metrics["test"]["acc"], "seconds": time.perf_counter() - start,
            "test_size": metrics.get("test_size"), "recipe": recipe}


def run_plain(*, data: str, img_size: int, epochs: int, seed: int, batch_size: int, backbone: str,
              base_width: int | None, data_args: dict[str, Any], lr: float, threads: int) -> dict[str, Any]:
    """A hand-written loop: AdamW + one-cycle + label smoothing 0.1, no augmentation, last-epoch weights."""
    import torch
    from torch import nn

    from visattn.data import ClassificationDataModule
    from visattn.models.build import build_model

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    start = time.perf_counter()
    dm = ClassificationDataModule(name=data, img_size=img_size, batch_size=batch_size, num_workers=0, seed=seed,
                                  augment={"enabled": False}, dataset_options=data_args or None)
    dm.setup("fit")
    model = build_model(backbone, num_classes=dm.num_classes, in_chans=dm.in_chans, img_size=img_size,
                        backbone_args={"base_width": base_width} if base_width else {})
    train = dm.train_dataloader()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * len(train))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    for epoch in range(epochs):
        train.sampler.set_epoch(epoch)  # the same per-epoch order the recipe's run sees
        model.train()
        for images, labels in train:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(images), labels).backward()
            optimizer.step()
            scheduler.step()
    dm.setup("test")
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, labels in dm.test_dataloader():
            correct += int((model(images).argmax(1) == labels).sum())
            total += len(labels)
    return {"acc": correct / total, "seconds": time.perf_counter() - start, "test_size": total}


def paired(diffs: list[float]) -> str:
    if len(diffs) < 2:
        return f"{100 * diffs[0]:+.2f}" if diffs else "-"
    from scipy.stats import t

    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = float(t.ppf(0.975, len(diffs) - 1)) * sd / math.sqrt(len(diffs))
    return f"{100 * mean:+.2f} [{100 * (mean - half):+.2f}, {100 * (mean + half):+.2f}]"


def table(records: list[dict[str, Any]]) -> str:
    lines = ["| data | img | width | epochs | seeds | test images | recipe acc % | plain loop acc % | "
             "recipe − plain (paired, 95% CI) | s per run (recipe / plain) |", "|" + "---|" * 10]
    def group(r: dict[str, Any]) -> str:
        return json.dumps([r["data"], r["img_size"], r["base_width"], r["epochs"], r["data_args"]])

    for key in dict.fromkeys(map(group, records)):
        rows = [r for r in records if group(r) == key]
        data = rows[0]["data"] + "".join(f" {k}={v}" for k, v in rows[0]["data_args"].items())
        by = {m: {r["seed"]: r for r in rows if r["method"] == m} for m in ("recipe", "plain")}
        seeds = sorted(set(by["recipe"]) & set(by["plain"]))
        if not seeds:  # only one method run so far (--methods)
            continue
        accs = {m: [by[m][s]["acc"] for s in seeds] for m in by}

        def stat(values: list[float]) -> str:
            text = f"{100 * statistics.fmean(values):.2f}"
            return text + (f" ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else "")

        first = rows[0]
        diffs = [a - b for a, b in zip(accs["recipe"], accs["plain"], strict=True)]
        secs = "/".join(f"{statistics.fmean(by[m][s]['seconds'] for s in seeds):.0f}" for m in ("recipe", "plain"))
        lines.append(f"| {data} | {first['img_size']} | {first['base_width'] or 'default'} | {first['epochs']} | "
                     f"{','.join(map(str, seeds))} | {first['test_size']} | {stat(accs['recipe'])} | "
                     f"{stat(accs['plain'])} | {paired(diffs)} | "
                     f"{secs} |")
    recipes = {json.dumps(r["recipe"], sort_keys=True) for r in records if r.get("recipe")}
    lines += ["", *(f"recipe as resolved by tools/train.py: {text}" for text in sorted(recipes))]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="digits", help="classification data set (default: digits)")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--base-width", type=int, default=16, help="ResNet base width (0: the backbone's)")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--epochs", type=int, default=15, help="default: tools/train.py's default, 15")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lr", type=float, default=2e-3, help="plain loop's one-cycle peak (default: the recipe's)")
    parser.add_argument("--data-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="data set option for both methods, e.g. n_train=3000")
    parser.add_argument("--methods", default="recipe,plain",
                        help="which to (re)run; the other's earlier results in --out are kept")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/recipe_vs_plain_loop")
    args = parser.parse_args()
    data_args = {}
    for item in args.data_arg:
        key, _, value = item.partition("=")
        data_args[key] = int(value) if value.lstrip("-").isdigit() else value
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    records = json.loads(results_path.read_text()) if results_path.is_file() else []
    common = dict(data=args.data, img_size=args.img_size, epochs=args.epochs, batch_size=args.batch_size,
                  backbone=args.backbone, base_width=args.base_width or None, data_args=data_args,
                  threads=args.threads)
    methods = [m for m in args.methods.split(",") if m]
    if not methods or any(m not in ("recipe", "plain") for m in methods):
        parser.error(f"--methods takes recipe and/or plain, got {args.methods!r}")
    for seed in [int(s) for s in args.seeds.split(",")]:
        for method in methods:
            key = dict(data=args.data, img_size=args.img_size, base_width=args.base_width or None,
                       epochs=args.epochs, seed=seed, method=method, data_args=data_args)
            records = [r for r in records if {k: r.get(k) for k in key} != key]
            if method == "recipe":
                result = run_recipe(**common, seed=seed, out=out / "runs")
            else:
                result = run_plain(**common, seed=seed, lr=args.lr)
            records.append({**key, **result})
            print(f"{args.data} seed {seed} {method}: test acc {100 * result['acc']:.2f} % "
                  f"({result['seconds']:.0f} s)", flush=True)
            results_path.write_text(json.dumps(records, indent=2))
    print(table(records))


if __name__ == "__main__":
    main()
