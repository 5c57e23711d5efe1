"""The `slimkit` command: run | demo | info | bench | export | report | recipes.
Exit code 0 on success, 2 on bad input."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console, JustifyMethod
from rich.table import Table

from slimkit import __version__
from slimkit.errors import SlimkitError
from slimkit.run_folder import calibration_batches, load_model, read_example, run_hardware

console = Console()
if not console.is_terminal:
    console.width = 120


def _print_run(report: Any, out_dir: Path | None) -> None:
    table = Table(title=f"{report.reference_label} vs compressed")
    report_rows = report.rows()
    justified: list[tuple[str, JustifyMethod]] = [("metric", "left"), (report.reference_label, "right"),
                                                  ("compressed", "right"), ("change", "right")]
    for name, justify in justified:
        table.add_column(name, justify=justify)
    for row in report_rows:
        table.add_row(*row)
    console.print(table)
    if out_dir is not None:
        console.print(f"report: {out_dir / 'report.md'}", highlight=False)


@contextmanager
def _claimed(folder: Path, purpose: str) -> Iterator[None]:
    """`folder` claimed for this command's writes (slimkit.locks): another writer there is an error naming
    it, and a dead one's lock is taken over and said so."""
    from slimkit.locks import FolderLock

    with FolderLock(folder, purpose) as lock:
        if lock.take_over_note is not None:
            console.print(lock.take_over_note, style="yellow", highlight=False)
        yield


def cmd_run(args: argparse.Namespace, recipe_source: str) -> int:
    from slimkit.pipeline import run_recipe
    from slimkit.recipe import Recipe
    from slimkit.train.distributed import finish, init_from_env

    overrides = list(args.overrides)
    if args.target_speedup is not None:  # the target chooses the stages: the recipe's own give way, said so below
        overrides = [f"target.speedup={args.target_speedup}", "stages=[]", *overrides]
    recipe = Recipe.load(recipe_source, overrides, trust_code=args.trust_code)
    if args.target_speedup is not None:
        console.print(f"--target-speedup {args.target_speedup:g}: the recipe's stages are replaced by the forms the "
                      f"target chooses per layer (written to target-recipe.yaml in the run folder)", highlight=False)
    info = init_from_env(recipe.train.device)
    try:
        out_dir = Path(args.out) if args.out else Path("runs") / recipe.name
        run = run_recipe(recipe, out_dir, resume=args.resume, progress=not args.no_progress)
        if info.is_main:
            _print_run(run.report, out_dir)
    finally:
        finish()  # rank 0's files are complete before any rank exits
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from slimkit.data import fashion_mnist_available

    if not fashion_mnist_available() and not any(o.startswith("data.") for o in args.overrides):
        console.print("Fashion-MNIST is not installed (sudo apt-get install dataset-fashion-mnist); "
                      "the demo falls back to the bundled digits data set.", style="yellow")
        args.overrides = ["data.name=digits", "data.train_subset=null", "baseline.epochs=20", "train.epochs=20",
                          "stages.1.quantize.start_epoch=18", *args.overrides]
    return cmd_run(args, "demo")


