"""What compression bought: parameters, nonzeros, bytes, MACs and CPU latency.

Bytes: dense is fp32 (or the stored dtype) for every parameter and float buffer, a tied weight once (as in
the parameter count). Compressed stores a sparse tensor as its nonzero values plus a 1-bit-per-entry bitmap,
whichever of the two is smaller, and a binary layer's weights at 1 bit each (its binarizer's training state,
such as RBNN's rotations, is not counted: inference needs only the signs and scales). MACs count conv and
linear layers, per sample; effective MACs skip multiplications by zero weights. A binary layer with binary
inputs does BOPs (binary operations) instead of MACs; OPs = FP MACs + BOPs / 64, as the BNN papers count.
Latency is the median over interleaved repeats after warm-up, with the thread count fixed and reported.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, overload

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn
from torch.nn.utils import parametrize

from slimkit.binary.binarizers import WeightBinarizer
from slimkit.capture import Example
from slimkit.config import StrictModel
from slimkit.errors import SlimkitError, first_line
from slimkit.hardware.config import HardwareConfig
from slimkit.hardware.trace import layer_bits
from slimkit.layers import canonical_weight, layer_kind, parametrization_chain
from slimkit.quant.quantizers import LevelQuantizer, UniformQuantizer
from slimkit.sparsity.masks import WeightMask


class MeasureConfig(StrictModel):
    """How latency is measured: batch sizes, a fixed thread count, warm-up and repeats (median)."""

    batch_sizes: list[int] = Field(default_factory=lambda: [1, 64])
    threads: int | None = Field(None, ge=1)
    warmup: int = Field(3, ge=0)
    repeats: int = Field(21, ge=1)
    engines: bool = False  # also deploy the compressed model in OpenVINO and time it against the dense engines
    hardware: HardwareConfig | None = None  # cost models of the target hardware (slimkit.hardware)

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, sizes: list[int]) -> list[int]:
        if not sizes or any(b < 1 for b in sizes):
            raise ValueError("batch sizes must be a non-empty list of integers >= 1")
        return sizes


Batch = Tensor | tuple[Tensor, ...] | dict[str, Tensor]  # a model input example_batch makes, as the example was


def input_kind(model: nn.Module | None) -> tuple[torch.dtype, int | None]:
    """(dtype, id bound) of the input the model's first layer takes, for the shape form of an example:
    token ids below `num_embeddings` when that layer is an embedding, else the dtype of its floating
    parameters (float64 for a float64 model). The first layer is the first module, in registration order,
    holding a parameter; a model whose forward starts elsewhere fails on the input, and `run_example` then
    asks for an example. Without a torch model (exported engines alone, which slimkit builds from float32
    image models) the input is float32."""
    if model is None:
        return torch.float32, None
    for module in model.modules():
        if isinstance(module, nn.Embedding | nn.EmbeddingBag):
            return torch.long, module.num_embeddings
        floats = [p for p in module.parameters(recurse=False) if p.is_floating_point()]
        if floats:
            return floats[0].dtype, None
    return torch.get_default_dtype(), None


@overload
def example_batch(example: Sequence[int] | Tensor, batch: int = 1, random: bool = False, *,
                  model: nn.Module | None) -> Tensor: ...
@overload
def example_batch(example: Mapping[str, Tensor], batch: int = 1, random: bool = False, *,
                  model: nn.Module | None) -> dict[str, Tensor]: ...
@overload
def example_batch(example: tuple[Tensor, ...], batch: int = 1, random: bool = False, *,
                  model: nn.Module | None) -> tuple[Tensor, ...]: ...
@overload
def example_batch(example: Example, batch: int = 1, random: bool = False, *,
                  model: nn.Module | None) -> Batch: ...
def example_batch(example: Example, batch: int = 1, random: bool = False, *,
                  model: nn.Module | None) -> Batch:
    """A model input of `batch` samples from an example: a per-sample shape (C, H, W) gives zeros (or
    normal noise with `random`) of the dtype `model`'s first layer takes, or token ids (0, or uniform ids
    with `random`) for an embedding (see `input_kind`); a tensor or a dict of tensors (token ids, masks) with
    a batch dimension is repeated from its first sample, so token ids stay valid ids; a tuple of tensors (the
    model's positional inputs) likewise, each."""
    if isinstance(example, Tensor):
        return example[:1].repeat(batch, *[1] * (example.ndim - 1))
    if isinstance(example, Mapping):
        return {k: example_batch(v, batch, model=model) for k, v in example.items()}
    if isinstance(example, tuple) and example and all(isinstance(t, Tensor) for t in example):
        return tuple(example_batch(t, batch, model=model) for t in example)
    if isinstance(example, Sequence) and all(isinstance(d, int) for d in example):
        dtype, ids = input_kind(model)
        if ids is not None:
            return torch.randint(0, ids, (batch, *example)) if random else torch.zeros(batch, *example, dtype=dtype)
        return torch.randn(batch, *example, dtype=dtype) if random else torch.zeros(batch, *example, dtype=dtype)
    raise SlimkitError(f"an example input is a per-sample shape, a tensor, a tuple or a dict of tensors, not "
                       f"{type(example).__name__}")


class Runnable(Protocol):
    """What `call` runs and `compare_latency` times: an nn.Module, or an engine's compiled model that acts as an
    eval-mode one (the dense engines and slimkit's OpenVINO artifact, runtime/engine/dense_engines)."""

    training: bool

    def eval(self) -> object: ...

    def train(self, mode: bool = ...) -> object: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


def call(model: Runnable, inputs: Batch | Mapping[str, Tensor]) -> object:
    """The model on one input as `example_batch` makes it: keyword arguments for a dict, positional ones for a
    tuple of tensors."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def is_shape(example: Example) -> bool:
    """Whether an example is the shape form (a sequence of ints), not an input."""
    return isinstance(example, Sequence) and not isinstance(example, Tensor) and all(
        isinstance(d, int) for d in example)


def run_example(model: nn.Module, example: Example) -> object:
    """The model on one sample, `example_batch(example)`. A model that fails on an input built from a shape
    is an error asking for an example input: slimkit built that input, so the failure is not the user's
    model's fault, and the shape form cannot say more about what the model takes."""
    inputs = example_batch(example, model=model)
    if not isinstance(inputs, Tensor) or not is_shape(example):
        return call(model, inputs)
    try:
        return call(model, inputs)
    except (RuntimeError, TypeError, ValueError, IndexError) as exc:
        raise SlimkitError(f"the model fails on {inputs.dtype} inputs of shape {tuple(inputs.shape)} built from "
                           f"the per-sample shape {tuple(example)} ({type(exc).__name__}: {first_line(exc)}); pass "
                           f"an example input instead: a tensor, a tuple or a dict of tensors, with its batch "
                           f"dimension") from exc


def example_shape(example: Example) -> list[int] | list[list[int]] | dict[str, list[int]]:
    """The per-sample input shape of an example: a list, one list per tensor of a tuple, or one list per key of
    a dict example."""
    if isinstance(example, Tensor):
        return list(example.shape[1:])
    if isinstance(example, Mapping):
        return {k: list(v.shape[1:]) for k, v in example.items()}
    if not is_shape(example):
        return [list(t.shape[1:]) for t in example if isinstance(t, Tensor)]
    return [d for d in example if isinstance(d, int)]


@dataclass
class LayerStats:
    """One conv or linear layer. `params`/`nonzeros` include the bias; `sparsity` is the weight's alone."""

    name: str
    type: str
    shape: list[int]
    params: int
    nonzeros: int
    weight_nonzeros: int
    macs: int = 0
    effective_macs: int = 0
    weight_bits: int = 32
    input_bits: int = 32

    @property
    def sparsity(self) -> float:
        numel = math.prod(self.shape)
        return 1.0 - self.weight_nonzeros / numel if numel else 0.0


@dataclass
class Measurement:
    params: int
    nonzeros: int
    dense_bytes: int
    compressed_bytes: int
    macs: int
    effective_macs: int
    bops: int
    input_shape: list[int] | list[list[int]] | dict[str, list[int]]
    threads: int
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    layers: list[LayerStats] = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.params if self.params else 0.0

    @property
    def fp_macs(self) -> int:
        """Effective multiply-accumulates of layers whose inputs are not binary."""
        return self.effective_macs - self.bops

    @property
    def ops(self) -> float:
        return self.fp_macs + self.bops / 64

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(sparsity=self.sparsity, fp_macs=self.fp_macs, ops=self.ops)
        for layer, stats in zip(data["layers"], self.layers, strict=True):
            layer["sparsity"] = stats.sparsity
        return data


def effective_tensors(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, Tensor]]:
    """(module name, module, tensor name, tensor as the forward pass sees it) for every parameter."""
    for mod_name, module in model.named_modules():
        if "parametrizations" in mod_name.split("."):
            continue
        names = list(module._parameters)
        if parametrize.is_parametrized(module):
            names += list(module.parametrizations.keys())
        for name in names:
            tensor = getattr(module, name)
            if tensor is not None:
                yield mod_name, module, name, tensor.detach()


