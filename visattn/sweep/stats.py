"""The statistics of a sweep: how a configuration compares with its baseline, and which runs collapsed.

A verdict is "better" or "worse" only when the Holm-adjusted p-value is below ``ALPHA``; otherwise it is
"inconclusive" together with the smallest difference these seeds could have detected (80 % power), so a
large but noisy difference never reads like a tie. Runs with the same seed see the same data order and
augmentation, so they are compared in pairs (``scipy.stats.ttest_rel``) whenever at least two seeds are
shared; Welch's test (``scipy.stats.ttest_ind(equal_var=False)``) only when they are not.

The detectable difference is computed at the level the verdict needs: with m comparisons against one baseline,
alpha / m. Holm calls any comparison whose raw p is below alpha / m, whatever the others give (its adjusted p is
at most m times the raw p), so a true difference of that size is called with at least 80 % power; at Holm's later
steps the level is looser, but which step a comparison reaches depends on the other comparisons' luck, so the
number would not be a property of this comparison.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ALPHA = 0.05
POWER = 0.8
# A run is "at chance" when its accuracy covers less than this fraction of the way from chance to 100 %
# (10 classes: below 19 %). The collapsed STN seed of the first flagship sweep stood at 16.1 %.
NEAR_CHANCE = 0.1
# Metrics in [0, 1] (shown in %, intervals clipped to this range).
BOUNDED = ("acc", "acc5", "f1", "precision", "recall")
PROPORTIONS = {"acc": 1, "acc5": 5}  # metric -> k of top-k: a proportion of test images (Wilson interval)
# The step of a metric whose grid is not known (mAP, F1, losses), relative to max(1, |value|): metrics are computed
# in float32 (about 7 significant digits), so values that differ by less than this are equal up to rounding.
FLOAT_RESOLUTION = 1e-5


def metric_leaf(metric: str) -> str:
    return metric.rsplit(".", 1)[-1]


def is_bounded(metric: str) -> bool:
    leaf = metric_leaf(metric)
    return leaf in BOUNDED or leaf.startswith(("map", "mar"))


def higher_is_better(metric: str) -> bool:
    return "loss" not in metric_leaf(metric)


def resolution_of(metric: str, test_sizes: Sequence[int | None]) -> float | None:
    """The step between the values a metric can take: 1/N for a top-k accuracy on N test images (the largest N
    when runs differ), None when not known (:data:`FLOAT_RESOLUTION` applies)."""
    sizes = [n for n in test_sizes if isinstance(n, int) and n > 0]
    if metric_leaf(metric) in PROPORTIONS and sizes and len(sizes) == len(test_sizes):
        return 1.0 / max(sizes)
    return None


def value_step(values: Sequence[float], resolution: float | None) -> float:
    """``resolution`` when known, else :data:`FLOAT_RESOLUTION` at the scale of ``values``."""
    return resolution if resolution else FLOAT_RESOLUTION * max(1.0, max((abs(x) for x in values), default=0.0))


def no_spread(values: Sequence[float], resolution: float | None) -> bool:
    """True when ``values`` are equal at the metric's resolution: their sd is below half the smallest sd that
    values on a grid of that step can have when they are not all equal (step / sqrt(n): one value one step off).
    Float32 rounding is far below it; one test image more on one seed is above it."""
    n = len(values)
    if n < 2:
        return True
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in values) / (n - 1))
    return sd <= 0.5 * value_step(values, resolution) / math.sqrt(n)


def val_key(metric: str) -> str:
    """The validation column logged for ``metric``: test.acc -> val/acc (best_val and others -> val/acc)."""
    return "val/" + metric.split(".", 1)[1] if metric.startswith("test.") else "val/acc"


# ------------------------------------------------------------------------------------------- comparisons
@dataclass
class Comparison:
    """A configuration minus its baseline, over the seeds used by the test."""

    test: str  # "paired" or "Welch"
    n: tuple[int, int]  # (pairs, pairs) or (configuration runs, baseline runs)
    diff: float  # mean paired difference, or difference of means
    ci: tuple[float, float]  # 95 % confidence interval of ``diff``
    p: float | None  # two-sided; None without any seed variance
    mdd: float  # minimum detectable difference at POWER and compare()'s alpha (two-sided), a family of one
    se: float = 0.0  # standard error of ``diff`` (paired, or Welch's)
    df: float = 1.0  # its degrees of freedom (n - 1, or Welch–Satterthwaite)
    p_adj: float | None = None  # after Holm's adjustment over the baseline's family
    family: int = 1  # comparisons with a p-value in that family (m)
    mdd_holm: float | None = None  # minimum detectable difference at alpha / family: what the verdict can see
    step: float = 0.0  # the metric's resolution the comparison used: a |diff| below half of it is no difference

    @property
    def label(self) -> str:
        return f"paired, {self.n[0]} seeds" if self.test == "paired" else f"Welch, {self.n[0]} vs {self.n[1]}"


def min_detectable(se: float, df: float, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true difference a two-sided t-test with standard error ``se`` and ``df`` degrees of freedom
    detects with probability ``power`` at ``alpha`` (exact, through the noncentral t distribution)."""
    from scipy.optimize import brentq
    from scipy.stats import nct, t

    if se == 0:
        return 0.0
    crit = float(t.ppf(1 - alpha / 2, df))

    def shortfall(nc: float) -> float:
        lower = float(nct.cdf(-crit, df, nc))  # the wrong-sign tail: negligible, and NaN in scipy at some nc
        return float(nct.sf(crit, df, nc)) + (lower if math.isfinite(lower) else 0.0) - power

    high = 4.0
    while shortfall(high) < 0:  # widen the bracket step by step (nct is unreliable far out)
        high *= 2
    return float(brentq(shortfall, 0.0, high)) * se


