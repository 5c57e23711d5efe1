"""Plots of the benchmark results, PNGs written beside the pages that link them.

- `accuracy_plot`: accuracy against a cost (effective MACs, model size), one point per configuration, error
  bars over seeds (min to max), the dense / full-precision reference marked. sparsity.py and binary.py call it.
- `runtime_plot`: the runtime benchmark's speed-ups against accuracy. runtime.json times randomly initialised
  models (speed depends on structure, not on trained values), so each form's accuracy comes from the accuracy
  benchmark that trained that form (ACCURACY_SOURCES); a form none trained is listed, not plotted.

    .venv/bin/python benchmarks/plots.py runtime [--results benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


@dataclass
class Point:
    """One configuration: its cost, its accuracy over seeds (percent) and how to draw it."""

    label: str
    x: float
    mean: float
    low: float
    high: float
    series: str = ""
    reference: bool = False  # dense / full precision: drawn as a star and a dotted line


def _save(fig: Any, path: Path) -> Path:
    from slimkit.files import atomic_write

    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_accuracy(ax: Any, points: Sequence[Point], xlabel: str, title: str, log_x: bool = True,
                  annotate: bool = True) -> None:
    """Points with min-max error bars, one colour per series; references as stars with a dotted line."""
    if not points:
        ax.text(0.5, 0.5, "not run yet", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set(title=title, xlabel=xlabel, ylabel="test accuracy (%)")
        return
    series = list(dict.fromkeys(p.series for p in points if not p.reference))
    palette = [f"C{i}" for i in range(10)] if len(series) <= 10 else [
        _pyplot().get_cmap("tab20")(i) for i in range(20)]
    colours = {s: palette[i % len(palette)] for i, s in enumerate(series)}
    for i, s in enumerate(series):
        members = [p for p in points if p.series == s and not p.reference]
        ax.errorbar([p.x for p in members], [p.mean for p in members],
                    yerr=[[p.mean - p.low for p in members], [p.high - p.mean for p in members]],
                    fmt="osD^v<>ph"[i % 9], capsize=3, color=colours[s], label=s, ms=5)
        if annotate:
            for p in members:
                ax.annotate(p.label, (p.x, p.mean), textcoords="offset points", xytext=(4, 3), fontsize=6,
                            color=colours[s])
    for p in (p for p in points if p.reference):
        ax.errorbar([p.x], [p.mean], yerr=[[p.mean - p.low], [p.high - p.mean]], fmt="*", ms=12, color="black",
                    capsize=3, label=p.label)
        ax.axhline(p.mean, color="black", ls=":", lw=0.8)
    if log_x:
        ax.set_xscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel="test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")


def draw_categories(ax: Any, points: Sequence[Point], title: str) -> None:
    """One column per point (configurations that share a cost), mean with min-max bars, reference dotted."""
    if not points:
        ax.text(0.5, 0.5, "not run yet", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.set(title=title, ylabel="test accuracy (%)")
        return
    for i, p in enumerate(points):
        ax.errorbar([i], [p.mean], yerr=[[p.mean - p.low], [p.high - p.mean]], capsize=3,
                    fmt="*" if p.reference else "o", ms=12 if p.reference else 5,
                    color="black" if p.reference else f"C{i % 10}")
        if p.reference:
            ax.axhline(p.mean, color="black", ls=":", lw=0.8)
    ax.set_xticks(range(len(points)), [p.label for p in points], rotation=35, ha="right", fontsize=7)
    ax.set(title=title, ylabel="test accuracy (%)")
    ax.grid(axis="y", alpha=0.3)


def accuracy_plot(panels: Sequence[tuple[str, str | None, Sequence[Point]]], path: Path, log_x: bool = True
                  ) -> Path:
    """One panel per (title, x label, points), side by side, saved as a PNG at `path`; a panel whose x label
    is None puts each point in a column of its own (draw_categories)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), squeeze=False)
    for ax, (title, xlabel, points) in zip(axes[0], panels, strict=True):
        if xlabel is None:
            draw_categories(ax, points, title)
        else:
            draw_accuracy(ax, points, xlabel, title, log_x)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