def cmd_info(args: argparse.Namespace) -> int:
    from slimkit.metrics import measure
    from slimkit.sparsity.pattern import stored_library
    from slimkit.sparsity.structure import detect_structure
    from slimkit.value_checks import non_finite

    model, shape, artifacts = load_model(args.model, args.in_channels, args.input_size, args.num_classes)
    library = stored_library(artifacts)  # a pattern stage's library: kernels are checked against it exactly
    result = measure(model, shape, latency=False)
    layers = []
    for layer in result.layers:
        module = model.get_submodule(layer.name)
        structure = ({"structure": "NaN/Inf"} if non_finite(dict(module.named_parameters())) else  # not zeros
                     detect_structure(module.weight, library))
        layers.append({"name": layer.name, "type": layer.type, "shape": layer.shape, "params": layer.params,
                       "nonzeros": layer.nonzeros, "sparsity": layer.sparsity, "weight_bits": layer.weight_bits,
                       "input_bits": layer.input_bits, **structure})
    diverged = non_finite(model.state_dict())
    summary = {"model": str(args.model), "input_shape": list(shape), "params": result.params,
               "nonzeros": result.nonzeros, "sparsity": result.sparsity, "dense_bytes": result.dense_bytes,
               "compressed_bytes": result.compressed_bytes, "macs": result.macs,
               "effective_macs": result.effective_macs, "bops": result.bops, "layers": layers,
               "non_finite": diverged}
    hardware, skipped = run_hardware(args.model, model, args.trust_code)
    if hardware is not None:
        summary["hardware"] = hardware
    if skipped is not None:
        summary["hardware_skipped"] = skipped
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    table = Table(title=f"{args.model}: {result.params:,} parameters, {result.nonzeros:,} nonzero, "
                        f"{result.macs:,} MACs per sample")
    for col in ("layer", "type", "shape", "params", "nonzeros", "sparsity", "bits (in/weight)", "structure"):
        table.add_column(col, justify="right" if col in ("params", "nonzeros", "sparsity") else "left")
    for row in layers:
        table.add_row(row["name"], row["type"], "x".join(map(str, row["shape"])), f"{row['params']:,}",
                      f"{row['nonzeros']:,}", f"{row['sparsity']:.2%}",
                      f"{row['input_bits']}/{row['weight_bits']}", row["structure"])
    console.print(table)
    if diverged:
        console.print(f"NaN or Inf in {len(diverged)} tensors ({', '.join(diverged[:5])}"
                      f"{', ...' if len(diverged) > 5 else ''}"
                      f"): the model diverged or its file was changed; the nonzero counts and sparsity of their "
                      f"layers are not meaningful", style="yellow", highlight=False, markup=False)
    if skipped is not None:
        console.print(f"hardware section skipped: {skipped}", style="yellow", highlight=False, markup=False)
    if hardware is not None:
        from slimkit.report import hardware_markdown

        console.print("\n".join(hardware_markdown(hardware)), highlight=False, markup=False)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from slimkit.environment import ensure_allocator_env

    ensure_allocator_env()  # re-executes this command once, before anything is timed
    from slimkit.environment import environment
    from slimkit.runtime import bench

    model, shape, _ = load_model(args.model, args.in_channels, args.input_size, args.num_classes)
    default = Path(args.model) if Path(args.model).is_dir() else Path("bench") / Path(args.model).stem
    out = Path(args.out) if args.out else default
    with _claimed(out, "bench"):
        results = bench.bench(model, shape, batch_sizes=args.batch_sizes, repeats=args.repeats, threads=args.threads,
                              use_compile=not args.no_compile, engines=not args.no_engines,
                              fold_batchnorm=args.fold_batchnorm, work_in=out)
        results["environment"] = environment(0)
        _, md_path = bench.write(results, out, f"slimkit bench {args.model}")
    table = Table(title=f"{args.model}: deployed (eager torch + kernels) and engine (OpenVINO + slimkit operators) "
                        f"vs the dense engines (ms, medians; {results['cpu_model']}, "
                        f"{', '.join(results['isa']) or 'no AVX2'}, {results['threads']} threads)")
    for col in ("batch", "form", "precision", "ms", "vs best dense engine", "vs best fp32", "vs best int8",
                "vs eager torch"):
        table.add_column(col, justify="right")
    for batch, r in results["batches"].items():
        for form in ("deployed", "engine"):
            if form in r["latency_ms"]:
                versus = r[f"{form}_vs"]
                table.add_row(batch, form, r["precision"].get(form, ""),
                              f"{r['latency_ms'][form]['median']:.3f}",
                              *(bench.versus(versus.get(k)) for k in ("best_dense", "best_fp32", "best_int8", "eager")))
    if "error" in results.get("engine", {}):
        console.print(f"engine form missing: {results['engine']['error']}", style="yellow")
    console.print(table)
    console.print(f"bench: {md_path} and {md_path.with_suffix('.json')}", highlight=False)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from slimkit.quant.int8_graph import is_quantized
    from slimkit.runtime.engine.form import runs_slimkit_operators

    model, shape, _ = load_model(args.model, args.in_channels, args.input_size, args.num_classes)
    example = read_example(Path(args.example)) if args.example else shape
    if args.format == "truth-tables":
        default = Path(args.model) if Path(args.model).is_dir() else Path("export") / Path(args.model).stem
        return _export_truth_tables(args, model, Path(args.out) if args.out else default / "truth_tables.json")
    quantized = is_quantized(model)
    engine = args.engine
    if engine == "auto":  # slimkit's operators where it has layers they run; otherwise ONNX, which both engines run
        engine = "openvino" if runs_slimkit_operators(model) and not args.int8 else "onnx"
    default = (Path(args.model) if Path(args.model).is_dir() else Path("export") / Path(args.model).stem)
    if engine == "openvino":
        if args.int8 and not quantized:
            raise SlimkitError("--int8 quantizes a float model with the engine's own post-training int8, which is "
                               "written as ONNX Q/DQ (--engine onnx); --engine openvino takes a quantized run as "
                               "it is (its block-sparse int8 convs run slimkit::QuantSparseConv2d)")
        calibration = calibration_batches(args.model, args.calibration_batches, args.trust_code) if quantized else None
        folder = Path(args.out) if args.out else default / "engine"
        with _claimed(folder, "export"):
            return _export_openvino(args, model, example, folder, calibration)
    return _export_onnx(args, model, example, quantized, Path(args.out) if args.out else default / "model.onnx")


