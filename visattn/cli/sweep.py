"""``visattn sweep``: flags and a sweep YAML -> :func:`visattn.sweep.run_sweep`."""

from __future__ import annotations

import argparse
import multiprocessing
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from visattn.cli.main import add_version
from visattn.config import TASKS, check_name, key_values, parse_value, read_yaml, resolve_config

EPILOG = """\
examples:
  {prog} --backbone resnet18 --attn none,se,eca,cbam,stn,mhsa --data cluttered-digits --seeds 3 --epochs 10
  {prog} --config cluttered_resnet18_blocks --workers 2              # a packaged sweep config
  {prog} --config cluttered_resnet18_blocks --executor ray --ray-address auto

Each grid point is one ordinary training run (visattn.training.train, as visattn train) in its own process and run
directory <out>/<name>/runs/<run_id>/. Run the same command again after a crash or kill: finished runs are kept,
unfinished ones resume from their last checkpoint. With --executor ray on several machines, <out> must be on a
filesystem every node sees at the same path, with the same Python environment there. Locally, --workers N
runs share whatever GPUs are visible; to give each run its own GPU use Ray with --gpus-per-run 1.

The whole grid (backbones, blocks, slot globs, data sets, config keys) is checked before the first run. --name is
one folder name inside --out; --overwrite empties only a directory a sweep made (it holds a .visattn-sweep file)
and no sweep is running in. Exit status: 0 when every grid point finished, 1 when any failed (listed at the end,
reasons in results.csv), 2 for a usage error (nothing run or removed), 130 when interrupted.
"""

# flag -> TrainConfig key shared by every run
TRAIN_FLAGS = ("task", "data", "data_dir", "img_size", "epochs", "batch_size", "lr", "limit", "num_workers",
               "backbone_args", "accelerator", "precision")


def split_values(text: str) -> list[Any]:
    """``0.1,0.2`` -> [0.1, 0.2]; a YAML list ``[...]`` is read whole (for values holding commas)."""
    text = text.strip()
    if text.startswith("["):
        values = parse_value(text)
        if isinstance(values, list):
            return values
    return [parse_value(item.strip()) for item in text.split(",") if item.strip()]


def grid_values(items: Sequence[str] | None) -> dict[str, list[Any]]:
    return key_values(items, "--grid", parse=split_values, form="KEY=V1,V2,...")


def build_parser(prog: str = "visattn sweep") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, epilog=EPILOG.format(prog=prog), allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description="Ablation sweep: backbones x attention blocks (x places x "
                                                 "hyperparameters) x seeds, with tables, statistics and plots.")
    add = parser.add_argument
    add_version(parser)
    add("--config", help="sweep YAML (keys: name, backbone, attn, at, seeds, metric, reference, train, grid), or a "
                         "packaged sweep's name (e.g. cluttered_resnet18_blocks)")
    add("--backbone", help="backbone name(s), comma-separated")
    add("--attn", help="attention blocks, comma-separated; 'none' is the baseline (specs with 'at': use --config)")
    add("--at", action="append", metavar="GLOBS",
        help="slot place(s) crossed with each block name, repeatable: 'default' (the backbone's default slots) or "
             "glob(s) such as 'layer4.*.slot' (the last stage's residual blocks)")
    add("--seeds", help="a count (3 -> seeds 0,1,2) or a comma-separated list of seeds")
    add("--metric", help="dotted key of metrics.json to compare (default: test.acc, or test.map for detection)")
    add("--reference", help="backbone(s) trained with attn none and the same seeds, e.g. resnet34: what the "
                            "extra MACs would buy as depth/width")
    add("--task", choices=TASKS)
    add("--data")
    add("--data-dir")
    add("--img-size", type=int)
    add("--epochs", type=int)
    add("--batch-size", type=int)
    add("--lr", type=float)
    add("--limit", type=int, help="use only the first N samples of each split")
    add("--num-workers", type=int, help="data loader workers of each run")
    add("--backbone-args", type=parse_value, metavar="YAML", help="e.g. '{base_width: 8}'")
    add("--accelerator")
    add("--precision")
    add("--set", action="append", metavar="KEY=VALUE", help="any other TrainConfig key, shared by all runs")
    add("--grid", action="append", metavar="KEY=V1,V2", help="a TrainConfig key to vary (repeatable; crossed)")
    add("--out", default="runs/sweeps", help="parent folder of sweep directories (default: runs/sweeps)")
    add("--name", help="sweep directory name, one folder name inside --out (default: the config's name, else "
                        "<data>-<backbones>)")
    add("--overwrite", action="store_true", help="empty the sweep directory first (only one a sweep made, and "
                                                 "only when no sweep is running in it)")
    add("--executor", choices=["local", "ray"], default="local")
    add("--workers", type=int, default=None, help="local: runs at a time, torch threads split between them (default: "
                                                  "one run per core, at most 8, 1 thread each: the fastest "
                                                  "arrangement measured, benchmarks/README.md)")
    add("--ray-address", help="Ray cluster to use (e.g. auto or ray://head:10001); default: start a local Ray")
    add("--cpus-per-run", type=float, default=1.0, help="Ray: CPUs each run holds (also its torch threads)")
    add("--gpus-per-run", type=float, default=0.0, help="Ray: GPUs each run holds")
    add("--threads-per-run", type=int, help="torch threads of each run (default: cores // workers, or "
                                            "--cpus-per-run with Ray)")
    add("--latency-threads", type=int, default=1, help="torch threads when timing batch-1 latency (default 1)")
    add("--ort-latency", action=argparse.BooleanOptionalAction, default=None,
        help="also time each configuration exported to ONNX under onnxruntime, with the --latency-threads, next to "
             "the eager latency (default: on when the [export] extra is installed)")
    add("--skip-failed", action="store_true", help="keep recorded failures instead of retrying them")
    add("--report-only", action="store_true", help="only rewrite the tables and plots of the sweep directory")
    add("--dry-run", action="store_true", help="print the runs of the grid and exit")
    return parser


