"""How a fine-tuning sweep starts: step-0 accuracy, the first epoch and the end, per configuration (issue 19).

The sweep report (``report.md``) compares the final test accuracy of each configuration with the baseline; this
adds what the report does not show for runs that start from a pretrained file: the relative change of the output
the inserted blocks caused (``metrics.json`` ``pretrained.output_change``), the test accuracy before the first
step (``pretrained.at_start``), the validation accuracy after epoch 1 (``logs/metrics.csv``) and at the end.

    python benchmarks/finetune_table.py benchmarks/results/cluttered-finetune-blocks
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
from pathlib import Path


def first_epoch_val_acc(run: Path) -> float | None:
    """The validation accuracy logged at the end of the first epoch (epoch 0 in Lightning's CSV)."""
    for path in sorted((run / "logs").glob("metrics*.csv")):
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get("epoch") == "0" and row.get("val/acc"):
                    return float(row["val/acc"])
    return None


def collect(sweep: Path) -> dict[str, list[dict[str, float | None]]]:
    """Finished runs grouped by configuration label (the run id without its ``-sN`` seed suffix)."""
    groups: dict[str, list[dict[str, float | None]]] = {}
    for metrics_file in sorted(sweep.glob("runs/*/metrics.json")):
        run = metrics_file.parent
        metrics = json.loads(metrics_file.read_text())
        start = metrics.get("pretrained") or {}
        label = re.sub(r"-s\d+$", "", run.name)
        groups.setdefault(label, []).append({
            "seed": metrics.get("seed"),
            "change": start.get("output_change"),
            "step0": ((start.get("at_start") or {}).get("test") or {}).get("acc"),
            "epoch1": first_epoch_val_acc(run),
            "best_val": (metrics.get("best_val") or {}).get("val/acc") if isinstance(metrics.get("best_val"), dict)
            else metrics.get("best_val"),
            "test": (metrics.get("test") or {}).get("acc"),
        })
    return groups


def cell(values: list[float | None], *, percent: bool = True, digits: int = 1) -> str:
    """Mean over seeds, with the range when there is more than one."""
    present = [v for v in values if v is not None]
    if not present:
        return "-"
    scale = 100.0 if percent else 1.0
    mean = statistics.fmean(present) * scale
    if len(present) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ({min(present) * scale:.{digits}f}-{max(present) * scale:.{digits}f})"


def table(groups: dict[str, list[dict[str, float | None]]]) -> str:
    lines = ["| configuration | seeds | output change at insertion | test acc at step 0 (%) | val acc after epoch 1 "
             "(%) | test acc at the end (%) |", "|---|---|---|---|---|---|"]
    for label, runs in groups.items():
        lines.append(f"| {label} | {len(runs)} | {cell([r['change'] for r in runs], percent=False, digits=2)} | "
                     f"{cell([r['step0'] for r in runs])} | {cell([r['epoch1'] for r in runs])} | "
                     f"{cell([r['test'] for r in runs], digits=2)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("sweep", type=Path, help="a sweep directory (holds runs/)")
    args = parser.parse_args()
    if not (args.sweep / "runs").is_dir():
        raise SystemExit(f"error: {args.sweep} holds no runs/ folder: not a sweep directory")
    print(table(collect(args.sweep)))


if __name__ == "__main__":
    main()
