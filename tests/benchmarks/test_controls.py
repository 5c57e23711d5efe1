"""Recipe-matched controls (benchmarks/controls.py) and the suites' use of them: each control's resolved recipe
differs from its claim's configuration in exactly the fields it names, a page rendered from a results file
states each claim's control verdicts and whether it survives them, and a suite's --quick path runs end to end
into its own folder."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))  # the scripts import harness, verdicts and controls as top-level modules

import binary_claims  # noqa: E402
import controls  # noqa: E402
import harness  # noqa: E402
import sparsity_claims  # noqa: E402
import verdicts  # noqa: E402


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


binary = _load("binary")
sparsity = _load("sparsity")


def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of a recipe mapping by dotted path (list items by index)."""
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list) and node and all(isinstance(v, dict) for v in node):
        items = enumerate(node)
    else:
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in items:
        out |= leaves(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def changed_paths(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    la, lb = leaves({k: v for k, v in a.items() if k != "name"}), leaves({k: v for k, v in b.items() if k != "name"})
    return {p for p in la.keys() | lb.keys() if la.get(p, "<absent>") != lb.get(p, "<absent>")}


def under(path: str, fields: list[str]) -> bool:
    return any(path == f or path.startswith(f + ".") for f in fields)


SUITES = [
    (binary, binary.CONTROLS + binary.ABLATIONS, lambda g: binary.group_recipe(g, 0, [])),
    (sparsity, sparsity.RESNET_CONTROLS, lambda g: sparsity.resnet_group_recipe(g, 0, [])),
]


@pytest.mark.parametrize(("suite", "declared", "resolve"), SUITES, ids=["binary", "sparsity"])
def test_each_control_differs_from_its_configuration_in_exactly_the_named_fields(suite, declared, resolve):
    from slimkit.recipe import Recipe

    for control in declared:
        _, recipe, _, record = resolve(control.group)
        _, base, _, _ = resolve(control.of)
        fields = list(control.fields)
        differ = changed_paths(recipe, base)
        same_as_base = control.group == binary_claims.theta_group("pi/2")  # the official init_theta: rbnn's own run
        assert (not differ if same_as_base else differ and all(under(p, fields) for p in differ)), (
            control.group, differ)
        for path, value in control.fields.items():
            expected = controls.get_field(resolve(value.group)[1], path) if isinstance(value, controls.Like) else value
            assert controls.get_field(recipe, path) == expected == record["fields"][path]
        assert record["of"] == control.of and Recipe.from_dict(recipe).seed == 0
    # the controls the issue names, on the resolved recipes
    if suite is binary:
        get = controls.get_field
        rbnn, irnet = resolve("rbnn")[1], resolve("irnet")[1]
        assert get(resolve(binary_claims.BATCH)[1], "data.batch_size") == get(rbnn, "data.batch_size") == 256
        assert get(irnet, "data.batch_size") == 128
        hardtanh = get(resolve("siman hardtanh")[1], "model.options")
        assert hardtanh == get(irnet, "model.options") and hardtanh["activation"] == "hardtanh"
        fp_sgd = resolve("fp sgd")[1]
        assert fp_sgd["stages"] == [] and fp_sgd["train"] == irnet["train"] and fp_sgd["train"]["optimizer"] == "sgd"
        warm = resolve(binary_claims.WARMUP_GROUP)[1]["train"]
        assert warm["warmup_steps"] == binary_claims.OFFICIAL_WARMUP_STEPS and warm["warmup_epochs"] == 0
    else:
        for s in sparsity.RESNET_SPARSITIES:
            assert resolve(f"optg {sparsity.pct(s)}")[1]["train"]["label_smoothing"] == 0.1
            assert resolve(sparsity_claims.optg_ls0(s))[1]["train"]["label_smoothing"] == 0.0


@pytest.mark.parametrize(("suite", "claims", "groups"), [
    (binary, binary.CLAIMS, binary.suite_groups(binary.METHODS, True)),
    (sparsity, sparsity.RESNET_CLAIMS, ["dense", *(f"{m} {sparsity.pct(s)}" for m in sparsity.RESNET_METHODS
                                                   for s in sparsity.RESNET_SPARSITIES), *sparsity.DERIVED]),
], ids=["binary", "sparsity"])
def test_every_control_comparison_names_configurations_the_suite_runs(suite, claims, groups):
    for claim in claims:
        for better, worse in claim.controls:
            assert {better, worse} <= set(groups), claim
            # each side is the claim's own configuration or a control of it
            for side, own in ((better, claim.better), (worse, claim.worse)):
                assert side == own or suite.DERIVED[side].of == own, (claim.text, side)


def test_set_field_refuses_a_path_that_is_not_there():
    recipe = {"train": {"lr": 0.1}}
    controls.set_field(recipe, "train.label_smoothing", 0.0)
    assert recipe == {"train": {"lr": 0.1, "label_smoothing": 0.0}}
    with pytest.raises(KeyError, match=r"no section 'trian'"):
        controls.set_field(recipe, "trian.lr", 0.2)
    with pytest.raises(KeyError, match=r"no 'train\.momentum'"):
        controls.apply_control(controls.Control("x", "a", {"train.momentum": 0.5}, "why"),
                               lambda g: {"train": {"lr": 0.1}})


ACCURACY = {  # per configuration: three seeds, chosen so that some claims survive their controls and some do not
    "fp": [70, 71, 72], "fp sgd": [90, 91, 92], "xnor": [60, 61, 62], "xnor batch=256": [59, 60, 61.5],
    "irnet": [80, 81, 82], binary_claims.BATCH: [75, 76, 77.5], "rbnn": [70, 71, 72.5], "recu": [78, 79, 80.5],
    "siman": [85, 86, 87.5], "siman hardtanh": [73, 74, 75.5],
}


def synthetic_rows() -> list[dict[str, Any]]:
    """Result rows as binary.py writes them, for every configuration of the suite, from the real recipes."""
    rows = []
    for group in binary.suite_groups(binary.METHODS, True):
        name, recipe, _, control = binary.group_recipe(group, 0, [])
        method = recipe["stages"][0]["binarize"]["method"] if recipe["stages"] else "fp"
        for seed, acc in enumerate(ACCURACY.get(group, [50, 51, 52.5])):
            row = {"suite": "binary", "group": group, "method": method, "seed": seed, "recipe": name,
                   "test_acc": acc / 100, "epoch_seconds": 2.0, "train_seconds": 40.0, "ops": 1e6, "bytes": 4096,
                   "budget": harness.training_budget(recipe), "batch_size": recipe["data"]["batch_size"],
                   "train": {k: recipe["train"].get(k) for k in ("optimizer", "lr", "weight_decay", "warmup_epochs",
                                                                  "warmup_steps")},
                   "control": control, "command": "binary.py (commit x)",
                   "run": f"runs/{harness.recipe_digest({**recipe, 'name': ''})}-s{seed}"}  # pi/2 shares rbnn's
            if method == "rbnn":
                row[binary.THETA_OPTION] = recipe["stages"][0]["binarize"][binary.THETA_OPTION]
                row["theta_trajectory"] = [{"epoch": 0, "mean": 1.5, "latent_gradient": 1e-3}]
            rows.append(row)
    return rows


def test_a_page_rendered_from_results_states_each_claims_control_verdict(tmp_path):
    rows = synthetic_rows()
    harness.write_json(tmp_path / "binary.json", {"rows": rows, "environment": {"cpu_count": 2,
                                                                                "wall_seconds": 5400}})
    binary.render(tmp_path)
    page = (tmp_path / "binary.md").read_text()
    stats = verdicts.group_stats(rows)
    for claim in binary.CLAIMS:
        for control in controls.control_claims(claim):
            v = verdicts.verdict(control, stats)
            line = next(ln for ln in page.splitlines() if f"| {control.text} |" in ln and ln.startswith(
                f"| {claim.text} ("))
            assert f"**{v.status}**" in line and f"{v.interval[0]:+.2f} to {v.interval[1]:+.2f}" in line
    # RBNN < IR-Net holds at IR-Net's batch too; SiMaN > IR-Net does not hold on the hardtanh model
    assert verdicts.verdict(binary.CLAIMS[1], stats).status == "contradicted"
    claim_line = next(ln for ln in page.splitlines() if ln.startswith("| RBNN > IR-Net |"))
    assert claim_line.endswith("| **survives** |")
    claim_line = next(ln for ln in page.splitlines() if ln.startswith("| SiMaN > IR-Net |"))
    assert "**does not survive** (siman hardtanh > irnet batch=256: contradicted)" in claim_line
    assert "| `irnet batch=256`: data.batch_size = 256 (rbnn's) |" in page
    assert "`siman hardtanh`: model.options = irnet's; `irnet batch=256`: data.batch_size = 256 (rbnn's)" in page
    assert "Run time on 2 CPU cores: 28 min of training summed over 42 runs" in page  # 14 distinct runs per seed
    assert "the last invocation took 1 h 30 min" in page


def test_survival_needs_a_resolved_claim_and_every_control_run():
    claim = verdicts.Claim("a > b", "a", "b", "paper", controls=(("a", "b2"),))
    stats = verdicts.group_stats([{"group": g, "seed": i, "test_acc": acc / 100}
                                  for g, accs in (("a", [80, 81, 82.5]), ("b", [70, 71, 71.5]))
                                  for i, acc in enumerate(accs)])
    assert controls.survival(claim, stats) == "control not run (a > b2)"
    assert controls.survival(verdicts.Claim("a > b", "a", "b", "p"), stats).startswith("- (none declared)")
    tie = verdicts.group_stats([{"group": g, "seed": i, "test_acc": 0.5} for g in "ab" for i in range(3)])
    assert controls.survival(claim, tie) == "-"


@pytest.mark.skipif(not __import__("slimkit.data", fromlist=["x"]).fashion_mnist_available(),
                    reason="dataset-fashion-mnist is not installed")
def test_the_quick_path_runs_a_suite_with_its_control_into_its_own_folder(tmp_path, monkeypatch):
    committed = BENCH / "results" / "sparsity.json"
    before = hashlib.sha256(committed.read_bytes()).hexdigest()
    monkeypatch.setattr(harness, "QUICK_ROOT", tmp_path)
    monkeypatch.setattr(sparsity, "ensure_allocator_env", lambda: None)  # it re-executes the program otherwise
    # one method, one seed, 64 images, a narrow model (evaluating the test split dominates): the plumbing only
    monkeypatch.setattr(sys, "argv", ["sparsity.py", "--suite", "resnet", "--quick", "--methods", "optg",
                                      "--sparsities", "0.95", "--seeds", "0", "--subset", "64",
                                      "--overrides", "model.width=0.125"])
    sparsity.main()
    payload = harness.read_json(tmp_path / "results" / "sparsity.json")
    rows = payload["resnet"]["rows"]
    assert [r["group"] for r in rows] == ["dense", "optg 95%", "optg label_smoothing=0 95%"]
    assert rows[2]["control"]["fields"] == {"train.label_smoothing": 0.0} and rows[1]["control"] is None
    assert all(r["budget"]["epochs"] == 1 and r["train_seconds"] > 0 for r in rows)
    page = (tmp_path / "results" / "sparsity.md").read_text()
    assert "| OptG > per-layer GMP at 95% (not measured) | optg label_smoothing=0 95% > gmp-layer 95% |" in page
    assert "Run time on" in page and payload["resnet"]["environment"]["wall_seconds"] > 0
    assert hashlib.sha256(committed.read_bytes()).hexdigest() == before
