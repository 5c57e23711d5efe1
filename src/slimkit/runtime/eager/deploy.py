"""`deploy(model, example)`: replace compressed layers by inference kernels where they are measurably faster.

Each candidate layer (binary; sparse conv/linear, pattern-pruned included) is built, timed against the
layer it replaces on that layer's real input (the example's activations, after a warm-up that absorbs
JIT compilation), and kept only if faster. Every decision is recorded in `model.deploy_report`, dense
fallbacks and their reasons included. N:M layers stay dense: CPUs have no N:M speedup path. The kernels
compute in float32, so a layer of another dtype (a float64 model) stays as it is: its outputs keep their dtype.

The kernel modules (and so numba, which takes a fifth of a second to import) are imported on first use,
inside the functions below, so that `import slimkit` does not load numba.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from slimkit.binary.layers import BinaryConv2d, BinaryLinear
from slimkit.errors import CheckpointError, SlimkitError, checked_field
from slimkit.folding import batchnorm_affine, batchnorm_pairs, fold_into
from slimkit.formats import MODEL_FORMAT, atomic_save, safe_load
from slimkit.layers import adapter_of, canonical_weight, layer_tensor
from slimkit.metrics import call
from slimkit.sparsity.structure import detect_structure

DEPLOYED_FORMAT = "slimkit-deployed-v1"
MIN_SPARSITY = 0.5  # below this a sparse kernel cannot beat dense BLAS; not even tried


def _candidate(module: nn.Module, threads: int | None) -> tuple[str, Callable[[], nn.Module] | None, str]:
    """(kind, builder or None, reason) for one layer."""
    from slimkit.runtime.eager.kernel_modules import PackedBinaryConv2d, PatternConv2d, SparseConv2d, SparseLinear

    if isinstance(module, BinaryConv2d | BinaryLinear):
        return _float32_only(module, "binary", lambda: PackedBinaryConv2d(module, threads))
    adapter = adapter_of(module)
    plain = type(module) in (nn.Conv2d, nn.Linear) or (adapter is not None and adapter.linear_map
                                                       and not parametrize.is_parametrized(module))
    if not plain:  # parametrized (quantized, masked) layers are left alone
        return "other", None, ""
    weight = canonical_weight(module).detach()
    sparsity = float((weight == 0).float().mean())
    if sparsity == 0:
        return "dense", None, "no zero weights"
    structure = detect_structure(weight)["structure"]
    kind = "pattern" if structure == "pattern" else ("n:m" if ":" in structure else "sparse")
    if kind == "n:m":
        return kind, None, f"{structure} has no CPU speedup path; runs dense"
    if sparsity < MIN_SPARSITY:
        return kind, None, f"{sparsity:.0%} sparse: below {MIN_SPARSITY:.0%}, dense BLAS wins"
    if isinstance(module, nn.Conv2d):
        conv, conv_kernel = module, PatternConv2d if kind == "pattern" else SparseConv2d
        return _float32_only(module, kind, lambda: conv_kernel(conv, threads))
    return _float32_only(module, kind, lambda: SparseLinear(module, threads))


def _float32_only(module: nn.Module, kind: str, build: Callable[[], nn.Module]
                  ) -> tuple[str, Callable[[], nn.Module] | None, str]:
    """The kernels compute in float32: a layer of another dtype (a float64 model) stays as it is, so its
    outputs keep their dtype and precision, and the report says why."""
    dtype = layer_tensor(module).dtype
    if dtype != torch.float32:
        return kind, None, f"{dtype} weights: the kernels compute in float32; the layer stays as it is"
    return kind, build, ""


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def _layer_inputs(model: nn.Module, names: list[str], example: Tensor | Mapping[str, Tensor]) -> dict[str, Tensor]:
    captured: dict[str, Tensor] = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda _, args, n=n: captured.setdefault(n, args[0].detach().clone())) for n in names]
    try:
        with torch.inference_mode():
            call(model, example)
    finally:
        for h in hooks:
            h.remove()
    return captured


def deploy(model: nn.Module, example: Tensor | Mapping[str, Tensor] | None = None, *,
           choices: dict[str, str] | None = None, threads: int | None = None, repeats: int = 15,
           fold_batchnorm: bool = False) -> nn.Module:
    """An eval-mode copy of `model` with compressed layers replaced by inference kernels.

    With `example` (a batch of the size you will run: a tensor, or a dict of tensors passed as keyword
    arguments, such as token ids and an attention mask), each replacement is kept only where it is faster on
    that layer's real input. With `choices` ({layer: "deployed" | "dense"}, as a saved deployment holds),
    those decisions are applied without timing. With neither, every candidate is replaced.

    `fold_batchnorm` folds each BatchNorm into the float conv/linear before it, and into the output scale
    of a deployed binary layer. It saves a pass over every activation, but the float sums change order, so
    outputs match eval within float rounding only; in a BNN a value within rounding of 0 can then take the
    other sign in the next binary layer. Off by default, so binary layers stay exact.
    """
    # numba loads here, not on import
    from slimkit.runtime.eager.kernel_modules import NotDeployable, PackedBinaryConv2d

    model = copy.deepcopy(model).eval()
    pairs = batchnorm_pairs(model) if fold_batchnorm else {}
    for layer_name, bn_name in pairs.items():  # float layers fold now, so their timing is of the folded form
        layer = model.get_submodule(layer_name)
        if type(layer) is nn.Conv2d or type(layer) is nn.Linear:
            model.set_submodule(layer_name, fold_into(layer, _batchnorm(model, bn_name)))
            model.set_submodule(bn_name, nn.Identity())
    plans = {name: _candidate(m, threads) for name, m in model.named_modules() if name}
    targets = [n for n, (_, build, _) in plans.items() if build is not None]
    inputs = _layer_inputs(model, targets, example) if example is not None and choices is None else {}
    report: list[dict[str, Any]] = []
    for name, (kind, build, reason) in plans.items():
        if kind == "other":
            continue
        entry: dict[str, Any] = {"layer": name, "kind": kind, "choice": "dense", "reason": reason}
        if build is not None:
            try:
                new = build()
            except NotDeployable as exc:
                entry["reason"] = str(exc)
            else:
                entry["kind"] = getattr(new, "kind", kind)  # a kernel module may name its layout more exactly
                entry["choice"] = _decide(name, model.get_submodule(name), new, inputs.get(name), choices, repeats,
                                          entry)
                if entry["choice"] == "deployed":
                    model.set_submodule(name, new)
        after, current = pairs.get(name), model.get_submodule(name)
        if after is not None and isinstance(current, PackedBinaryConv2d):
            current.fold(*batchnorm_affine(_batchnorm(model, after)))
            model.set_submodule(after, nn.Identity())
        if after is not None and isinstance(model.get_submodule(after), nn.Identity):
            entry["batchnorm_folded"] = after
        report.append(entry)
    # plain attributes, set past nn.Module.__setattr__'s typing (it types attributes as tensors and modules)
    object.__setattr__(model, "deploy_report", report)
    object.__setattr__(model, "deploy_options", {"fold_batchnorm": fold_batchnorm})
    if example is not None:
        with torch.inference_mode():
            call(model, example)  # compile every kernel for this shape now, so no call that is timed pays for it
    return model


def _batchnorm(model: nn.Module, name: str) -> nn.BatchNorm1d | nn.BatchNorm2d:
    """The BatchNorm `batchnorm_pairs` found after a layer."""
    bn = model.get_submodule(name)
    if not isinstance(bn, nn.BatchNorm1d | nn.BatchNorm2d):
        raise SlimkitError(f"{name} is a {type(bn).__name__}, not the BatchNorm to fold")
    return bn


def _decide(name: str, old: nn.Module, new: nn.Module, x: Tensor | None, choices: dict[str, str] | None,
            repeats: int, entry: dict[str, Any]) -> str:
    if choices is not None:
        return choices.get(name, "dense")
    if x is None:
        return "deployed"
    with torch.inference_mode():
        for _ in range(2):  # the first call compiles (or loads from the cache)
            old(x)
            new(x)
        dense_ms = _median_ms(lambda: old(x), repeats)
        deployed_ms = _median_ms(lambda: new(x), repeats)
    entry.update(dense_ms=dense_ms, deployed_ms=deployed_ms, speedup=dense_ms / deployed_ms)
    if deployed_ms < dense_ms:
        return "deployed"
    entry["reason"] = f"measured slower than dense ({deployed_ms:.3f} vs {dense_ms:.3f} ms)"
    return "dense"


def save_deployed(deployed: nn.Module, source: str | Path, path: str | Path) -> Path:
    """Write `source` (the model.pt it was deployed from, schema-checked) plus the deployment's decisions.
    Loading re-packs the weights deterministically, so the file stays plain tensors and never holds code."""
    from slimkit.persistence import checked_model

    payload = safe_load(Path(source), MODEL_FORMAT)
    checked_model(payload, source)
    report = getattr(deployed, "deploy_report", None)
    if report is None:
        raise CheckpointError("save_deployed needs a model returned by slimkit.deploy()")
    payload.update(format=DEPLOYED_FORMAT, deploy={e["layer"]: e["choice"] for e in report}, deploy_report=report,
                   deploy_options=getattr(deployed, "deploy_options", {}))
    atomic_save(payload, Path(path))
    return Path(path)


def load_deployed(path: str | Path) -> nn.Module:
    """Rebuild a model saved by `save_deployed`, with the same layers deployed. The file is schema-checked
    first: the model fields as `read_model_file` checks them, then `deploy` a mapping of this model's layers to
    "deployed" or "dense", `deploy_options` only known options, `deploy_report` a list of mappings; a
    mismatch is a CheckpointError naming the file and the field."""
    from slimkit.persistence import checked_model, rebuild

    known_options = {"fold_batchnorm": bool}  # what `deploy` takes from a saved deployment, and of which kind
    payload = safe_load(Path(path), DEPLOYED_FORMAT)
    arch, stages, state_dict = checked_model(payload, path)
    choices = checked_field(payload, "deploy", dict, path, values=str)
    bad = next((layer for layer, choice in choices.items() if choice not in ("deployed", "dense")), None)
    if bad is not None:
        raise CheckpointError(f"{path}: field 'deploy[{bad!r}]' is {choices[bad]!r}, not 'deployed' or 'dense'")
    options = checked_field(payload, "deploy_options", dict, path) if "deploy_options" in payload else {}
    for key in options:
        if key not in known_options:
            raise CheckpointError(f"{path}: field 'deploy_options.{key}' is not a deploy option; known: "
                                  f"{', '.join(known_options)}")
        checked_field(options, key, known_options[key], path, where="deploy_options")
    report = checked_field(payload, "deploy_report", list, path, values=dict)
    model = rebuild(arch, stages, state_dict, str(path))
    layers = dict(model.named_modules())
    unknown = next((layer for layer in choices if layer not in layers), None)
    if unknown is not None:
        raise CheckpointError(f"{path}: field 'deploy' names layer {unknown!r}, which the model does not have")
    deployed = deploy(model, choices=choices, **options)
    deployed.deploy_report = report
    return deployed
