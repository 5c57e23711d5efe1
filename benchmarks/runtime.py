"""Deployed CPU inference against dense PyTorch: ResNet-20 and VGG-small as BNN, 90% and 95% unstructured,
pattern + connectivity (r_c = 3.6; per filter as in PatDNN, and shared by groups of 4 filters), 50% channels;
ResNet-56 at 50% channels.

Speed depends on structure, not on trained values, so each form is made from the randomly initialised
dense model (BN statistics randomised, so no layer is degenerate): BNN = XNOR-Net binarization of every
conv but the first (activations binarized; Bi-Real blocks for the ResNet), sparse forms = per-layer
magnitude masks on every conv and linear but the first conv and last linear, pattern = 8-pattern library and
r_c = 3.6 on those 3x3 convs (pattern_g4: with filter_group 4), channels = L1 pruning of 50%
of every prunable channel group. Baselines are the uncompressed float model: eager, `torch.jit.freeze`
and (with --compile) `torch.compile`; every form of one architecture and batch size is timed in the same
loop, taking turns. Each form is deployed twice: exact (binary layers bit for bit) and with
`fold_batchnorm=True` (BatchNorm folded into the layer before it; equal within float rounding). The
best-dense baseline folds BatchNorm too (jit.freeze does). Layer rows come from `deploy`'s own per-layer
timing of the exact deployment (layer alone, its real input).
Writes benchmarks/results/runtime.{json,md}. Run it on an otherwise idle machine.

    .venv/bin/python benchmarks/runtime.py [--archs resnet20 vgg_small resnet56] [--compile] [--repeats 15]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

from harness import ensure_allocator_env

HERE = Path(__file__).parent
FOLDED = " + BN folded"
FORMS = {"resnet20": ["bnn", "sparse90", "sparse95", "pattern", "pattern_g4", "channels50"],
         "vgg_small": ["bnn", "sparse90", "sparse95", "pattern", "pattern_g4", "channels50"],
         "resnet56": ["channels50"]}


def build(arch: str, form: str):
    import torch
    from torch import nn

    from slimkit.channels import prune_channels
    from slimkit.models import resnet20, resnet56, vgg_small
    from slimkit.recipe import build_modifier, parse_stage
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
        elif form.startswith("sparse"):
            masks = layerwise_masks({n: m.weight.abs() for n, m in inner.items()}, int(form[6:]) / 100)
            for n, m in inner.items():
                m.weight.mul_(masks[n])
        elif form.startswith("pattern"):
            group = int(form[9:]) if form.startswith("pattern_g") else 1
            convs = {n: m for n, m in inner.items() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)}
            library = extract_library(torch.cat([m.weight.reshape(-1, 9) for m in convs.values()]), 8)
            for m in convs.values():
                m.weight.mul_(connectivity_mask(m.weight, 3.6, group) & pattern_mask(m.weight, library, group))
        elif form == "channels50":
            model, _ = prune_channels(model, torch.randn(1, 3, 32, 32), ratio=0.5, scope="layer")
    return model.eval()


def main() -> None:
    ensure_allocator_env()
    import torch

    from slimkit.environment import environment
    from slimkit.metrics import compare_latency
    from slimkit.runtime import deploy
    from slimkit.runtime.bench import dense_baselines

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="*", default=list(FORMS))
    parser.add_argument("--batch-sizes", nargs="*", type=int, default=[1, 64])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--compile", action="store_true", help="add the torch.compile baseline (minutes)")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args()
    rows, layers = [], []
    for arch in args.archs:
        dense = build(arch, "dense")
        forms = {form: build(arch, form) for form in FORMS[arch]}
        for batch in args.batch_sizes:
            example = torch.randn(batch, 3, 32, 32)
            deployed = {form: deploy(model, example) for form, model in forms.items()}
            deployed |= {f"{form}{FOLDED}": deploy(model, example, fold_batchnorm=True)
                         for form, model in forms.items()}
            baselines = {k: v for k, v in dense_baselines(copy.deepcopy(dense), example, args.compile).items()
                         if not k.endswith("_error")}
            timing = compare_latency({"eager": dense, **baselines, **deployed}, (3, 32, 32), batch_sizes=(batch,),
                                     repeats=args.repeats)
            ms = {name: t[str(batch)] for name, t in timing.items()}
            best = min(baselines, key=lambda k: ms[k]["median"]) if baselines else "eager"
            for form, model in deployed.items():
                report = model.deploy_report
                kinds = {e["kind"] for e in report if e["choice"] == "deployed"}
                body = [e for e in report if "dense_ms" in e]
                rows.append({
                    "arch": arch, "form": form, "batch": batch, "eager_ms": ms["eager"], "best_dense": best,
                    "best_dense_ms": ms[best], "deployed_ms": ms[form],
                    "speedup_vs_eager": ms["eager"]["median"] / ms[form]["median"],
                    "speedup_vs_best_dense": ms[best]["median"] / ms[form]["median"],
                    "deployed_layers": sum(e["choice"] == "deployed" for e in report),
                    "candidate_layers": len(body), "kernels": sorted(kinds),
                    "body_speedup": (sum(e["dense_ms"] for e in body) / sum(
                        e["deployed_ms"] if e["choice"] == "deployed" else e["dense_ms"] for e in body))
                    if body else None,
                })
                if not form.endswith(FOLDED):
                    layers += [{"arch": arch, "form": form, "batch": batch, **e} for e in report if "dense_ms" in e]
            print(f"{arch} b{batch}: " + ", ".join(f"{r['form']} {r['speedup_vs_eager']:.2f}x"
                                                   for r in rows if r["arch"] == arch and r["batch"] == batch))
    args.results.mkdir(parents=True, exist_ok=True)
    env = environment(0) | {"command": " ".join(sys.argv)}
    (args.results / "runtime.json").write_text(json.dumps({"rows": rows, "layers": layers, "environment": env},
                                                         indent=2))
    (args.results / "runtime.md").write_text(markdown(rows, layers, env))


def markdown(rows: list[dict], layers: list[dict], env: dict) -> str:
    out = ["# CPU runtime: deployed vs dense PyTorch", "", __doc__.split("\n\n")[1].replace("\n", " "), "",
           "## Whole networks", "",
           "| model | form | batch | eager dense ms | best dense (ms) | deployed ms | vs eager | vs best dense "
           "| layers on compiled kernels | compressed-layer body vs dense |",
           "|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        body = f"{r['body_speedup']:.2f}x" if r["body_speedup"] else "-"
        out.append(f"| {r['arch']} | {r['form']} | {r['batch']} | {r['eager_ms']['median']:.3f} "
                   f"| {r['best_dense']} ({r['best_dense_ms']['median']:.3f}) | {r['deployed_ms']['median']:.3f} "
                   f"± {r['deployed_ms']['iqr']:.3f} | {r['speedup_vs_eager']:.2f}x | "
                   f"{r['speedup_vs_best_dense']:.2f}x | {r['deployed_layers']}/{r['candidate_layers']} | {body} |")
    out += ["", "'compressed-layer body' sums the per-layer timings `deploy` took of every candidate layer (alone, "
            "on its real input): dense time over the time of what runs after deployment (the kernel where it "
            "won, dense where it lost).", "", "## Layers", "",
            "| model | form | batch | layer | kind | dense ms | kernel ms | speedup | runs |",
            "|---|---|---:|---|---|---:|---:|---:|---|"]
    for e in layers:
        out.append(f"| {e['arch']} | {e['form']} | {e['batch']} | {e['layer']} | {e['kind']} | {e['dense_ms']:.3f} "
                   f"| {e['deployed_ms']:.3f} | {e['speedup']:.2f}x | {e['choice']} |")
    out += ["", f"Reproduce: `{env['command']}` (torch {env['torch']}, {env['cpu_count']} CPUs, commit "
            f"{env['git_commit']}). Medians ± IQR of repeats in one process, the models taking turns in blocks."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
