"""Sweep statistics on hand-made seed tables: verdicts, Holm, paired vs Welch, collapse flags, test-set intervals."""

from __future__ import annotations

import csv
import json
import math
import random
import statistics
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest, nct, t, ttest_ind, ttest_rel

from visattn.sweep.grid import RunPlan
from visattn.sweep.plots import _cost_slots, _error, write_plots
from visattn.sweep.report import (
    ConfigSummary,
    RunResult,
    collect,
    lr_curve,
    summarize,
    write_results_csv,
    write_summary_md,
)
from visattn.sweep.stats import collapse_reason, compare, holm, min_detectable, verdict, wilson

BASE = [0.80, 0.83, 0.81, 0.82]


def runs(config: str, values: list[float], *, seeds: list[int] | None = None) -> list[RunResult]:
    seeds = list(range(len(values))) if seeds is None else seeds
    return [RunResult(RunPlan(f"{config}-s{s}", config, "grid", "resnet18", config.split("/")[1], {}, s, {},
                              "resnet18/none"), "ok", v, 10, 10) for s, v in zip(seeds, values, strict=True)]


def by_config(rows: list[ConfigSummary]) -> dict[str, ConfigSummary]:
    return {r.config: r for r in rows}


def test_better_worse_inconclusive_on_hand_made_tables():
    table = (runs("resnet18/none", BASE)
             + runs("resnet18/se", [b + d for b, d in zip(BASE, [0.050, 0.052, 0.049, 0.051], strict=True)])
             + runs("resnet18/cbam", [b - d for b, d in zip(BASE, [0.030, 0.031, 0.029, 0.030], strict=True)]))
    rows = by_config(summarize(table, {}, metric="test.acc"))
    assert rows["resnet18/none"].verdict == "baseline"
    assert rows["resnet18/se"].verdict.startswith("better (Holm p=")
    assert rows["resnet18/cbam"].verdict.startswith("worse (Holm p=")
    # the first flagship sweep's MHSA row (-30 points on average, all over the place), once read "within noise"
    flagship = by_config(summarize(runs("resnet18/none", [0.875, 0.838, 0.860])
                                   + runs("resnet18/mhsa", [0.733, 0.372, 0.559]), {}, metric="test.acc"))
    mhsa = flagship["resnet18/mhsa"]
    assert mhsa.comparison.diff == pytest.approx(-0.303)
    # never a tie: inconclusive, and the smallest difference these seeds could see is larger than 30 points
    assert mhsa.verdict.startswith("inconclusive") and "detectable: ±" in mhsa.verdict
    detectable = float(mhsa.verdict.split("±")[1].rstrip(")"))
    assert detectable == pytest.approx(100 * mhsa.comparison.mdd, abs=0.01) and detectable > 30
    assert mhsa.comparison.ci[0] < mhsa.comparison.diff < mhsa.comparison.ci[1] and mhsa.comparison.ci[1] > 0
    rows.update(flagship)
    for row in rows.values():
        assert "noise" not in row.verdict and "identical" not in row.verdict
    # lower is better for a loss: the same table flips
    assert verdict(rows["resnet18/se"].comparison, metric="test.loss").startswith("worse")


