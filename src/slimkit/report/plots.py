"""PNG plots for a run's report: training curves, per-layer sparsity and hardware cost."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from slimkit.files import atomic_write


def plot_training(histories: dict[str, list[dict[str, Any]]], path: Path, metric: str | None = "acc") -> Path:
    """Loss and the task metric per epoch (loss alone without a metric); the phases (dense, compressed)
    follow each other on one time axis."""
    fig, axes = plt.subplots(1, 2 if metric else 1, figsize=(10 if metric else 5, 3.6), squeeze=False)
    ax_loss, ax_metric = axes[0][0], axes[0][1] if metric else None
    scale = 100 if metric == "acc" else 1
    offset = 0
    for phase, history in histories.items():
        if not history:
            continue
        epochs = [offset + r["epoch"] + 1 for r in history]
        ax_loss.plot(epochs, [r["train_loss"] for r in history], marker=".", label=f"{phase} train")
        if "val_loss" in history[0]:
            ax_loss.plot(epochs, [r["val_loss"] for r in history], marker=".", ls="--", label=f"{phase} val")
        if ax_metric is not None:
            ax_metric.plot(epochs, [scale * r[f"train_{metric}"] for r in history], marker=".", label=f"{phase} train")
            if f"val_{metric}" in history[0]:
                ax_metric.plot(epochs, [scale * r[f"val_{metric}"] for r in history], marker=".", ls="--",
                               label=f"{phase} val")
        offset = epochs[-1]
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    if ax_metric is not None and metric is not None:  # the metric axis exists exactly when there is a metric
        label = "accuracy (%)" if metric == "acc" else metric
        ax_metric.set(xlabel="epoch", ylabel=label, title=label.split(" ")[0].capitalize())
    for ax in [a for a in (ax_loss, ax_metric) if a is not None]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


def plot_layer_sparsity(layers: list[dict[str, Any]], path: Path) -> Path:
    """One bar per conv/linear layer: the fraction of its parameters that are zero."""
    names = [layer["name"] for layer in layers]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(names) + 2), 3.6))
    ax.bar(range(len(names)), [100 * layer["sparsity"] for layer in layers], color="#4c72b0")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set(ylabel="zeros (%)", ylim=(0, 100), title="Per-layer sparsity of the compressed model")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


def plot_hardware(section: dict[str, Any], path: Path) -> Path:
    """Per layer: cycles on the systolic array (dense, compressed, compressed with channels rearranged, and the
    compressed model's stall-free bound) and arithmetic energy (dense fp32 against the compressed model's number
    formats, operand reads included), whichever were costed."""
    panels = [key for key in ("systolic", "arithmetic") if key in section and "error" not in section[key]]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.6 * len(panels)), squeeze=False)
    for ax, key in zip(axes[:, 0], panels, strict=True):
        if key == "systolic":
            s = section["systolic"]
            series = {"dense": s["dense"]["layers"], "compressed": s["compressed"]["layers"]}
            if "compressed_rearranged" in s:
                series["compressed, rearranged"] = s["compressed_rearranged"]["layers"]
            values = {label: [c["cycles"] for c in layers] for label, layers in series.items()}
            if all("stall_free_cycles" in c for c in s["compressed"]["layers"]):
                values["compressed, stall-free bound"] = [c["stall_free_cycles"] for c in s["compressed"]["layers"]]
            names = [c["name"] for c in s["compressed"]["layers"]]
            ax.set(ylabel="cycles", title="Systolic array: cycles per layer (PEs in lockstep)")
        else:
            layers = section["arithmetic"]["layers"]
            values = {"dense fp32": [c["dense_float_energy_pj"] / 1e3 for c in layers],
                      "compressed": [c["energy_pj"] / 1e3 for c in layers]}
            names = [c["name"] for c in layers]
            ax.set(ylabel="energy (nJ per sample)", title="Arithmetic energy per layer")
        width = 0.8 / len(values)
        for i, (label, ys) in enumerate(values.items()):
            ax.bar([x + i * width for x in range(len(names))], ys, width, label=label)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(names))], names, rotation=60, ha="right", fontsize=7)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path
