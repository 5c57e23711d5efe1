"""Sparsity methods on Fashion-MNIST, on the same model and the same training budget, in two suites.

`--suite resnet` (the one that tells methods apart): ResNet-20 at width 0.5 at 95% and 98% sparsity, per-layer
GMP (`gmp`, `scope: layer`), global GMP (`scope: global`), OptG, movement and SNIP, each under its own bundled
recipe (`gmp-90`, `optg-90`, `movement-90`, `snip-90`: the papers' optimizer, weight decay and schedules flow
through), with only what the benchmark varies overridden: model, training subset, epochs, sparsity, scope (GMP
only) and seed. Every configuration runs with seeds 0, 1 and 2 (verdicts.MIN_SEEDS), the dense reference (the
gmp-90 recipe with no stage) too, and so does each recipe-matched control (RESNET_CONTROLS: OptG with label
smoothing 0, since optg-90 alone smooths labels). The papers' orderings and the comparisons each must survive
are published below as data (RESNET_CLAIMS) before any run, and the page states for each whether this budget
reproduced it (see verdicts.RULE) and whether it survives its controls. 39 runs of 12 epochs on 12,000
images: about 3 h 50 min on 2 CPU cores (the committed 22 runs recorded 2 h 09 min of training, 5-6.5 min a
run, beside other jobs); two processes on disjoint --seeds share the cores. `--quick` runs
every configuration and claim for one epoch on 256 images (LeNet: its 8 epochs on 512) under
benchmarks/runs/quick, to check the harness.

`--suite lenet` (the default, the earlier benchmark): every sparsity method at 50/80/90/95% on LeNet, one seed.
About 40 minutes on 2 CPU cores.

Both write benchmarks/results/sparsity.{json,md} and sparsity.png, merged: a run of one suite, or of some
methods, sparsities or seeds, replaces only those rows; runs resume from their folders under --runs.

    .venv/bin/python benchmarks/sparsity.py --suite resnet [--methods optg snip] [--sparsities 0.98] [--seeds 0 1]
    .venv/bin/python benchmarks/sparsity.py [--methods gmp optg ...] [--sparsities 0.9] [--overrides ...]
    .venv/bin/python benchmarks/sparsity.py --render   # rewrite the page and plot from sparsity.json
    .venv/bin/python benchmarks/sparsity.py --suite resnet --quick   # the harness at a tiny budget
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from controls import apply_control, control_record, controls_table, declared_list, records_of, survival
from harness import (
    ensure_allocator_env,
    epoch_seconds,
    merge_rows,
    quick_dirs,
    read_json,
    recipe_digest,
    run_recipe_dict,
    run_seconds,
    set_epochs,
    training_budget,
    wall_time_line,
    write_json,
    write_text,
)
from plots import Point, accuracy_plot
from sparsity_claims import DERIVED, RESNET_CLAIMS, RESNET_CONTROLS, RESNET_SPARSITIES, pct
from verdicts import (
    RULE,
    claims_table,
    error_rates_text,
    expected_orderings,
    group_stats,
)

LENET_ABOUT = """The model is LeNet with 3x3 convolutions (so pattern sparsity applies). Every run, the dense
reference included, trains from scratch for the same number of epochs on the same subset; methods that prune
trained weights (one-shot magnitude, N:M, Sense, PatDNN) train dense first inside that budget and prune at
`PRUNE_EPOCH`. Pruned layers: the second conv and the first linear (first conv and classifier stay dense).
Sense uses tiles of 32 input channels (a tile of 8 leaves a linear group of 8 weights, which keeps none at 90%).
N:M runs at the N:M closest to each sparsity (2:4, 1:5, 1:10, 1:20); PatDNN keeps its natural 4 of 9
weights per kernel combined with connectivity ratios r_c = 4 / (9 (1 - s)), at least 1, applied to the
linear layer's single weights too, so its achieved sparsity is reported beside the target; patdnn-g4 makes
groups of 4 filters (4 rows of the linear layer) share kept kernels and patterns, the structure the CPU
runtime runs as dense GEMMs. gmp-block4 is gmp keeping or dropping blocks of 4 consecutive input channels
(the int8 sparse kernels' layout), so its row against gmp's is the accuracy cost of that constraint;
patdnn-block4 is PatDNN with each kept kernel's pattern shared by 4 consecutive input channels (the same
layout, for pattern sparsity), against patdnn's row.
Writes benchmarks/results/sparsity.{json,md}, merged: a run of some methods or sparsities replaces only
those rows. About 40 minutes on 2 CPU cores."""

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
        # global, as the committed rows ran (gmp's default became per-layer, Zhu & Gupta's, later)
        "gmp": {"method": "gmp", "sparsity": s, "scope": "global", **window},
        "gmp-taylor": {"method": "gmp", "criterion": "taylor", "sparsity": s, "scope": "global", **window},
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
    stages["patdnn-block4"] = {**stages["patdnn"], "block": 4}
    return stages[method]


METHODS = ["magnitude", "gmp", "gmp-block4", "gmp-taylor", "snip", "movement", "optg", "nm", "sense", "patdnn",
           "patdnn-g4", "patdnn-block4"]


def recipe(name: str, stages: list[dict], subset: int = SUBSET) -> dict:
    return {"name": name, "seed": 0, "model": {"name": "lenet", "options": {"kernel_size": 3}},
            "data": {"name": "fashion_mnist", "batch_size": 128, "train_subset": subset},
            "train": {"epochs": EPOCHS, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
                      "schedule": "cosine", "warmup_epochs": 0.5},
            "stages": [{"prune": st} for st in stages],
            "measure": {"batch_sizes": [1], "repeats": 3, "warmup": 1}}


def run(method: str, s: float | None, overrides: list[str], out: Path, subset: int = SUBSET) -> dict:
    import slimkit
    from slimkit.recipe import Recipe, apply_overrides

    name = "dense" if s is None else f"{method}-{round(s * 100)}"
    data = recipe(name, [] if s is None else [stage(method, s)], subset)
    result = slimkit.run_recipe(Recipe.from_dict(apply_overrides(data, overrides)), out / name,
                                resume=(out / name).exists(), progress=False)
    m = result.metrics["models"]["compressed"]
    meas = m["measurement"]
    epochs = [r["seconds"] for r in m["history"]]
    summary = result.metrics["stages"][0] if result.metrics["stages"] else {}
    return {"method": method, "target": s, "test_acc": m["test_acc"], "best_epoch": m["best_epoch"],
            "achieved": summary.get("achieved_sparsity", 0.0), "macs": meas["macs"],
            "effective_macs": meas["effective_macs"], "params": meas["params"], "nonzeros": meas["nonzeros"],
            "epoch_seconds": sorted(epochs)[len(epochs) // 2] if epochs else 0.0, "stage": summary,
            "train_seconds": m["train_seconds"], "run": str(out / name)}


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


# --- the ResNet-20 suite -----------------------------------------------------------------------------------

RESNET_MODEL = {"name": "resnet20", "width": 0.5}
RESNET_SEEDS = [0, 1, 2]  # verdicts.MIN_SEEDS
RESNET_EPOCHS, RESNET_SUBSET = 12, 12000  # 12 epochs: the bundled recipes' own length
# label -> (bundled recipe, what this benchmark sets in its prune stage besides the sparsity)
RESNET_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "gmp-layer": ("gmp-90", {"scope": "layer"}),
    "gmp-global": ("gmp-90", {"scope": "global"}),
    "optg": ("optg-90", {}),
    "movement": ("movement-90", {}),
    "snip": ("snip-90", {}),
}
DENSE_RECIPE = "gmp-90"  # the dense reference: this recipe's training, no stage
# Every global-scope row keeps at least 1% of each layer (unless its recipe sets a cap of its own): at 98%, OptG's
# global ranking removed every weight of layer1's convs (8x8x9 = 576 weights each) in a 2-epoch smoke run, and
# slimkit refuses to disconnect a network. Per-layer rows keep 2% of every layer anyway.
GLOBAL_CAP = 0.99
RESNET_MEASURE = {"batch_sizes": [1], "repeats": 3, "warmup": 1}  # latency is not what this suite compares


def resnet_recipe(method: str, s: float | None, seed: int, overrides: list[str], epochs: int = RESNET_EPOCHS,
                  subset: int | None = RESNET_SUBSET) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(bundled recipe name, recipe mapping, stage windows moved) of one row: the method's recipe with only the
    benchmark's variables set, then the command line's overrides. A recipe written for another number of
    epochs keeps its schedule's shape (harness.set_epochs)."""
    from slimkit.recipe import Recipe, apply_overrides

    name = DENSE_RECIPE if s is None else RESNET_METHODS[method][0]
    data = Recipe.load(name).to_dict()
    data["name"] = f"{method}-s{seed}" if s is None else f"{method}-{round(s * 100)}-s{seed}"
    data["seed"] = seed
    data["model"] = dict(RESNET_MODEL)
    data["data"]["train_subset"] = subset
    data["measure"] = dict(RESNET_MEASURE)
    if s is None:
        data["stages"] = []
    else:
        (stage,) = data["stages"]
        stage["prune"].update(sparsity=s, **RESNET_METHODS[method][1])
        if stage["prune"].get("scope") == "global" and stage["prune"].get("max_layer_sparsity") is None:
            stage["prune"]["max_layer_sparsity"] = GLOBAL_CAP
    moved = set_epochs(data, epochs)
    return name, apply_overrides(data, overrides), moved