# --- runtime: speed-up against accuracy ---------------------------------------------------------------------


@dataclass
class Accuracy:
    """A trained model's accuracy and its own dense reference's, in percent, and which row they are."""

    acc: float
    dense: float
    source: str


def _channels(arch: str, ratio: float, scope: str) -> Callable[[Path], Accuracy | None]:
    def read(results: Path) -> Accuracy | None:
        rows = json.loads((results / "channels.json").read_text())["rows"]
        row = next((r for r in rows if r["arch"] == arch and r["ratio"] == ratio and r["scope"] == scope), None)
        if row is None:
            return None
        return Accuracy(100 * row["test_acc"][1], 100 * row["test_acc"][0],
                        f"channels.json {arch} {row['run']} (GFBS, {scope} scope)")
    return read


def _binary_xnor(results: Path) -> Accuracy | None:
    payload = json.loads((results / "binary.json").read_text())
    rows = [r for r in payload["rows"] if r.get("suite") == "binary"]
    which = "Bi-Real ResNet-20"
    if not rows:  # only the superseded run so far (one seed, ten classes)
        rows = payload.get("superseded", {}).get("rows") or [r for r in payload["rows"] if "suite" not in r]
        which += ", superseded run"
    xnor = [r for r in rows if r.get("group", r["method"]) == "xnor"]
    fp = [r for r in rows if r.get("group", r["method"]) == "fp"]
    if not xnor or not fp:
        return None
    mean = lambda rs: 100 * sum(r["test_acc"] for r in rs) / len(rs)  # noqa: E731
    return Accuracy(mean(xnor), mean(fp), f"binary.json xnor ({which}, {len(xnor)} seed(s))")


def _sparsity(group: str) -> Callable[[Path], Accuracy | None]:
    """A ResNet-20 row of the sparsity benchmark's resnet suite (width 0.5: a proxy for the width-1 model timed)."""
    def read(results: Path) -> Accuracy | None:
        suite = json.loads((results / "sparsity.json").read_text()).get("resnet", {})
        rows = suite.get("rows", [])
        hit = [r for r in rows if r["group"] == group]
        dense = [r for r in rows if r["group"] == "dense"]
        if not hit or not dense:
            return None
        mean = lambda rs: 100 * sum(r["test_acc"] for r in rs) / len(rs)  # noqa: E731
        return Accuracy(mean(hit), mean(dense), f"sparsity.json resnet suite {group} (ResNet-20 width 0.5)")
    return read


def _int8_ptq(results: Path) -> Accuracy | None:
    runs = json.loads((results / "quant_distill.json").read_text()).get("int8_execution", {})
    run = runs.get("ResNet-20, 8-bit PTQ")
    if run is None:
        return None
    acc = run["accuracy"]
    return Accuracy(100 * acc["onnxruntime int8"], 100 * acc["PyTorch fp32"], "quant_distill.json ResNet-20 8-bit PTQ")


# (arch, form as runtime.py names it) -> where a model of that form was trained and tested
ACCURACY_SOURCES: dict[tuple[str, str], Callable[[Path], Accuracy | None]] = {
    ("resnet20", "bnn"): _binary_xnor,
    ("resnet20", "sparse95"): _sparsity("gmp-layer 95%"),
    ("resnet20", "channels50"): _channels("resnet20", 0.5, "global"),
    ("vgg_small", "channels50"): _channels("vgg_small", 0.5, "global"),
    ("resnet56", "channels50"): _channels("resnet56", 0.5, "layer"),
}


def _base_form(form: str) -> tuple[str, str]:
    """runtime.py's form label -> (compressed form, how it runs)."""
    for suffix in (" + BN folded", " in openvino+slimkit"):
        if form.endswith(suffix):
            return form[: -len(suffix)], suffix.strip()
    if " in " in form:
        base, _, engine = form.partition(" in ")
        return base, f"in {engine}"
    return form, "eager deployed"


