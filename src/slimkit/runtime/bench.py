"""`slimkit bench`: the compressed model, deployed in eager PyTorch (`deploy`) and exported to OpenVINO with
slimkit's operators inside (`engine`, the deployable artifact), against the dense baselines a user would
pick: eager PyTorch, `torch.jit.freeze` and `torch.compile`, onnxruntime fp32 and int8 (its own
quantize_static), OpenVINO fp32 and int8, all in one process, taking turns, with the same threads (median
and IQR). The engine form comes with OpenVINO's per-node profile, so a miss says where the time goes.

Every speed-up names its baseline: the best dense engine of all, the best fp32 and the best int8 one, and
eager PyTorch as an extra column. The CPU model and ISA are part of the result. The deployment is made per
batch size (its per-layer choices are timed at that size) and warmed up, so no JIT compilation is counted.
The int8 engines are calibrated on random inputs: their speed, not their accuracy, is measured here.

The exported models go to a hidden work folder inside the output folder, `.bench-work-<pid>`, never to
$TMPDIR: a bench killed mid-way leaves that folder, which the next bench there removes (locks.remove_stale_work).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.environment import cpu_info
from slimkit.errors import SlimkitError
from slimkit.files import atomic_write_text
from slimkit.locks import remove_stale_work
from slimkit.metrics import compare_latency, default_threads
from slimkit.quant.onnx_export import OnnxModel
from slimkit.runtime.eager.deploy import deploy
from slimkit.runtime.engine.artifact import export_folder
from slimkit.runtime.engine.dense_engines import OpenVinoModel, dense_engines, export_dense
from slimkit.runtime.engine.export import export_openvino, openvino_core
from slimkit.runtime.engine.form import runs_slimkit_operators
from slimkit.runtime.engine.profile import by_kind, node_times, profile_openvino


class _Opaque(nn.Module):
    """Holds a frozen TorchScript module (which has no train/eval state) as a plain callable."""

    fn: Callable[[torch.Tensor], torch.Tensor]

    def __init__(self, fn: Any):
        super().__init__()
        object.__setattr__(self, "fn", fn)  # not a child: eval() must not recurse into it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def dense_baselines(model: nn.Module, example: torch.Tensor, use_compile: bool) -> dict[str, Any]:
    """{'frozen': ..., 'compiled': ...}: the optimised dense forms that can be built; failures give reasons."""
    out: dict[str, Any] = {}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, yet still the fastest here
        try:
            out["frozen"] = _Opaque(torch.jit.freeze(torch.jit.trace(model, example, check_trace=False)))
        except Exception as exc:  # tracing fails on data-dependent code; the baseline is then absent
            out["frozen_error"] = f"{type(exc).__name__}: {exc}"[:200]
    if use_compile:
        try:
            compiled = torch.compile(model)
            with torch.inference_mode():
                compiled(example)
            out["compiled"] = compiled
        except Exception as exc:  # no compiler toolchain, unsupported op
            out["compiled_error"] = f"{type(exc).__name__}: {exc}"[:200]
    return out


DENSE_FP32 = ("eager", "frozen", "compiled", "ort_fp32", "openvino_fp32")
DENSE_REDUCED = ("openvino_bf16", "openvino_fp16")  # OpenVINO at a CPU's default precision, where that is not fp32
DENSE_INT8 = ("ort_int8", "openvino_int8", "openvino_int8+bf16", "openvino_int8+fp16")


def best_of(ms: dict[str, dict[str, float]], forms: Sequence[str]) -> str | None:
    """The fastest of `forms` that was timed, or None."""
    timed = [f for f in forms if f in ms]
    return min(timed, key=lambda f: ms[f]["median"]) if timed else None


def speedups(ms: dict[str, dict[str, float]], form: str) -> dict[str, Any]:
    """`form` against the best dense engine, the best fp32 and the best int8 one, and eager torch, each ratio
    with its baseline named (>1: `form` is faster)."""
    out: dict[str, Any] = {}
    for key, forms in (("best_dense", DENSE_FP32 + DENSE_REDUCED + DENSE_INT8), ("best_fp32", DENSE_FP32),
                       ("best_int8", DENSE_INT8), ("eager", ("eager",))):
        best = best_of(ms, forms)
        if best is not None:
            out[key] = {"baseline": best, "speedup": ms[best]["median"] / ms[form]["median"]}
    return out


WORK = ".bench-work-"  # a bench's work folder, in the folder it writes to: .bench-work-<pid>


@contextmanager
def work_folder(parent: Path) -> Iterator[Path]:
    """A folder of this process's own inside `parent`, removed when done, for the exported models and every
    temporary file made meanwhile: tempfile's default folder and $TMPDIR point there, so the libraries'
    temporary files land there too (onnxruntime's quantizer's, and the `.ses` file its telemetry writes in
    $TMPDIR when it is imported). Work folders of processes that no longer run (killed benches) are removed
    first."""
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_work(parent, WORK)
    work = parent / f"{WORK}{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    default, tempfile.tempdir = tempfile.tempdir, str(work)
    environment = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(work)
    try:
        yield work
    finally:
        tempfile.tempdir = default
        if environment is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = environment
        shutil.rmtree(work, ignore_errors=True)


def bench(model: nn.Module, input_shape: Sequence[int], *, batch_sizes: Sequence[int] = (1, 64),
          repeats: int = 21, threads: int | None = None, use_compile: bool = True, engines: bool = True,
          fold_batchnorm: bool = False, work_in: str | Path | None = None) -> dict[str, Any]:
    """Latency of the deployed model and every dense baseline of `model`, per batch size. Exported models are
    written in a work folder inside `work_in` (`slimkit bench`: its output folder; default: the system's
    temporary folder), removed after."""
    model = model.eval()
    threads = threads or default_threads()
    results: dict[str, Any] = {"input_shape": list(input_shape), "threads": threads, **cpu_info(), "batches": {}}
    with work_folder(Path(work_in) if work_in is not None else Path(tempfile.gettempdir())) as tmp:
        exported = (export_dense(model, input_shape, [torch.randn(8, *input_shape) for _ in range(4)], Path(tmp))
                    if engines else {})
        artifact = _export_engine(model, input_shape, Path(tmp) / "engine" / "model.xml") if engines else None
        if artifact is not None:
            results["engine"] = {k: v for k, v in artifact.items() if k != "model"}
        for batch in batch_sizes:
            example = torch.randn(batch, *input_shape)
            deployed = deploy(model, example, threads=threads, fold_batchnorm=fold_batchnorm)
            forms: dict[str, Any] = {"eager": model, "deployed": deployed}
            baselines = dense_baselines(model, example, use_compile)
            baselines.update(dense_engines(exported, (batch, *input_shape), threads))
            forms.update({k: v for k, v in baselines.items() if not k.endswith("_error")})
            engine_model = artifact.get("model") if artifact is not None else None
            if engine_model is not None:
                forms["engine"] = OpenVinoModel(engine_model, (batch, *input_shape), threads, core=openvino_core())
            timing = compare_latency(forms, input_shape, batch_sizes=(batch,), threads=threads, repeats=repeats)
            ms = {name: timing[name][str(batch)] for name in forms}
            results["batches"][str(batch)] = {
                "latency_ms": ms, "precision": _precisions(forms), "deployed_vs": speedups(ms, "deployed"),
                "layers": deployed.deploy_report,
                "baseline_errors": {k: v for k, v in baselines.items() if k.endswith("_error")},
            }
            if engine_model is not None:
                results["batches"][str(batch)].update(
                    engine_vs=speedups(ms, "engine"),
                    engine_profile=profile_openvino(engine_model, (batch, *input_shape), threads))
    return results


def _export_engine(model: nn.Module, input_shape: Sequence[int], path: Path) -> dict[str, Any] | None:
    """The OpenVINO artifact with slimkit's operators, when the model has layers they take; a missing engine
    or library is reported under 'error', never skipped silently."""
    try:
        if not runs_slimkit_operators(model):
            return None
        return export_openvino(model, path, input_shape)
    except (ImportError, SlimkitError) as exc:
        return {"error": str(exc)}


def engine_versus_dense(dense: nn.Module, compressed: nn.Module, input_shape: Sequence[int],
                        calibration: Sequence[torch.Tensor], folder: Path, *, batch_sizes: Sequence[int],
                        threads: int | None = None, repeats: int = 21) -> dict[str, Any]:
    """A run's compressed model as the deployable OpenVINO artifact against its dense model in every dense
    engine (onnxruntime and OpenVINO, fp32 and int8, the int8 ones calibrated on `calibration`; OpenVINO also
    as the CPU's default precision where that is not fp32), taking turns in one process with the same threads.
    The artifact's layers are chosen by measurement at each batch size, so each batch gets its own folder
    (`folder`/batch-<n>). Per batch: every latency, the speed-up over the best dense engine (named), the
    artifact's layer choices and OpenVINO's per-node counters of it, per node and summed by kind."""
    threads = threads or default_threads()
    out: dict[str, Any] = {"artifact": str(folder), "threads": threads, **cpu_info(), "batches": {}}
    with work_folder(folder.parent) as tmp:
        exported = export_dense(dense.eval(), input_shape, calibration, tmp)
        for batch in batch_sizes:
            shape = (batch, *input_shape)
            manifest = export_folder(compressed, folder / f"batch-{batch}", input_shape, calibration, batch=batch,
                                     threads=threads)
            model_path = folder / f"batch-{batch}" / manifest["model"]
            baselines = dense_engines(exported, shape, threads)
            forms = {k: v for k, v in baselines.items() if not k.endswith("_error")}
            forms["engine"] = OpenVinoModel(model_path, shape, threads, core=openvino_core())
            timing = compare_latency(forms, input_shape, batch_sizes=(batch,), threads=threads, repeats=repeats)
            ms = {name: timing[name][str(batch)] for name in forms}
            nodes = node_times(model_path, shape, threads)
            out["batches"][str(batch)] = {
                "latency_ms": ms, "engine_vs": speedups(ms, "engine"), "precision": _precisions(forms),
                "baseline_errors": {k: v for k, v in baselines.items() if k.endswith("_error")},
                "slimkit_layers": manifest["slimkit_layers"], "choice": manifest["choice"],
                "agreement": manifest["agreement"], "engine_profile": by_kind(nodes), "engine_nodes": nodes}
    return out


def _precisions(forms: dict[str, Any]) -> dict[str, str]:
    """The precision each engine form computed its floating-point nodes in (OpenVINO's as compiled,
    onnxruntime's fp32); torch forms say theirs by name."""
    return {name: form.precision for name, form in forms.items() if isinstance(form, (OpenVinoModel, OnnxModel))}


def versus(entry: dict[str, Any] | None) -> str:
    """'1.42x (ort_int8)': a speed-up with the baseline it is against."""
    return f"{entry['speedup']:.2f}x ({entry['baseline']})" if entry else "n/a"


def markdown(results: dict[str, Any], title: str) -> str:
    """The bench result as a Markdown report: every form's latency, the deployed model against the best dense
    engine (and the best fp32, best int8 and eager ones), then each batch size's layer choices."""
    isa = ", ".join(results.get("isa", [])) or "none of the listed extensions"
    lines = [f"# {title}", "", f"CPU: {results.get('cpu_model', 'unknown')} ({isa}); {results.get('threads')} "
             f"threads for every form. Each OpenVINO form names the precision it computed in.", "",
             "| batch | form | precision | median ms | IQR ms |", "|---:|---|---|---:|---:|"]
    for batch, r in results["batches"].items():
        for form, t in sorted(r["latency_ms"].items(), key=lambda kv: kv[1]["median"]):
            lines.append(f"| {batch} | {form} | {r.get('precision', {}).get(form, '')} | {t['median']:.3f} | "
                         f"{t['iqr']:.3f} |")
    lines += ["", "Deployed against (ratio > 1: deployed is faster; the baseline is named):", "",
              "| batch | best dense engine | best fp32 | best int8 | eager torch |", "|---:|---|---|---|---|"]
    for batch, r in results["batches"].items():
        v = r["deployed_vs"]
        lines.append(f"| {batch} | {versus(v.get('best_dense'))} | {versus(v.get('best_fp32'))} | "
                     f"{versus(v.get('best_int8'))} | {versus(v.get('eager'))} |")
        for form, reason in r.get("baseline_errors", {}).items():
            lines.append(f"| {batch} | {form.removesuffix('_error')} missing: {reason} | | | |")
    if "engine" in results:
        lines += ["", "The OpenVINO artifact with slimkit's operators (`engine`) against (ratio > 1: faster):", "",
                  "| batch | best dense engine | best fp32 | best int8 | eager torch |", "|---:|---|---|---|---|"]
        for batch, r in results["batches"].items():
            v = r.get("engine_vs", {})
            lines.append(f"| {batch} | {versus(v.get('best_dense'))} | {versus(v.get('best_fp32'))} | "
                         f"{versus(v.get('best_int8'))} | {versus(v.get('eager'))} |")
        if "error" in results["engine"]:
            lines.append(f"| | engine missing: {results['engine']['error']} | | | |")
        for batch, r in results["batches"].items():
            lines += ["", f"Where the engine's time goes at batch {batch} (OpenVINO per-node counters, ms per "
                      "inference):", "", "| node | kernel | nodes | ms |", "|---|---|---:|---:|"]
            lines += [f"| {p['node']} | {p['kernel']} | {p['nodes']} | {p['ms']:.3f} |"
                      for p in r.get("engine_profile", [])]
    for batch, r in results["batches"].items():
        lines += ["", f"Layer choices at batch {batch}:", "", "| layer | kind | runs | layer speedup | why |",
                  "|---|---|---|---:|---|"]
        for e in r["layers"]:
            speed = f"{e['speedup']:.2f}x" if "speedup" in e else ""
            lines.append(f"| {e['layer']} | {e['kind']} | {e['choice']} | {speed} | {e['reason']} |")
    lines.append("")
    lines.append("Medians ± IQR over interleaved repeats in one process; 'vs' columns are median ratios.")
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], out_dir: Path, title: str) -> tuple[Path, Path]:
    """bench.json and bench.md in `out_dir`."""
    json_path, md_path = out_dir / "bench.json", out_dir / "bench.md"
    atomic_write_text(json_path, json.dumps(results, indent=2))
    atomic_write_text(md_path, markdown(results, title))
    return json_path, md_path
