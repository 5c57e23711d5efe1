"""Every binarization method against full precision, on the same model and budget, on Fashion-MNIST.

Runs the bundled `<method>-fashion` recipes (a Bi-Real ResNet-20 trained from scratch on a 15k-image subset
for 6 epochs) and the same recipe with no stages as the full-precision reference, then writes
benchmarks/results/binary.{json,md}. Accuracy is the held-out test split; the model kept is the epoch with
the best validation accuracy. About 35 minutes on 2 CPU cores.

    .venv/bin/python benchmarks/binary.py [--methods xnor irnet ...] [--overrides train.epochs=2 ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import slimkit
from slimkit.environment import environment
from slimkit.recipe import Recipe, apply_overrides

HERE = Path(__file__).parent
METHODS = ["xnor", "irnet", "rbnn", "recu", "siman"]


def run(method: str, overrides: list[str], out: Path) -> dict:
    base = Recipe.load(f"{method if method != 'fp' else 'xnor'}-fashion").to_dict()
    if method == "fp":
        base["name"], base["stages"] = "fp-fashion", []
    recipe = Recipe.from_dict(apply_overrides(base, overrides))
    result = slimkit.run_recipe(recipe, out / method, resume=(out / method).exists(), progress=False)
    m = result.metrics["models"]["compressed"]
    meas = m["measurement"]
    return {"method": method, "test_acc": m["test_acc"], "best_epoch": m["best_epoch"],
            "train_seconds": m["train_seconds"], "epochs": len(m["history"]), "bops": meas["bops"],
            "fp_macs": meas["fp_macs"], "ops": meas["ops"], "bytes": meas["compressed_bytes"],
            "params": meas["params"], "recipe": recipe.to_dict()}


def table(rows: list[dict]) -> str:
    fp = next(r for r in rows if r["method"] == "fp")
    lines = ["| method | test accuracy | vs full precision | BOPs / sample | FP MACs / sample | OPs / sample "
             "| size (1-bit weights) | best epoch |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        delta = 100 * (r["test_acc"] - fp["test_acc"])
        lines.append(f"| {r['method']} | {100 * r['test_acc']:.2f}% | {delta:+.2f} pts "
                     f"| {r['bops'] / 1e6:.2f}M | {r['fp_macs'] / 1e6:.2f}M | {r['ops'] / 1e6:.2f}M "
                     f"| {r['bytes'] / 1024:.1f} KiB | {r['best_epoch']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=METHODS)
    parser.add_argument("--overrides", nargs="*", default=[])
    parser.add_argument("--runs", type=Path, default=HERE / "runs" / "binary")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args()
    rows = [run(method, args.overrides, args.runs) for method in ["fp", *args.methods]]
    args.results.mkdir(parents=True, exist_ok=True)
    env = environment(0) | {"command": " ".join(sys.argv)}
    (args.results / "binary.json").write_text(json.dumps({"rows": rows, "environment": env}, indent=2))
    recipe = rows[0]["recipe"]
    (args.results / "binary.md").write_text(
        "# Binarization on Fashion-MNIST\n\n"
        f"Model: ResNet-20 with Bi-Real blocks ({recipe['model']['options']}), first conv and last linear in full "
        f"precision. Budget, the same for every row: {recipe['train']['epochs']} epochs of "
        f"{recipe['train']['optimizer']} (lr {recipe['train']['lr']}, {recipe['train']['schedule']}) on "
        f"{recipe['data'].get('train_subset') or 'all'} training images, batch {recipe['data']['batch_size']}. "
        "Accuracy is on the 10k test split, for the epoch with the best validation accuracy. "
        "OPs = FP MACs + BOPs/64. Size counts binary weights at 1 bit and everything else at 32 bits.\n\n"
        + table(rows)
        + f"\n\nReproduce: `{env['command']}` (torch {env['torch']}, {env['cpu_count']} CPUs, "
        f"commit {env['git_commit']}).\n"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
