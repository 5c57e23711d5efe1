"""Quantization and distillation on Fashion-MNIST: uniform (LSQ) vs SP2 vs APoT at 8/4/3/2 bits, KD vs no KD
for a half-width student, and the 8-bit model run as int8 in onnxruntime against fp32.

One dense LeNet (width 0.5) is trained once; every quantizer fine-tunes it with QAT for the same budget.
A full-width LeNet teaches a half-width student trained from scratch, with no KD, Hinton KD and graph KD.
Int8 execution: the 8-bit LeNet and a post-training-quantized ResNet-20 (BatchNorm, residual adds) exported
as integer graphs; test accuracy and latency of PyTorch fp32 eager, onnxruntime fp32 and onnxruntime int8,
same process, interleaved medians, 2 threads. Writes benchmarks/results/quant_distill.{json,md}; the page
states the recorded training seconds and the invocation's wall time. About 30 minutes on 2 CPU cores (finished
runs resume, so a rerun only re-times). `--quick` runs every configuration at a tiny budget (QUICK) under
benchmarks/runs/quick, to check the harness in a few minutes.

    .venv/bin/python benchmarks/quant_distill.py [--overrides ...] [--quick]
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
BITS = [8, 4, 3, 2]
METHODS = ["uniform", "sp2", "apot"]
BUDGET: dict[str, float] = {"subset": 20000, "dense_epochs": 4, "qat_epochs": 2, "student_epochs": 4,
                            "resnet_epochs": 3, "val_fraction": 0.1}
# --quick: the harness, not a measurement; 2% held out for validation and ResNet-20 at width 0.25, since
# evaluation dominates a tiny run
QUICK: dict[str, float] = {"subset": 256, "dense_epochs": 1, "qat_epochs": 1, "student_epochs": 1, "resnet_epochs": 1,
         "resnet_width": 0.25, "val_fraction": 0.02}
TIMING = {"warmup": 5, "repeats": 25}
QUICK_TIMING = {"warmup": 1, "repeats": 3}
SHAPE = (1, 28, 28)


def base(name: str, width: float, epochs: int, model: str = "lenet", budget: dict[str, float] = BUDGET) -> dict:
    return {"name": name, "seed": 0, "model": {"name": model, "width": width},
            "data": {"name": "fashion_mnist", "batch_size": 128, "train_subset": budget["subset"],
                     "val_fraction": budget["val_fraction"]},
            "train": {"epochs": epochs, "lr": 0.05, "weight_decay": 5e-4, "warmup_epochs": 0.5},
            "measure": {"batch_sizes": [1], "repeats": 3, "warmup": 1}}


def main() -> None:
    import time

    started = time.perf_counter()
    ensure_allocator_env()
    import torch

    import slimkit
    from slimkit.data import load_data
    from slimkit.environment import environment
    from slimkit.metrics import compare_latency
    from slimkit.quant.onnx_export import OnnxModel, export_onnx, optimized_ops
    from slimkit.recipe import DataConfig, Recipe, apply_overrides

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overrides", nargs="*", default=[])
    parser.add_argument("--quick", action="store_true", help="every configuration at a tiny budget, under "
                        "benchmarks/runs/quick (never the committed results)")
    parser.add_argument("--runs", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args()
    quick_runs, quick_results = quick_dirs("quant_distill")
    args.runs = args.runs or (quick_runs if args.quick else HERE / "runs" / "quant_distill")
    args.results = args.results or (quick_results if args.quick else HERE / "results")
    budget, timing = (QUICK, QUICK_TIMING) if args.quick else (BUDGET, TIMING)
    seconds: dict[str, float] = {}

    def run(raw: dict, name: str) -> slimkit.Run:
        out = args.runs / name
        result = slimkit.run_recipe(Recipe.from_dict(apply_overrides(raw, args.overrides)), out,
                                    resume=out.exists(), progress=False)
        seconds[str(out)] = trained_seconds(result.metrics)
        return result

    dense = run(base("dense", 0.5, budget["dense_epochs"], budget=budget), "dense")
    dense_path = args.runs / "dense" / "model.pt"
    quant_rows = []
    for method in METHODS:
        for bits in BITS:
            if method == "apot" and bits > 5:
                continue
            raw = base(f"{method}-{bits}", 0.5, budget["qat_epochs"], budget=budget)
            raw["model"]["checkpoint"] = str(dense_path)
            raw["train"] = {"epochs": budget["qat_epochs"], "lr": 0.01, "weight_decay": 5e-4}
            raw["stages"] = [{"quantize": {"method": method, "bits": bits}}]
            result = run(raw, f"{method}-{bits}")
            m = result.metrics["models"]
            quant_rows.append({"method": method, "bits": bits, "test_acc": m["compressed"]["test_acc"],
                               "dense_test_acc": m["dense"]["test_acc"],
                               "bytes": m["compressed"]["measurement"]["compressed_bytes"],
                               "dense_bytes": m["dense"]["measurement"]["compressed_bytes"]})

    teacher = run(base("teacher", 1.0, budget["student_epochs"], budget=budget), "teacher")
    teacher_path = str(args.runs / "teacher" / "model.pt")
    kd_rows = []
    for label, stage in (("no KD", None),
                         ("Hinton KD (T=4, weight 0.25)", {"method": "hinton", "teacher": teacher_path,
                                                           "temperature": 4.0, "weight": 0.25}),
                         ("graph KD (λ=25)", {"method": "graph_kd", "teacher": teacher_path, "weight": 25.0,
                                              "taps": [["features.5", "features.5"],
                                                       ["classifier.2", "classifier.2"]]})):
        raw = base(f"student-{len(kd_rows)}", 0.5, budget["student_epochs"], budget=budget)
        raw["stages"] = [{"distill": stage}] if stage else []
        result = run(raw, f"student-{len(kd_rows)}")
        kd_rows.append({"student": label, "test_acc": result.metrics["models"]["compressed"]["test_acc"]})

    bundle = load_data(DataConfig(name="fashion_mnist"))
    test_x, test_y = bundle.test.__getitems__(list(range(len(bundle.test))))
    calibration = [bundle.train.__getitems__(list(range(i, i + 128)))[0] for i in range(0, 8 * 128, 128)]
    resnet_width = budget.get("resnet_width", 1.0)
    run(base("resnet20-dense", resnet_width, budget["resnet_epochs"], model="resnet20", budget=budget),
        "resnet20-dense")
    raw = base("resnet20-ptq8", resnet_width, 0, model="resnet20", budget=budget)
    raw["model"]["checkpoint"] = str(args.runs / "resnet20-dense" / "model.pt")
    raw["stages"] = [{"quantize": {"method": "uniform", "bits": 8, "calibration_batches": 8}}]
    run(raw, "resnet20-ptq8")
    int8_results = {}
    for label, fp32_run, int8_run in (("LeNet-0.5, 8-bit QAT", "dense", "uniform-8"),
                                      ("ResNet-20, 8-bit PTQ", "resnet20-dense", "resnet20-ptq8")):
        fp32 = slimkit.load(args.runs / fp32_run / "model.pt")
        int8 = slimkit.load(args.runs / int8_run / "model.pt")
        int8_path = export_onnx(int8, args.runs / f"{int8_run}.onnx", SHAPE, calibration)
        fp32_path = export_onnx(fp32, args.runs / f"{fp32_run}.onnx", SHAPE)
        sessions = {"PyTorch fp32": fp32, "onnxruntime fp32": OnnxModel(fp32_path),
                    "onnxruntime int8": OnnxModel(int8_path), "PyTorch fake-quant int8": int8}
        with torch.inference_mode():
            accuracy = {name: (model(test_x).argmax(1) == test_y).float().mean().item()
                        for name, model in sessions.items()}
        int8_results[label] = {
            "accuracy": accuracy, "onnxruntime_int8_ops": optimized_ops(int8_path),
            "latency_ms": compare_latency(sessions, SHAPE, batch_sizes=(1, 64), threads=2, **timing)}

    env = environment(0) | {"command": " ".join(sys.argv), "allocator": ALLOCATOR_ENV, "budget": budget,
                            "run_seconds": seconds, "wall_seconds": time.perf_counter() - started}
    results = {"quantization": quant_rows, "distillation": kd_rows, "int8_execution": int8_results,
               "teacher_test_acc": teacher.metrics["models"]["compressed"]["test_acc"],
               "dense_test_acc": dense.metrics["models"]["compressed"]["test_acc"], "environment": env}
    write_json(args.results / "quant_distill.json", results)
    table = ["| quantizer | 8 bits | 4 bits | 3 bits | 2 bits |", "|---|---:|---:|---:|---:|"]
    for method in METHODS:
        cells = {r["bits"]: f"{100 * r['test_acc']:.2f}%" for r in quant_rows if r["method"] == method}
        table.append(f"| {method} | " + " | ".join(cells.get(b, "n/a") for b in BITS) + " |")
    kd = ["| half-width student | test accuracy |", "|---|---:|"] + [
        f"| {r['student']} | {100 * r['test_acc']:.2f}% |" for r in kd_rows]
    lat = ["| model | runtime | test accuracy | batch 1 (ms) | batch 64 (ms) | vs PyTorch fp32 (b1 / b64) |",
           "|---|---|---:|---:|---:|---:|"]
    kernels = []
    for label, r in int8_results.items():
        ref = r["latency_ms"]["PyTorch fp32"]
        for name, t in r["latency_ms"].items():
            lat.append(f"| {label} | {name} | {100 * r['accuracy'][name]:.2f}% | {t['1']['median']:.3f} | "
                       f"{t['64']['median']:.2f} | {ref['1']['median'] / t['1']['median']:.2f}x / "
                       f"{ref['64']['median'] / t['64']['median']:.2f}x |")
        kernels.append(f"- {label}: " + ", ".join(f"{op} x{n}" for op, n in r["onnxruntime_int8_ops"].items()))
    write_text(
        args.results / "quant_distill.md",
        "# Quantization and distillation on Fashion-MNIST\n\n"
        f"Dense LeNet (width 0.5): {100 * results['dense_test_acc']:.2f}% after {budget['dense_epochs']} epochs on "
        f"{budget['subset']} training images. Each quantizer fine-tunes it for {budget['qat_epochs']} QAT epochs "
        "(first conv and last linear at 8 bits; APoT weights use uniform quantization at 2 bits).\n\n"
        + "\n".join(table)
        + f"\n\nDistillation: a full-width LeNet teacher ({100 * results['teacher_test_acc']:.2f}%) and a half-width "
        f"student trained from scratch for {budget['student_epochs']} epochs.\n\n" + "\n".join(kd)
        + "\n\n## Int8 execution in onnxruntime\n\n"
        "Each 8-bit model is exported as its integer graph (BatchNorm folded into the convs; residual sums, pooled "
        "features and logits quantized too, calibrated on 8 training batches), so onnxruntime runs every layer as "
        f"an integer kernel. ResNet-20 is a dense model trained {budget['resnet_epochs']} epochs and quantized "
        "post-training (no QAT). Test accuracy on all 10,000 test images; median latency, 2 threads, "
        "interleaved:\n\n" + "\n".join(lat)
        + "\n\nOperators onnxruntime runs for the int8 models after its graph optimisations:\n\n"
        + "\n".join(kernels)
        + f"\n\nReproduce: `.venv/bin/python {' '.join(sys.argv)}` (torch {env['torch']}, {env['cpu_count']} CPUs, "
        f"commit {env['git_commit']}). {wall_time_line(seconds, env)}\n")
    print("\n".join([*table, "", *kd, "", *lat, "", *kernels]))

if __name__ == "__main__":
    main()
