"""Deployed CPU inference against dense PyTorch: ResNet-20 and VGG-small as BNN, 90% and 95% unstructured,
pattern + connectivity (r_c = 3.6; per filter as in PatDNN, and shared by groups of 4 filters), 50% channels;
ResNet-56 at 50% channels.

sparse90_int8 / sparse95_int8: block-4 sparse (whole blocks of 4 input channels, the layout of
slimkit::QuantSparseConv2d) and 8-bit quantized (int8 graph, calibrated), run in OpenVINO with slimkit's
sparse int8 operator against the dense model's onnxruntime and OpenVINO int8. pattern_int8: PatDNN's pattern
and connectivity pruning (r_c = 3.6) with tiles of 4 input channels sharing each kept kernel's pattern (the
same operator's layout; 88% of the blocks zero), then the same int8 quantization.

Speed depends on structure, not on trained values, so each form is made from the randomly initialised
dense model (BN statistics randomised, so no layer is degenerate): BNN = XNOR-Net binarization of every
conv but the first (activations binarized; Bi-Real blocks for the ResNet), sparse forms = per-layer
magnitude masks on every conv and linear but the first conv and last linear, pattern = 8-pattern library and
r_c = 3.6 on those 3x3 convs (pattern_g4: with filter_group 4), channels = L1 pruning of 50%
of every prunable channel group. Baselines are the uncompressed model in the engines a CPU user deploys
with: eager, `torch.jit.freeze` and (with --compile) `torch.compile`, onnxruntime fp32 and int8 (its own
quantize_static: QDQ, per-channel) and OpenVINO fp32 and int8 (the same QDQ model); the channel-pruned
model also runs in both int8 engines. Each BNN, sparse and pattern form is also exported to OpenVINO with slimkit's
operators inside (`in openvino+slimkit`: the deployable artifact, `slimkit export --engine openvino`) and profiled
with OpenVINO's per-node counters, so every miss says where the time goes. Every form of one architecture and batch
size is timed in the same loop, taking turns, with the same threads. Each form is deployed twice: exact (binary
layers bit for bit) and with `fold_batchnorm=True` (BatchNorm folded into the layer before it; equal within float
rounding). The best-dense baseline folds BatchNorm too (jit.freeze does). Layer rows come from `deploy`'s own per-
layer timing of the exact deployment (layer alone, its real input).
Writes benchmarks/results/runtime.{json,md}. Run it on an otherwise idle machine.

    .venv/bin/python benchmarks/runtime.py [--archs resnet20 vgg_small resnet56] [--forms bnn sparse95_int8 ...]
        [--compile] [--repeats 15]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from harness import ensure_allocator_env, machine_facts, machine_line

if TYPE_CHECKING:
    from torch import nn

HERE = Path(__file__).parent
FOLDED = " + BN folded"
IN_ENGINE = " in openvino+slimkit"
PEAK_STEP = {"avx512/u8-zmm": "vpdpbusd zmm", "avx512/u8-ymm": "vpdpbusd ymm", "avx512/i16": "vpdpwssd",
             "avx2": "vpmaddwd + vpaddd", "generic": "scalar"}  # each int8 kernel's inner step
DENSE = ("eager", "frozen", "compiled", "ort_fp32", "ort_int8", "openvino_fp32", "openvino_int8", "openvino_bf16",
         "openvino_int8+bf16")
FORMS = {"resnet20": ["bnn", "sparse90", "sparse95", "pattern", "pattern_g4", "channels50", "sparse90_int8",
                      "sparse95_int8", "pattern_int8"],
         "vgg_small": ["bnn", "sparse90", "sparse95", "pattern", "pattern_g4", "channels50", "sparse90_int8",
                       "sparse95_int8", "pattern_int8"],
         "resnet56": ["channels50"]}


def build(arch: str, form: str):
    import torch
    from torch import nn

    from slimkit.channels import prune_channels
    from slimkit.models import resnet20, resnet56, vgg_small
    from slimkit.recipe import build_modifier, parse_stage
    from slimkit.sparsity.blocks import block_scores, expand_blocks
    from slimkit.sparsity.pattern import connectivity_mask, extract_library, pattern_mask
    from slimkit.sparsity.topk import layerwise_masks
    from slimkit.train import TrainContext

    torch.manual_seed(0)
    options = {"block": "bireal", "activation": "hardtanh"} if (form == "bnn" and arch == "resnet20") else {}
    model = {"resnet20": resnet20, "vgg_small": vgg_small, "resnet56": resnet56}[arch](**options)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    inner = dict(list(layers.items())[1:-1])
    with torch.no_grad():
        if form == "bnn":
            modifier = build_modifier(parse_stage({"binarize": {"method": "xnor"}}))
            modifier.attach(model, TrainContext(model, epochs=1, steps_per_epoch=1))
            model = modifier.finalize(model)
        elif form.startswith("pattern"):
            group, block = (int(form[9:]) if form.startswith("pattern_g") else 1), (4 if form.endswith("_int8") else 1)
            convs = {n: m for n, m in inner.items() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)}
            library = extract_library(torch.cat([m.weight.reshape(-1, 9) for m in convs.values()]), 8)
            for m in convs.values():
                m.weight.mul_(connectivity_mask(m.weight, 3.6, group, block) & pattern_mask(m.weight, library, group,
                                                                                            block))
        elif form.endswith("_int8"):  # blocks of 4 input channels, then 8-bit QAT quantizers (LSQ-initialised)
            scores = {n: block_scores(m.weight.abs(), 4)[0] for n, m in inner.items()}
            masks = layerwise_masks(scores, int(form[6:8]) / 100)
            for n, m in inner.items():
                m.weight.mul_(expand_blocks(masks[n], 4, m.weight.shape[1]))
        elif form.startswith("sparse"):
            masks = layerwise_masks({n: m.weight.abs() for n, m in inner.items()}, int(form[6:]) / 100)
            for n, m in inner.items():
                m.weight.mul_(masks[n])
        elif form == "channels50":
            model, _ = prune_channels(model, torch.randn(1, 3, 32, 32), ratio=0.5, scope="layer")
    if form.endswith("_int8"):
        modifier = build_modifier(parse_stage({"quantize": {"method": "uniform", "bits": 8, "calibration_batches": 0}}))
        modifier.attach(model, TrainContext(model, epochs=1, steps_per_epoch=1))
        model.train()(torch.randn(16, 3, 32, 32))  # initialises the steps; BatchNorm statistics move a little
        model = modifier.finalize(model)
    return model.eval()


def main() -> None:
    ensure_allocator_env()
    import tempfile

    import torch

    from slimkit.environment import environment
    from slimkit.files import atomic_write
    from slimkit.metrics import compare_latency, default_threads
    from slimkit.runtime import deploy
    from slimkit.runtime.bench import dense_baselines, speedups
    from slimkit.runtime.engine.artifact import export_folder
    from slimkit.runtime.engine.build import INT8_KERNELS, int8_peak
    from slimkit.runtime.engine.dense_engines import OpenVinoModel, dense_engines, export_dense
    from slimkit.runtime.engine.export import openvino_core
    from slimkit.runtime.engine.profile import profile_openvino

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="*", default=list(FORMS))
    parser.add_argument("--forms", nargs="*", help="only these forms (default: every form of each arch)")
    parser.add_argument("--batch-sizes", nargs="*", type=int, default=[1, 64])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--compile", action="store_true", help="add the torch.compile baseline (minutes)")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if unknown := set(args.forms or ()) - {form for arch in args.archs for form in FORMS[arch]}:
        parser.error(f"no such form of {' or '.join(args.archs)}: {', '.join(sorted(unknown))}")
    threads = default_threads()
    peaks = {k: p for k in INT8_KERNELS if (p := int8_peak(k, threads, 1.0)) is not None}  # first, on the idle machine
    rows, layers, missing, profiles, int8_layers = [], [], {}, [], []
    calibration = [torch.randn(8, 3, 32, 32) for _ in range(4)]
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            dense = build(arch, "dense")
            forms = {form: build(arch, form) for form in FORMS[arch] if not args.forms or form in args.forms}
            exported = export_dense(dense, (3, 32, 32), calibration, Path(tmp) / arch)
            pruned = {form: export_dense(model, (3, 32, 32), calibration, Path(tmp) / f"{arch}-{form}")
                      for form, model in forms.items() if form.startswith("channels")}  # an ordinary, smaller model
            for batch in args.batch_sizes:
                example = torch.randn(batch, 3, 32, 32)
                eager_forms = {form: m for form, m in forms.items() if not form.endswith("_int8")}  # int8: engine only
                deployed = {form: deploy(model, example) for form, model in eager_forms.items()}
                deployed |= {f"{form}{FOLDED}": deploy(model, example, fold_batchnorm=True)
                             for form, model in eager_forms.items()}
                baselines = dense_baselines(copy.deepcopy(dense), example, args.compile)
                baselines |= dense_engines(exported, (batch, 3, 32, 32), threads)
                engines = {f"{form} in {k}": v for form, paths in pruned.items()
                           for k, v in dense_engines(paths, (batch, 3, 32, 32), threads).items()
                           if not k.endswith("_error")}
                artifacts = {form: export_folder(model, Path(tmp) / f"{arch}-{form}-b{batch}", (3, 32, 32),
                                                 calibration if form.endswith("_int8") else None, batch=batch,
                                                 threads=threads)
                             for form, model in forms.items() if not form.startswith("channels")}
                for form, manifest in artifacts.items():
                    manifest["path"] = str(Path(tmp) / f"{arch}-{form}-b{batch}" / manifest["model"])
                engines |= {f"{form}{IN_ENGINE}": OpenVinoModel(Path(a["path"]), (batch, 3, 32, 32), threads,
                                                                core=openvino_core()) for form, a in artifacts.items()}
                missing |= {k: v for k, v in baselines.items() if k.endswith("_error")}
                timed = {"eager": dense, **{k: v for k, v in baselines.items() if not k.endswith("_error")},
                         **deployed, **engines}
                timing = compare_latency(timed, (3, 32, 32), batch_sizes=(batch,), repeats=args.repeats,
                                         threads=threads)
                ms = {name: t[str(batch)] for name, t in timing.items()}
                for name in (*deployed, *engines):
                    report = getattr(deployed.get(name), "deploy_report", [])
                    body = [e for e in report if "dense_ms" in e]
                    rows.append({
                        "arch": arch, "form": name, "batch": batch, "ms": ms[name], "vs": speedups(ms, name),
                        "dense_ms": {k: ms[k] for k in ms if k not in deployed and k not in engines},
                        "deployed_layers": sum(e["choice"] == "deployed" for e in report),
                        "candidate_layers": len(body),
                        "kernels": sorted({e["kind"] for e in report if e["choice"] == "deployed"}),
                        "body_speedup": (sum(e["dense_ms"] for e in body) / sum(
                            e["deployed_ms"] if e["choice"] == "deployed" else e["dense_ms"] for e in body))
                        if body else None,
                    })
                    if name in deployed and not name.endswith(FOLDED):
                        layers += [{"arch": arch, "form": name, "batch": batch, **e} for e in body]
                for form, a in artifacts.items():
                    profile = profile_openvino(a["path"], (batch, 3, 32, 32), threads)
                    name = f"{form}{IN_ENGINE}"
                    profiles.append({"arch": arch, "form": name, "batch": batch, "ms": ms[name],
                                     "vs": speedups(ms, name), "profile": profile, "choice": a["choice"],
                                     "agreement": a["agreement"], "slimkit_layers": a["slimkit_layers"]})
                    if form.endswith("_int8"):
                        int8_layers += layer_by_layer(arch, name, batch, a, exported["int8"], threads,
                                                      issued_macs(forms[form], (3, 32, 32)), peaks)
                print(f"{arch} b{batch}: " + ", ".join(
                    f"{r['form']} {r['vs']['best_dense']['speedup']:.2f}x vs {r['vs']['best_dense']['baseline']}"
                    for r in rows if r["arch"] == arch and r["batch"] == batch))
    args.results.mkdir(parents=True, exist_ok=True)
    env = environment(0) | {"command": " ".join(sys.argv), "threads": threads,
                            "int8_peaks_gmacs": {k: p / 1e9 for k, p in peaks.items()}} | machine_facts()
    results = json.dumps({"rows": rows, "layers": layers, "missing": missing, "profiles": profiles,
                          "int8_layers": int8_layers, "environment": env}, indent=2).encode()
    atomic_write(args.results / "runtime.json", lambda f: f.write(results))
    page = markdown(rows, layers, missing, profiles, int8_layers, env).encode()
    atomic_write(args.results / "runtime.md", lambda f: f.write(page))


def module_path(node_name: str) -> str:
    """The torch module path in an exported node's name: /layer1/layer1.0/conv1/Conv/WithoutBiases is
    layer1.0.conv1, /body/conv1/Conv is body.conv1 (a scope repeated as the prefix of the next one is dropped)."""
    scopes = [p for p in node_name.split("/") if p]
    scopes = scopes[:next(i for i, p in enumerate(scopes) if p.startswith("Conv"))]
    return ".".join(p for i, p in enumerate(scopes) if i + 1 == len(scopes) or not scopes[i + 1].startswith(p + "."))


def issued_macs(model: nn.Module, shape: tuple[int, ...]) -> dict[str, int]:
    """Per conv, the multiplies slimkit::QuantSparseConv2d issues for one image: 4 per kept block of 4 input
    channels (a 3-channel conv's block counts its zero-padded 4th channel) at each output position."""
    import torch
    from torch import nn

    from slimkit.sparsity.blocks import block_sums

    found: dict[str, int] = {}
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: found.__setitem__(
        n, int((block_sums(m.weight.detach().abs(), 4) != 0).sum()) * 4 * o.shape[2] * o.shape[3]))
        for n, m in convs.items()]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    for hook in hooks:
        hook.remove()
    return found


