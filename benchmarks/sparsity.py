"""Every sparsity method at 50/80/90/95% on Fashion-MNIST, on the same model and the same training budget.

The model is LeNet with 3x3 convolutions (so pattern sparsity applies). Every run, the dense reference
included, trains from scratch for the same number of epochs on the same subset; methods that prune trained
weights (one-shot magnitude, N:M, Sense, PatDNN) train dense first inside that budget and prune at
`PRUNE_EPOCH`. Pruned layers: the second conv and the first linear (first conv and classifier stay dense).
Sense uses tiles of 32 input channels (a tile of 8 leaves a linear group of 8 weights, which keeps none at 90%).
N:M runs at the N:M closest to each sparsity (2:4, 1:5, 1:10, 1:20); PatDNN keeps its natural 4 of 9
weights per kernel combined with connectivity ratios r_c = 4 / (9 (1 - s)), at least 1, applied to the
linear layer's single weights too, so its achieved sparsity is reported beside the target; patdnn-g4 makes
groups of 4 filters (4 rows of the linear layer) share kept kernels and patterns, the structure the CPU
runtime runs as dense GEMMs. gmp-block4 is gmp keeping or dropping blocks of 4 consecutive input channels
(the int8 sparse kernels' layout), so its row against gmp's is the accuracy cost of that constraint.
Writes benchmarks/results/sparsity.{json,md}, merged: a run of some methods or sparsities replaces only
those rows. About 40 minutes on 2 CPU cores.

    .venv/bin/python benchmarks/sparsity.py [--methods gmp optg ...] [--sparsities 0.9] [--overrides ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness import ensure_allocator_env

HERE = Path(__file__).parent
SPARSITIES = [0.5, 0.8, 0.9, 0.95]
EPOCHS, PRUNE_EPOCH, SUBSET = 8, 3, 20000
NM = {0.5: (2, 4), 0.8: (1, 5), 0.9: (1, 10), 0.95: (1, 20)}
PRUNED_LAYERS = {"types": ["conv", "linear"]}


def stage(method: str, s: float) -> dict:
    """The prune stage of `method` at target sparsity `s`, inside the shared budget."""
    window = {"start_epoch": 1, "end_epoch": EPOCHS - 2}
    stages = {
        "magnitude": {"method": "magnitude", "sparsity": s, "start_epoch": PRUNE_EPOCH},
        "gmp": {"method": "gmp", "sparsity": s, **window},
        "gmp-taylor": {"method": "gmp", "criterion": "taylor", "sparsity": s, **window},
        "snip": {"method": "snip", "sparsity": s},
        "movement": {"method": "movement", "sparsity": s, **window},
        "optg": {"method": "optg", "sparsity": s, "end_epoch": EPOCHS - 2},
        "nm": {"method": "nm", "n": NM[s][0], "m": NM[s][1], "start_epoch": PRUNE_EPOCH},
        "sense": {"method": "sense", "sparsity": s, "tile": 32, "start_epoch": PRUNE_EPOCH,
                  "end_epoch": PRUNE_EPOCH + 2},
        "patdnn": {"method": "patdnn", "connectivity": max(1.0, 4 / (9 * (1 - s))), "start_epoch": PRUNE_EPOCH,
                   "admm_epochs": 2, "layers": PRUNED_LAYERS},
    }
    stages["patdnn-g4"] = {**stages["patdnn"], "filter_group": 4}
    stages["gmp-block4"] = {**stages["gmp"], "block": 4}
    return stages[method]


METHODS = ["magnitude", "gmp", "gmp-block4", "gmp-taylor", "snip", "movement", "optg", "nm", "sense", "patdnn",
           "patdnn-g4"]


def recipe(name: str, stages: list[dict]) -> dict:
    return {"name": name, "seed": 0, "model": {"name": "lenet", "options": {"kernel_size": 3}},
            "data": {"name": "fashion_mnist", "batch_size": 128, "train_subset": SUBSET},
            "train": {"epochs": EPOCHS, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
                      "schedule": "cosine", "warmup_epochs": 0.5},
            "stages": [{"prune": st} for st in stages],
            "measure": {"batch_sizes": [1], "repeats": 3, "warmup": 1}}


def run(method: str, s: float | None, overrides: list[str], out: Path) -> dict:
    import slimkit
    from slimkit.recipe import Recipe, apply_overrides

    name = "dense" if s is None else f"{method}-{round(s * 100)}"
    data = recipe(name, [] if s is None else [stage(method, s)])
    result = slimkit.run_recipe(Recipe.from_dict(apply_overrides(data, overrides)), out / name,
                                resume=(out / name).exists(), progress=False)
    m = result.metrics["models"]["compressed"]
    meas = m["measurement"]
    epochs = [r["seconds"] for r in m["history"]]
    summary = result.metrics["stages"][0] if result.metrics["stages"] else {}
    return {"method": method, "target": s, "test_acc": m["test_acc"], "best_epoch": m["best_epoch"],
            "achieved": summary.get("achieved_sparsity", 0.0), "macs": meas["macs"],
            "effective_macs": meas["effective_macs"], "params": meas["params"], "nonzeros": meas["nonzeros"],
            "epoch_seconds": sorted(epochs)[len(epochs) // 2] if epochs else 0.0, "stage": summary}


def merge(new: list[dict], path: Path) -> tuple[list[dict], list[str]]:
    """The rows of the results at `path` with this run's rows replacing those of the same method and target,
    in table order, and every command that produced a kept row (so a partial run never drops other rows)."""
    earlier = json.loads(path.read_text()) if path.exists() else {"rows": [], "environment": {}}
    fresh = {(r["method"], r["target"]) for r in new}
    kept = [r for r in earlier["rows"] if (r["method"], r["target"]) not in fresh]
    for r in kept:
        r.setdefault("command", "{} (commit {})".format(earlier["environment"].get("command", "unknown"),
                                                        earlier["environment"].get("git_commit", "unknown")))
    order = {m: i for i, m in enumerate(["dense", *METHODS])}
    rows = sorted(kept + new, key=lambda r: (r["target"] is not None, r["target"] or 0.0,
                                             order.get(r["method"], len(order))))
    return rows, list(dict.fromkeys(r["command"] for r in rows))


def table(rows: list[dict]) -> str:
    dense = next(r for r in rows if r["method"] == "dense")
    lines = ["| method | target | achieved (pruned layers) | test accuracy | vs dense | within 3 pts | "
             "effective MACs | s / epoch (vs dense) |", "|---|---:|---:|---:|---:|:---:|---:|---:|"]
    for r in rows:
        delta = 100 * (r["test_acc"] - dense["test_acc"])
        target = "-" if r["target"] is None else f"{r['target']:.0%}"
        if r["method"] == "nm" and r["target"] is not None:
            target += " ({}:{})".format(*NM[r["target"]])
        lines.append(f"| {r['method']} | {target} | {r['achieved']:.2%} | {100 * r['test_acc']:.2f}% "
                     f"| {delta:+.2f} | {'yes' if delta >= -3 else 'no'} "
                     f"| {r['effective_macs'] / 1e6:.2f}M ({r['effective_macs'] / dense['macs']:.0%}) "
                     f"| {r['epoch_seconds']:.1f} ({r['epoch_seconds'] / dense['epoch_seconds']:.2f}x) |")
    return "\n".join(lines)


def main() -> None:
    ensure_allocator_env()
    from slimkit.environment import environment

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=METHODS)
    parser.add_argument("--sparsities", nargs="*", type=float, default=SPARSITIES)
    parser.add_argument("--overrides", nargs="*", default=[])
    parser.add_argument("--runs", type=Path, default=HERE / "runs" / "sparsity")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args()
    rows = [run("dense", None, args.overrides, args.runs)]
    rows += [run(method, s, args.overrides, args.runs) for s in args.sparsities for method in args.methods]
    args.results.mkdir(parents=True, exist_ok=True)
    env = environment(0) | {"command": " ".join(sys.argv)}
    for r in rows:
        r["command"] = f"{env['command']} (commit {env['git_commit']})"
    rows, commands = merge(rows, args.results / "sparsity.json")
    (args.results / "sparsity.json").write_text(json.dumps({"rows": rows, "environment": env}, indent=2))
    (args.results / "sparsity.md").write_text(
        "# Sparsity methods on Fashion-MNIST\n\n" + __doc__.split("\n\n")[1].replace("\n", " ") + "\n\n"
        f"Budget for every row: {EPOCHS} epochs of SGD (lr 0.05, momentum 0.9, cosine) on {SUBSET} training "
        "images, batch 128. Accuracy is on the 10k test split, for the best complete epoch by validation "
        "accuracy. 'achieved' is the measured fraction of zeros in the pruned layers. Effective MACs count "
        "only non-zero weights (dense kernels do not skip them: see the runtime benchmark for speed). "
        "Seconds per epoch are medians and include the method's own overhead.\n\n" + table(rows)
        + "\n\nReproduce (each row's command is in sparsity.json): " + "; ".join(f"`{c}`" for c in commands)
        + f". Last run: torch {env['torch']}, {env['cpu_count']} CPUs, commit {env['git_commit']}.\n")
    print(table(rows))


if __name__ == "__main__":
    main()