def compare(values: Mapping[int, float], base: Mapping[int, float], *, alpha: float = ALPHA,
            power: float = POWER, resolution: float | None = None) -> Comparison | None:
    """``values`` and ``base`` map seed -> metric. Paired over the shared seeds when there are at least two,
    else Welch's test; None when neither side allows a test (fewer than 2 values). ``resolution``: the step of the
    metric's values (:func:`resolution_of`); spreads below it are no seed variance (no p-value)."""
    from scipy.stats import t, ttest_ind, ttest_rel

    common = sorted(set(values) & set(base))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # no variance: scipy warns and returns nan
        if len(common) >= 2:
            a, b = [values[s] for s in common], [base[s] for s in common]
            d = [x - y for x, y in zip(a, b, strict=True)]
            n = len(d)
            mean = math.fsum(d) / n
            sd = math.sqrt(math.fsum((x - mean) ** 2 for x in d) / (n - 1))
            se = sd / math.sqrt(n)
            half = float(t.ppf(1 - alpha / 2, n - 1)) * se
            # the same difference on every seed, up to the metric's resolution: no p-value (scipy would give ~0)
            p = math.nan if no_spread(d, resolution) else float(ttest_rel(a, b).pvalue)
            return Comparison("paired", (n, n), mean, (mean - half, mean + half), None if math.isnan(p) else p,
                              min_detectable(se, n - 1, alpha=alpha, power=power), se, n - 1,
                              step=value_step(a + b, resolution))
        if len(values) < 2 or len(base) < 2:
            return None
        a, b = list(values.values()), list(base.values())
        na, nb = len(a), len(b)
        diff = math.fsum(a) / na - math.fsum(b) / nb
        result = ttest_ind(a, b, equal_var=False)
        p = math.nan if no_spread(a, resolution) and no_spread(b, resolution) else float(result.pvalue)
        if math.isnan(p):
            ci = (diff, diff)
        else:
            interval = result.confidence_interval(1 - alpha)
            ci = (float(interval.low), float(interval.high))
    # Welch's standard error and Welch–Satterthwaite degrees of freedom, as the test itself uses
    share_a, share_b = (math.fsum((x - math.fsum(v) / len(v)) ** 2 for x in v) / (len(v) - 1) / len(v)
                        for v in (a, b))
    se = math.sqrt(share_a + share_b)
    df = (share_a + share_b) ** 2 / (share_a ** 2 / (na - 1) + share_b ** 2 / (nb - 1)) if se > 0 else na + nb - 2
    return Comparison("Welch", (na, nb), diff, ci, None if math.isnan(p) else p,
                      min_detectable(se, df, alpha=alpha, power=power), se, df, step=value_step(a + b, resolution))


