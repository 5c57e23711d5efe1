"""Reports: the dense-versus-compressed table, per-layer detail, plots, and the run's environment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from slimkit.metrics import precision_summary
from slimkit.report.plots import plot_layer_sparsity, plot_training


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _count(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


def _ratio(before: float, after: float) -> str:
    return f"{before / after:.2f}x" if after else "n/a"


class Report:
    """Built from a run's metrics.json; renders Markdown and the comparison rows the CLI prints."""

    def __init__(self, metrics: dict[str, Any]):
        self.metrics = metrics

    @classmethod
    def from_run(cls, run_dir: Path) -> Report:
        from slimkit.errors import SlimkitError

        path = Path(run_dir) / "metrics.json"
        if not path.is_file():
            raise SlimkitError(f"{run_dir} is not a finished slimkit run: {path} is missing")
        return cls(json.loads(path.read_text()))

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(metric, dense, compressed, change) for the headline table."""
        dense, comp = self.metrics["models"]["dense"], self.metrics["models"]["compressed"]
        dm, cm = dense["measurement"], comp["measurement"]
        rows = [
            ("test accuracy", _pct(dense["test_acc"]), _pct(comp["test_acc"]),
             f"{100 * (comp['test_acc'] - dense['test_acc']):+.2f} pts"),
            ("sparsity (all parameters)", _pct(dm["sparsity"]), _pct(cm["sparsity"]), ""),
        ]
        for stage in self.metrics.get("stages", []):
            if "achieved_sparsity" in stage:
                rows.append((f"sparsity ({stage['method']} layers)", _pct(stage["dense_sparsity"]),
                             _pct(stage["achieved_sparsity"]), f"target {_pct(stage['target_sparsity'])}"))
        rows += [
            ("nonzero parameters", _count(dm["nonzeros"]), _count(cm["nonzeros"]),
             _ratio(dm["nonzeros"], cm["nonzeros"]) + " fewer"),
            ("size (fp32; sparse as bitmap; binary 1 bit)", _size(dm["compressed_bytes"]),
             _size(cm["compressed_bytes"]), _ratio(dm["compressed_bytes"], cm["compressed_bytes"]) + " smaller"),
            ("MACs per sample (effective)", _count(dm["effective_macs"]), _count(cm["effective_macs"]),
             _ratio(dm["effective_macs"], cm["effective_macs"]) + " fewer"),
        ]
        if cm["bops"]:
            rows += [
                ("FP MACs per sample", _count(dm["fp_macs"]), _count(cm["fp_macs"]),
                 _ratio(dm["fp_macs"], cm["fp_macs"]) + " fewer"),
                ("BOPs per sample", _count(dm["bops"]), _count(cm["bops"]), ""),
                ("OPs per sample (FP MACs + BOPs/64)", _count(dm["ops"]), _count(cm["ops"]),
                 _ratio(dm["ops"], cm["ops"]) + " fewer"),
            ]
        for batch, lat in cm.get("latency_ms", {}).items():
            before = dm["latency_ms"][batch]["median"]
            rows.append((f"latency batch {batch} (median ms, {cm['threads']} threads)", f"{before:.3f}",
                         f"{lat['median']:.3f}", _ratio(before, lat["median"]) + " speed-up"))
        return rows

    def table(self) -> str:
        """The headline comparison as a Markdown table."""
        lines = ["| metric | dense | compressed | change |", "|---|---:|---:|---:|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.rows()]
        return "\n".join(lines)

    def layer_table(self) -> str:
        lines = ["| layer | type | shape | params | nonzeros | sparsity | MACs | effective MACs |",
                 "|---|---|---|---:|---:|---:|---:|---:|"]
        for layer in self.metrics["models"]["compressed"]["measurement"]["layers"]:
            shape = "x".join(str(s) for s in layer["shape"])
            lines.append(f"| {layer['name']} | {layer['type']} | {shape} | {layer['params']} | {layer['nonzeros']} "
                         f"| {_pct(layer['sparsity'])} | {_count(layer['macs'])} | {_count(layer['effective_macs'])} |")
        return "\n".join(lines)

    def _precision_section(self) -> list[str]:
        layers = self.metrics["models"]["compressed"]["measurement"]["layers"]
        if all(layer["weight_bits"] == 32 for layer in layers):
            return []
        return ["## Precision summary (compressed)", "", precision_summary(layers), ""]

    def markdown(self) -> str:
        m = self.metrics
        data, env = m["data"], m["environment"]
        dense, comp = m["models"]["dense"], m["models"]["compressed"]
        parts = [
            f"# slimkit report: {m['recipe']}",
            "",
            f"Data: **{data['name']}** ({data['train']} train / {data['val']} val / {data['test']} test, "
            f"input {'x'.join(map(str, data['input_shape']))}). Model: **{m['model']}**. Seed {env['seed']}."
            + (f"\n\n> {data['note']}" if data.get("note") else ""),
            "",
            "## Dense versus compressed",
            "",
            self.table(),
            "",
            "Accuracy is on the held-out test split, for the epoch with the best validation accuracy among "
            "epochs where compression had reached its target. Latency is the median over interleaved repeats "
            "after warm-up in eager PyTorch. Sparse and binary layers run on dense float kernels here, so they "
            "save bytes and operations but not time until the model is deployed with sparse or bit-packed "
            "kernels.",
            "",
            "## Training",
            "",
            f"Dense: {len(dense['history'])} epochs ({dense['train_seconds']:.0f}s), best epoch "
            f"{dense['best_epoch']}. Compressed: {len(comp['history'])} epochs ({comp['train_seconds']:.0f}s), "
            f"best epoch {comp['best_epoch']}.",
            "",
            "![training curves](training.png)",
            "",
            "## Per-layer detail (compressed)",
            "",
            self.layer_table(),
            "",
            "![per-layer sparsity](layer_sparsity.png)",
            "",
            *self._precision_section(),
            "## Environment",
            "",
            "| key | value |",
            "|---|---|",
            *[f"| {k} | {v} |" for k, v in env.items()],
            "",
            "The resolved recipe is in recipe.yaml and every number above is in metrics.json.",
        ]
        return "\n".join(parts) + "\n"

    def write(self, run_dir: Path) -> Path:
        """report.md plus its two PNG plots, in `run_dir`."""
        run_dir = Path(run_dir)
        models = self.metrics["models"]
        plot_training({k: v["history"] for k, v in models.items()}, run_dir / "training.png")
        plot_layer_sparsity(models["compressed"]["measurement"]["layers"], run_dir / "layer_sparsity.png")
        path = run_dir / "report.md"
        path.write_text(self.markdown())
        return path
