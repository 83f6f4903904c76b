"""``visattn --help`` and ``visattn <command> --help`` against ``python -c pass``: wall time, side by side.

Each round runs every command once as a fresh process, in an order that rotates from round to round (the machine's
load changes slowly, so each round compares the commands under nearly the same load). Prints the median and the
spread (min-max) per command and the ratio of medians to ``python -c pass``, plus whether torch was imported
(``python -X importtime``) and the CPU model.

    PYTHONPATH=$PWD python benchmarks/cli_startup.py --rounds 15 [--before /path/to/an/older/checkout]

``--before``: also ``visattn --help`` of another checkout (its folder first on PYTHONPATH), e.g. the main branch
before issue 20.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from visattn.perf import cpu_model

COMMANDS: dict[str, list[str]] = {
    "python -c pass": ["-c", "pass"],
    "visattn --help": ["-m", "visattn", "--help"],
    "visattn train --help": ["-m", "visattn", "train", "--help"],
    "visattn sweep --help": ["-m", "visattn", "sweep", "--help"],
    "visattn export --help": ["-m", "visattn", "export", "--help"],
}


def wall_time(args: list[str], env: dict[str, str] | None) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                   cwd=env["PYTHONPATH"] if env else None)  # python -m puts the working folder first on sys.path
    return time.perf_counter() - start


def imports_torch(args: list[str], env: dict[str, str] | None) -> bool:
    """Does the command import torch? (``-X importtime`` lists every module imported, on stderr.)"""
    done = subprocess.run([sys.executable, "-X", "importtime", *args], check=True, capture_output=True, text=True,
                          env=env, cwd=env["PYTHONPATH"] if env else None)
    return any(line.rsplit("|", 1)[-1].strip() == "torch" for line in done.stderr.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--before", help="a checkout whose `visattn --help` is timed too")
    args = parser.parse_args()
    envs: dict[str, dict[str, str] | None] = {name: None for name in COMMANDS}
    if args.before:
        COMMANDS[f"before: {os.path.basename(args.before.rstrip('/'))}"] = ["-m", "visattn", "--help"]
        envs[f"before: {os.path.basename(args.before.rstrip('/'))}"] = {**os.environ, "PYTHONPATH": args.before}
    names = list(COMMANDS)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm the file cache once
        wall_time(COMMANDS[name], envs[name])
    for round_ in range(args.rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(wall_time(COMMANDS[name], envs[name]))
    base = statistics.median(times["python -c pass"])
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; {sys.executable}; {args.rounds} rounds, order rotated")
    print(f"{'command':<24} {'median s':>9} {'min-max s':>13} {'x python -c pass':>17}  torch imported")
    for name in names:
        median = statistics.median(times[name])
        spread = f"{min(times[name]):.2f}-{max(times[name]):.2f}"
        torch = imports_torch(COMMANDS[name], envs[name])
        print(f"{name:<24} {median:9.2f} {spread:>13} {median / base:17.1f}  {torch}")


if __name__ == "__main__":
    main()