def holm_detectable(comparison: Comparison, family: int, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """The minimum detectable difference of ``comparison`` at alpha / ``family``: the level at which Holm's
    procedure over ``family`` comparisons calls it whatever the others give (see the module docstring)."""
    comparison.family = max(1, family)
    comparison.mdd_holm = min_detectable(comparison.se, comparison.df, alpha=alpha / comparison.family, power=power)
    return comparison.mdd_holm


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (None stays None and does not count towards the family size)."""
    order = sorted((i for i, p in enumerate(p_values) if p is not None), key=lambda i: p_values[i])
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p_values[i]))
        out[i] = running
    return out


def verdict(comparison: Comparison, *, metric: str, scale: float = 1.0, alpha: float = ALPHA) -> str:
    """better / worse (Holm-adjusted p) or inconclusive (with the minimum detectable difference at the Holm level
    when :func:`holm_detectable` has set it)."""
    up = comparison.diff > 0 if higher_is_better(metric) else comparison.diff < 0
    if comparison.p is None:  # every seed moved by the same amount (or not at all)
        if abs(comparison.diff) <= comparison.step / 2:
            return "inconclusive (identical on every seed)"
        return f"{'better' if up else 'worse'} on every seed by the same amount (no seed variance, no p-value)"
    p_adj = comparison.p if comparison.p_adj is None else comparison.p_adj
    if p_adj < alpha:
        return f"{'better' if up else 'worse'} (Holm p={p_adj:.2g})"
    mdd = comparison.mdd if comparison.mdd_holm is None else comparison.mdd_holm
    return f"inconclusive (Holm p={p_adj:.2g}; detectable: ±{scale * mdd:.2f})"


# --------------------------------------------------------------------------------------------- test noise
def wilson(value: float, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``value`` measured on ``n`` test images."""
    from scipy.stats import binomtest

    k = min(n, max(0, round(value * n)))
    interval = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


# -------------------------------------------------------------------------------------------- collapses
def _finite(text: Any) -> bool:
    try:
        return math.isfinite(float(text))
    except (TypeError, ValueError):
        return False


def near_chance(leaf: str, value: float, classes: Any) -> str:
    """How ``value`` of a metric named ``leaf`` is at or near chance ("" when it is not, or when that is unknown):
    a top-k accuracy within ``NEAR_CHANCE`` of the way from k/classes to 100 %, another metric in [0, 1] (mAP, F1)
    within ``NEAR_CHANCE`` of 0."""
    if leaf in PROPORTIONS and isinstance(classes, int) and classes:
        chance = min(PROPORTIONS[leaf], classes) / classes
        if value <= chance + NEAR_CHANCE * (1 - chance):
            return f"{100 * value:.1f} % is at chance ({100 * chance:.0f} % for {classes} classes)"
    elif leaf not in PROPORTIONS and is_bounded(leaf) and value <= NEAR_CHANCE:
        return f"{100 * value:.1f} % is near 0"
    return ""


def collapse_reason(*, metric: str, value: float | None, metrics: Mapping[str, Any],
                    rows: Sequence[Mapping[str, str]]) -> str:
    """Why a finished run counts as collapsed ("" when it does not): a non-finite metric or loss, an accuracy at
    or near chance (``NEAR_CHANCE``), or a validation metric that never rose above its first epoch's value (three
    or more epochs logged) and stayed low (:func:`near_chance`). A run that is at its best from the first epoch
    and stays there at a good value (e.g. fine-tuning a trained network) did not collapse. ``rows`` are the run's
    logs/metrics.csv rows."""
    reasons = []
    if value is None or not math.isfinite(value):
        reasons.append(f"{metric} is {value}")
    test_loss = (metrics.get("test") or {}).get("loss")
    if test_loss is not None and not _finite(test_loss):
        reasons.append(f"test loss is {test_loss}")
    for row in rows:
        bad = [k for k, v in row.items() if k and "loss" in k and v not in (None, "") and not _finite(v)]
        if bad:
            reasons.append(f"{bad[0]} is {row[bad[0]]} at epoch {row.get('epoch', '?')}")
            break
    leaf, classes = metric_leaf(metric), metrics.get("num_classes")
    if value is not None and math.isfinite(value) and leaf in PROPORTIONS:
        chance = near_chance(leaf, value, classes)
        if chance:
            reasons.append(f"{leaf} {chance}")
    if higher_is_better(metric):
        key = val_key(metric)
        series: dict[int, float] = {}
        for row in rows:
            if _finite(row.get(key)) and _finite(row.get("epoch")):
                series[int(float(row["epoch"]))] = float(row[key])  # a resumed epoch's later value wins
        values = [series[e] for e in sorted(series)]
        if len(values) >= 3 and max(values[1:]) <= values[0]:
            low = near_chance(key.rsplit("/", 1)[-1], max(values), classes)
            if low:
                reasons.append(f"{key} never rose after epoch 1 ({values[0]:.3f}; best later {max(values[1:]):.3f})"
                               f" and stayed low (best {low})")
    return "; ".join(reasons)