def _export_truth_tables(args: argparse.Namespace, model: Any, out: Path) -> int:
    """Every neuron's truth table of the chosen (default: every input-quantized linear and conv) layers, as
    JSON (slimkit.hardware.truth_tables); a layer whose tables exceed --max-table-bits is refused by name."""
    from torch import nn

    from slimkit.files import atomic_write_text
    from slimkit.hardware import LutConfig, truth_tables
    from slimkit.layers import layer_kind

    layers = args.layer or [name for name, m in model.named_modules() if layer_kind(m) in ("linear", "conv")
                            and isinstance(getattr(m, "input_quantizer", None), nn.Module)]
    if not layers:
        raise SlimkitError(f"{args.model} has no linear or conv layer with quantized inputs: truth tables need a "
                           f"sparse, quantized model (a quantize stage), or name layers with --layer")
    limit = args.max_table_bits if args.max_table_bits is not None else LutConfig().max_table_bits
    tables = [truth_tables(model, name, limit) for name in layers]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps({"format": "slimkit-truth-tables/1", "model": str(args.model),
                                       "layers": tables}))
    table = Table(title=f"truth tables: {out}")
    for col in ("layer", "neurons", "input bits", "max fan-in", "entries per neuron (max)", "output"):
        table.add_column(col)
    for t in tables:
        fan_in = max(len(n["inputs"]) for n in t["neurons"])
        output = f"{t['output']['bits']}-bit code" if t["output"]["kind"] == "code" else "float"
        table.add_row(t["layer"], str(len(t["neurons"])), str(t["input_bits"]), str(fan_in),
                      str(max(len(n["table"]) for n in t["neurons"])), output)
    console.print(table)
    return 0


def _export_openvino(args: argparse.Namespace, model: Any, example: Any, folder: Path,
                     calibration: list[Any] | None) -> int:
    """Write the deployable folder (runtime.engine.artifact.export_folder: each layer as slimkit's operator only
    where it measured faster here) and say what runs where, and why."""
    from slimkit.runtime.engine.artifact import export_folder

    manifest = export_folder(model, folder, example, calibration, batch=args.batch, threads=args.threads)
    table = Table(title=f"OpenVINO model with slimkit's operators: {folder}")
    for col in ("layer", "runs as", "kernel", f"why (timed at batch {manifest['batch']})", "fused into it"):
        table.add_column(col)
    for line in manifest["slimkit_layers"]:
        table.add_row(line["layer"], line["engine"], line.get("kernel", ""), line.get("reason", ""),
                      ", ".join(line.get("fused", [])))
    console.print(table)
    choice = manifest["choice"]
    times = ", ".join(f"{name} {ms:.3f} ms" for name, ms in choice["artifacts_ms"].items())
    console.print(f"whole model, batch {choice['batch']}, {choice['threads']} threads, fp32: {times}; written: "
                  f"'{choice['chosen']}' ({choice['operators']} of {choice['candidates']} candidate layers as "
                  "slimkit's operators)", highlight=False)
    if choice["chosen"] == "dense":
        console.print("slimkit's operators were slower than OpenVINO's own kernels on this CPU for this model and "
                      "batch, so the folder holds the model as OpenVINO runs it by itself", style="yellow")
    console.print(f"load it with: {'; '.join(manifest['load'])}  (in {folder}; built for OpenVINO "
                  f"{manifest['openvino']})", highlight=False)
    return 0


