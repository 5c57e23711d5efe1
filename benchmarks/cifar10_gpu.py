"""The bundled `*-cifar10` recipes end to end on a GPU, beside the CIFAR-10 figures their papers report.

Trains each recipe as it is bundled (model, optimizer, weight decay, warm-up and its hundreds of epochs) on a
local CIFAR-10 (`--data`: the cifar-10-batches-py folder of the official python version) with
train.device=cuda, and writes benchmarks/results/cifar10_gpu.{json,md} with the paper's top-1 beside the
measured one. A rerun keeps the rows of recipes it does not run, and resumes runs left unfinished under
--runs. Without a CUDA GPU it refuses to start: these are GPU jobs, and falling back to the CPU would turn
them into weeks, silently.

    .venv/bin/python benchmarks/cifar10_gpu.py --data /path/to/cifar-10-batches-py [--precision bf16]
        [--recipes rbnn-cifar10 recu-cifar10] [--workers 8] [--overrides train.epochs=10 ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from slimkit.files import atomic_write_text
from slimkit.recipe import Recipe, bundled_recipes

HERE = Path(__file__).parent
RECIPES = [name for name in bundled_recipes() if name.endswith("-cifar10")]
# CIFAR-10 top-1 (%) of each paper's ResNet-20 1W/1A, as issue #16 quotes them; XNOR-Net reports none on CIFAR-10
PAPERS: dict[str, tuple[float, str]] = {
    "rbnn-cifar10": (87.8, "Lin et al., Rotated Binary Neural Network, NeurIPS 2020"),
    "recu-cifar10": (87.5, "Xu et al., ReCU, ICCV 2021"),
    "siman-cifar10": (87.4, "Lin et al., SiMaN, TPAMI 2022"),
    "irnet-cifar10": (86.5, "Qin et al., IR-Net, CVPR 2020"),
}


def gpu_or_exit() -> str:
    """The GPU's name; without one a message on stderr and exit code 2, before anything loads."""
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        print(f"cifar10_gpu.py: torch {torch.__version__} ({build}) sees no CUDA GPU, and these recipes train for "
              f"hundreds of epochs on one; nothing was run. Run it on a machine with a GPU.", file=sys.stderr)
        raise SystemExit(2)
    return torch.cuda.get_device_name(0)


def run(name: str, args: argparse.Namespace, gpu: str) -> dict[str, Any]:
    """Train one bundled recipe on the GPU (resuming a run folder left unfinished) and return its row."""
    from slimkit.pipeline import run_recipe

    overrides = [f"data.path={args.data.resolve()}", "train.device=cuda", f"train.precision={args.precision}",
                 f"data.num_workers={args.workers}", *args.overrides]
    recipe = Recipe.load(name, overrides)
    out = args.runs / name
    result = run_recipe(recipe, out, resume=out.exists(), progress=not args.no_progress)
    model = result.metrics["models"]["compressed"]
    paper = PAPERS.get(name)
    return {"recipe": name, "model": recipe.model.label, "epochs": recipe.train.epochs,
            "precision": recipe.train.precision, "test_acc": model["test_acc"],
            "paper_acc": paper[0] / 100 if paper else None, "paper": paper[1] if paper else None,
            "best_epoch": model["best_epoch"], "train_seconds": model["train_seconds"], "gpu": gpu,
            "torch": torch.__version__, "cuda": torch.version.cuda, "overrides": list(args.overrides)}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| recipe | model | epochs | precision | paper top-1 | measured top-1 | measured - paper | best epoch "
             "| training hours | GPU |", "|---|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        paper = f"{100 * r['paper_acc']:.1f}%" if r["paper_acc"] is not None else "none reported"
        gap = f"{100 * (r['test_acc'] - r['paper_acc']):+.2f} pts" if r["paper_acc"] is not None else ""
        lines.append(f"| {r['recipe']} | {r['model']} | {r['epochs']} | {r['precision']} | {paper} "
                     f"| {100 * r['test_acc']:.2f}% | {gap} | {r['best_epoch']} | {r['train_seconds'] / 3600:.1f} "
                     f"| {r['gpu']} |")
    return "\n".join(lines)


def page(results: dict[str, Any]) -> str:
    sources = "; ".join(f"{name}: {source}" for name, (_, source) in PAPERS.items())
    return (f"# CIFAR-10 on a GPU: the bundled `*-cifar10` recipes\n\n"
            f"`benchmarks/cifar10_gpu.py`. Each recipe trains as bundled, from scratch, with `train.device=cuda`; "
            f"top-1 is the test split, on the epoch with the best validation accuracy (torch and CUDA versions "
            f"per row in cifar10_gpu.json). Papers: {sources}.\n\n{table(results['rows'])}\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the cifar-10-batches-py folder")
    parser.add_argument("--recipes", nargs="*", choices=RECIPES, default=RECIPES)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--workers", type=int, default=8, help="data.num_workers")
    parser.add_argument("--overrides", nargs="*", default=[], help="more key.path=value recipe overrides")
    parser.add_argument("--runs", type=Path, default=HERE / "runs" / "cifar10_gpu")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    gpu = gpu_or_exit()
    path = args.results / "cifar10_gpu.json"
    earlier = json.loads(path.read_text())["rows"] if path.exists() else []
    fresh = [run(name, args, gpu) for name in args.recipes]
    kept = [r for r in earlier if r["recipe"] not in {f["recipe"] for f in fresh}]
    results = {"rows": sorted(kept + fresh, key=lambda r: r["recipe"])}
    atomic_write_text(path, json.dumps(results, indent=2))
    atomic_write_text(args.results / "cifar10_gpu.md", page(results))
    print(table(results["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
