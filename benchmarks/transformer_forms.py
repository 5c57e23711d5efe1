"""The models and compressed forms benchmarks/transformers.py times: BERT-base and GPT-2 small built from their
configs with random weights (nothing downloaded: speed depends on the shapes and the zeros, not on trained values),
and each compressed form made through slimkit's public one-shot path, its sparsity counted back from the weights.

Forms (every Linear and GPT-2 Conv1D but the classifier head, slimkit's default layer selection):
- `2:4`: magnitude 2:4 along input channels, fp32;
- `block4-90 int8`: 90% of each layer in blocks of 4 input channels (slimkit::QuantSparse's layout), magnitude,
  then slimkit's 8-bit post-training quantization calibrated on synthetic token batches;
- `heads50+neurons50 int8`: half of every attention block's heads and half of every MLP's neurons (lowest L1)
  physically removed, then the same int8 quantization;
- `wanda50 int8`, `wanda70 int8`: Wanda at 50% and 70% (unstructured, per output row) on the calibration batches,
  then the same int8 quantization.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

QUANTIZE = {"quantize": {"method": "uniform", "bits": 8, "first_last_bits": None, "calibration_batches": 4}}


@dataclass(frozen=True)
class Size:
    """A transformer's shape: what decides its speed."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    positions: int


SIZES = {"bert-base": Size(768, 12, 12, 3072, 30522, 512), "gpt2-small": Size(768, 12, 12, 3072, 50257, 1024)}
SMOKE = Size(64, 2, 4, 256, 1000, 64)  # --smoke: seconds, the same code path


def build_model(name: str, size: Size) -> nn.Module:
    """`name`'s architecture at `size`, random init, eval mode. Both end in a 2-class sequence head, so the
    output is small and the timing is the transformer's own (GPT-2's 50257-way LM head over every token would
    add a 768 x 50257 matrix multiply per token that no form here compresses)."""
    import transformers

    torch.manual_seed(0)
    if name == "bert-base":
        return transformers.BertForSequenceClassification(transformers.BertConfig(
            vocab_size=size.vocab, hidden_size=size.hidden, num_hidden_layers=size.layers,
            num_attention_heads=size.heads, intermediate_size=size.intermediate,
            max_position_embeddings=size.positions, num_labels=2)).eval()
    if name == "gpt2-small":
        return transformers.GPT2ForSequenceClassification(transformers.GPT2Config(
            vocab_size=size.vocab, n_embd=size.hidden, n_layer=size.layers, n_head=size.heads,
            n_inner=size.intermediate, n_positions=size.positions, num_labels=2, pad_token_id=0,
            bos_token_id=size.vocab - 1, eos_token_id=size.vocab - 1)).eval()
    raise ValueError(f"unknown model {name!r}; known: {', '.join(SIZES)}")


def tokens(batch: int, length: int, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    """Synthetic token batches (ids 1..vocab-1, so GPT-2's pad id 0 never occurs; every position attended)."""
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1, vocab, (batch, length), generator=g),
            "attention_mask": torch.ones(batch, length, dtype=torch.long)}


def _one_shot(model: nn.Module, stages: Any, batches: list[dict[str, torch.Tensor]]) -> nn.Module:
    import slimkit

    return slimkit.one_shot(model, stages, batches)


def pruned_counts(model: nn.Module) -> dict[str, list[int]]:
    """{layer: [zero weights, weights]} of every layer slimkit's default selection prunes."""
    from slimkit.layers import LayerSelection, layer_tensor, select_layers

    return {n: [int((layer_tensor(m) == 0).sum()), layer_tensor(m).numel()]
            for n, m in select_layers(model, LayerSelection()).items()}


def group_counts(model: nn.Module) -> dict[str, int]:
    """{block:kind: heads or neurons it holds}, from the module shapes (transformer.find_blocks)."""
    from slimkit.channels.transformer import find_blocks

    return {f"{b.name}:{b.kind}": b.count for b in find_blocks(model)}


@dataclass
class Form:
    """A compressed model and what was asked of it: `asked` is the share of weights per pruned layer (the masked
    forms) or of heads and neurons per block (the sliced form); `counts` is what the weights or shapes hold."""

    model: nn.Module
    quantized: bool
    asked: dict[str, Any]
    counts: dict[str, Any]


def _masked(stage: dict[str, Any], quantized: bool) -> Callable[[nn.Module, list], Form]:
    def make(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> Form:
        model = _one_shot(model, stage, batches)
        counts = pruned_counts(model)  # before quantization, whose rounding may add zeros of its own
        body = stage["prune"]
        asked = {"layout": f"{body['n']}:{body['m']}" if "n" in body else
                 f"block-{body.get('block', 1)}" if body.get("block", 1) > 1 else "unstructured",
                 "sparsity": body.get("sparsity", 1 - body.get("n", 0) / body.get("m", 1)), "criterion": body["method"]}
        return Form(_one_shot(model, QUANTIZE, batches) if quantized else model, quantized, asked, counts)
    return make


def _heads_and_neurons(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> Form:
    from slimkit.channels.transformer import prune_heads_and_neurons

    before = group_counts(model)
    model, _ = prune_heads_and_neurons(model, heads=0.5, neurons=0.5)
    asked = {"layout": "heads and neurons", "share": 0.5, "groups_before": before}
    return Form(_one_shot(model, QUANTIZE, batches), True, asked, group_counts(model))


FORMS: dict[str, Callable[[nn.Module, list], Form]] = {
    "2:4": _masked({"prune": {"method": "nm", "n": 2, "m": 4}}, False),
    "block4-90 int8": _masked({"prune": {"method": "magnitude", "sparsity": 0.9, "block": 4, "scope": "layer"}}, True),
    "heads50+neurons50 int8": _heads_and_neurons,
    "wanda50 int8": _masked({"prune": {"method": "wanda", "sparsity": 0.5, "calibration_batches": 4}}, True),
    "wanda70 int8": _masked({"prune": {"method": "wanda", "sparsity": 0.7, "calibration_batches": 4}}, True),
}


def layer_lines(manifest: dict[str, Any]) -> dict[str, Any]:
    """What an exported folder's engine.json says ran where: its candidate layers, those on slimkit's operators
    (with the kernel each node ran), and the artifact export_folder chose by measurement."""
    lines = manifest["slimkit_layers"]
    ours = [line for line in lines if str(line["engine"]).startswith("slimkit::")]
    return {"candidates": len(lines), "on_slimkit": len(ours),
            "operators": sorted({f"{line['engine']} ({line.get('kernel', '?')})" for line in ours}),
            "chosen": manifest["choice"]["chosen"], "agreement": manifest["agreement"]}