def _export_onnx(args: argparse.Namespace, model: Any, example: Any, quantized: bool, out: Path) -> int:
    import platform

    from slimkit.environment import has_int8_dot_product
    from slimkit.quant.onnx_export import FLOAT_COMPUTE_OPS, export_onnx, optimized_ops

    calibration = (calibration_batches(args.model, args.calibration_batches, args.trust_code)
                   if quantized or args.int8 else None)
    out = export_onnx(model, out, example, calibration)
    # the engine's own post-training int8 of this (pruned, smaller) float model; calibration is set for --int8
    if args.int8 and not quantized and calibration is not None:
        from slimkit.capture import example_inputs
        from slimkit.runtime.engine.dense_engines import quantize_static_int8

        out = quantize_static_int8(out, out.with_name(out.stem + "-int8.onnx"), calibration,
                                   symbolic_shapes=not example_inputs(example).torch_export)
    ops = optimized_ops(out)
    floats = {op: n for op, n in ops.items() if op in FLOAT_COMPUTE_OPS}
    int8 = quantized or args.int8
    kind = "int8 (slimkit's integer graph)" if quantized else "int8 (onnxruntime's quantize_static)" if int8 else "fp32"
    console.print(f"{kind} ONNX model: {out}", highlight=False)
    console.print("onnxruntime runs: " + ", ".join(f"{op} x{n}" for op, n in ops.items()), highlight=False)
    if int8 and floats:
        console.print("float kernels left: " + ", ".join(floats), style="yellow")
    if int8 and platform.machine() in ("x86_64", "AMD64") and not has_int8_dot_product():
        console.print("this CPU has no VNNI: onnxruntime's AVX2 int8 kernels saturate int16 pair sums, so its "
                      "outputs may differ from the exported integer arithmetic (a VNNI CPU computes it exactly)",
                      style="yellow")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from slimkit.report import Report

    report = Report.from_run(Path(args.run_dir))
    with _claimed(Path(args.run_dir), "report"):
        path = report.write(Path(args.run_dir))
    _print_run(report, None)
    console.print(f"report: {path}", highlight=False)
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from slimkit.recipe import STAGE_KINDS, bundled_recipes, methods

    console.print("bundled recipes: " + ", ".join(bundled_recipes()), highlight=False)
    for kind in STAGE_KINDS:
        console.print(f"{kind} methods: {', '.join(methods(kind)) or '(none yet)'}", highlight=False)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimkit", description=__doc__)
    parser.add_argument("--version", action="version", version=f"slimkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_run_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", help="run folder (default runs/<recipe name>)")
        p.add_argument("--resume", action="store_true", help="continue a killed run in --out")
        p.add_argument("--no-progress", action="store_true", help="no live progress bar")
        p.add_argument("--target-speedup", type=float, default=None, metavar="X",
                       help="compress to a latency target: X times faster than the best dense engine, measured on "
                            "this CPU; each layer's form is chosen by measurement and replaces the recipe's stages "
                            "(target.* overrides set batch, threads, baseline, max_accuracy_drop)")
        p.add_argument("overrides", nargs="*", metavar="key.path=value", help="recipe overrides")
        add_trust_option(p)

    def add_trust_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--trust-code", action="store_true",
                       help="let the recipe's import paths (model/data factories, losses, metrics) run code; without "
                            "it only packages in SLIMKIT_TRUSTED_MODULES are imported")

    def add_model_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--in-channels", type=int, default=3, help="for a zoo model name")
        p.add_argument("--input-size", type=int, default=32, help="for a zoo model name")
        p.add_argument("--num-classes", type=int, default=10, help="for a zoo model name")

    run = sub.add_parser("run", help="run a recipe (a YAML file or a bundled recipe name)")
    run.add_argument("recipe")
    add_run_options(run)
    demo = sub.add_parser("demo", help="dense VGG-small vs half its channels + int8 on Fashion-MNIST, deployed "
                                       "and timed against the dense engines")
    add_run_options(demo)
    info = sub.add_parser("info", help="per-layer parameters, nonzeros and sparsity structure")
    info.add_argument("model", help="a saved model.pt, a run folder, or a zoo model name")
    info.add_argument("--json", action="store_true")
    add_trust_option(info)
    add_model_options(info)
    bench = sub.add_parser("bench", help="latency of the deployed model against eager and optimised dense PyTorch")
    bench.add_argument("model", help="a saved model.pt, a run folder, or a zoo model name")
    bench.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    bench.add_argument("--repeats", type=int, default=21)
    bench.add_argument("--threads", type=int, default=None, help="threads at batch > 1 (batch 1 uses 1 for kernels)")
    bench.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline (slow to build)")
    bench.add_argument("--no-engines", action="store_true", help="skip the onnxruntime and OpenVINO baselines")
    bench.add_argument("--fold-batchnorm", action="store_true",
                       help="fold BatchNorm into the layer before it (binary layers then match within rounding)")
    bench.add_argument("--out", help="folder for bench.json and bench.md (default: the run folder)")
    add_model_options(bench)
    export = sub.add_parser("export", help="the deployable model: OpenVINO IR with slimkit's binary and sparse "
                                           "operators, or ONNX (an 8-bit model runs its layers in int8)")
    export.add_argument("model", help="a run folder (its data calibrates an 8-bit model), a model.pt or a zoo name")
    export.add_argument("--engine", choices=("auto", "openvino", "onnx"), default="auto",
                        help="auto: openvino where slimkit's operators take layers of the model, else onnx")
    export.add_argument("--int8", action="store_true",
                        help="a float model (channel-pruned, say) quantized by onnxruntime's quantize_static on the "
                             "run's data")
    export.add_argument("--calibration-batches", type=int, default=8)
    export.add_argument("--batch", type=int, default=1,
                        help="the batch size the OpenVINO artifact's layer choices are timed at (default 1)")
    export.add_argument("--threads", type=int, default=None,
                        help="threads to time the layer choices with (default: the machine's)")
    add_trust_option(export)
    export.add_argument("--format", choices=("model", "truth-tables"), default="model",
                        help="truth-tables: every neuron's lookup table of sparse, quantized linear and conv layers "
                             "(JSON)")
    export.add_argument("--layer", action="append", help="with --format truth-tables: a layer to write "
                                                         "(repeatable; default every input-quantized linear and conv "
                                                         "layer)")
    export.add_argument("--max-table-bits", type=int, default=None,
                        help="with --format truth-tables: refuse a neuron whose table has more than 2^N entries "
                             "(default: measure.hardware.lut's max_table_bits default, 20)")
    export.add_argument("--example", metavar="FILE", help="the input the model really gets, saved with torch.save: a "
                        "tensor, a tuple or a dict of tensors (token ids, attention masks), each with its batch "
                        "dimension; a tuple or dict is captured by torch.export (default: the model's per-sample "
                        "shape, filled with noise)")
    export.add_argument("--out", help="the .onnx file, or the folder for openvino (default: in the run folder)")
    add_model_options(export)
    report = sub.add_parser("report", help="re-render report.md and plots of a finished run")
    report.add_argument("run_dir")
    sub.add_parser("recipes", help="list bundled recipes and registered methods")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come before or after options, which argparse alone does not allow.
    args, extra = parser.parse_known_args(argv)
    takes_overrides = args.command in ("run", "demo")
    no_value = [e for e in [*getattr(args, "overrides", []), *extra] if not e.startswith("-") and "=" not in e]
    if takes_overrides and no_value:  # an override missing its '=' reads as a stray positional argument
        parser.error(f"override {no_value[0]!r} has no value: write key.path=value (e.g. train.epochs=8)")
    stray = [e for e in extra if e.startswith("-") or "=" not in e or not takes_overrides]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        if args.command == "run":
            return cmd_run(args, args.recipe)
        handler = {"demo": cmd_demo, "info": cmd_info, "bench": cmd_bench, "export": cmd_export, "report": cmd_report,
                   "recipes": cmd_recipes}[args.command]
        return handler(args)
    except SlimkitError as exc:
        print(f"slimkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slimkit: interrupted; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
