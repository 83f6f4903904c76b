"""Where a block's remaining training-step time goes: torch.profiler self CPU time per aten op, with the block
minus the plain model (issue 21).

Profiles ``--steps`` training steps of the plain model and of the model with ``--block`` (as
``benchmarks/attention_tax.py`` builds them), alternating, and prints the ops (grouped by name and input shapes)
whose total self CPU time grew the most, per step (per op the least over ``--rounds`` alternating profiles: the
profiler times ops by wall clock, and the least is the one least disturbed by other processes). The profiler's
own overhead inflates small ops alike in both.

    .venv/bin/python benchmarks/tax_profile.py --block se --precision bf16
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from attention_tax import FAMILIES, make_case
from torch.profiler import ProfilerActivity, profile


def op_times(step, steps: int) -> dict[tuple[str, str], tuple[float, int]]:  # noqa: ANN001
    """(op name, input shapes) -> (self CPU microseconds per step, calls per step)."""
    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    out: dict[tuple[str, str], tuple[float, int]] = {}
    for event in prof.key_averages(group_by_input_shape=True):
        shapes = str(event.input_shapes)[:70]
        out[(event.key, shapes)] = (event.self_cpu_time_total / steps, event.count // steps)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="classify", choices=list(FAMILIES))
    parser.add_argument("--block", default="se", help="a label as in attention_tax.py (e.g. se, se:before, mhsa)")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4,
                        help="alternating profiles of each model; per op the least of the rounds is kept")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    plain = make_case(args.family, "none", channels_last=args.channels_last)
    block = make_case(args.family, args.block, channels_last=args.channels_last)
    rounds: dict[str, dict[tuple[str, str], list[float]]] = {"plain": defaultdict(list), "block": defaultdict(list)}
    calls: dict[str, dict[tuple[str, str], int]] = {"plain": {}, "block": {}}
    for _ in range(args.rounds):
        for name, case in (("plain", plain), ("block", block)):
            for key, (micros, count) in op_times(case.train[args.precision], args.steps).items():
                rounds[name][key].append(micros)
                calls[name][key] = count
    # the profiler times ops by wall clock: per op, the least of the rounds is the one least disturbed by other
    # processes (an op missing from a round counts as 0 there)
    totals = {name: {key: [min(values) if len(values) == args.rounds else 0.0, calls[name][key]]
                     for key, values in table.items()} for name, table in rounds.items()}
    keys = set(totals["plain"]) | set(totals["block"])
    grown = sorted(keys, key=lambda k: totals["plain"].get(k, [0.0])[0] - totals["block"].get(k, [0.0])[0])
    plain_ms = sum(v[0] for v in totals["plain"].values()) / 1e3
    block_ms = sum(v[0] for v in totals["block"].values()) / 1e3
    print(f"{args.family} {args.block} {args.precision}: profiled self CPU per training step, plain {plain_ms:.1f} ms, "
          f"with the block {block_ms:.1f} ms (+{block_ms - plain_ms:.1f} ms)\n")
    print("| op | input shapes | ms/step with block | ms/step plain | difference | calls/step with block |")
    print("|---|---|---|---|---|---|")
    for key in grown[:args.top]:
        mine, base = totals["block"].get(key, [0.0, 0]), totals["plain"].get(key, [0.0, 0])
        print(f"| {key[0]} | {key[1].replace('|', '/')} | {mine[0] / 1e3:.2f} | {base[0] / 1e3:.2f} | "
              f"{(mine[0] - base[0]) / 1e3:+.2f} | {mine[1]} |")


if __name__ == "__main__":
    main()
