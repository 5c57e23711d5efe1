"""Paper claims and their verdicts: a claim says one configuration beats another; a benchmark publishes its
claims as data before it runs, and its page states for each whether our measurement reproduced it.

The rule (`verdict`), in one place. Each configuration runs at least MIN_SEEDS seeds. The gap is
mean(claimed better) - mean(claimed worse) in test-accuracy points, with a 95% t-interval on it:

- paired, where both sides ran the same seeds (a seed fixes the initial weights and the data order for every
  configuration, so the per-seed differences d_i are what varies): d_mean +- t(0.975, n-1) * s_d / sqrt(n);
- Welch, where the seeds differ: gap +- t(0.975, nu) * sqrt(s_a^2/n_a + s_b^2/n_b), with nu the
  Welch-Satterthwaite degrees of freedom.

An interval above 0 *reproduces* the claim, one below 0 *contradicts* it, one that holds 0 leaves it *not
resolved*. Unlike the earlier rule (|gap| > 2 x the larger max-min range over 2 seeds), this one has known error
rates: a true null is called resolved 5% of the time whatever the seed count, and its power grows with seeds
(`simulated_error_rates` computes both for a page; the earlier rule called 7% of nulls resolved at 2 seeds and
became stricter, not surer, with more seeds, since a range only grows).

Reference: B. L. Welch, "The generalization of 'Student's' problem when several different population variances
are involved", Biometrika 34 (1947).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

MIN_SEEDS = 3
CONFIDENCE = 0.95
REPRODUCED, CONTRADICTED, NOT_RESOLVED, NOT_MEASURED = "reproduced", "contradicted", "not resolved", "not measured"
RULE = (f"A claim is judged by a {CONFIDENCE:.0%} t-interval on the gap, mean(claimed better) - mean(claimed "
        f"worse) in test-accuracy points, over at least {MIN_SEEDS} seeds per configuration: paired by seed where "
        "both sides ran the same seeds (a seed fixes initial weights and data order), Welch's otherwise. An "
        "interval above 0: *reproduced*; below 0: *contradicted*; holding 0: *not resolved*.")


@dataclass(frozen=True)
class Claim:
    """A published ordering: configuration `better` reaches a higher accuracy than `worse` (group keys of
    the benchmark's rows), as `source` states; `note` says where our setting departs from the paper's.
    `controls` lists the recipe-matched comparisons (better, worse) the claim must survive where the two
    recipes differ in more than the method (controls.py). `min_effect` is the smallest gap in points the claim
    is about, published with it before the run: an interval above 0 that reaches below it does not reproduce
    the claim (0: any positive gap does)."""

    text: str
    better: str
    worse: str
    source: str
    note: str = ""
    controls: tuple[tuple[str, str], ...] = ()
    min_effect: float = 0.0


@dataclass(frozen=True)
class Stats:
    """Test accuracy of one configuration, in percentage points, by seed."""

    by_seed: dict[int, float]

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(sorted(self.by_seed))

    @property
    def mean(self) -> float:
        return statistics.fmean(self.by_seed.values())

    @property
    def low(self) -> float:
        return min(self.by_seed.values())

    @property
    def high(self) -> float:
        return max(self.by_seed.values())

    def text(self) -> str:
        if len(self.by_seed) == 1:
            return f"{self.mean:.2f} (1 seed)"
        return f"{self.mean:.2f} ({self.low:.2f}-{self.high:.2f}, {len(self.by_seed)} seeds)"


@dataclass(frozen=True)
class Verdict:
    status: str
    gap: float | None = None
    interval: tuple[float, float] | None = None
    method: str = ""
    reason: str = ""


def group_stats(rows: Iterable[dict[str, Any]], value: Callable[[dict[str, Any]], float] = lambda r: 100 * r["test_acc"]
                ) -> dict[str, Stats]:
    """Group key -> Stats over the rows' seeds (each row has 'group' and 'seed')."""
    groups: dict[str, dict[int, float]] = {}
    for r in rows:
        groups.setdefault(r["group"], {})[r["seed"]] = value(r)
    return {g: Stats(v) for g, v in groups.items()}


def gap_interval(better: Sequence[float], worse: Sequence[float], paired: bool) -> tuple[float, float, float]:
    """(gap, low, high): the mean difference and its CONFIDENCE t-interval, paired (same seeds, same order) or
    Welch's."""
    a, b = np.asarray(better, dtype=float), np.asarray(worse, dtype=float)
    quantile = (1 + CONFIDENCE) / 2
    if paired:
        d = a - b
        half = float(scipy_stats.t.ppf(quantile, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
        return float(d.mean()), float(d.mean()) - half, float(d.mean()) + half
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    gap, se = float(a.mean() - b.mean()), math.sqrt(va + vb)
    if se == 0:
        return gap, gap, gap
    nu = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    half = float(scipy_stats.t.ppf(quantile, nu)) * se
    return gap, gap - half, gap + half


def verdict(claim: Claim, stats: dict[str, Stats]) -> Verdict:
    """The claim against our measurement, by the rule of RULE."""
    missing = [g for g in (claim.better, claim.worse) if g not in stats]
    if missing:
        return Verdict(NOT_MEASURED, reason=f"no rows for {', '.join(missing)}")
    better, worse = stats[claim.better], stats[claim.worse]
    few = min(len(better.seeds), len(worse.seeds))
    if few < MIN_SEEDS:
        return Verdict(NOT_RESOLVED, better.mean - worse.mean, reason=f"{few} seed(s); the rule needs {MIN_SEEDS}")
    paired = better.seeds == worse.seeds
    seeds = better.seeds
    gap, low, high = gap_interval([better.by_seed[s] for s in seeds] if paired else list(better.by_seed.values()),
                                  [worse.by_seed[s] for s in seeds] if paired else list(worse.by_seed.values()),
                                  paired)
    method = "paired" if paired else "Welch"
    if low > 0 and low < claim.min_effect:
        return Verdict(NOT_RESOLVED, gap, (low, high), method,
                       f"the interval reaches below the published minimum effect of {claim.min_effect:g} pts")
    if low > 0:
        return Verdict(REPRODUCED, gap, (low, high), method)
    if high < 0:
        return Verdict(CONTRADICTED, gap, (low, high), method)
    return Verdict(NOT_RESOLVED, gap, (low, high), method, "the interval holds 0")


def simulated_error_rates(seeds: int, true_gap_sigmas: float, trials: int = 20000, seed: int = 0) -> float:
    """The share of `trials` simulated claims that the rule calls resolved in the claimed direction (or, for a
    true gap of 0, in either direction): both configurations' accuracies normal with the same sigma per seed,
    independent, `seeds` paired seeds each, a true gap of `true_gap_sigmas` sigma."""
    rng = np.random.default_rng(seed)
    better = rng.standard_normal((trials, seeds)) + true_gap_sigmas
    worse = rng.standard_normal((trials, seeds))
    d = better - worse
    half = scipy_stats.t.ppf((1 + CONFIDENCE) / 2, seeds - 1) * d.std(axis=1, ddof=1) / math.sqrt(seeds)
    mean = d.mean(axis=1)
    above, below = mean - half > 0, mean + half < 0
    return float(np.mean(above | below) if true_gap_sigmas == 0 else np.mean(above))


def error_rates_text(seeds: Sequence[int] = (3, 5)) -> str:
    """The rule's simulated error rates, as a sentence for a page."""
    parts = [f"{n} seeds: a true null called resolved {simulated_error_rates(n, 0):.1%} of the time, a true gap "
             f"of 2 sigma reproduced {simulated_error_rates(n, 2):.0%}" for n in seeds]
    return ("Simulated error rates of this rule (normal noise, sigma per seed, 20,000 trials each): "
            + "; ".join(parts) + ".")


def claims_table(claims: Sequence[Claim], stats: dict[str, Stats],
                 survives: Callable[[Claim], str] | None = None) -> str:
    """Markdown: paper claim -> our measurement -> gap with its interval -> verdict, one line per claim, and
    where `survives` is given (controls.survival), whether the verdict survives the claim's controls."""
    extra = ("", "") if survives is None else (" survives its recipe-matched controls |", "---|")
    lines = [f"| paper claim | source | ours: claimed better | ours: claimed worse | gap (pts) | "
             f"{CONFIDENCE:.0%} interval | verdict |{extra[0]}", f"|---|---|---:|---:|---:|---|---|{extra[1]}"]
    for c in claims:
        v = verdict(c, stats)
        side = [stats[g].text() if g in stats else "-" for g in (c.better, c.worse)]
        gap = "-" if v.gap is None else f"{v.gap:+.2f}"
        interval = "-" if v.interval is None else f"{v.interval[0]:+.2f} to {v.interval[1]:+.2f} ({v.method})"
        status = f"**{v.status}**" + (f" ({v.reason})" if v.reason else "")
        source = c.source + (f". {c.note}" if c.note else "")
        tail = "" if survives is None else f" {survives(c)} |"
        lines.append(f"| {c.text} | {source} | {side[0]} | {side[1]} | {gap} | {interval} | {status} |{tail}")
    return "\n".join(lines)


def expected_orderings(claims: Sequence[Claim]) -> str:
    """The claims as a Markdown list, for a page written before (or without) any measurement."""
    return "\n".join(f"- {c.text} ({c.source}{'; ' + c.note if c.note else ''}"
                     f"{f'; minimum effect {c.min_effect:g} pts' if c.min_effect else ''})" for c in claims)
