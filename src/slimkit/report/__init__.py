"""Reports: the dense-versus-compressed table, per-layer detail, plots, and the run's environment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slimkit.files import atomic_write_text
from slimkit.metrics import precision_summary
from slimkit.report.hardware import hardware_markdown, hardware_plottable
from slimkit.report.text import count, pct, ratio, shape, size
from slimkit.target.markdown import target_markdown


class Report:
    """Built from a run's metrics.json; renders Markdown and the comparison rows the CLI prints."""

    def __init__(self, metrics: dict[str, Any]):
        self.metrics = metrics

    @classmethod
    def from_run(cls, run_dir: Path) -> Report:
        """The report of a finished run folder, from its metrics.json once the file has the schema the report
        reads (report.schema): a damaged or edited file is an error naming the field."""
        from slimkit.errors import SlimkitError
        from slimkit.report.schema import read_metrics

        path = Path(run_dir) / "metrics.json"
        if not path.is_file():
            raise SlimkitError(f"{run_dir} is not a finished slimkit run: {path} is missing")
        return cls(read_metrics(path))

    @property
    def reference(self) -> str:
        """'trained' when the dense column is a baseline this run trained, 'given' when it is the user's
        model as it was handed in (runs from before this key were one or the other by their history)."""
        saved = self.metrics.get("reference")
        if saved is not None:
            return saved
        return "trained" if self.metrics["models"]["dense"].get("history") else "given"

    @property
    def reference_label(self) -> str:
        """The dense column's heading."""
        return "dense (trained baseline)" if self.reference == "trained" else "dense (as given)"

    @property
    def metric(self) -> dict[str, Any] | None:
        """The task metric ({name, higher_is_better}) or None; accuracy for runs from before this key."""
        objective = self.metrics.get("objective")
        return {"name": "acc", "higher_is_better": True} if objective is None else objective["metric"]

    def _quality_rows(self) -> list[tuple[str, str, str, str]]:
        """The metric and loss on the evaluated split. A change is claimed only against a trained baseline:
        the model as given may never have been trained, so a gain over it would mean nothing."""
        dense, comp = self.metrics["models"]["dense"], self.metrics["models"]["compressed"]
        split = self.metrics["data"].get("eval_split", "test")
        trained = self.reference == "trained"
        rows = []
        if self.metric is not None:
            key, name = f"test_{self.metric['name']}", self.metric["name"]
            if name == "acc":
                change = f"{100 * (comp[key] - dense[key]):+.2f} pts"
                rows.append((f"{split} accuracy", pct(dense[key]), pct(comp[key]), change if trained else "n/a"))
            else:
                change = f"{comp[key] - dense[key]:+.4g}"
                rows.append((f"{split} {name}", f"{dense[key]:.4g}", f"{comp[key]:.4g}", change if trained else "n/a"))
        if self.metric is None or self.metric["name"] != "acc":
            rows.append((f"{split} loss", f"{dense['test_loss']:.4g}", f"{comp['test_loss']:.4g}",
                         f"{comp['test_loss'] - dense['test_loss']:+.4g}" if trained else "n/a"))
        return rows

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(metric, dense, compressed, change) for the headline table."""
        dense, comp = self.metrics["models"]["dense"], self.metrics["models"]["compressed"]
        dm, cm = dense["measurement"], comp["measurement"]
        rows = [
            *self._quality_rows(),
            ("sparsity (all parameters)", pct(dm["sparsity"]), pct(cm["sparsity"]), ""),
        ]
        for stage in self.metrics.get("stages", []):
            if "achieved_sparsity" in stage:
                rows.append((f"sparsity ({stage['method']} layers)", pct(stage["dense_sparsity"]),
                             pct(stage["achieved_sparsity"]), f"target {pct(stage['target_sparsity'])}"))
        rows += [
            ("nonzero parameters", count(dm["nonzeros"]), count(cm["nonzeros"]),
             ratio(dm["nonzeros"], cm["nonzeros"]) + " fewer"),
            ("size (fp32; sparse as bitmap; binary 1 bit)", size(dm["compressed_bytes"]),
             size(cm["compressed_bytes"]), ratio(dm["compressed_bytes"], cm["compressed_bytes"]) + " smaller"),
            ("MACs per sample (effective)", count(dm["effective_macs"]), count(cm["effective_macs"]),
             ratio(dm["effective_macs"], cm["effective_macs"]) + " fewer"),
        ]
        if cm["bops"]:
            rows += [
                ("FP MACs per sample", count(dm["fp_macs"]), count(cm["fp_macs"]),
                 ratio(dm["fp_macs"], cm["fp_macs"]) + " fewer"),
                ("BOPs per sample", count(dm["bops"]), count(cm["bops"]), ""),
                ("OPs per sample (FP MACs + BOPs/64)", count(dm["ops"]), count(cm["ops"]),
                 ratio(dm["ops"], cm["ops"]) + " fewer"),
            ]
        for batch, lat in cm.get("latency_ms", {}).items():
            before = dm["latency_ms"][batch]["median"]
            rows.append((f"latency batch {batch} (median ms, {cm['threads']} threads, eager PyTorch)",
                         f"{before:.3f}", f"{lat['median']:.3f}", ratio(before, lat["median"]) + " speed-up"))
        for batch, r in self.metrics.get("engine", {}).get("batches", {}).items():
            best = r["engine_vs"].get("best_dense")
            if best is not None:
                before, after = r["latency_ms"][best["baseline"]]["median"], r["latency_ms"]["engine"]["median"]
                rows.append((f"latency batch {batch} in engines (dense: best of onnxruntime/OpenVINO fp32/int8 = "
                             f"{best['baseline']}; compressed: OpenVINO + slimkit operators)", f"{before:.3f}",
                             f"{after:.3f}", f"{best['speedup']:.2f}x " + ("speed-up" if best["speedup"] >= 1
                                                                          else "(slower than the dense engine)")))
        return rows

    def table(self) -> str:
        """The headline comparison as a Markdown table."""
        lines = [f"| metric | {self.reference_label} | compressed | change |", "|---|---:|---:|---:|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.rows()]
        return "\n".join(lines)

    def layer_table(self) -> str:
        lines = ["| layer | type | shape | params | nonzeros | sparsity | MACs | effective MACs |",
                 "|---|---|---|---:|---:|---:|---:|---:|"]
        for layer in self.metrics["models"]["compressed"]["measurement"]["layers"]:
            dims = "x".join(str(s) for s in layer["shape"])
            lines.append(f"| {layer['name']} | {layer['type']} | {dims} | {layer['params']} | {layer['nonzeros']} "
                         f"| {pct(layer['sparsity'])} | {count(layer['macs'])} | {count(layer['effective_macs'])} |")
        return "\n".join(lines)

    def _reference_note(self) -> str:
        if self.reference == "trained":
            return "The dense column is the baseline this run trained first; the compressed model starts from it."
        return ("The dense column is the model **as given**: this recipe trains no baseline, so it is whatever "
                "was handed in, trained or not. No change in quality is claimed against it; add a `baseline` "
                "section to the recipe to compare against a trained dense model.")

    def _engine_section(self) -> list[str]:
        """The compressed model in an engine against the dense model in every dense engine, and where its time
        goes, when the recipe asked for it (measure.engines)."""
        engine = self.metrics.get("engine")
        if not engine:
            return []
        if "error" in engine:
            return ["## In the engines users deploy with", "",
                    f"The compressed model could not be deployed in an engine: {engine['error']}", ""]
        isa = ", ".join(engine.get("isa", [])) or "none of the listed extensions"
        lines = ["## In the engines users deploy with", "",
                 f"The compressed model was exported to OpenVINO (`{engine['artifact']}`, one folder per batch size, "
                 f"loadable by plain OpenVINO with the library beside it), each layer as slimkit's operator only "
                 f"where that measured faster than OpenVINO's own kernel here, and timed against the dense model in "
                 f"onnxruntime and OpenVINO, fp32 and int8 (their own post-training quantization), taking turns in "
                 f"one process with {engine['threads']} threads on {engine.get('cpu_model', 'unknown')} ({isa}). "
                 "The int8 forms run their quantized convolutions and matmuls in int8; 'float nodes in' says what "
                 "the remaining floating-point nodes computed in (OpenVINO's, as the compiled model reports it: "
                 "pinned to fp32 unless the name says otherwise; onnxruntime's CPU provider computes them in fp32).",
                 "", "| batch | form | float nodes in | median ms |", "|---:|---|---|---:|"]
        for batch, r in engine["batches"].items():
            for form, t in sorted(r["latency_ms"].items(), key=lambda kv: kv[1]["median"]):
                label = "compressed in OpenVINO + slimkit" if form == "engine" else f"dense in {form}"
                precision = r.get("precision", {}).get(form, "not recorded")
                lines.append(f"| {batch} | {label} | {precision} | {t['median']:.3f} |")
        for batch, r in engine["batches"].items():
            choice, agreement = r["choice"], r["agreement"]
            times = ", ".join(f"{name} {ms:.3f} ms" for name, ms in choice["artifacts_ms"].items())
            steps = "" if agreement["in_steps"] is None else f" ({agreement['in_steps']:.1f} steps of its output grid)"
            lines += ["", f"Batch {batch}: whole artifacts timed {times}; written: '{choice['chosen']}' "
                      f"({choice['operators']} of {choice['candidates']} candidate layers as slimkit's operators). "
                      f"Largest difference from {agreement['reference']} on {agreement['inputs']}: "
                      f"{agreement['max_abs_difference']:.3g}{steps}.", "",
                      "| layer | runs as | kernel | why | fused into it |", "|---|---|---|---|---|"]
            for line in r["slimkit_layers"]:
                lines.append(f"| {line['layer']} | {line['engine']} | {line.get('kernel', '')} | "
                             f"{line.get('reason', '')} | {', '.join(line.get('fused', []))} |")
            lines += ["", f"Where the compressed model's engine time goes at batch {batch} (OpenVINO per-node "
                      "counters, ms per inference):", "", "| node | kernel | nodes | ms |", "|---|---|---:|---:|"]
            lines += [f"| {p['node']} | {p['kernel']} | {p['nodes']} | {p['ms']:.3f} |" for p in r["engine_profile"]]
        return [*lines, ""]

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
            f"input {shape(data['input_shape'])}). Model: **{m['model']}**. Seed {env['seed']}."
            + (f"\n\n> {data['note']}" if data.get("note") else ""),
            "",
            "## Dense versus compressed",
            "",
            self.table(),
            "",
            self._reference_note(),
            "",
            "Quality is measured on the held-out split named in the table, for the best epoch (by the validation "
            "metric, or loss) among epochs where compression had reached its target. Latency is the median over "
            "interleaved repeats "
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
            *(target_markdown(m["target"]) if m.get("target") else []),
            *self._engine_section(),
            *(hardware_markdown(m["hardware"], "hardware.png" if hardware_plottable(m["hardware"]) else None)
              if m.get("hardware") else []),
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
        from slimkit.report.plots import (  # matplotlib only when drawing
            plot_hardware,
            plot_layer_sparsity,
            plot_training,
        )

        run_dir = Path(run_dir)
        models = self.metrics["models"]
        metric = self.metric["name"] if self.metric else None
        plot_training({k: v["history"] for k, v in models.items()}, run_dir / "training.png", metric)
        plot_layer_sparsity(models["compressed"]["measurement"]["layers"], run_dir / "layer_sparsity.png")
        if self.metrics.get("hardware") and hardware_plottable(self.metrics["hardware"]):
            plot_hardware(self.metrics["hardware"], run_dir / "hardware.png")
        path = run_dir / "report.md"
        atomic_write_text(path, self.markdown())
        return path
