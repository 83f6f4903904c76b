"""The attention tax: what each block costs in time against what it costs in FLOPs (issue 21).

For every block on two models (the flagship half-width ResNet-18 at 64 px / batch 64, and the csp_n detector with
the block in its neck outputs at 160 px / batch 16) this times, alternating in one process:

- a training step (forward, loss, backward, AdamW step; the detector through ``forward_raw``), and
- batch-1 inference (``eval()``, ``torch.inference_mode``; the detector's network, ``forward_raw``),

in fp32 and under bf16 autocast, for the plain model and each block. Every repeat times every (model, precision)
in turn (in reverse order every other repeat), so a burst of load from another process hits them alike. For each
block and repeat:

- time share  = (t_block - t_plain) / t_block, the share of the step the block accounts for;
- FLOP share  = (MACs_block - MACs_plain) / MACs_block (``visattn.count`` at batch 1; a training step is 3 x the
  forward FLOPs for both, so the share is the same for training and inference);
- tax         = time share / FLOP share (1: the block costs in time what it computes);
- speed       = t_plain / t_block (training throughput relative to the plain model).

Times are this thread's CPU time by default (``--clock cpu``, 1 thread): on a machine shared with other processes
the wall time of a step includes the time the thread sat descheduled, which swamps a 3 % difference; the CPU time
does not (cache and memory-bandwidth contention still show). The table gives each one's median over the repeats
with the min-max spread (and the step time's inter-quartile
range). ``--variants`` adds alternatives of the same block to the alternation (e.g. ``se:before`` from
``benchmarks/tax_before.py``, the blocks as they were before issue 21, or ``se:compiled``, every block module
compiled alone with ``torch.compile``), so before/after are measured side by side.

    .venv/bin/python benchmarks/attention_tax.py --threads 1                  # both models, every block
    .venv/bin/python benchmarks/attention_tax.py --family classify --blocks se eca --variants se:before eca:before
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from visattn.complexity import count
from visattn.perf import cpu_model

FAMILIES = {
    # the flagship sweep (configs/sweeps/cluttered_resnet18_blocks.yaml): base width 32, 64 px, batch 64, 10 classes
    "classify": {"backbone": "resnet18", "img_size": 64, "batch": 64, "num_classes": 10,
                 "blocks": ["se", "eca", "cbam", "stn@input", "mhsa"]},
    # the detection sweep (configs/sweeps/shapes_detect_neck.yaml): csp_n + PAN-n, 160 px, batch 16, 4 classes
    "detect": {"backbone": "csp_n", "img_size": 160, "batch": 16, "num_classes": 4,
               "blocks": ["se", "eca", "cbam", "stn", "mhsa"]},
}
PRECISIONS = ("fp32", "bf16")


def attn_spec(block: str) -> object:
    """``stn@input`` -> the flagship's STN on the input image; other names fill the model's default slots;
    ``+key=value`` adds a block argument (an int), e.g. ``stn@input+loc_size=32``."""
    if block in ("none", "plain"):
        return None
    block, *pairs = block.split("+")
    name, _, where = block.partition("@")
    args = {key: int(value) for key, value in (pair.split("=", 1) for pair in pairs)}
    if not where and not args:
        return name
    return {"block": name, **({"at": where} if where else {}), **({"args": args} if args else {})}


def build(family: str, block: str) -> tuple[nn.Module, Callable[[nn.Module], Callable], int]:
    """(model, forward of the network, forward MACs at batch 1), built with seed 0."""
    spec = FAMILIES[family]
    torch.manual_seed(0)
    if family == "detect":
        from visattn.models.detector import build_detector

        model = build_detector(spec["backbone"], attn=attn_spec(block), num_classes=spec["num_classes"],
                               img_size=spec["img_size"])
    else:
        from visattn import build_model

        model = build_model(spec["backbone"], attn=attn_spec(block), num_classes=spec["num_classes"],
                            img_size=spec["img_size"], backbone_args={"base_width": 32})
    macs = count(model, input_size=(1, 3, spec["img_size"], spec["img_size"])).macs
    return model, (lambda m: getattr(m, "forward_raw", m)), macs


def loss_of(output: object, target: torch.Tensor) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return F.cross_entropy(output.float(), target)
    parts = list(output.values()) if isinstance(output, dict) else list(output)
    return sum(part.float().mean() for part in parts)


@dataclass
class Case:
    """One model (plain, a block, or a variant of a block) with its timed closures."""

    label: str
    macs: int
    train: dict[str, Callable[[], None]] = field(default_factory=dict)
    infer: dict[str, Callable[[], None]] = field(default_factory=dict)


def make_case(family: str, label: str, *, channels_last: bool) -> Case:
    block, _, variant = label.partition(":")
    model, forward_of, macs = build(family, block)
    if variant == "compiled":  # regional torch.compile: every attention block module alone, the rest eager
        from visattn.layers import AttentionSlot

        for slot in [m for m in model.modules() if isinstance(m, AttentionSlot)]:
            for child in slot.children():
                child.compile()
    elif variant:
        from tax_before import apply_variant  # benchmarks/tax_before.py: the blocks' earlier implementations

        apply_variant(model, variant)
    spec = FAMILIES[family]
    memory = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory)
    images = torch.randn(spec["batch"], 3, spec["img_size"], spec["img_size"]).contiguous(memory_format=memory)
    targets = torch.randint(0, spec["num_classes"], (spec["batch"],))
    single = images[:1].clone()
    trained = model.train()
    optimizer = torch.optim.AdamW(trained.parameters(), lr=1e-5)
    frozen = copy.deepcopy(model).eval()
    case = Case(label, macs)
    for precision in PRECISIONS:
        def autocast(precision: str = precision) -> contextlib.AbstractContextManager:
            return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

        def train_step(autocast: Callable = autocast) -> None:
            with autocast():
                loss = loss_of(forward_of(trained)(images), targets)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        def infer(autocast: Callable = autocast) -> None:
            with torch.inference_mode(), autocast():
                forward_of(frozen)(single)

        case.train[precision] = train_step
        case.infer[precision] = infer
    return case


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def measure(cases: list[Case], *, mode: str, repeats: int, steps: int, warmup: int,
            clock: Callable[[], float]) -> dict[str, dict[str, list]]:
    """``times[label][precision]``: seconds per call, one value per repeat, every case timed in turn per repeat."""
    times: dict[str, dict[str, list[float]]] = {c.label: {p: [] for p in PRECISIONS} for c in cases}
    for case in cases:
        for precision in PRECISIONS:
            start = time.perf_counter()
            for _ in range(warmup):
                getattr(case, mode)[precision]()
            if case.label.endswith(":compiled"):
                print(f"{case.label} {mode} {precision}: warm-up with compilation {time.perf_counter() - start:.1f} s "
                      f"wall", flush=True)
    for repeat in range(repeats):
        for case in cases if repeat % 2 == 0 else cases[::-1]:  # order reversed every other repeat: no drift bias
            for precision in PRECISIONS if repeat % 2 == 0 else PRECISIONS[::-1]:
                call = getattr(case, mode)[precision]
                start = clock()
                for _ in range(steps):
                    call()
                times[case.label][precision].append((clock() - start) / steps)
    return times


def spread(values: list[float], fmt: str) -> str:
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)} to {format(max(values), fmt)})"


def table(family: str, cases: list[Case], times: dict[str, dict[str, list[float]]], mode: str) -> list[dict]:
    plain = cases[0]
    rows = []
    for case in cases:
        flop_share = (case.macs - plain.macs) / case.macs
        for precision in PRECISIONS:
            mine, base = times[case.label][precision], times[plain.label][precision]
            time_share = [(t - b) / t for t, b in zip(mine, base, strict=True)]
            speed = [b / t for t, b in zip(mine, base, strict=True)]
            low, high = quartiles(mine)
            rows.append({
                "family": family, "mode": mode, "block": case.label, "precision": precision, "macs": case.macs,
                "flop_share": flop_share, "ms": [1e3 * t for t in mine], "ms_median": 1e3 * statistics.median(mine),
                "ms_iqr": [1e3 * low, 1e3 * high], "time_share": time_share, "speed": speed,
                "tax": [s / flop_share for s in time_share] if flop_share > 0 else None,
            })
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | mode | block | precision | FLOP share | ms (median, IQR) | time share (median, min to max) "
             "| tax (median, min to max) | speed vs plain (median, min to max) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        tax = "-" if row["tax"] is None else spread(row["tax"], ".1f")
        lines.append(f"| {row['family']} | {row['mode']} | {row['block']} | {row['precision']} | "
                     f"{100 * row['flop_share']:.2f} % | {row['ms_median']:.1f} ({row['ms_iqr'][0]:.1f}-"
                     f"{row['ms_iqr'][1]:.1f}) | {spread([100 * s for s in row['time_share']], '.1f')} % | {tax} | "
                     f"{spread(row['speed'], '.3f')} |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """Before/after in one table: for each block with a ``:before`` row, both rows' training-step speed and tax."""
    def cell(row: dict | None, key: str, fmt: str) -> str:
        return "-" if row is None or row[key] is None else spread(row[key], fmt)

    index = {(r["family"], r["mode"], r["block"], r["precision"]): r for r in rows}
    lines = ["| model | mode | block | precision | FLOP share | speed vs plain, before | speed vs plain, after | "
             "tax before | tax after |", "|---|---|---|---|---|---|---|---|---|"]
    for (family, mode, label, precision), old in index.items():
        if not label.endswith(":before"):
            continue
        new = index.get((family, mode, label[:-len(":before")], precision))
        lines.append(f"| {family} | {mode} | {label[:-len(':before')]} | {precision} | {100 * old['flop_share']:.2f} % "
                     f"| {cell(old, 'speed', '.3f')} | {cell(new, 'speed', '.3f')} | {cell(old, 'tax', '.1f')} | "
                     f"{cell(new, 'tax', '.1f')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--blocks", nargs="+", help="blocks to time (default: every block of the family); "
                        "block+key=value adds a block argument, e.g. stn@input+loc_size=32")
    parser.add_argument("--variants", nargs="*", default=[], help="block:variant labels timed beside the blocks, "
                        "from benchmarks/tax_before.py (e.g. se:before)")
    parser.add_argument("--extra", nargs="*", default=[], help="further labels timed when their block is timed, "
                        "e.g. stn@input+loc_size=32")
    parser.add_argument("--modes", nargs="+", default=["train", "infer"], choices=["train", "infer"])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=1, help="training steps per case per repeat (default: 1)")
    parser.add_argument("--infer-steps", type=int, default=20, help="batch-1 forwards per case per repeat")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as sweep runs use)")
    parser.add_argument("--channels-last", action="store_true", help="NHWC model and input")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="cpu (default): this thread's CPU time, which leaves out the time the thread sat "
                             "descheduled while other processes ran (1 thread only); wall: elapsed time")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    parser.add_argument("--summarize", type=Path, help="print the before/after table of a --json file and exit")
    args = parser.parse_args()
    if args.summarize:
        print(summary(json.loads(args.summarize.read_text())["rows"]))
        return
    torch.set_num_threads(args.threads)
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures this thread only: use it with --threads 1 (or --clock wall)")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    with open("/proc/loadavg") as handle:
        load = handle.read().split()[:3]
    print(f"CPU: {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"channels_last={args.channels_last}, {args.repeats} repeats, {args.clock} clock, "
          f"load average before: {' '.join(load)}",
          flush=True)
    rows: list[dict] = []
    for family in args.family:
        blocks = args.blocks or FAMILIES[family]["blocks"]
        labels = ["none", *blocks, *[v for v in args.variants if v.partition(":")[0] in blocks]]
        labels += [extra for extra in args.extra if extra.partition("+")[0] in blocks]
        cases = [make_case(family, label, channels_last=args.channels_last) for label in labels]
        for mode in args.modes:
            steps = args.steps if mode == "train" else args.infer_steps
            times = measure(cases, mode=mode, repeats=args.repeats, steps=steps, warmup=args.warmup, clock=clock)
            new = table(family, cases, times, mode)
            rows.extend(new)
            print(markdown(new), flush=True)
    with open("/proc/loadavg") as handle:
        print(f"load average after: {' '.join(handle.read().split()[:3])}")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__,
                                         "clock": args.clock,
                                         "channels_last": args.channels_last, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
