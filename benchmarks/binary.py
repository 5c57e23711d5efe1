"""Binarization methods against full precision on Fashion-MNIST's four confusable classes, each under its own recipe.

Every method runs its bundled `<method>-fashion` recipe (a Bi-Real ResNet-20 with the paper's model options,
optimizer, weight decay and warm-up), with only what this benchmark varies set: the data (classes 0, 2, 4, 6 of
Fashion-MNIST, T-shirt/top, pullover, coat and shirt, relabelled 0..3; a training subset), the number of
epochs (the recipe's warm-up, LR milestones and stage windows move in proportion, see harness.set_epochs) and
the seed. The full-precision reference is the xnor-fashion recipe with no stage. Three seeds of everything,
plus recipe-matched controls (CONTROLS: IR-Net and XNOR at the BNNs' batch, SiMaN on IR-Net's hardtanh model,
full precision trained with IR-Net's SGD recipe) and ablations (ABLATIONS: RBNN's init_theta pi/2, the
official code's and a faithful port, pi/4 and 0, and the official warm-up of 980 optimizer steps, each RBNN
run's per-epoch theta trajectory read from its checkpoints; SiMaN with l2 on its binary layers). The papers'
orderings and the comparisons each must survive are published below as data (CLAIMS) before any run, and the
page states for each whether this budget reproduced it (verdicts.RULE) and whether it survives its controls
(controls.py).

The earlier run (two seeds, no controls) took 2 h 20 min of wall time on 2 CPU cores for 16 runs of 20
epochs on 4,000 images (per epoch RBNN, ReCU and SiMaN take about twice full precision's time; its runs
recorded 3 h 42 min of training, 5-16 min a run). A full run now is 14 distinct runs per seed, 42 in all: about
7 h 45 min of training at that pace (two processes on disjoint --seeds share the 2 cores: about 4 h of wall
time). `--quick` runs every configuration and claim for one epoch on 256 images (a few minutes) to check
the harness, under benchmarks/runs/quick.

Writes benchmarks/results/binary.{json,md} and binary.png, merged: a run of some methods or seeds replaces only
those rows (rows of another budget are dropped). Runs resume from their folders under --runs.

    .venv/bin/python benchmarks/binary.py [--methods xnor rbnn ...] [--seeds 0 1] [--epochs 20] [--no-ablation]
    .venv/bin/python benchmarks/binary.py --quick     # every configuration at a tiny budget, not the results
    .venv/bin/python benchmarks/binary.py --render   # rewrite the page and plot from binary.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from binary_claims import (
    ABLATIONS,
    CLAIMS,
    CONTROLS,
    DERIVED,
    THETA_OPTION,
    WARMUP_GROUP,
)
from controls import (
    apply_control,
    control_record,
    controls_table,
    declared_list,
    records_of,
    survival,
)
from harness import (
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
from verdicts import (
    RULE,
    claims_table,
    error_rates_text,
    expected_orderings,
    group_stats,
)

HERE = Path(__file__).parent
METHODS = ["xnor", "irnet", "rbnn", "recu", "siman"]
FP_RECIPE = "xnor-fashion"  # the full-precision reference: this recipe's training, no stage
CLASSES = [0, 2, 4, 6]  # T-shirt/top, pullover, coat, shirt: Fashion-MNIST's most confused classes
EPOCHS, SUBSET, SEEDS = 20, 4000, [0, 1, 2]  # 3 seeds: verdicts.MIN_SEEDS; 4000 of the four classes' 21,600
MEASURE = {"batch_sizes": [1], "repeats": 3, "warmup": 1}  # latency is not what this benchmark compares
QUICK = {"epochs": 1, "subset": 256}  # --quick: every configuration and claim at a budget that checks the harness
QUICK_OVERRIDES = ["data.val_fraction=0.02"]  # --quick: evaluation dominates a tiny run
REFERENCES = ["fp sgd", "fp"]  # the full-precision row the table compares with, the first one measured


def binary_recipe(method: str, seed: int, overrides: list[str], epochs: int = EPOCHS, subset: int | None = SUBSET
                  ) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(bundled recipe name, normalised recipe mapping, what set_epochs moved) of one method's row."""
    from slimkit.recipe import Recipe, apply_overrides

    name = FP_RECIPE if method == "fp" else f"{method}-fashion"
    data = Recipe.load(name).to_dict()
    data["name"] = f"{method}-s{seed}"
    data["seed"] = seed
    data["data"].update(classes=list(CLASSES), train_subset=subset)
    data["measure"] = dict(MEASURE)
    if method == "fp":
        data["stages"] = []
    moved = set_epochs(data, epochs)
    data = apply_overrides(data, overrides)
    return name, Recipe.from_dict(data).to_dict(), moved


