"""Channel pruning that makes models smaller and faster: ResNet-20, ResNet-56 and VGG-small at 30/50/70%.

Each architecture is trained dense once on Fashion-MNIST; each ratio then prunes that model with GFBS
(one train-mode batch) and fine-tunes it. Training runs resume, so a second invocation only re-times. The
timing pass reloads every saved model.pt and times dense and pruned models in the same process
(interleaved repeats, medians, 2 threads, eager PyTorch, allocator settings from harness.py): run it on an
otherwise idle machine. Writes benchmarks/results/channels.{json,md}; the page states the recorded training
seconds and the invocation's wall time. About 40 minutes on 2 CPU cores. `--quick` runs every architecture and
ratio at a tiny budget (QUICK) under benchmarks/runs/quick, to check the harness in a few minutes.

    .venv/bin/python benchmarks/channels.py [--archs resnet20 ...] [--ratios 0.5 ...] [--overrides ...] [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness import (
    ALLOCATOR_ENV,
    ensure_allocator_env,
    quick_dirs,
    trained_seconds,
    wall_time_line,
    write_json,
    write_text,
)

HERE = Path(__file__).parent
ARCHS = ["resnet20", "resnet56", "vgg_small"]
WIDTH = {"vgg_small": 0.5}  # full-width VGG-small would take about 40 minutes of training here
# GFBS ranks globally, which removes channels unevenly; a per-layer run shows the MACs of halving every layer.
EXTRA = [("resnet56", 0.5, "layer")]
RATIOS = [0.3, 0.5, 0.7]
BUDGET: dict[str, float] = {"subset": 8000, "dense_epochs": 4, "finetune_epochs": 2, "val_fraction": 0.1}
# --quick: the harness, not a measurement; every model at width 0.25 and 2% held out for validation, since
# evaluation dominates a tiny run (ResNet-56 at full width: minutes per pass over the 10k test images)
QUICK: dict[str, float] = {"subset": 256, "dense_epochs": 1, "finetune_epochs": 1, "width": 0.25,
                           "val_fraction": 0.02}
TIMING = {"warmup": 5, "repeats": 25}
QUICK_TIMING = {"warmup": 1, "repeats": 3}


def recipe_dict(arch: str, name: str, budget: dict[str, float] = BUDGET) -> dict:
    return {
        "name": name, "seed": 0, "model": {"name": arch, "width": budget.get("width", WIDTH.get(arch, 1.0))},
        "data": {"name": "fashion_mnist", "batch_size": 128, "train_subset": budget["subset"],
                 "val_fraction": budget["val_fraction"]},
        "train": {"epochs": budget["dense_epochs"], "lr": 0.05, "weight_decay": 5e-4, "warmup_epochs": 0.5},
        "measure": {"batch_sizes": [1, 64], "threads": 2, "repeats": 5, "warmup": 1},
    }


def main() -> None:
    import time

    started = time.perf_counter()
    ensure_allocator_env()
    import slimkit
    from slimkit.environment import environment
    from slimkit.metrics import compare_latency
    from slimkit.recipe import Recipe, apply_overrides

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="*", default=ARCHS)
    parser.add_argument("--ratios", nargs="*", type=float, default=RATIOS)
    parser.add_argument("--overrides", nargs="*", default=[])
    parser.add_argument("--quick", action="store_true", help="every configuration at a tiny budget, under "
                        "benchmarks/runs/quick (never the committed results)")
    parser.add_argument("--runs", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args()
    quick_runs, quick_results = quick_dirs("channels")
    args.runs = args.runs or (quick_runs if args.quick else HERE / "runs" / "channels")
    args.results = args.results or (quick_results if args.quick else HERE / "results")
    budget, timing = (QUICK, QUICK_TIMING) if args.quick else (BUDGET, TIMING)
    seconds: dict[str, float] = {}

    def run(raw: dict, out: Path) -> slimkit.Run:
        recipe = Recipe.from_dict(apply_overrides(raw, args.overrides))
        result = slimkit.run_recipe(recipe, out, resume=out.exists(), progress=False)
        seconds[str(out)] = trained_seconds(result.metrics)
        return result

    rows = []
    for arch in args.archs:
        dense_run = run(recipe_dict(arch, f"{arch}-dense", budget), args.runs / arch / "dense")
        plans = [(ratio, "global") for ratio in args.ratios] + [(r, s) for a, r, s in EXTRA if a == arch]
        for ratio, scope in plans:
            suffix = "" if scope == "global" else f"-{scope}"
            raw = recipe_dict(arch, f"{arch}-gfbs-{ratio}{suffix}", budget)
            raw["model"]["checkpoint"] = str(args.runs / arch / "dense" / "model.pt")
            raw["train"] = {"epochs": budget["finetune_epochs"], "lr": 0.01, "weight_decay": 5e-4}
            raw["stages"] = [{"channels": {"method": "gfbs", "ratio": ratio, "scope": scope}}]
            result = run(raw, args.runs / arch / f"gfbs-{ratio}{suffix}")
            d, c = (result.metrics["models"][k] for k in ("dense", "compressed"))
            rows.append({
                "arch": arch, "ratio": ratio, "scope": scope, "run": f"gfbs-{ratio}{suffix}", "criterion": "gfbs",
                "params": [d["measurement"]["params"], c["measurement"]["params"]],
                "macs": [d["measurement"]["macs"], c["measurement"]["macs"]],
                "test_acc": [d["test_acc"], c["test_acc"]],
                "dense_test_acc_before_any_pruning": dense_run.metrics["models"]["compressed"]["test_acc"],
            })
    for row in rows:  # the timing pass: saved models only, nothing else running in this process
        dense = slimkit.load(args.runs / row["arch"] / "dense" / "model.pt")
        pruned = slimkit.load(args.runs / row["arch"] / row["run"] / "model.pt")
        timings = compare_latency({"dense": dense, "pruned": pruned}, (1, 28, 28), batch_sizes=(1, 64), threads=2,
                                  **timing)
        row["latency_ms"] = {b: [timings["dense"][b]["median"], timings["pruned"][b]["median"]] for b in ("1", "64")}
        row["latency_iqr_ms"] = {b: [timings["dense"][b]["iqr"], timings["pruned"][b]["iqr"]] for b in ("1", "64")}
    env = environment(0) | {"command": " ".join(sys.argv), "allocator": ALLOCATOR_ENV, "budget": budget,
                            "run_seconds": seconds, "wall_seconds": time.perf_counter() - started}
    write_json(args.results / "channels.json", {"rows": rows, "environment": env})
    lines = ["| model | channels removed (scope) | params | MACs | MAC ratio | accuracy dense → pruned | batch 1 ms "
             "(dense → pruned) | speed-up b1 | batch 64 ms (dense → pruned) | speed-up b64 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        b1, b64 = r["latency_ms"]["1"], r["latency_ms"]["64"]
        width = budget.get("width", WIDTH.get(r["arch"], 1.0))
        label = f"{r['arch']} (width {width})" if width != 1.0 else r["arch"]
        lines.append(
            f"| {label} | {r['ratio']:.0%} ({r['scope']}) | {r['params'][0] / 1e3:.0f}k → {r['params'][1] / 1e3:.0f}k "
            f"| {r['macs'][0] / 1e6:.1f}M → {r['macs'][1] / 1e6:.1f}M | {r['macs'][1] / r['macs'][0]:.2f} "
            f"| {100 * r['test_acc'][0]:.2f}% → {100 * r['test_acc'][1]:.2f}% "
            f"| {b1[0]:.2f} → {b1[1]:.2f} | {b1[0] / b1[1]:.2f}x "
            f"| {b64[0]:.1f} → {b64[1]:.1f} | {b64[0] / b64[1]:.2f}x |")
    write_text(
        args.results / "channels.md",
        "# Channel pruning on Fashion-MNIST\n\n"
        f"Each model trains dense for {budget['dense_epochs']} epochs on {budget['subset']} training images "
        f"(SGD 0.05, cosine), then GFBS removes the given share of its prunable channel groups (residual "
        f"stages count as one group per channel), ranked over the whole network (global) or within each group of "
        f"coupled layers (layer), and the smaller model fine-tunes for {budget['finetune_epochs']} "
        "epochs (SGD 0.01). Accuracy is on the 10k test split. Latency is eager PyTorch, median of interleaved "
        "repeats, 2 threads, dense and pruned timed in the same process; the pruned model is an ordinary "
        "smaller nn.Module, so the speed-up needs no special kernel.\n\n"
        + "\n".join(lines)
        + f"\n\nReproduce: `.venv/bin/python {' '.join(sys.argv)}` (torch {env['torch']}, {env['cpu_count']} CPUs, "
        f"commit {env['git_commit']}). {wall_time_line(seconds, env)}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
