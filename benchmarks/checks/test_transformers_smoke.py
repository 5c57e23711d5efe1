"""benchmarks/transformers.py in its smoke mode (tiny shapes, a few training steps) into a temporary folder: every
form's row is there with its baseline named, every ratio is the quotient of the medians the JSON holds and names
the fastest baseline of its kind, the page lists each model and form, the accuracy part has a row for each
criterion and sparsity, and each pruned model holds exactly the zeros (or heads and neurons) it was asked for,
counted from its weights and shapes against counts computed here from the layer sizes alone.

A slow, thorough check (about 8 minutes on 2 cores: some 22 torch.export captures), so it lives beside the
benchmark, outside `make test`'s 20-minute budget: `.venv/bin/python -m pytest -n0 benchmarks/checks`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

BENCH = Path(__file__).parents[1]
FORMS = ["2:4", "block4-90 int8", "heads50+neurons50 int8", "wanda50 int8", "wanda70 int8"]
MODELS = ["bert-base", "gpt2-small"]
KINDS = {"best_dense": ("eager", "ort_fp32", "openvino_fp32", "openvino_bf16", "ort_int8", "openvino_int8",
                        "openvino_int8+bf16"),
         "best_fp32": ("eager", "ort_fp32", "openvino_fp32"), "best_int8": ("ort_int8", "openvino_int8",
                                                                            "openvino_int8+bf16"),
         "eager": ("eager",)}


def zeros_asked(weights: int, asked: dict) -> int:
    """The zeros a layer of `weights` weights must hold: half for 2:4; round(s * weights) unstructured (Python's
    round, as slimkit.sparsity.topk.keep_count); in blocks of 4, whole blocks with at least that many weights
    kept."""
    if asked.get("layout") == "2:4" or asked.get("n") == 2:
        return weights // 2
    keep = weights - round(asked["sparsity"] * weights)
    if asked.get("layout", "").startswith("block-"):
        block = int(asked["layout"].removeprefix("block-"))
        keep = -(-keep // block) * block
    return weights - keep


pytestmark = pytest.mark.slow  # minutes on 2 cores: 22 torch.export captures of two 2-layer transformers


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("transformers")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # one batch size (the smoke mode's second): each form's export is a torch.export capture, most of the run
    subprocess.run([sys.executable, str(BENCH / "transformers.py"), "--smoke", "--batch-sizes", "2", "--results",
                    str(out)], check=True, env=env, timeout=1200)
    return json.loads((out / "transformers.json").read_text()), (out / "transformers.md").read_text()


def test_every_form_has_a_row_per_shape_with_its_ratios_recomputed_from_the_medians(smoke):
    results, _ = smoke
    env = results["environment"]
    assert env["smoke"] and env["threads"] >= 1 and env["git_commit"] and env["precision"] and env["isa"] is not None
    shapes = [(m, s, b) for m in MODELS for s in env["seq_lens"] for b in env["batch_sizes"]]
    rows = {(r["model"], r["form"], r["seq"], r["batch"]): r for r in results["rows"]}
    assert set(rows) == {(m, f, s, b) for m, s, b in shapes for f in FORMS}
    for r in rows.values():
        dense = r["dense_ms"]
        assert {"eager", "ort_fp32", "ort_int8", "openvino_fp32", "openvino_int8"} <= set(dense)
        for kind, forms in KINDS.items():
            timed = [f for f in forms if f in dense]
            best = min(timed, key=lambda f: dense[f]["median"])
            assert r["vs"][kind]["baseline"] == best
            assert r["vs"][kind]["speedup"] == pytest.approx(dense[best]["median"] / r["ms"]["median"], rel=1e-12)
        assert r["layers"]["on_slimkit"] <= r["layers"]["candidates"]
        assert r["layers"]["chosen"] in ("measured", "every operator", "dense")
    targets = {t["target"]: t for t in results["targets"]}
    assert len(targets) == len(rows)  # one per form and shape (the 2x target is at bert-base seq 128 batch 8 only)
    for (m, f, s, b), r in rows.items():
        t = targets[f"{f} {m} seq {s} batch {b} >= 1.0x the best dense engine"]
        assert t["met"] == (r["vs"]["best_dense"]["speedup"] >= 1.0)


def test_the_page_names_each_model_form_and_accuracy_row(smoke):
    results, page = smoke
    assert "SMOKE RUN" in page and "OpenVINO's default precision here" in page and "Reproduce: `" in page
    for r in results["rows"]:
        assert f"| {r['model']} | {r['form']} | {r['seq']} | {r['batch']} | {r['ms']['median']:.2f} ±" in page
    accuracy = results["accuracy"]
    assert {(r["criterion"], r["layout"]) for r in accuracy["rows"]} == {
        (c, layout) for c in ("magnitude", "wanda", "sparsegpt") for layout in ("50%", "70%", "2:4")}
    for r in accuracy["rows"]:
        assert f"| {r['criterion']} | {r['layout']} | {r['accuracy']:.2%} |" in page
        assert r["kept"] == pytest.approx(r["accuracy"] / accuracy["dense_accuracy"])
    task = accuracy["task"]
    assert task["bayes"] == pytest.approx(1 - task["noise"]) and "90%" in page


def test_each_pruned_model_holds_exactly_the_sparsity_it_was_asked_for(smoke):
    results, _ = smoke
    assert {(s["model"], s["form"]) for s in results["sparsity"]} == {(m, f) for m in MODELS for f in FORMS}
    for s in results["sparsity"]:
        asked = s["asked"]
        if "share" in asked:  # heads and neurons: each block keeps count - int(count * share) groups
            assert s["counts"] == {k: n - int(n * asked["share"]) for k, n in asked["groups_before"].items()}
            assert any(k.endswith(":heads") for k in s["counts"]) and any(k.endswith(":neurons") for k in s["counts"])
            continue
        assert s["counts"], s["form"]
        for layer, (zeros, weights) in s["counts"].items():
            assert zeros == zeros_asked(weights, asked), (s["model"], s["form"], layer)
    accuracy = results["accuracy"]
    assert all(z == 0 for z, _ in accuracy["dense_counts"].values())  # every zero below was made by pruning
    for r in accuracy["rows"]:
        for layer, (zeros, weights) in r["counts"].items():
            assert zeros == zeros_asked(weights, r["asked"]), (r["criterion"], r["layout"], layer)
