"""Which timm architectures ``timm:<name>`` wraps, with which slots, and why the others are refused.

For every module of ``timm.models`` the smallest model (parameters counted on the meta device, nothing
allocated; ``--max-params`` skips larger ones) is built with ``visattn.build_model("timm:<name>")`` at timm's
default size and run once in eval mode. One JSON line per module goes to ``--out``: the slot count per role, the
places without a slot and why, whether detection features are available, or the error. A second run with the same
``--out`` skips the modules already there.

    .venv/bin/python benchmarks/timm_zoo.py --out benchmarks/results/timm_zoo.jsonl
    .venv/bin/python benchmarks/timm_zoo.py --summary benchmarks/results/timm_zoo.jsonl   # the table only
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections import Counter
from pathlib import Path

import timm
import torch


def param_count(name: str) -> int | None:
    """Parameters of ``name`` built on the meta device, or None when it cannot be built there."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = timm.create_model(name)
        return sum(p.numel() for p in model.parameters())
    except Exception:  # noqa: BLE001 - some models compute on tensors while built
        return None


def smallest(module: str, max_params: int) -> tuple[str, int | None] | None:
    sized = [(param_count(name), name) for name in timm.list_models(module=module)]
    known = sorted((count, name) for count, name in sized if count is not None and count <= max_params)
    if known:
        return known[0][1], known[0][0]
    return None


def probe(name: str) -> dict:
    import visattn
    from visattn.models.build import list_slots

    start = time.perf_counter()
    try:
        model = visattn.build_model(f"timm:{name}", num_classes=3).eval()
        size = model.input_size if model.fixed_size else model.probe_size
        with torch.no_grad():
            model(torch.zeros(1, 3, *size))
        roles = Counter(slot.role for slot in list_slots(model))
        result = {"ok": True, "roles": dict(roles), "default": model.default_slot_role,
                  "unslotted": model.unslotted, "detection": model.stages_problem or "ok"}
    except Exception as err:  # noqa: BLE001 - recorded: the point is to see every refusal
        result = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def summary(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    built = [r for r in rows if r["result"]["ok"]]
    with_block = [r for r in built if r["result"]["roles"].get("block")]
    with_after = [r for r in built if r["result"]["roles"].get("after_block")]
    detect = [r for r in built if r["result"]["detection"] == "ok"]
    refused = [r for r in rows if not r["result"]["ok"]]
    lines = [f"{len(rows)} timm modules (the smallest model of each): {len(built)} built with slots, "
             f"{len(refused)} refused; of those built, {len(with_block)} have 'block' slots, {len(with_after)} "
             f"'after_block' slots, {len(detect)} give detection features",
             "", "| module | model | slots by role | places without a slot | detection |", "|---|---|---|---|---|"]
    for row in rows:
        result = row["result"]
        if result["ok"]:
            roles = ", ".join(f"{k} {v}" for k, v in result["roles"].items())
            reasons = Counter(result["unslotted"].values())
            skipped = "; ".join(f"{n} x {why}" for why, n in reasons.items()) or "-"
            lines.append(f"| {row['module']} | {row['model']} | {roles} | {skipped} | "
                         f"{'yes' if result['detection'] == 'ok' else result['detection']} |")
        else:
            lines.append(f"| {row['module']} | {row['model']} | refused: {result['error'][:200]} | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="JSON lines, one per timm module (appended; done modules skipped)")
    parser.add_argument("--summary", type=Path, help="print the table of a finished --out file and exit")
    parser.add_argument("--max-params", type=float, default=100e6, help="skip models above this (default 1e8)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.summary:
        print(summary(args.summary))
        return
    if args.out is None:
        parser.error("--out or --summary is required")
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    done = set()
    if args.out.is_file():
        done = {json.loads(line)["module"] for line in args.out.read_text().splitlines() if line.strip()}
    for module in timm.list_modules():
        if module in done:
            continue
        pick = smallest(module, int(args.max_params))
        if pick is None:
            continue
        name, params = pick
        row = {"module": module, "model": name, "params": params, "result": probe(name)}
        with args.out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(module, name, json.dumps(row["result"])[:200], flush=True)
    print(summary(args.out))


if __name__ == "__main__":
    main()