SHORT = {"resnet20": "R20", "resnet56": "R56", "vgg_small": "VGG"}


def runtime_points(runtime: dict[str, Any], results: Path, batch: int, baseline: str = "best_dense",
                   sources: dict[str, str] | None = None) -> tuple[list[Point], list[str]]:
    """(points, forms without a measured accuracy) for one batch size: x = accuracy change against the
    form's own dense reference (points), y = speed-up against `baseline`; `sources` collects, per short
    label, which accuracy row each point took."""
    points, unmatched = [], []
    cache: dict[tuple[str, str], Accuracy | None] = {}
    sources = {} if sources is None else sources
    for row in runtime["rows"]:
        if row["batch"] != batch:
            continue
        base, how = _base_form(row["form"])
        key = (row["arch"], base)
        if key not in cache:
            source = ACCURACY_SOURCES.get(key)
            try:
                cache[key] = source(results) if source else None
            except (OSError, KeyError, ValueError):
                cache[key] = None
        acc = cache[key]
        if acc is None:
            unmatched.append(f"{row['arch']} {row['form']}")
            continue
        delta = acc.acc - acc.dense
        label = f"{SHORT.get(row['arch'], row['arch'])} {base}"
        sources[label] = f"{acc.source}: {acc.acc:.2f}% vs {acc.dense:.2f}%"
        speedup = row["vs"][baseline]["speedup"]
        points.append(Point(label, delta, speedup, speedup, speedup, series=how))
    return points, sorted(set(unmatched))


def runtime_plot(results: Path = HERE / "results", batches: Sequence[int] = (1, 64)) -> tuple[Path, list[str]]:
    """runtime-speedup.png beside runtime.md: speed-up against the best dense engine (y, log) against the
    accuracy change from each form's trained model (x); returns the path and the forms not plotted."""
    runtime = json.loads((results / "runtime.json").read_text())
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(batches), figsize=(6.6 * len(batches), 4.8), squeeze=False)
    missing: list[str] = []
    sources: dict[str, str] = {}
    for ax, batch in zip(axes[0], batches, strict=True):
        points, unmatched = runtime_points(runtime, results, batch, sources=sources)
        missing += unmatched
        series = list(dict.fromkeys(p.series for p in points))
        for i, s in enumerate(series):
            members = [p for p in points if p.series == s]
            ax.scatter([p.x for p in members], [p.mean for p in members], color=f"C{i}", label=s, s=22)
            for p in members:
                ax.annotate(p.label, (p.x, p.mean), textcoords="offset points", xytext=(4, 2), fontsize=6,
                            color=f"C{i}")
        ax.scatter([0.0], [1.0], marker="*", s=140, color="black", label="dense in the best dense engine")
        ax.axhline(1.0, color="black", ls=":", lw=0.8)
        ax.set_yscale("log")
        ax.set(title=f"batch {batch}", xlabel="accuracy change vs the form's own dense model (points)",
               ylabel="speed-up vs the best dense engine (x)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Speed-up (runtime.json) against accuracy (the accuracy benchmark that trained each form)",
                 fontsize=9)
    caption = "Accuracy of each form: " + "; ".join(f"{k}: {v}" for k, v in sorted(sources.items()))
    fig.text(0.01, 0.005, "\n".join(textwrap.wrap(caption, 200)), fontsize=6, va="bottom")
    fig.tight_layout(rect=(0, 0.02 + 0.012 * len(textwrap.wrap(caption, 200)), 1, 1))
    path = _save(fig, results / "runtime-speedup.png")
    plt.close(fig)
    return path, sorted(set(missing))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["runtime"])
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args()
    path, missing = runtime_plot(args.results)
    print(f"wrote {path}")
    if missing:
        print("no trained accuracy for (not plotted): " + ", ".join(missing))


if __name__ == "__main__":
    main()
