"""`slimkit bench`: the deployed model against two dense baselines, eager PyTorch and the best of
`torch.jit.freeze` and `torch.compile`, in one process, with interleaved repeats (median and IQR).

The deployment is made per batch size (its per-layer choices are timed at that size) and warmed up, so
no JIT compilation is counted. Which layers run which kernel is part of the result.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.metrics import compare_latency
from slimkit.runtime.deploy import deploy


class _Opaque(nn.Module):
    """Holds a frozen TorchScript module (which has no train/eval state) as a plain callable."""

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


def bench(model: nn.Module, input_shape: Sequence[int], *, batch_sizes: Sequence[int] = (1, 64),
          repeats: int = 21, threads: int | None = None, use_compile: bool = True,
          fold_batchnorm: bool = False) -> dict[str, Any]:
    """Latency of eager, best optimised dense and deployed forms of `model`, per batch size."""
    model = model.eval()
    results: dict[str, Any] = {"input_shape": list(input_shape), "batches": {}}
    for batch in batch_sizes:
        example = torch.randn(batch, *input_shape)
        deployed = deploy(model, example, threads=threads, fold_batchnorm=fold_batchnorm)
        forms: dict[str, Any] = {"eager": model, "deployed": deployed}
        baselines = dense_baselines(model, example, use_compile)
        forms.update({k: v for k, v in baselines.items() if not k.endswith("_error")})
        timing = compare_latency(forms, input_shape, batch_sizes=(batch,), threads=threads, repeats=repeats)
        ms = {name: timing[name][str(batch)] for name in forms}
        optimised = [k for k in ("frozen", "compiled") if k in ms]
        best = min(optimised, key=lambda k: ms[k]["median"]) if optimised else "eager"
        results["batches"][str(batch)] = {
            "latency_ms": ms, "best_dense": best,
            "speedup_vs_eager": ms["eager"]["median"] / ms["deployed"]["median"],
            "speedup_vs_best_dense": ms[best]["median"] / ms["deployed"]["median"],
            "layers": deployed.deploy_report,
            "baseline_errors": {k: v for k, v in baselines.items() if k.endswith("_error")},
        }
    return results


def markdown(results: dict[str, Any], title: str) -> str:
    """The bench result as a Markdown report: one latency table, then each batch size's layer choices."""
    lines = [f"# {title}", "", "| batch | eager ms | best dense | best dense ms | deployed ms | vs eager | "
             "vs best dense |", "|---:|---:|---|---:|---:|---:|---:|"]
    for batch, r in results["batches"].items():
        ms = r["latency_ms"]
        lines.append(f"| {batch} | {ms['eager']['median']:.3f} ± {ms['eager']['iqr']:.3f} | {r['best_dense']} "
                     f"| {ms[r['best_dense']]['median']:.3f} | {ms['deployed']['median']:.3f} "
                     f"± {ms['deployed']['iqr']:.3f} | {r['speedup_vs_eager']:.2f}x | "
                     f"{r['speedup_vs_best_dense']:.2f}x |")
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
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "bench.json", out_dir / "bench.md"
    json_path.write_text(json.dumps(results, indent=2))
    md_path.write_text(markdown(results, title))
    return json_path, md_path