def layer_by_layer(arch: str, form: str, batch: int, artifact: dict, dense_int8: Path, threads: int,
                   macs: dict[str, int], peaks: dict[str, float]) -> list[dict]:
    """Each slimkit::QuantSparseConv2d node of an int8 artifact (named after its layer) against the same conv of
    the dense model in OpenVINO's int8, from OpenVINO's per-node counters of both, with the operator's multiplies
    per second as a fraction of the measured peak of the kernel the layer ran."""
    from slimkit.runtime.engine.profile import node_times

    shape = (batch, 3, 32, 32)
    kernels = {line["layer"]: line.get("kernel") for line in artifact["slimkit_layers"]}
    ours = {r["name"]: r for r in node_times(artifact["path"], shape, threads) if r["node"] == "QuantSparseConv2d"}
    dense = {module_path(r["name"]): r for r in node_times(dense_int8, shape, threads) if r["node"] == "Convolution"}
    out = []
    for layer, mine in ours.items():
        rate = macs[layer] * batch / (mine["ms"] / 1000)
        kernel = kernels.get(layer) or "?"
        out.append({"arch": arch, "form": form, "batch": batch, "layer": layer, "kernel": kernel,
                    "dense_ms": dense[layer]["ms"] if layer in dense else None, "ms": mine["ms"],
                    "speedup": dense[layer]["ms"] / mine["ms"] if layer in dense else None, "gmacs": rate / 1e9,
                    "of_peak": rate / peaks[kernel] if kernel in peaks else None})
    return out