def test_minimum_detectable_difference_has_80_percent_power():
    for se, df in ((0.01, 1), (0.02, 3), (0.5, 40)):
        mdd = min_detectable(se, df)
        crit = t.ppf(0.975, df)
        power = nct.sf(crit, df, mdd / se)  # the wrong-sign tail is < 1e-6 here (and NaN in scipy at df=1)
        assert power == pytest.approx(0.8, abs=1e-5)
    assert min_detectable(1.0, 10_000) == pytest.approx(1.95996 + 0.84162, abs=1e-3)  # the normal limit
    # paired: from the sd of the differences; Welch: from Welch's standard error and Welch–Satterthwaite df (issue
    # 19: it used the pooled sd with n_a + n_b - 2 df, too optimistic when the sides differ)
    diffs = [0.01, -0.02, 0.03]
    paired = compare({i: 0.5 + d for i, d in enumerate(diffs)}, {i: 0.5 for i in range(3)})
    sd = math.sqrt(sum((d - sum(diffs) / 3) ** 2 for d in diffs) / 2)
    assert paired.mdd == pytest.approx(min_detectable(sd / math.sqrt(3), 2))
    a, b = [0.6, 0.62, 0.64], [0.5, 0.55]
    welch = compare(dict(enumerate(a)), {10: b[0], 11: b[1]})
    share_a = sum((x - 0.62) ** 2 for x in a) / 2 / 3
    share_b = sum((x - 0.525) ** 2 for x in b) / 1 / 2
    df = (share_a + share_b) ** 2 / (share_a ** 2 / 2 + share_b ** 2 / 1)
    assert welch.mdd == pytest.approx(min_detectable(math.sqrt(share_a + share_b), df))


def test_holm_matches_a_hand_computation():
    # sorted: 0.01*4 = 0.04; 0.03*3 = 0.09; 0.04*2 = 0.08 -> 0.09 (monotone); 0.20*1 = 0.20
    assert holm([0.01, 0.04, None, 0.03, 0.20]) == pytest.approx([0.04, 0.09, None, 0.09, 0.20])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    # in a sweep: the family is every configuration with a p-value against the same baseline
    table = (runs("resnet18/none", BASE)
             + runs("resnet18/se", [b + d for b, d in zip(BASE, [0.02, 0.035, 0.005, 0.025], strict=True)])
             + runs("resnet18/eca", [b + d for b, d in zip(BASE, [0.01, -0.01, 0.02, 0.0], strict=True)])
             + runs("resnet18/cbam", [b + d for b, d in zip(BASE, [0.03, -0.02, 0.04, 0.01], strict=True)]))
    rows = by_config(summarize(table, {}, metric="test.acc"))
    names = ["resnet18/se", "resnet18/eca", "resnet18/cbam"]
    raw = [ttest_rel([x.metric for x in table if x.plan.config == n], BASE).pvalue for n in names]
    order = sorted(range(3), key=lambda i: raw[i])
    expected, running = [0.0] * 3, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (3 - rank) * raw[i]))
        expected[i] = running
    for name, p, adj in zip(names, raw, expected, strict=True):
        assert rows[name].comparison.p == pytest.approx(p)
        assert rows[name].comparison.p_adj == pytest.approx(adj)
    se = rows["resnet18/se"]
    assert se.comparison.p < 0.05 < se.comparison.p_adj  # significant alone, not after the adjustment
    assert se.verdict.startswith("inconclusive")
    summary = write_summary_md(list(rows.values()), table, Path("/dev/null"), name="x", metric="test.acc",
                               latency_info={}, plots=[])
    assert "Holm–Bonferroni adjusted" in summary and "3 against `resnet18/none`" in summary


def test_paired_when_seeds_are_shared_welch_otherwise():
    a, b = [0.70, 0.74, 0.71], [0.65, 0.70, 0.69]
    paired = compare(dict(enumerate(a)), dict(enumerate(b)))
    reference = ttest_rel(a, b)
    assert paired.test == "paired" and paired.label == "paired, 3 seeds"
    assert paired.p == pytest.approx(reference.pvalue)
    ci = reference.confidence_interval(0.95)
    assert paired.ci == pytest.approx((ci.low, ci.high))
    welch = compare({0: a[0], 1: a[1], 2: a[2]}, {3: b[0], 4: b[1], 5: b[2]})  # no seed in common
    reference = ttest_ind(a, b, equal_var=False)
    assert welch.test == "Welch" and welch.label == "Welch, 3 vs 3"
    assert welch.p == pytest.approx(reference.pvalue) and welch.p > paired.p  # pairing removes the seed effect
    ci = reference.confidence_interval(0.95)
    assert welch.ci == pytest.approx((ci.low, ci.high))
    assert compare({0: a[0], 1: a[1], 2: a[2]}, {0: b[0], 5: b[1]}).test == "Welch"  # one shared seed: not enough
    assert compare({0: a[0], 1: a[1], 7: a[2]}, {0: b[0], 1: b[1], 5: b[2]}).label == "paired, 2 seeds"
    assert compare({0: 0.5}, {0: 0.4, 1: 0.5}) is None
    rows = by_config(summarize(runs("resnet18/none", b) + runs("resnet18/se", a, seeds=[3, 4, 5]), {}))
    assert rows["resnet18/se"].comparison.test == "Welch"


