"""The report's section on a latency target (report.md): target against prediction and measurement, and each
layer's chosen form with its dense, predicted and measured times. It reads metrics.json's `target` section
alone, so the report needs nothing else of slimkit.target."""

from __future__ import annotations

from typing import Any


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def target_markdown(section: dict[str, Any]) -> list[str]:
    """The report's section: target against prediction and measurement, then each layer's form and times."""
    measured = section.get("measured", {})
    lines = ["## Latency target", "",
             f"Target: {section['speedup']:g}x over {section['baseline']} ({section['baseline_ms']:.3f} ms at batch "
             f"{section['batch']}, {section['threads']} threads), so {section['target_ms']:.3f} ms. Predicted from "
             f"the latency tables: {section['predicted_ms']:.3f} ms ({section['predicted_speedup']:.2f}x).", ""]
    if "error" in measured:
        lines += [f"Measured: not available ({measured['error']}).", ""]
    elif measured:
        verdict = "reached" if measured["reached"] else (
            "reached within the measured noise" if measured["within_noise"] else "NOT reached")
        lines += [f"Measured after fine-tuning: {measured['engine_ms']:.3f} ± {measured['engine_iqr_ms']:.3f} ms "
                  f"against {measured['baseline']} {measured['baseline_ms']:.3f} ± {measured['baseline_iqr_ms']:.3f} "
                  f"ms: {measured['speedup']:.2f}x (noise ± {measured['noise']:.2f}x); target {verdict}.", ""]
    accuracy = section.get("accuracy", {})
    if accuracy.get("drop") is not None:
        limit = accuracy["max_drop"]
        verdict = "" if limit is None else (f", within the allowed {limit:g}" if accuracy["met"]
                                            else f", MORE than the allowed {limit:g}")
        lines += [f"{accuracy['metric']} drop: {accuracy['drop']:.4f}{verdict}.", ""]
    lines += ["| layer | form | in → out channels | dense ms | predicted ms | measured ms (in the artifact) | "
              "one-shot loss increase |", "|---|---|---|---:|---:|---:|---:|"]
    for line in section["layers"]:
        lines.append(f"| {line['layer']} | {line['form']} | {line['in_channels']} → {line['out_channels']} | "
                     f"{line['dense_ms']:.3f} | {line['predicted_ms']:.3f} | {_ms(line.get('measured_ms'))} | "
                     f"{line['sensitivity']:.4f} |")
    lines += ["", f"Dense ms: each layer alone (target/tables); predicted ms: the chosen form alone, times "
              f"{section['layer_scale']:.3g} (the layers' share of the network: their dense times alone summed to "
              f"more than the network where this is below 1); measured: the artifact's OpenVINO per-node counters "
              f"(n/a where no node can be told to be the layer's).", ""]
    return lines
