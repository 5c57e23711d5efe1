"""Compress to a latency target against the best uniform recipe of the same measured speed: ResNet-20, ResNet-56
and VGG-small (width 0.5) on Fashion-MNIST at 1.5x, 2x and 3x the best dense engine (onnxruntime and OpenVINO,
fp32 and int8), at batch 16 on 2 threads.

Each architecture's dense model trains once (its own run folder, resumed on a rerun); every target and uniform
run starts from a copy of it. A target run chooses each
layer's form by measurement (docs/target.md), fine-tunes and measures its artifact against the dense engines.
The uniform recipes (one method, one ratio for every layer: channel pruning at 30/50/70% with int8 QAT,
block-sparse int8 at 50/75/90%, int8 alone) are fine-tuned for the same epochs and measured the same way. For
each target row the comparison is the most accurate uniform recipe whose measured speed-up is at least the
target run's (its own noise allowed): the best uniform recipe of the same measured speed. A target that cannot be
reached is recorded with the fastest point the solver found. Writes benchmarks/results/target.{json,md} and
target.png (accuracy against measured latency). Timing jobs: run on an otherwise idle machine.

    .venv/bin/python benchmarks/target.py [--archs resnet20 ...] [--targets 1.5 2 3] [--smoke]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

from harness import ensure_allocator_env, machine_facts, machine_line, read_json, recipe_digest, write_json, write_text

HERE = Path(__file__).parent
ARCHS = ["resnet20", "resnet56", "vgg_small"]
WIDTH = {"vgg_small": 0.5}
TARGETS = [1.5, 2.0, 3.0]
BATCH, THREADS = 16, 2
BUDGET = {"subset": 8000, "dense_epochs": 6, "finetune_epochs": 3}
UNIFORM = {  # one method, one ratio for every layer
    **{f"channels-{r:g}+int8": [{"channels": {"method": "l1", "ratio": r, "scope": "layer", "round_to": 8}}, "int8"]
       for r in (0.3, 0.5, 0.7)},
    **{f"sparse_int8-{s:g}": [{"prune": {"method": "magnitude", "sparsity": s, "block": 4, "scope": "layer"}}, "int8"]
       for s in (0.5, 0.75, 0.9)},
    "int8": ["int8"],
}
SMOKE = {"archs": ["resnet20"], "targets": [1.2], "uniform": ["int8"], "width": 0.25,
         "data": {"name": "digits", "batch_size": 64}, "dense_epochs": 1, "finetune_epochs": 1}


def base_recipe(arch: str, name: str, smoke: bool) -> dict[str, Any]:
    data = SMOKE["data"] if smoke else {"name": "fashion_mnist", "batch_size": 128, "train_subset": BUDGET["subset"]}
    epochs = (SMOKE if smoke else BUDGET)
    width = SMOKE["width"] if smoke else WIDTH.get(arch, 1.0)
    return {"name": name, "seed": 0, "model": {"name": arch, "width": width},
            "data": data, "baseline": {"epochs": epochs["dense_epochs"], "lr": 0.05, "weight_decay": 5e-4},
            "train": {"epochs": epochs["finetune_epochs"], "lr": 0.01, "weight_decay": 5e-4, "schedule": "cosine"},
            "measure": {"batch_sizes": [BATCH], "threads": THREADS, "repeats": 15, "engines": True}}


def uniform_stages(spec: list[Any], epochs: int) -> list[dict[str, Any]]:
    every = {"skip_first_conv": False, "skip_last_linear": False}
    stages = [copy.deepcopy(s) for s in spec if s != "int8"]
    if "int8" in spec:
        stages.append({"quantize": {"method": "uniform", "bits": 8, "layers": every, "first_last_bits": None,
                                    "start_epoch": max(0, epochs - 1)}})
    return stages


def _row(metrics: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """What a run measured: the artifact against the best dense engine at BATCH, and test accuracy."""
    batch = metrics["engine"]["batches"][str(BATCH)]
    best = batch["engine_vs"]["best_dense"]
    engine = batch["latency_ms"]["engine"]
    base = batch["latency_ms"][best["baseline"]]
    noise = best["speedup"] * (engine["iqr"] / engine["median"] + base["iqr"] / base["median"])
    models = metrics["models"]
    return {**fields, "baseline": best["baseline"], "speedup": best["speedup"], "noise": noise,
            "engine_ms": engine["median"], "baseline_ms": base["median"], "accuracy": models["compressed"]["test_acc"],
            "dense_accuracy": models["dense"]["test_acc"]}


def dense_model(arch: str, runs: Path, smoke: bool) -> Any:
    """The architecture's dense model, trained once (its own run folder, resumed on a rerun) and shared by every
    target and uniform run of it, so they all start from the same weights and differ only in what they do
    after."""
    import slimkit
    from slimkit.recipe import Recipe

    recipe = base_recipe(arch, f"{arch}-dense", smoke)
    recipe["train"] = recipe.pop("baseline")
    recipe["measure"] = {"batch_sizes": [BATCH], "repeats": 1}
    out = runs / f"{recipe['name']}-{recipe_digest(recipe)}"
    return slimkit.run_recipe(Recipe.from_dict(recipe), out, resume=out.exists(), progress=False).model


def run_one(recipe: dict[str, Any], runs: Path, dense: Any) -> dict[str, Any]:
    """One run from a copy of the shared dense model (the report's dense column is that model, as given)."""
    import slimkit
    from slimkit.recipe import Recipe

    recipe = {k: v for k, v in recipe.items() if k != "baseline"}
    out = runs / f"{recipe['name']}-{recipe_digest(recipe)}"
    started = time.perf_counter()
    run = slimkit.run_recipe(Recipe.from_dict(recipe), out, resume=out.exists(), progress=False,
                             model=copy.deepcopy(dense))
    print(f"{recipe['name']}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return run.metrics


def target_row(arch: str, speedup: float, runs: Path, smoke: bool, dense: Any) -> dict[str, Any]:
    from slimkit.target_recipe import TargetUnreachableError

    recipe = base_recipe(arch, f"{arch}-target-{speedup:g}", smoke)
    recipe["target"] = {"speedup": speedup, "batch": BATCH, "threads": THREADS,
                        **({"widths": [0.5], "sparsities": [0.75], "repeats": 3} if smoke else {})}
    try:
        metrics = run_one(recipe, runs, dense)
    except TargetUnreachableError as exc:
        return {"kind": "target", "arch": arch, "target": speedup, "unreachable": True,
                "best_predicted_speedup": exc.section["predicted_speedup"]}
    section = metrics["target"]
    forms = sorted({line["form"] for line in section["layers"]})
    return _row(metrics, kind="target", arch=arch, target=speedup, predicted_speedup=section["predicted_speedup"],
                reached=section["measured"]["reached"], within_noise=section["measured"]["within_noise"], forms=forms)


def uniform_row(arch: str, name: str, runs: Path, smoke: bool, dense: Any) -> dict[str, Any]:
    recipe = base_recipe(arch, f"{arch}-{name}", smoke)
    recipe["stages"] = uniform_stages(UNIFORM[name], recipe["train"]["epochs"])
    return _row(run_one(recipe, runs, dense), kind="uniform", arch=arch, recipe=name)


def same_speed(row: dict[str, Any], uniform: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The most accurate uniform run at least as fast as `row`, measured (its own noise allowed)."""
    fast = [u for u in uniform if u["arch"] == row["arch"] and u["speedup"] + u["noise"] >= row["speedup"]]
    return max(fast, key=lambda u: u["accuracy"]) if fast else None


def markdown(payload: dict[str, Any]) -> str:
    rows = payload["rows"]
    lines = ["# Compress to a latency target", "", __doc__.split("\n\n")[0].replace("\n", " "), "",
             f"Batch {BATCH}, {THREADS} threads; speed-ups over the best dense engine, measured in the same process; ± "
             "is the noise (the two medians' IQRs, relative, summed). Each architecture's rows come from one command "
             "on one machine:", ""]
    lines += [f"- {arch}: `{env['command']}` at commit {env['git_commit']}, {env['minutes']} min of wall time "
              f"(a resumed run's earlier time not counted). {machine_line(env)}."
              for arch, env in payload["machines"].items()]
    lines += ["",
             "![accuracy against measured latency](target.png)", "",
             "| model | target | measured (target run) | accuracy | dense | best uniform of the same speed | its "
             "speed-up | its accuracy | forms chosen |", "|---|---:|---:|---:|---:|---|---:|---:|---|"]
    uniform = [r for r in rows if r["kind"] == "uniform"]
    for row in (r for r in rows if r["kind"] == "target"):
        if row.get("unreachable"):
            lines.append(f"| {row['arch']} | {row['target']:g}x | unreachable (best predicted "
                         f"{row['best_predicted_speedup']:.2f}x) | | | | | | |")
            continue
        match = same_speed(row, uniform)
        theirs = (f"{match['recipe']} | {match['speedup']:.2f}x ± {match['noise']:.2f} | {100 * match['accuracy']:.2f}%"
                  if match else "none as fast | | ")
        lines.append(f"| {row['arch']} | {row['target']:g}x | {row['speedup']:.2f}x ± {row['noise']:.2f} | "
                     f"{100 * row['accuracy']:.2f}% | {100 * row['dense_accuracy']:.2f}% | {theirs} | "
                     f"{', '.join(row['forms'])} |")
    lines += ["", "Uniform recipes measured:", "", "| model | recipe | speed-up | accuracy |", "|---|---|---:|---:|"]
    lines += [f"| {u['arch']} | {u['recipe']} | {u['speedup']:.2f}x ± {u['noise']:.2f} | {100 * u['accuracy']:.2f}% |"
              for u in uniform]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    from plots import Point, accuracy_plot

    panels = []
    for arch in dict.fromkeys(r["arch"] for r in rows):
        points = [Point(f"{r['target']:g}x" if r["kind"] == "target" else r["recipe"], r["engine_ms"],
                        100 * r["accuracy"], 100 * r["accuracy"], 100 * r["accuracy"],
                        series="target" if r["kind"] == "target" else "uniform")
                  for r in rows if r["arch"] == arch and "engine_ms" in r]
        panels.append((arch, f"measured latency (ms, batch {BATCH})", points))
    accuracy_plot(panels, path, log_x=False)


def main() -> None:
    ensure_allocator_env()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="*", default=ARCHS)
    parser.add_argument("--targets", nargs="*", type=float, default=TARGETS)
    parser.add_argument("--uniform", nargs="*", default=list(UNIFORM))
    parser.add_argument("--smoke", action="store_true", help="tiny: ResNet-20 at quarter width on digits, 1 epoch")
    parser.add_argument("--runs", type=Path, default=HERE / "runs" / "target")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if args.smoke:
        args.archs, args.targets, args.uniform = SMOKE["archs"], SMOKE["targets"], SMOKE["uniform"]
    from slimkit.environment import environment

    command = "python benchmarks/target.py " + " ".join(sys.argv[1:])
    rows, machines = [], {}
    for arch in args.archs:
        started = time.perf_counter()
        dense = dense_model(arch, args.runs, args.smoke)
        rows += [target_row(arch, t, args.runs, args.smoke, dense) for t in args.targets]
        rows += [uniform_row(arch, name, args.runs, args.smoke, dense) for name in args.uniform]
        machines[arch] = environment(0) | machine_facts() | {
            "command": command.strip(), "minutes": round((time.perf_counter() - started) / 60, 1)}
    stem = "target-smoke" if args.smoke else "target"
    earlier = read_json(args.results / f"{stem}.json")
    keep = [r for r in earlier.get("rows", []) if r["arch"] not in args.archs]
    machines = {a: e for a, e in earlier.get("machines", {}).items() if a not in args.archs} | machines
    payload = {"machines": machines, "batch": BATCH, "threads": THREADS, "rows": keep + rows}
    write_json(args.results / f"{stem}.json", payload)
    plot(payload["rows"], args.results / f"{stem}.png")
    write_text(args.results / f"{stem}.md", markdown(payload).replace("target.png", f"{stem}.png"))

if __name__ == "__main__":
    main()
