"""Ablation sweeps: a grid of ordinary training runs in one resumable directory, compared with honest statistics.

>>> spec = make_spec({}, {"backbone": "resnet18", "attn": "none,se,cbam", "seeds": 3, "train": {"epochs": 10}})
>>> result = run_sweep(spec, out="runs/sweeps")            # results.csv, summary.md, *.png in result.sweep_dir
"""

from visattn.sweep.grid import RunPlan, SweepSpec, expand, make_spec, parse_seeds
from visattn.sweep.report import ConfigSummary, RunResult, welch
from visattn.sweep.run import SweepResult, report_sweep, run_sweep

__all__ = [
    "ConfigSummary",
    "RunPlan",
    "RunResult",
    "SweepResult",
    "SweepSpec",
    "expand",
    "make_spec",
    "parse_seeds",
    "report_sweep",
    "run_sweep",
    "welch",
]