def group_recipe(group: str, seed: int, overrides: list[str], epochs: int = EPOCHS, subset: int | None = SUBSET
                 ) -> tuple[str, dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """(bundled recipe name, normalised recipe, what set_epochs moved, the control record or None) of any
    configuration: a method's own, or a control or ablation derived from one (DERIVED)."""
    from slimkit.recipe import Recipe

    derived = DERIVED.get(group)
    if derived is None:
        return (*binary_recipe(group, seed, overrides, epochs, subset), None)
    name, _, moved = binary_recipe(derived.of, seed, overrides, epochs, subset)
    recipe, resolved = apply_control(derived, lambda g: binary_recipe(g, seed, overrides, epochs, subset)[1])
    recipe["name"] = f"{derived.slug}-s{seed}"
    return name, Recipe.from_dict(recipe).to_dict(), moved, control_record(derived, resolved)


class ThetaTrajectory:
    """An epoch callback that reads RBNN's theta parameters from the checkpoint the trainer has just written
    and appends their statistics to theta.json in the run folder (so a resumed run keeps earlier epochs)."""

    def __init__(self, out: Path):
        self.checkpoint, self.path = out / "compressed" / "checkpoint.pt", out / "theta.json"

    def load(self) -> list[dict[str, Any]]:
        return json.loads(self.path.read_text()) if self.path.exists() else []

    def __call__(self, record: dict[str, Any]) -> None:
        import torch

        state = torch.load(self.checkpoint, map_location="cpu", weights_only=True)["model"]
        thetas = [v.flatten() for k, v in state.items() if k.endswith(".theta")]
        if not thetas:
            return
        theta = torch.cat(thetas).double()
        entry = {"epoch": record["epoch"], "mean": theta.mean().item(), "min": theta.min().item(),
                 "max": theta.max().item(),
                 # dW_t/dWhat = 1 - |sin theta|: how much task gradient the latent weights get
                 "latent_gradient": (1 - theta.sin().abs()).mean().item()}
        trajectory = [e for e in self.load() if e["epoch"] != entry["epoch"]] + [entry]
        write_json(self.path, sorted(trajectory, key=lambda e: e["epoch"]))


def binary_run(group: str, seed: int, overrides: list[str], runs: Path, epochs: int, subset: int | None,
               cache: dict[str, tuple[Path, dict[str, Any]]] | None = None) -> dict[str, Any]:
    name, recipe, moved, control = group_recipe(group, seed, overrides, epochs, subset)
    digest = recipe_digest({**recipe, "name": ""})  # one run for identical training, whatever its label
    cache = {} if cache is None else cache
    method = recipe["stages"][0]["binarize"]["method"] if recipe["stages"] else "fp"
    if digest not in cache:
        out = runs / f"{recipe['name']}-{digest}"
        callbacks = [ThetaTrajectory(out)] if method == "rbnn" else []
        cache[digest] = out, run_recipe_dict(recipe, out, callbacks)
    out, metrics = cache[digest]  # a label sharing an earlier label's training names that run's folder
    m = metrics["models"]["compressed"]
    meas = m["measurement"]
    summary = metrics["stages"][0] if metrics["stages"] else {}
    binarize = recipe["stages"][0]["binarize"] if recipe["stages"] else {}
    row = {"suite": "binary", "group": group, "method": method, "seed": seed, "recipe": name,
           "test_acc": m["test_acc"], "best_epoch": m["best_epoch"],
           "epochs": len(m["history"]), "train_seconds": m["train_seconds"],
           "epoch_seconds": epoch_seconds(m["history"]),
           "bops": meas["bops"], "fp_macs": meas["fp_macs"], "ops": meas["ops"], "bytes": meas["compressed_bytes"],
           "params": meas["params"], "budget": training_budget(recipe), "windows_moved": moved,
           "train": {k: recipe["train"].get(k) for k in ("optimizer", "lr", "momentum", "weight_decay", "schedule",
                                                          "warmup_epochs", "warmup_steps", "milestones", "gamma")},
           "batch_size": recipe["data"]["batch_size"], "model_options": recipe["model"]["options"],
           "stage": summary, "control": control, "run": str(out)}
    if method == "rbnn":
        row[THETA_OPTION] = binarize.get(THETA_OPTION)
        row["theta_trajectory"] = ThetaTrajectory(out).load()
    return row


def table(rows: list[dict[str, Any]]) -> str:
    stats = group_stats(rows)
    ref = next((g for g in REFERENCES if g in stats), None)
    lines = ["| configuration | recipe: optimizer, lr, weight decay, warm-up | batch | seeds | test accuracy: mean "
             f"(min-max) | vs `{ref}` | OPs / sample | size (1-bit weights) | s / epoch |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for group, st in stats.items():
        members = [r for r in rows if r["group"] == group]
        first, t = members[0], members[0]["train"]
        delta = f"{st.mean - stats[ref].mean:+.2f}" if ref else "-"
        secs = sum(r["epoch_seconds"] for r in members) / len(members)
        warmup = (f"{t['warmup_steps']} steps" if t.get("warmup_steps") is not None
                  else f"{t['warmup_epochs']} epochs")
        lines.append(f"| {group} | {first['recipe']}: {t['optimizer']}, {t['lr']}, {t['weight_decay']}, "
                     f"{warmup} | {first['batch_size']} | {', '.join(map(str, st.seeds))} | {st.mean:.2f} "
                     f"({st.low:.2f}-{st.high:.2f}) | {delta} | {first['ops'] / 1e6:.2f}M | "
                     f"{first['bytes'] / 1024:.1f} KiB | {secs:.1f} |")
    return "\n".join(lines)


def theta_table(rows: list[dict[str, Any]]) -> str:
    """Per RBNN run: the theta trajectory (mean theta and mean latent-weight gradient factor 1 - |sin theta|)."""
    runs = [r for r in rows if r["method"] == "rbnn" and r.get("theta_trajectory")]
    if not runs:
        return "No theta trajectory recorded."
    lines = ["| configuration | seed | init_theta | warm-up | epoch: mean theta / mean (1 - abs(sin theta)) |",
             "|---|---:|---:|---|---|"]
    for r in runs:
        steps = ", ".join(f"{e['epoch']}: {e['mean']:.3f} / {e['latent_gradient']:.2e}"
                          for e in r["theta_trajectory"])
        t = r["train"]
        warmup = (f"{t['warmup_steps']} steps" if t.get("warmup_steps") is not None
                  else f"{t['warmup_epochs']} epochs")
        lines.append(f"| {r['group']} | {r['seed']} | {r[THETA_OPTION]:.4f} | {warmup} | {steps} |")
    return "\n".join(lines)


def points(rows: list[dict[str, Any]], x: str) -> list[Point]:
    out = []
    for i, (group, st) in enumerate(group_stats(rows).items()):
        members = [r for r in rows if r["group"] == group]
        value = i if x == "index" else members[0][x] / 1024
        out.append(Point(group, value, st.mean, st.low, st.high, series=members[0]["method"],
                         reference=group in REFERENCES))
    return out


def split_payload(payload: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(this benchmark's rows, the superseded run): rows of the earlier layout (one seed, every method on one
    Adam recipe, no 'suite' key) are kept apart as the superseded run, never mixed with this one's."""
    rows = payload.get("rows", [])
    legacy = [r for r in rows if "suite" not in r]
    superseded = payload.get("superseded") or (
        {"rows": legacy, "environment": payload.get("environment", {})} if legacy else None)
    return [r for r in rows if r.get("suite") == "binary"], superseded


def superseded_section(old: dict[str, Any]) -> str:
    env = old.get("environment", {})
    recipe = old["rows"][0].get("recipe", {})
    train = recipe.get("train", {})
    subset = recipe.get("data", {}).get("train_subset")
    lines = ["## Superseded: the earlier run\n",
             f"One seed, all ten classes, {train.get('epochs')} epochs on {subset} images, every method on one "
             f"recipe ({train.get('optimizer')}, lr {train.get('lr')}, weight decay {train.get('weight_decay')}), "
             "which switches off what RBNN, ReCU and SiMaN depend on (issue #16). "
             f"Command `{env.get('command')}`, commit {env.get('git_commit')}.\n",
             "| method | test accuracy | best epoch |", "|---|---:|---:|"]
    lines += [f"| {r['method']} | {100 * r['test_acc']:.2f}% | {r['best_epoch']} |" for r in old["rows"]]
    return "\n".join(lines) + "\n"


def render(results: Path) -> None:
    payload = read_json(results / "binary.json")
    rows, superseded = split_payload(payload)
    accuracy_plot([("Accuracy against size (mean, min-max over seeds)", "model size (KiB, binary weights at 1 bit)",
                    points(rows, "bytes")),
                   ("Every configuration (the BNNs share one size)", None, points(rows, "index"))],
                  results / "binary.png")
    budget = rows[0]["budget"] if rows else None
    epochs = budget["epochs"] if budget else EPOCHS
    subset = budget["data"]["train_subset"] if budget else SUBSET
    text = ["# Binarization on Fashion-MNIST's confusable classes\n",
            "![Accuracy against model size, one point per configuration, and every configuration side by side "
            "(the BNNs share one size); full precision is the star and the dotted line](binary.png)\n",
            f"Data: Fashion-MNIST classes {CLASSES} (T-shirt/top, pullover, coat, shirt: the four it confuses "
            f"most), relabelled 0..3; the first {subset} training images after the validation hold-out; the "
            "4,000 test images of those classes. Each method runs its bundled `<method>-fashion` recipe (Bi-Real "
            "ResNet-20 with the paper's model options, optimizer, weight decay and warm-up) for "
            f"{epochs} epochs; the recipe's warm-up, LR milestones and stage windows move in proportion to that "
            f"length (each row records what moved). Full precision (`fp`) is {FP_RECIPE} with no stage. RBNN's "
            f"ablation sets `{THETA_OPTION}` to pi/2 (the official code's; the same run as `rbnn` while the "
            f"recipe keeps it), pi/4 and 0, and (`{WARMUP_GROUP}`) the official code's warm-up length in "
            "optimizer steps. Accuracy is for the epoch with the best validation accuracy. OPs = FP "
            "MACs + BOPs/64; size counts binary weights at 1 bit and everything else at 32 bits.\n",
            "## Expected orderings (published before the run)\n", expected_orderings(CLAIMS) + "\n",
            "Recipe-matched controls (declared before the run; each is another configuration's recipe with the "
            "named fields set):\n", declared_list(CONTROLS) + "\n"]
    if not rows:
        text.append("Not run yet: `.venv/bin/python benchmarks/binary.py` (about 2 hours on 2 CPU cores).\n")
    else:
        env = payload.get("environment", {})
        stats = group_stats(rows)
        text += ["## Paper claim against our measurement\n", RULE + " " + error_rates_text() + "\n",
                 claims_table(CLAIMS, stats, lambda c: survival(c, stats)) + "\n",
                 "## Each claim against its recipe-matched controls\n",
                 "A claim whose two recipes differ in more than the method is judged again with the "
                 "difference removed, by the same rule; it survives when every such comparison reaches its "
                 "verdict.\n", controls_table(CLAIMS, stats, records_of(rows)) + "\n",
                 "## Every configuration\n", table(rows) + "\n",
                 "## RBNN's theta during training\n",
                 "Read from each epoch's checkpoint over every binary layer's per-channel theta. The latent "
                 "weights' task gradient is scaled by 1 - |sin theta|, which is exactly 0 at pi/2 in float32.\n",
                 theta_table(rows) + "\n",
                 f"Budget of every row: `{json.dumps(budget)}`. " + wall_time_line(run_seconds(rows), env) + "\n",
                 "Reproduce: " + "; ".join(f"`{c}`" for c in dict.fromkeys(r["command"] for r in rows))
                 + f". Last run: torch {env.get('torch')}, {env.get('cpu_count')} CPUs, "
                 f"torch threads per process: {env.get('torch_threads')}, commit {env.get('git_commit')}. Seconds "
                 "per epoch are wall time on that machine, beside whatever else ran; they are not a speed "
                 "comparison.\n"]
    if superseded:
        text.append(superseded_section(superseded))
    write_text(results / "binary.md", "\n".join(text))


def suite_groups(methods: list[str], ablation: bool) -> list[str]:
    """Every configuration a run of `methods` needs: full precision, the methods, the controls of any of them
    and (with `ablation`) the ablations of any of them."""
    groups = ["fp", *methods]
    groups += [c.group for c in CONTROLS if c.of in groups]
    if ablation:
        groups += [c.group for c in ABLATIONS if c.of in groups]
    return groups


def main() -> None:
    import time

    from slimkit.environment import environment

    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="*", default=METHODS, choices=METHODS)
    parser.add_argument("--seeds", nargs="*", type=int, default=SEEDS)
    parser.add_argument("--epochs", type=int, default=None, help=f"default {EPOCHS} ({QUICK['epochs']} with --quick)")
    parser.add_argument("--subset", type=int, default=None,
                        help=f"training images (0: all of the four classes); default {SUBSET} "
                             f"({QUICK['subset']} with --quick)")
    parser.add_argument("--no-ablation", dest="ablation", action="store_false", help="skip RBNN's ablations")
    parser.add_argument("--quick", action="store_true",
                        help="check the harness: every configuration and claim at a tiny budget, written under "
                             "benchmarks/runs/quick (never the committed results)")
    parser.add_argument("--overrides", nargs="*", default=[])
    parser.add_argument("--runs", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--render", action="store_true", help="only rewrite the page and plot from the JSON")
    args = parser.parse_args()
    quick_runs, quick_results = quick_dirs("binary")
    runs = args.runs or (quick_runs if args.quick else HERE / "runs" / "binary")
    results = args.results or (quick_results if args.quick else HERE / "results")
    if args.render:
        render(results)
        return
    budget = QUICK if args.quick else {"epochs": EPOCHS, "subset": SUBSET}
    epochs = budget["epochs"] if args.epochs is None else args.epochs
    subset = (budget["subset"] if args.subset is None else args.subset) or None
    overrides = [*QUICK_OVERRIDES, *args.overrides] if args.quick else args.overrides
    env = environment(0) | {"command": " ".join(sys.argv)}
    cache: dict[str, tuple[Path, dict[str, Any]]] = {}
    groups = suite_groups(args.methods, args.ablation)
    rows = [binary_run(g, seed, overrides, runs, epochs, subset, cache=cache)
            for seed in args.seeds for g in groups]
    for r in rows:
        r["command"] = f"{env['command']} (commit {env['git_commit']})"
    path = results / "binary.json"
    earlier, superseded = split_payload(read_json(path))
    budget_key = rows[0]["budget"]
    stale = [r for r in earlier if r["budget"] != budget_key]
    if stale:
        print(f"dropping {len(stale)} earlier rows of another budget ({stale[0]['budget']})")
    merged = merge_rows([r for r in earlier if r["budget"] == budget_key], rows)
    order = {g: i for i, g in enumerate(suite_groups(METHODS, True))}
    merged.sort(key=lambda r: (order.get(r["group"], len(order)), r["group"], r["seed"]))
    env["wall_seconds"] = time.perf_counter() - started
    write_json(path, {"rows": merged, "environment": env, **({"superseded": superseded} if superseded else {})})
    render(results)
    stats = group_stats(merged)
    print(claims_table(CLAIMS, stats, lambda c: survival(c, stats)) + "\n\n" + table(merged) + "\n\n"
          + theta_table(merged))


if __name__ == "__main__":
    main()