def spec_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for key in ("backbone", "attn", "seeds", "metric", "reference", "name"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.at:
        overrides["at"] = [None if a == "default" else [g.strip() for g in a.split(",")] if "," in a else a
                           for a in args.at]
    train = key_values(args.set, "--set")
    train.update({key: getattr(args, key) for key in TRAIN_FLAGS if getattr(args, key) is not None})
    if train:
        overrides["train"] = train
    if args.grid:
        overrides["grid"] = grid_values(args.grid)
    return overrides


def main(argv: Sequence[str] | None = None, *, prog: str = "visattn sweep") -> int:
    args = build_parser(prog).parse_args(argv)
    # the application after the flags: --help imports no torch
    from visattn.sweep.execute import default_workers
    from visattn.sweep.grid import check_grid, expand, make_spec
    from visattn.sweep.run import report_sweep, run_sweep

    file_values = read_yaml(resolve_config(args.config)) if args.config else {}
    spec = make_spec(file_values, spec_overrides(args), source=args.config or "sweep config")
    if args.name is None and spec.name is None and args.config:
        spec.name = Path(args.config).stem
    if args.name is not None:
        spec.name = check_name(args.name, what="sweep")
    if args.dry_run:
        plans = expand(spec)
        check_grid(plans)
        for plan in plans:
            print(f"{plan.run_id:<50} {plan.config}")
        print(f"{len(plans)} runs into {args.out}/{spec.default_name()}; metric {spec.metric_name}")
        return 0
    if args.report_only:
        result = report_sweep(Path(args.out) / check_name(spec.default_name(), what="sweep"), metric=args.metric,
                              latency_threads=args.latency_threads, ort_latency=args.ort_latency)
    else:
        if args.executor == "ray" and args.workers not in (None, 1):
            print("visattn: --workers is for the local executor; Ray runs as many at a time as the cluster's "
                  "CPUs/GPUs allow given --cpus-per-run/--gpus-per-run", file=sys.stderr)

        def stop(signum: int, frame: Any) -> None:
            """SIGTERM or SIGINT: end the runs in progress (they resume next time) and leave. Without this a
            SIGINT sent to the sweep alone (not Ctrl-C's whole process group) waited for the runs to finish."""
            for child in multiprocessing.active_children():
                child.terminate()
            raise KeyboardInterrupt

        previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            workers = default_workers() if args.workers is None else args.workers
            result = run_sweep(spec, out=args.out, executor=args.executor, workers=workers,
                               ray_address=args.ray_address, cpus_per_run=args.cpus_per_run,
                               gpus_per_run=args.gpus_per_run, threads_per_run=args.threads_per_run,
                               retry_failed=not args.skip_failed, overwrite=args.overwrite,
                               latency_threads=args.latency_threads, ort_latency=args.ort_latency)
        except KeyboardInterrupt:
            print("\ninterrupted: run the same command again to continue the sweep", file=sys.stderr)
            return 130
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    failed = [r for r in result.results if r.status == "failed"]
    if failed:
        reasons = "; ".join(f"{r.plan.run_id}: {r.error[:200]}" for r in failed[:10])
        more = f"; ... and {len(failed) - 10} more (results.csv)" if len(failed) > 10 else ""
        print(f"visattn: {len(failed)} of {len(result.results)} grid point(s) failed: {reasons}{more}. Logs: "
              f"{result.sweep_dir / 'logs'}; run the same command again to retry them", file=sys.stderr)
        return 1
    return 0