def _vs(entry: dict | None) -> str:
    return f"{entry['speedup']:.2f}x ({entry['baseline']})" if entry else "n/a"


def markdown(rows: list[dict], layers: list[dict], missing: dict, profiles: list[dict], int8_layers: list[dict],
             env: dict) -> str:
    out = ["# CPU runtime: compressed models against the dense engines users deploy with", "",
           f"{machine_line(env)}; {env['threads']} threads for every form, torch {env['torch']}. Every ratio names its "
           "baseline; > 1 means the compressed form is faster.", "",
           __doc__.split("\n\n")[1].replace("\n", " "), "", "## Dense baselines (ms)", "",
           "| model | batch | " + " | ".join(DENSE) + " |", "|---|---:|" + "---:|" * len(DENSE)]
    seen = set()
    for r in rows:
        if (r["arch"], r["batch"]) in seen:
            continue
        seen.add((r["arch"], r["batch"]))
        cells = [f"{r['dense_ms'][k]['median']:.3f}" if k in r["dense_ms"] else "-" for k in DENSE]
        out.append(f"| {r['arch']} | {r['batch']} | " + " | ".join(cells) + " |")
    if missing:
        out += ["", "Missing baselines: " + "; ".join(f"{k.removesuffix('_error')}: {v}" for k, v in missing.items())]
    out += ["", "## Compressed forms", "",
            "| model | form | batch | ms | vs best dense engine | vs best fp32 | vs best int8 | vs eager torch "
            "| layers on compiled kernels | compressed-layer body vs dense torch |",
            "|---|---|---:|---:|---|---|---|---|---:|---:|"]
    for r in rows:
        body = f"{r['body_speedup']:.2f}x" if r["body_speedup"] else "-"
        kernels = f"{r['deployed_layers']}/{r['candidate_layers']}" if r["candidate_layers"] else "-"
        v = r["vs"]
        out.append(f"| {r['arch']} | {r['form']} | {r['batch']} | {r['ms']['median']:.3f} ± {r['ms']['iqr']:.3f} | "
                   f"{_vs(v.get('best_dense'))} | {_vs(v.get('best_fp32'))} | {_vs(v.get('best_int8'))} | "
                   f"{_vs(v.get('eager'))} | {kernels} | {body} |")
    out += ["", "'compressed-layer body' sums the per-layer timings `deploy` took of every candidate layer (alone, "
            "on its real input): dense torch time over the time of what runs after deployment (the kernel where it "
            "won, dense where it lost). 'channels50 in ort_int8' is the channel-pruned model, an ordinary smaller "
            "model, quantized by onnxruntime's own quantize_static and run by that engine.", "",
            "## Where the engine's time goes", "",
            "OpenVINO's per-node counters for each `in openvino+slimkit` form (ms per inference, summed by node type "
            "and kernel; slimkit's operators are BinaryConv2d, SparseConv2d and QuantSparseConv2d).", "",
            "| model | form | batch | total ms | vs best dense engine | node | kernel | nodes | ms | share |",
            "|---|---|---:|---:|---|---|---|---:|---:|---:|"]
    for p in profiles:
        total = sum(r["ms"] for r in p["profile"])
        for i, r in enumerate(p["profile"][:6]):
            head = (f"| {p['arch']} | {p['form']} | {p['batch']} | {p['ms']['median']:.3f} | "
                    f"{_vs(p['vs'].get('best_dense'))} |" if i == 0 else "| | | | | |")
            out.append(f"{head} {r['node']} | {r['kernel']} | {r['nodes']} | {r['ms']:.3f} | {r['ms'] / total:.0%} |")
    out += ["", "## How each artifact was chosen", "",
            "Each `in openvino+slimkit` form is `export_folder` at that batch: every candidate layer timed alone "
            "as slimkit's operator and as OpenVINO's own kernel, then whole artifacts ('measured': the layers that "
            "won alone; 'every operator'; 'dense': none) timed against each other (one with the same layers as "
            "another is timed once and shown as '='); the fastest is written. "
            "'agreement' is the artifact's largest difference from the reference (int8 graph, or eval) on the "
            "calibration batches (or seeded normal inputs), in steps of the output grid where there is one.", "",
            "| model | form | batch | operators / candidates | measured ms | every operator ms | dense ms | written "
            "| agreement |", "|---|---|---:|---:|---:|---:|---:|---|---|"]
    for p in profiles:
        c, a = p["choice"], p["agreement"]
        times = [f"{c['artifacts_ms'][k]:.3f}" if k in c["artifacts_ms"] else "=" for k in
                 ("measured", "every operator", "dense")]
        steps = f"{a['in_steps']:.1f} steps" if a["in_steps"] is not None else f"{a['max_abs_difference']:.2g}"
        out.append(f"| {p['arch']} | {p['form']} | {p['batch']} | {c['operators']}/{c['candidates']} | "
                   f"{' | '.join(times)} | {c['chosen']} | {steps} |")
    peaks = ", ".join(f"{k} ({PEAK_STEP.get(k, '?')}) {v:.1f}" for k, v in env["int8_peaks_gmacs"].items())
    out += ["", "## Sparse int8, layer by layer", "",
            "OpenVINO's per-node counters (ms per inference) of each slimkit::QuantSparseConv2d node of the sparse "
            "int8 artifacts (the layers that run the operator) against the same conv of the dense model in OpenVINO "
            "int8. 'GMAC/s' is the multiplies the operator issues (4 per kept block of 4 input channels, per output "
            "position) per second of its node time, quantization and epilogue included; '% of peak' divides it by the "
            f"peak of the kernel it ran, measured on this CPU with {env['threads']} threads from registers alone "
            f"(GMAC/s: {peaks}).", "",
            "| model | form | batch | layer | kernel | OpenVINO int8 dense ms | QuantSparseConv2d ms | speedup "
            "| GMAC/s | % of its kernel's peak |",
            "|---|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for e in int8_layers:
        dense = f"{e['dense_ms']:.3f}" if e["dense_ms"] is not None else "-"
        speed = f"{e['speedup']:.2f}x" if e["speedup"] is not None else "-"
        share = f"{e['of_peak']:.0%}" if e["of_peak"] is not None else "-"
        out.append(f"| {e['arch']} | {e['form']} | {e['batch']} | {e['layer']} | {e['kernel']} | {dense} | "
                   f"{e['ms']:.3f} | {speed} | {e['gmacs']:.1f} | {share} |")
    out += ["", "## Layers", "",
            "| model | form | batch | layer | kind | dense ms | kernel ms | speedup | runs |",
            "|---|---|---:|---|---|---:|---:|---:|---|"]
    for e in layers:
        out.append(f"| {e['arch']} | {e['form']} | {e['batch']} | {e['layer']} | {e['kind']} | {e['dense_ms']:.3f} "
                   f"| {e['deployed_ms']:.3f} | {e['speedup']:.2f}x | {e['choice']} |")
    out += ["", f"Reproduce: `{env['command']}` (torch {env['torch']}, {env['cpu_count']} CPUs, commit "
            f"{env['git_commit']}). Medians ± IQR of repeats in one process, the forms taking turns in blocks."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