def _stored(module: nn.Module, name: str) -> tuple[int, ...]:
    """Identity of what `module.name` is computed from: the parameter itself, or the original(s) under its
    parametrizations. Two modules that show one stored tensor (GPT-2's lm_head and token embedding) agree."""
    chain = parametrization_chain(module, name)
    if chain is not None:
        return tuple(id(p) for p in chain.parameters(recurse=False))
    return (id(module._parameters[name]),)


def _unique(tensors: Sequence[tuple[str, nn.Module, str, Tensor]]) -> list[tuple[str, nn.Module, str, Tensor]]:
    """`effective_tensors` with each stored tensor once: a tied weight is one tensor in memory and on disk, so
    it counts once in parameters and bytes (by identity, the first module that shows it)."""
    seen: set[tuple[int, ...]] = set()
    out = []
    for entry in tensors:
        key = _stored(entry[1], entry[2])
        if key not in seen:
            seen.add(key)
            out.append(entry)
    return out


def _float_buffers(model: nn.Module) -> Iterator[Tensor]:
    """Inference buffers (BN statistics), each once; masks and binarizer and quantizer state are not model
    data."""
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, WeightMask | WeightBinarizer | UniformQuantizer | LevelQuantizer):
            continue
        for buf in module._buffers.values():
            if buf is not None and buf.is_floating_point() and id(buf) not in seen:
                seen.add(id(buf))
                yield buf