def test_no_seed_variance_is_not_a_p_value_of_zero():
    same_shift = compare({0: 0.86, 1: 0.88, 2: 0.87}, {0: 0.85, 1: 0.87, 2: 0.86})  # +0.01 on every seed (floats)
    assert same_shift.p is None
    assert verdict(same_shift, metric="test.acc").startswith("better on every seed by the same amount")
    assert verdict(compare({0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6}), metric="test.acc").startswith("inconclusive")


def fake_run(root: Path, run_id: str, *, acc: float, val: list[float], loss: str = "0.5", test_size: int = 1000,
             test_is_val: bool = False) -> None:
    run_dir = root / "runs" / run_id
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps(
        {"test": {"acc": acc, "loss": 0.5}, "num_classes": 10, "test_size": test_size, "params": 100,
         "macs": 1000, "test_is_val": test_is_val}))
    lines = ["epoch,step,train/loss_epoch,val/acc"] + [f"{e},{e},{loss},{v}" for e, v in enumerate(val)]
    (run_dir / "logs" / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_collapse_reasons():
    rows = [{"epoch": str(e), "val/acc": str(v), "train/loss_epoch": "0.5"} for e, v in enumerate([0.3, 0.6, 0.8])]
    healthy = {"num_classes": 10, "test": {"acc": 0.8, "loss": 0.6}}
    assert collapse_reason(metric="test.acc", value=0.8, metrics=healthy, rows=rows) == ""
    assert "at chance (10 % for 10 classes)" in collapse_reason(metric="test.acc", value=0.161, metrics=healthy,
                                                                rows=rows)
    assert collapse_reason(metric="test.acc", value=0.20, metrics=healthy, rows=rows) == ""  # above 19 %
    assert "at chance (50 % for 10 classes)" in collapse_reason(metric="test.acc5", value=0.52, metrics=healthy,
                                                                rows=rows)
    nan_rows = [*rows[:2], {**rows[2], "train/loss_epoch": "nan"}]
    assert "train/loss_epoch is nan at epoch 2" in collapse_reason(metric="test.acc", value=0.8, metrics=healthy,
                                                                   rows=nan_rows)
    assert "test.acc is nan" in collapse_reason(metric="test.acc", value=math.nan, metrics=healthy, rows=rows)
    # flat and near chance on val (issue 19: flat alone is not a collapse, see the test below); the test value of
    # 25 % is above chance, so only the validation rule speaks
    flat = [{"epoch": str(e), "val/acc": str(v)} for e, v in enumerate([0.15, 0.14, 0.15, 0.13])]
    assert "val/acc never rose after epoch 1" in collapse_reason(metric="test.acc", value=0.25, metrics=healthy,
                                                                 rows=flat)
    assert collapse_reason(metric="test.acc", value=0.25, metrics=healthy, rows=flat[:2]) == ""  # too short to say
    assert collapse_reason(metric="test.map", value=0.0, metrics={"test": {"map": 0.0}}, rows=[]) == ""


def test_collapsed_run_is_flagged_shown_and_left_out_of_the_test(tmp_path):
    base, stn = [0.85, 0.87, 0.86], [0.87, 0.88, 0.161]
    plans = []
    for config, values in (("resnet18/none", base), ("resnet18/stn", stn)):
        for seed, acc in enumerate(values):
            run_id = f"{config.replace('/', '-')}-s{seed}"
            plans.append(RunPlan(run_id, config, "grid", "resnet18", config.split("/")[1], {}, seed, {},
                                 "resnet18/none"))
            fake_run(tmp_path, run_id, acc=acc, val=[0.5, 0.7, acc] if acc > 0.5 else [acc, acc, acc])
    results = collect(tmp_path, plans, "test.acc")
    rows = by_config(summarize(results, {}, metric="test.acc"))
    stn_row = rows["resnet18/stn"]
    assert stn_row.collapsed == 1 and len(stn_row.values) == 3  # shown and counted in mean/median
    assert stn_row.median == pytest.approx(0.87) and stn_row.mean == pytest.approx(sum(stn) / 3)
    assert stn_row.comparison.n == (2, 2)  # the collapsed seed's pair is out of the test
    assert stn_row.verdict.startswith("1 of 3 seeds collapsed; inconclusive")
    write_results_csv(results, tmp_path / "results.csv", "test.acc")
    with open(tmp_path / "results.csv", newline="") as handle:
        table = {r["run_id"]: r for r in csv.DictReader(handle)}
    assert table["resnet18-stn-s2"]["collapsed"] == "True"
    assert "acc 16.1 % is at chance" in table["resnet18-stn-s2"]["collapse_reason"]
    assert "never rose" in table["resnet18-stn-s2"]["collapse_reason"]
    assert table["resnet18-stn-s0"]["collapsed"] == "False" and table["resnet18-stn-s0"]["collapse_reason"] == ""
    # each run's Wilson interval over its 1000 test images
    interval = binomtest(870, 1000).proportion_ci(0.95, method="wilson")
    assert float(table["resnet18-stn-s0"]["ci95_low"]) == pytest.approx(interval.low)
    assert float(table["resnet18-stn-s0"]["ci95_high"]) == pytest.approx(interval.high)
    assert table["resnet18-stn-s0"]["test_size"] == "1000"
    summary = write_summary_md(list(rows.values()), results, tmp_path / "summary.md", name="x", metric="test.acc",
                               latency_info={}, plots=[])
    assert "s2 16.10 ✗" in summary and "## Collapsed runs" in summary and "`resnet18-stn-s2`: acc 16.1 %" in summary
    assert "| 87.00 |" in summary  # the median beside the mean
    assert "±2.15" in summary  # median Wilson half-width at 1000 images and ~86 %
    assert "¹" not in summary


def test_wilson_interval_and_test_is_val_footnote(tmp_path):
    assert wilson(0.86, 10_000) == pytest.approx((0.8530, 0.8667), abs=1e-4)
    assert wilson(1.0, 50)[1] == 1.0 and wilson(0.0, 50)[0] == 0.0
    plans = [RunPlan(f"r-s{s}", "csp_n/none", "grid", "csp_n", "none", {}, s, {}, "csp_n/none") for s in (0, 1)]
    for s in (0, 1):
        fake_run(tmp_path, f"r-s{s}", acc=0.5, val=[0.1, 0.3, 0.5], test_is_val=True)
    results = collect(tmp_path, plans, "test.acc")
    assert all(r.test_is_val for r in results)
    summary = write_summary_md(summarize(results, {}), results, tmp_path / "summary.md", name="x",
                               metric="test.acc", latency_info={}, plots=[])
    assert "(val)¹" in summary and "¹ The data set has no test split" in summary


def test_plots_spread_equal_costs_and_clip_intervals(tmp_path):
    rows = summarize(runs("resnet18/none", BASE) + runs("resnet18/se", [0.5, 0.99, 0.98, 0.97]), {})
    rows[1].macs = 10_010  # 0.1 % more than the baseline's 10,000: the same x without spreading
    rows[0].macs = 10_000
    slots = _cost_slots(rows)
    assert slots["resnet18/none"] != slots["resnet18/se"]
    low, high = _error(rows[1].mean, rows[1].std, "test.acc", 100.0)
    assert rows[1].mean + rows[1].std > 1.0 and 100 * rows[1].mean + high[0] == pytest.approx(100.0)
    unbounded = _error(0.9, 0.3, "test.loss", 1.0)  # a loss is not clipped
    assert unbounded == ([pytest.approx(0.3)], [pytest.approx(0.3)])
    for row in rows:
        for run in row.runs:
            (tmp_path / "runs" / run.plan.run_id).mkdir(parents=True)
    files = write_plots(rows, [r for row in rows for r in row.runs], tmp_path, "test.acc")
    for name in files:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("with_test", [False, True])
def test_detection_set_without_test_split_warns_and_says_test_is_val(tmp_path, with_test):
    import cv2
    import numpy as np

    from visattn.data.detect import DetectionDataModule

    splits = ("train", "val", "test") if with_test else ("train", "val")
    for split in splits:
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "labels" / split).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "images" / split / f"{split}.png"), np.full((20, 40, 3), 128, np.uint8))
        (tmp_path / "labels" / split / f"{split}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "classes.txt").write_text("a\n")
    dm = DetectionDataModule(name="yolo", data_dir=str(tmp_path), img_size=32, num_workers=0)
    if with_test:
        dm.setup("fit")
        assert dm.test_is_val is False
    else:
        with pytest.warns(UserWarning, match="no test split: the val split stands in"):
            dm.setup("fit")
        assert dm.test_is_val is True


def test_summary_says_which_configurations_were_still_learning(tmp_path):
    curves = {"resnet18/none": [[0.3, 0.80, 0.861, 0.864, 0.866], [0.3, 0.79, 0.853, 0.858, 0.86]],
              "resnet18/mhsa": [[0.1, 0.30, 0.50, 0.60, 0.70], [0.1, 0.35, 0.55, 0.62, 0.71]]}
    plans = []
    for config, vals in curves.items():
        for seed, val in enumerate(vals):
            run_id = f"{config.replace('/', '-')}-s{seed}"
            plans.append(RunPlan(run_id, config, "grid", "resnet18", config.split("/")[1], {}, seed, {},
                                 "resnet18/none"))
            fake_run(tmp_path, run_id, acc=val[-1], val=val)
    results = collect(tmp_path, plans, "test.acc")
    summary = write_summary_md(summarize(results, {}), results, tmp_path / "summary.md", name="x",
                               metric="test.acc", latency_info={}, plots=[])
    section = summary.split("## Trained to the end?", 1)[1]
    assert "| resnet18/none | 2 | 5 | 85.70 / 86.10 / 86.30 | +0.60 | flat |" in section
    assert "| resnet18/mhsa | 2 | 5 | 52.50 / 61.00 / 70.50 | +18.00 | still rising |" in section


# ------------------------------------------------------------------ issue 19: say no more than the seeds support
# The flagship sweep's test accuracies (cluttered-r18w32-blocks-v2, results.csv, rounded to 4 digits).
FLAGSHIP = {"none": [0.8780, 0.8947, 0.8943, 0.8898, 0.9011], "se": [0.8845, 0.8923, 0.8849, 0.8817, 0.8848],
            "eca": [0.8689, 0.8805, 0.8698, 0.8694, 0.8819], "cbam": [0.8596, 0.8785, 0.8577, 0.8588, 0.8686],
            "stn": [0.8777, 0.8953, 0.8763, 0.8947, 0.8924], "mhsa": [0.9316, 0.9363, 0.9340, 0.9329, 0.9221],
            "deeper": [0.9017, 0.9094, 0.9061, 0.9064, 0.9011]}


def detectable_in(text: str) -> float:
    return float(text.split("detectable: ±")[1].rstrip(")"))


def test_detectable_difference_is_at_the_level_holm_uses():
    table = [r for name, values in FLAGSHIP.items() for r in runs(f"resnet18/{name}", values)]
    rows = by_config(summarize(table, {}, metric="test.acc"))
    base = FLAGSHIP["none"]
    for name, expected in (("se", 2.35), ("stn", 2.51), ("deeper", 2.39)):
        row = rows[f"resnet18/{name}"]
        diffs = [a - b for a, b in zip(FLAGSHIP[name], base, strict=True)]
        se = statistics.stdev(diffs) / math.sqrt(5)
        holm_level = min_detectable(se, 4, alpha=0.05 / 6)  # 6 comparisons against resnet18/none
        assert row.verdict.startswith("inconclusive")
        assert detectable_in(row.verdict) == pytest.approx(100 * holm_level, abs=0.006)
        assert detectable_in(row.verdict) == pytest.approx(expected, abs=0.01)
        assert holm_level > 1.5 * min_detectable(se, 4)  # the unadjusted level read 1.4-1.5 on these seeds
    summary = write_summary_md(list(rows.values()), table, Path("/dev/null"), name="x", metric="test.acc",
                               latency_info={}, plots=[])
    assert "alpha = 0.05 / 6" in summary
    # a family of one comparison: Holm changes nothing, the level is alpha itself
    alone = by_config(summarize(runs("resnet18/none", base) + runs("resnet18/se", FLAGSHIP["se"]), {}))
    diffs = [a - b for a, b in zip(FLAGSHIP["se"], base, strict=True)]
    assert detectable_in(alone["resnet18/se"].verdict) == pytest.approx(
        100 * min_detectable(statistics.stdev(diffs) / math.sqrt(5), 4), abs=0.006)


def test_welch_detectable_difference_uses_welch_se_and_df():
    a = [0.50, 0.62, 0.56]  # three noisy runs against ten steady ones, no seed in common
    b = [0.80, 0.81, 0.80, 0.79, 0.80, 0.81, 0.80, 0.79, 0.805, 0.795]
    result = compare(dict(enumerate(a)), {100 + i: v for i, v in enumerate(b)})
    assert result.test == "Welch"
    var_a, var_b = statistics.variance(a) / 3, statistics.variance(b) / 10
    df = (var_a + var_b) ** 2 / (var_a ** 2 / 2 + var_b ** 2 / 9)  # Welch–Satterthwaite
    assert result.mdd == pytest.approx(min_detectable(math.sqrt(var_a + var_b), df))
    # what the number promises: Welch's test at that true difference (these sds) finds it 80 % of the time
    rng = np.random.default_rng(0)
    draws_a = rng.normal(result.mdd, statistics.stdev(a), (40_000, 3))
    draws_b = rng.normal(0.0, statistics.stdev(b), (40_000, 10))
    power = float(np.mean(ttest_ind(draws_a, draws_b, axis=1, equal_var=False).pvalue < 0.05))
    assert power == pytest.approx(0.8, abs=0.02)


def float32(value: float) -> float:
    """A metric as metrics.json stores it: computed in float32, written as a Python float."""
    return float(np.float32(value))


def test_identical_gains_on_every_seed_have_no_p_value_at_the_metric_resolution():
    rng = random.Random(0)
    for _ in range(100):
        correct = [rng.randrange(8000, 9000) for _ in range(5)]  # of 10,000 test images
        gain = rng.randrange(1, 300)
        table = (runs("resnet18/none", [float32(k / 10_000) for k in correct])
                 + runs("resnet18/se", [float32((k + gain) / 10_000) for k in correct]))
        for result in table:
            result.test_size = 10_000
        rows = by_config(summarize(table, {}, metric="test.acc"))
        assert rows["resnet18/se"].comparison.p is None, (correct, gain)
        assert rows["resnet18/se"].verdict.startswith("better on every seed by the same amount")
        # Welch (no seed in common): two constant sides are no variance either
        welch_table = (runs("resnet18/none", [float32(correct[0] / 10_000)] * 3)
                       + runs("resnet18/se", [float32((correct[0] + gain) / 10_000)] * 3, seeds=[5, 6, 7]))
        for result in welch_table:
            result.test_size = 10_000
        welch_row = by_config(summarize(welch_table, {}, metric="test.acc"))["resnet18/se"]
        assert welch_row.comparison.test == "Welch" and welch_row.comparison.p is None
    # one image more on one seed is seed variance: a p-value
    correct = [8500, 8600, 8700, 8800]
    table = (runs("resnet18/none", [float32(k / 10_000) for k in correct])
             + runs("resnet18/se", [float32((k + g) / 10_000) for k, g in zip(correct, [7, 7, 7, 8], strict=True)]))
    for result in table:
        result.test_size = 10_000
    assert by_config(summarize(table, {}))["resnet18/se"].comparison.p is not None
    # the same images right on every seed, one side stored in float32 and one in float64: identical, not "better"
    table = (runs("resnet18/none", [float32(k / 10_000) for k in correct])
             + runs("resnet18/se", [k / 10_000 for k in correct]))
    for result in table:
        result.test_size = 10_000
    assert by_config(summarize(table, {}))["resnet18/se"].verdict == "inconclusive (identical on every seed)"
    # no known resolution (mAP): float32 rounding is still not seed variance
    base = [0.2130, 0.1871, 0.2049, 0.1948]
    rows = by_config(summarize(runs("resnet18/none", [float32(v) for v in base])
                               + runs("resnet18/eca", [float32(v + 0.0123) for v in base]), {}, metric="test.map"))
    assert rows["resnet18/eca"].comparison.p is None


def test_a_flat_run_is_collapsed_only_when_it_is_also_low(tmp_path):
    healthy = {"num_classes": 10, "test": {"acc": 0.9, "loss": 0.3}}
    # fine-tuned from a trained network: at its best from the first epoch and flat after it
    finetuned = [{"epoch": str(e), "val/acc": str(v)} for e, v in enumerate([0.91, 0.90, 0.91, 0.905])]
    assert collapse_reason(metric="test.acc", value=0.90, metrics=healthy, rows=finetuned) == ""
    # low and flat is still a collapse, also where no chance rule applies (mAP)
    low = [{"epoch": str(e), "val/map": str(v)} for e, v in enumerate([0.02, 0.01, 0.02, 0.015])]
    assert "val/map never rose after epoch 1" in collapse_reason(metric="test.map", value=0.02,
                                                                 metrics={"test": {"map": 0.02}}, rows=low)
    high = [{"epoch": str(e), "val/map": str(v)} for e, v in enumerate([0.62, 0.60, 0.61, 0.615])]
    assert collapse_reason(metric="test.map", value=0.6, metrics={"test": {"map": 0.6}}, rows=high) == ""
    # and such a run stays in the test
    plans = []
    for config, values in (("resnet18/none", [0.85, 0.86, 0.87]), ("resnet18/se", [0.90, 0.91, 0.905])):
        for seed, acc in enumerate(values):
            run_id = f"{config.replace('/', '-')}-s{seed}"
            plans.append(RunPlan(run_id, config, "grid", "resnet18", config.split("/")[1], {}, seed, {},
                                 "resnet18/none"))
            fake_run(tmp_path, run_id, acc=acc, val=[acc + 0.01, acc, acc + 0.005] if config.endswith("se")
                     else [0.5, 0.7, acc])
    rows = by_config(summarize(collect(tmp_path, plans, "test.acc"), {}))
    assert rows["resnet18/se"].collapsed == 0 and rows["resnet18/se"].comparison.n == (3, 3)


def loss_run(root: Path, run_id: str, *, val_loss: list[float], lrs: list[float]) -> None:
    """A run that logs val/loss per epoch and the learning rate at the start of each epoch (as Lightning does)."""
    run_dir = root / "runs" / run_id
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps({"test": {"acc": 0.8, "loss": val_loss[-1]},
                                                      "num_classes": 10, "test_size": 100}))
    lines = ["epoch,lr-AdamW/pg1,step,val/loss"]
    for epoch, (loss, lr) in enumerate(zip(val_loss, lrs, strict=True)):
        lines += [f",{lr},{10 * epoch},", f"{epoch},,{10 * epoch + 9},{loss}"]
    (run_dir / "logs" / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_convergence_table_reads_losses_the_right_way_and_counts_seeds_best_at_the_end(tmp_path):
    lrs = [0.001, 0.002, 0.0017, 0.001, 0.0003, 0.00004]  # warm-up, then cosine: the last epoch at 2 % of the peak
    curves = {"resnet18/none": [[2.0, 1.0, 0.80, 0.700, 0.690, 0.702], [2.0, 1.1, 0.85, 0.740, 0.730, 0.742]],
              "resnet18/se": [[2.0, 1.5, 1.20, 1.00, 0.90, 0.80], [2.1, 1.6, 1.30, 1.04, 0.94, 0.84]],
              "resnet18/eca": [[2.0, 1.2, 0.90, 0.80, 0.85, 0.95], [2.0, 1.2, 0.95, 0.84, 0.89, 0.99]]}
    plans = []
    for config, losses in curves.items():
        for seed, val in enumerate(losses):
            run_id = f"{config.replace('/', '-')}-s{seed}"
            plans.append(RunPlan(run_id, config, "grid", "resnet18", config.split("/")[1], {}, seed, {},
                                 "resnet18/none"))
            loss_run(tmp_path, run_id, val_loss=val, lrs=lrs)
    results = collect(tmp_path, plans, "test.loss")
    summary = write_summary_md(summarize(results, {}, metric="test.loss"), results, tmp_path / "summary.md",
                               name="x", metric="test.loss", latency_info={}, plots=[])
    section = summary.split("## Trained to the end?", 1)[1]
    # lower is better: a falling loss is still improving, a rising one is getting worse
    assert "| resnet18/se | 2 | 6 | 1.02 / 0.92 / 0.82 | -0.20 | still falling | 2 of 2 |" in section
    assert "| resnet18/eca | 2 | 6 | 0.82 / 0.87 / 0.97 | +0.15 | rising |" in section
    # best val (the lowest loss) at the last epoch: ties count, the baseline's seeds were best earlier
    assert "| resnet18/none | 2 | 6 | 0.72 / 0.71 / 0.72 | +0.00 | flat | 0 of 2 |" in section
    assert "| resnet18/eca | 2 | 6 | 0.82 / 0.87 / 0.97 | +0.15 | rising | 0 of 2 |" in section
    # what the check can and cannot show under this schedule, with its lr at the last epoch from the logs
    assert "2 % of its peak" in section and "largely built in by the schedule" in section
    assert lr_curve(tmp_path, "resnet18-se-s0") == pytest.approx([lr / 0.002 for lr in lrs])
    # the curves plot draws the schedule and each seed's best epoch (lowest loss) without error
    files = write_plots(summarize(results, {}, metric="test.loss"), results, tmp_path, "test.loss")
    assert (tmp_path / files[2]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_seeds_best_at_the_last_epoch_are_counted_for_accuracy(tmp_path):
    curves = {"resnet18/none": [[0.3, 0.80, 0.861, 0.864, 0.866], [0.3, 0.79, 0.853, 0.861, 0.86]],
              "resnet18/eca": [[0.3, 0.70, 0.80, 0.82, 0.83], [0.3, 0.71, 0.80, 0.83, 0.83]]}
    plans = []
    for config, vals in curves.items():
        for seed, val in enumerate(vals):
            run_id = f"{config.replace('/', '-')}-s{seed}"
            plans.append(RunPlan(run_id, config, "grid", "resnet18", config.split("/")[1], {}, seed, {},
                                 "resnet18/none"))
            fake_run(tmp_path, run_id, acc=val[-1], val=val)
    results = collect(tmp_path, plans, "test.acc")
    summary = write_summary_md(summarize(results, {}), results, tmp_path / "summary.md", name="x",
                               metric="test.acc", latency_info={}, plots=[])
    section = summary.split("## Trained to the end?", 1)[1]
    assert "| resnet18/none | 2 | 5 | 85.70 / 86.25 / 86.30 | +0.60 | flat | 1 of 2 |" in section
    assert "| resnet18/eca | 2 | 5 | 80.00 / 82.50 / 83.00 | +3.00 | still rising | 2 of 2 |" in section
    assert "best val at the last epoch" in section