def resnet_group(group: str) -> tuple[str, float | None]:
    """(method, sparsity) of a configuration's group key ('dense' or '<method> <pct>')."""
    if group == "dense":
        return "dense", None
    method, _, p = group.rpartition(" ")
    return method, int(p.rstrip("%")) / 100


def resnet_group_recipe(group: str, seed: int, overrides: list[str], epochs: int = RESNET_EPOCHS,
                        subset: int | None = RESNET_SUBSET
                        ) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """(bundled recipe name, recipe mapping, stage windows moved, control record or None) of any configuration:
    a method's own, or a control derived from one (DERIVED)."""
    derived = DERIVED.get(group)
    if derived is None:
        return (*resnet_recipe(*resnet_group(group), seed, overrides, epochs, subset), None)
    name, _, moved = resnet_recipe(*resnet_group(derived.of), seed, overrides, epochs, subset)
    recipe, resolved = apply_control(
        derived, lambda g: resnet_recipe(*resnet_group(g), seed, overrides, epochs, subset)[1])
    recipe["name"] = f"{derived.slug}-s{seed}"
    return name, recipe, moved, control_record(derived, resolved)


def resnet_run(group: str, seed: int, overrides: list[str], runs: Path, epochs: int,
               subset: int | None) -> dict[str, Any]:
    name, recipe, moved, control = resnet_group_recipe(group, seed, overrides, epochs, subset)
    method, s = resnet_group(group)  # a control's method: its group's stem ('optg label_smoothing=0')
    out = runs / f"{recipe['name']}-{recipe_digest(recipe)}"
    metrics = run_recipe_dict(recipe, out)
    m = metrics["models"]["compressed"]
    meas = m["measurement"]
    summary = metrics["stages"][0] if metrics["stages"] else {}
    return {"suite": "resnet", "group": group, "method": method, "target": s, "seed": seed, "recipe": name,
            "test_acc": m["test_acc"], "best_epoch": m["best_epoch"],
            "achieved": summary.get("achieved_sparsity", 0.0), "scope": summary.get("scope"),
            "macs": meas["macs"], "effective_macs": meas["effective_macs"], "params": meas["params"],
            "nonzeros": meas["nonzeros"], "epoch_seconds": epoch_seconds(m["history"]),
            "train_seconds": m["train_seconds"], "budget": training_budget(recipe), "stage": summary,
            "stage_config": recipe["stages"][0] if recipe["stages"] else None, "windows_moved": moved,
            "train": {k: recipe["train"].get(k) for k in ("optimizer", "lr", "momentum", "weight_decay",
                                                          "schedule", "warmup_epochs", "label_smoothing")},
            "control": control, "run": str(out)}