def _stored_bytes(module: nn.Module, name: str, t: Tensor) -> int:
    """Bytes to store `t`: binary and quantized weights at their bit width (nonzeros only, plus a bitmap,
    when that is smaller), everything else at its dtype's width."""
    bits = _bits(module)[0] if name == "weight" else t.element_size() * 8
    dense = math.ceil(t.numel() * bits / 8)
    nnz = int(torch.count_nonzero(t))
    return min(dense, math.ceil(nnz * bits / 8) + math.ceil(t.numel() / 8))


_bits = layer_bits  # (weight bits, input bits) of a conv or linear layer


def count_macs(model: nn.Module, example: Example) -> dict[str, int]:
    """Per-sample multiply-accumulates of every conv and linear layer, from one forward pass on one sample
    (`example`: a per-sample input shape, or an example input; see `example_batch`)."""
    macs: dict[str, int] = {}
    hooks = []

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            per_output = canonical_weight(module)[0].numel()  # inputs feeding one output value
            macs[name] = macs.get(name, 0) + (output.numel() // output.shape[0]) * per_output
        return record

    for name, module in model.named_modules():
        if layer_kind(module) is not None and "parametrizations" not in name.split("."):
            hooks.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            run_example(model, example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return macs


def default_threads() -> int:
    return max(1, min(2, os.cpu_count() or 1))


SETTLE_MS = 100.0


def compare_latency(models: Mapping[str, Runnable], example: Example, *,
                    batch_sizes: Sequence[int] = (1, 64), threads: int | None = None, warmup: int = 3,
                    repeats: int = 21, min_sample_ms: float = 5.0, rounds: int = 3,
                    ) -> dict[str, dict[str, dict[str, float]]]:
    """Forward-pass latency in ms, {model: {batch: {median, iqr}}}, the models taking turns.

    The models run in alternating blocks (`rounds` each), so slow drifts in machine noise reach all of them.
    Each sample averages enough calls to last about `min_sample_ms`, so sub-millisecond batch-1 timings are
    not dominated by timer jitter. Each block starts with untimed calls lasting SETTLE_MS: torch and onnxruntime
    keep separate thread pools that go on spinning after their work, and without the pause a
    model pays for the previous one's spin (measured: eager ResNet-20 ran at 7.7 ms instead of 3.3 ms for
    80 ms after onnxruntime calls; onnxruntime int8 at batch 64 took 17.7 ms right after torch, 10.9 alone).
    """
    threads = threads or default_threads()
    previous = torch.get_num_threads()
    torch_model = next((m for m in models.values() if isinstance(m, nn.Module)), None)  # says what a shape feeds
    modes = {name: m.training for name, m in models.items()}
    out: dict[str, dict[str, dict[str, float]]] = {name: {} for name in models}
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for batch in batch_sizes:
                x = example_batch(example, batch, random=True, model=torch_model)
                calls = {}
                for name, model in models.items():
                    model.eval()
                    for _ in range(max(1, warmup)):
                        start = time.perf_counter()
                        call(model, x)
                    once = (time.perf_counter() - start) * 1e3
                    calls[name] = max(1, math.ceil(min_sample_ms / max(once, 1e-3)))
                samples: dict[str, list[float]] = {name: [] for name in models}
                for _ in range(rounds):
                    for name, model in models.items():
                        settle = time.perf_counter()
                        call(model, x)
                        while (time.perf_counter() - settle) * 1e3 < SETTLE_MS:
                            call(model, x)
                        for _ in range(math.ceil(repeats / rounds)):
                            start = time.perf_counter()
                            for _ in range(calls[name]):
                                call(model, x)
                            samples[name].append((time.perf_counter() - start) * 1e3 / calls[name])
                for name, values in samples.items():
                    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
                    out[name][str(batch)] = {"median": statistics.median(values), "iqr": q[2] - q[0]}
    finally:
        torch.set_num_threads(previous)
        for name, model in models.items():
            model.train(modes[name])
    return out


def measure(model: nn.Module, example: Example, *, batch_sizes: Sequence[int] = (1, 64),
            threads: int | None = None, warmup: int = 3, repeats: int = 21, latency: bool = True) -> Measurement:
    """Size, sparsity, MACs and (optionally) latency of `model`. `example` is a per-sample input shape
    (C, H, W), or an example input with its batch dimension: a tensor, or a dict of tensors such as token ids
    and an attention mask."""
    tensors = list(effective_tensors(model))
    macs = count_macs(model, example)
    layers = []
    for mod_name, module in model.named_modules():
        if mod_name in macs:
            weight = module.weight.detach()
            own = [t for n, m, _, t in tensors if m is module]
            weight_nonzeros = int(torch.count_nonzero(weight))
            cls = type(module).__bases__[0] if parametrize.is_parametrized(module) else type(module)
            weight_bits, input_bits = _bits(module)
            layers.append(LayerStats(
                name=mod_name, type=cls.__name__, shape=list(weight.shape),
                params=sum(t.numel() for t in own), nonzeros=sum(int(torch.count_nonzero(t)) for t in own),
                weight_nonzeros=weight_nonzeros, macs=macs[mod_name],
                effective_macs=round(macs[mod_name] * weight_nonzeros / weight.numel()),
                weight_bits=weight_bits, input_bits=input_bits,
            ))
    buffers = list(_float_buffers(model))
    buffer_bytes = sum(b.numel() * b.element_size() for b in buffers)
    threads = threads or default_threads()
    stored = _unique(tensors)
    result = Measurement(
        params=sum(t.numel() for *_, t in stored),
        nonzeros=sum(int(torch.count_nonzero(t)) for *_, t in stored),
        dense_bytes=sum(t.numel() * t.element_size() for *_, t in stored) + buffer_bytes,
        compressed_bytes=sum(_stored_bytes(m, n, t) for _, m, n, t in stored) + buffer_bytes,
        macs=sum(macs.values()),
        effective_macs=sum(layer.effective_macs for layer in layers),
        bops=sum(layer.effective_macs for layer in layers if layer.weight_bits == 1 and layer.input_bits == 1),
        input_shape=example_shape(example),
        threads=threads,
        layers=layers,
    )
    if latency:
        result.latency_ms = compare_latency({"model": model}, example, batch_sizes=batch_sizes,
                                            threads=threads, warmup=warmup, repeats=repeats)["model"]
    return result


def precision_summary(layers: Sequence[dict[str, Any]]) -> str:
    """A per-precision table like Larq's model summary: bits, parameters, memory, MACs and BOPs per layer.

    `layers` are the dicts of `Measurement.to_dict()["layers"]`.
    """
    lines = ["| layer | input bits | weight bits | params | memory | 32-bit MACs | 1-bit BOPs |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    totals = {"params": 0, "bits": 0, "macs": 0, "bops": 0}
    for layer in layers:
        binary_ops = layer["weight_bits"] == 1 and layer["input_bits"] == 1
        weight_numel = math.prod(layer["shape"])
        bits = weight_numel * layer["weight_bits"] + (layer["params"] - weight_numel) * 32
        macs, bops = (0, layer["effective_macs"]) if binary_ops else (layer["effective_macs"], 0)
        lines.append(f"| {layer['name']} | {layer['input_bits']} | {layer['weight_bits']} | {layer['params']:,} | "
                     f"{bits / 8 / 1024:.2f} KiB | {macs:,} | {bops:,} |")
        for key, value in (("params", layer["params"]), ("bits", bits), ("macs", macs), ("bops", bops)):
            totals[key] += value
    lines.append(f"| **conv and linear** | | | {totals['params']:,} | {totals['bits'] / 8 / 1024:.2f} KiB | "
                 f"{totals['macs']:,} | {totals['bops']:,} |")
    return "\n".join(lines)