def resnet_table(rows: list[dict[str, Any]]) -> str:
    stats = group_stats(rows)
    dense = stats.get("dense")
    lines = ["| configuration | bundled recipe | seeds | test accuracy: mean (min-max) | vs dense | achieved "
             "(pruned layers) | effective MACs | s / epoch |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for group, st in stats.items():
        members = [r for r in rows if r["group"] == group]
        first = members[0]
        delta = f"{st.mean - dense.mean:+.2f}" if dense else "-"
        macs = sum(r["effective_macs"] for r in members) / len(members)
        secs = sum(r["epoch_seconds"] for r in members) / len(members)
        lines.append(f"| {group} | {first['recipe']} | {', '.join(map(str, st.seeds))} | {st.mean:.2f} "
                     f"({st.low:.2f}-{st.high:.2f}) | {delta} | {first['achieved']:.2%} | {macs / 1e6:.2f}M "
                     f"({macs / first['macs']:.0%}) | {secs:.1f} |")
    return "\n".join(lines)


def resnet_points(rows: list[dict[str, Any]]) -> list[Point]:
    points = []
    for group, st in group_stats(rows).items():
        members = [r for r in rows if r["group"] == group]
        macs = sum(r["effective_macs"] for r in members) / len(members)
        method = members[0]["method"]
        label = pct(members[0]["target"]) if members[0]["target"] is not None else "dense"
        points.append(Point(label, macs, st.mean, st.low, st.high, series=method, reference=method == "dense"))
    return points


def lenet_points(rows: list[dict[str, Any]]) -> list[Point]:
    return [Point(pct(r["target"]) if r["target"] is not None else "dense", r["effective_macs"],
                  100 * r["test_acc"], 100 * r["test_acc"], 100 * r["test_acc"], series=r["method"],
                  reference=r["method"] == "dense") for r in rows]


def resnet_section(suite: dict[str, Any]) -> str:
    rows = suite.get("rows", [])
    budget = rows[0]["budget"] if rows else None
    epochs = budget["epochs"] if budget else RESNET_EPOCHS
    subset = budget["data"]["train_subset"] if budget else RESNET_SUBSET
    methods = ", ".join(f"`{label}` ({name}{', ' + ', '.join(f'{k}: {v}' for k, v in extra.items()) if extra else ''})"
                        for label, (name, extra) in RESNET_METHODS.items())
    text = ["## ResNet-20 (width 0.5) at 95% and 98%\n",
            f"ResNet-20 at width 0.5 (stages of 8/16/32 channels) trained from scratch on Fashion-MNIST, "
            f"{epochs} epochs on the first {subset} training images (the split's, after the validation "
            f"hold-out), batch from each recipe. Methods, each under its bundled recipe: {methods}; "
            f"the dense reference is {DENSE_RECIPE} with no stage. Only model, subset, epochs, sparsity, scope "
            "(GMP) and seed are set by this benchmark: optimizer, weight decay, warm-up, label smoothing and "
            "each method's schedule are the recipe's (a recipe written for another number of epochs has its "
            "warm-up, LR milestones and stage window moved in proportion; each row records what moved). "
            f"Global-scope rows keep at least {1 - GLOBAL_CAP:.0%} of every layer (`max_layer_sparsity: "
            f"{GLOBAL_CAP}`): without it OptG's global ranking at 98% emptied layer1's convs, which slimkit "
            "refuses. Accuracy is on the 10k test split, for the best complete "
            "epoch by validation accuracy; 'achieved' is the measured fraction of zeros in the pruned layers; "
            "effective MACs count only non-zero weights.\n",
            "### Expected orderings (published before the run)\n", expected_orderings(RESNET_CLAIMS) + "\n",
            "Recipe-matched controls (declared before the run; each is another configuration's recipe with the "
            "named fields set):\n", declared_list(RESNET_CONTROLS) + "\n"]
    if not rows:
        text.append("Not run yet: `.venv/bin/python benchmarks/sparsity.py --suite resnet` (about 70 minutes on "
                    "2 CPU cores).\n")
        return "\n".join(text)
    stats = group_stats(rows)
    env = suite.get("environment", {})
    text += ["### Paper claim against our measurement\n", RULE + " " + error_rates_text() + "\n",
             claims_table(RESNET_CLAIMS, stats, lambda c: survival(c, stats)) + "\n",
             "### Each claim against its recipe-matched controls\n",
             "A claim whose two recipes differ in more than the method is judged again with the difference "
             "removed, by the same rule; it survives when every such comparison reaches its verdict.\n",
             controls_table(RESNET_CLAIMS, stats, records_of(rows)) + "\n",
             "### Every configuration\n", resnet_table(rows) + "\n",
             f"Budget of every row: `{json.dumps(budget)}`. Each row's optimizer settings, stage summary and "
             f"run folder are in sparsity.json under `resnet`. " + wall_time_line(run_seconds(rows), env) + "\n",
             "Reproduce: " + "; ".join(f"`{c}`" for c in dict.fromkeys(r["command"] for r in rows))
             + f". Last run: torch {env.get('torch')}, {env.get('cpu_count')} CPUs, "
             f"torch threads per process: {env.get('torch_threads')}, commit {env.get('git_commit')}. Seconds per "
             "epoch are wall time on that machine, beside whatever else ran; they are not a speed comparison.\n"]
    return "\n".join(text)


def lenet_section(payload: dict[str, Any]) -> str:
    rows = payload.get("rows", [])
    if not rows:
        return "## LeNet, every method at 50-95%\n\nNot run yet.\n"
    env = payload.get("environment", {})
    commands = list(dict.fromkeys(r["command"] for r in rows))
    return ("## LeNet, every method at 50-95%, one seed\n\n" + LENET_ABOUT.replace("\n", " ") + "\n\n"
            f"Budget for every row: {EPOCHS} epochs of SGD (lr 0.05, momentum 0.9, cosine) on {SUBSET} training "
            "images, batch 128. Accuracy is on the 10k test split, for the best complete epoch by validation "
            "accuracy. 'achieved' is the measured fraction of zeros in the pruned layers. Effective MACs count "
            "only non-zero weights (dense kernels do not skip them: see the runtime benchmark for speed). "
            "Seconds per epoch are medians and include the method's own overhead. One seed, so no gap here "
            "is judged against a seed spread.\n\n" + table(rows)
            + "\n\nReproduce (each row's command is in sparsity.json): " + "; ".join(f"`{c}`" for c in commands)
            + f". Last run: torch {env.get('torch')}, {env.get('cpu_count')} CPUs, commit {env.get('git_commit')}. "
            + wall_time_line(run_seconds(rows), env) + "\n")


def render(results: Path) -> None:
    """sparsity.md and sparsity.png from sparsity.json (LeNet rows at the top level, the ResNet suite under
    'resnet')."""
    payload = read_json(results / "sparsity.json")
    suite = payload.get("resnet", {})
    accuracy_plot([("ResNet-20 width 0.5, Fashion-MNIST (mean, min-max over seeds)", "effective MACs / sample",
                    resnet_points(suite.get("rows", []))),
                   ("LeNet 3x3, Fashion-MNIST (one seed)", "effective MACs / sample",
                    lenet_points(payload.get("rows", [])))], results / "sparsity.png")
    write_text(results / "sparsity.md",
               "# Sparsity methods on Fashion-MNIST\n\n"
               "![Accuracy against effective MACs, one point per method and sparsity; dense is the star and the "
               "dotted line](sparsity.png)\n\n" + resnet_section(suite) + "\n" + lenet_section(payload))


QUICK = {"subset": 512, "epochs": 1, "resnet_subset": 256}  # --quick: LeNet keeps its 8 epochs (its windows)
QUICK_OVERRIDES = ["data.val_fraction=0.02"]  # --quick: evaluation dominates a tiny run


def main() -> None:
    import time

    ensure_allocator_env()
    from slimkit.environment import environment

    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=["lenet", "resnet"], default="lenet")
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument("--sparsities", nargs="*", type=float, default=None)
    parser.add_argument("--seeds", nargs="*", type=int, default=RESNET_SEEDS, help="resnet suite only")
    parser.add_argument("--epochs", type=int, default=None, help=f"resnet suite only; default {RESNET_EPOCHS}")
    parser.add_argument("--subset", type=int, default=None,
                        help=f"resnet suite only: training images; default {RESNET_SUBSET}")
    parser.add_argument("--quick", action="store_true",
                        help="check the harness: every configuration and claim of the suite at a tiny budget, "
                             "written under benchmarks/runs/quick (never the committed results)")
    parser.add_argument("--overrides", nargs="*", default=[])
    parser.add_argument("--runs", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--render", action="store_true", help="only rewrite the page and plot from the JSON")
    args = parser.parse_args()
    quick_runs, quick_results = quick_dirs(f"sparsity-{args.suite}")
    results = args.results or (quick_results if args.quick else HERE / "results")
    path = results / "sparsity.json"
    if args.render:
        render(results)
        return
    overrides = [*QUICK_OVERRIDES, *args.overrides] if args.quick else args.overrides
    env = environment(0) | {"command": " ".join(sys.argv)}
    command = f"{env['command']} (commit {env['git_commit']})"
    payload = read_json(path)
    if args.suite == "lenet":
        runs = args.runs or (quick_runs if args.quick else HERE / "runs" / "sparsity")
        subset = QUICK["subset"] if args.quick else SUBSET
        rows = [run("dense", None, overrides, runs, subset)]
        rows += [run(method, s, overrides, runs, subset) for s in args.sparsities or SPARSITIES
                 for method in args.methods or METHODS]
        for r in rows:
            r["command"] = command
        rows, _ = merge(rows, path)
        env["wall_seconds"] = time.perf_counter() - started
        payload.update(rows=rows, environment=env)
        printed = table(rows)
    else:
        unknown = sorted(set(args.methods or []) - set(RESNET_METHODS))
        if unknown:
            parser.error(f"--methods: {', '.join(unknown)} not in the resnet suite ({', '.join(RESNET_METHODS)})")
        runs = args.runs or (quick_runs if args.quick else HERE / "runs" / "sparsity-resnet")
        epochs = args.epochs or (QUICK["epochs"] if args.quick else RESNET_EPOCHS)
        subset = args.subset or (QUICK["resnet_subset"] if args.quick else RESNET_SUBSET)
        groups = ["dense"] + [f"{m} {pct(s)}" for s in args.sparsities or RESNET_SPARSITIES
                              for m in args.methods or RESNET_METHODS]
        groups += [c.group for c in RESNET_CONTROLS if c.of in groups]
        rows = [resnet_run(g, seed, overrides, runs, epochs, subset) for seed in args.seeds for g in groups]
        for r in rows:
            r["command"] = command
        earlier = payload.get("resnet", {}).get("rows", [])
        budget = rows[0]["budget"]
        stale = [r for r in earlier if r["budget"] != budget]
        if stale:
            print(f"dropping {len(stale)} earlier resnet rows of another budget ({stale[0]['budget']})")
        suite_rows = merge_rows([r for r in earlier if r["budget"] == budget], rows)
        order = {g: i for i, g in enumerate(["dense", *(f"{m} {pct(s)}" for s in RESNET_SPARSITIES
                                                         for m in RESNET_METHODS), *DERIVED])}
        suite_rows.sort(key=lambda r: (order.get(r["group"], len(order)), r["group"], r["seed"]))
        env["wall_seconds"] = time.perf_counter() - started
        payload["resnet"] = {"rows": suite_rows, "environment": env}
        stats = group_stats(suite_rows)
        printed = (claims_table(RESNET_CLAIMS, stats, lambda c: survival(c, stats)) + "\n\n"
                   + resnet_table(suite_rows))
    write_json(path, payload)
    render(results)
    print(printed)


if __name__ == "__main__":
    main()
