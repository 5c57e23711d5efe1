"""The transformer path of channel pruning: whole attention heads and MLP neurons, sliced for real.

torch.fx cannot follow HF attention (dynamic shapes, cache objects), so transformer blocks are recognised
by their module structure instead, and only structures listed here are touched:

- attention with separate projections: a module holding `query/key/value` (BERT; output projection
  `output.dense` beside it) or `q_proj/k_proj/v_proj/o_proj` (ViT, and most HF models), with the head size
  in `attention_head_size` or `head_dim`;
- fused attention: a module holding `c_attn` (q, k and v side by side) and `c_proj`, with `head_dim` and
  `split_size` (GPT-2);
- MLPs: `intermediate.dense` -> `output.dense` (BERT), `fc1` -> `fc2` (ViT), `c_fc` -> `c_proj` (GPT-2).

A head is removed with its rows of q, k and v and its columns of the output projection; a neuron with its
row of the first MLP layer and its column of the second. The forward passes of these models take the
head count from the tensor (`view(..., -1, head_dim)`), so the sliced block stays an ordinary module of
the same class. Exactness: with a head's value rows (and bias) zeroed it outputs 0, and with a neuron's
input row zeroed the activation (GELU, ReLU: f(0) = 0) outputs 0, so the pruned model equals the original
with those heads and neurons zeroed; `zero_heads_and_neurons` builds that reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from slimkit.errors import UnsupportedLayerError
from slimkit.layers import adapter_of, known_adapter, layer_bias, layer_tensor


@dataclass
class Block:
    """One recognised structure: its groups (heads or neurons) and the layers they slice."""

    name: str
    kind: str  # "heads" or "neurons"
    group: int  # rows per group: the head size, or 1 for a neuron
    count: int  # groups in the block
    outputs: list[str]  # layers whose output rows hold the groups (q, k, v; or the MLP's first layer)
    inputs: list[str]  # layers whose input columns hold the groups (the output projection; the MLP's second)
    fused: int = 1  # q, k, v side by side in one layer (GPT-2's c_attn): 3
    owner: str = ""  # the attention module whose size attributes follow the slicing


def _child(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def find_blocks(model: nn.Module) -> list[Block]:
    """Every attention and MLP structure of `model` that this path knows, in module order."""
    blocks: list[Block] = []
    for name, module in model.named_modules():
        head = getattr(module, "attention_head_size", None) or getattr(module, "head_dim", None)
        if all(_child(module, c) is not None for c in ("query", "key", "value")) and head:
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            out = _join(parent, "output.dense")
            if _child(model, out) is None:
                continue
            rows = canonical_rows(model.get_submodule(_join(name, "query")))
            blocks.append(Block(name, "heads", head, rows // head, [_join(name, c) for c in ("query", "key", "value")],
                                [out], owner=name))
        elif all(_child(module, c) is not None for c in ("q_proj", "k_proj", "v_proj", "o_proj")) and head:
            rows = canonical_rows(module.q_proj)
            blocks.append(Block(name, "heads", head, rows // head, [_join(name, c) for c in ("q_proj", "k_proj",
                                                                                           "v_proj")],
                                [_join(name, "o_proj")], owner=name))
        elif _child(module, "c_attn") is not None and _child(module, "c_proj") is not None and head \
                and hasattr(module, "split_size"):
            rows = canonical_rows(module.c_attn) // 3
            blocks.append(Block(name, "heads", head, rows // head, [_join(name, "c_attn")], [_join(name, "c_proj")],
                                fused=3, owner=name))
        for first, second in (("intermediate.dense", "output.dense"), ("fc1", "fc2"), ("c_fc", "c_proj")):
            up, down = _child(module, first), _child(module, second)
            if up is not None and down is not None and adapter_of(up) and adapter_of(down):
                blocks.append(Block(name, "neurons", 1, canonical_rows(up), [_join(name, first)],
                                    [_join(name, second)]))
    return blocks


def canonical_rows(layer: nn.Module) -> int:
    adapter = adapter_of(layer)
    if adapter is None or adapter.kind != "linear":
        raise UnsupportedLayerError(f"{type(layer).__name__} is not a linear layer slimkit knows")
    return adapter.canonical(layer_tensor(layer)).shape[0]


def _canonical(layer: nn.Module) -> Tensor:
    return known_adapter(layer).canonical(layer_tensor(layer).detach())


def group_scores(model: nn.Module, block: Block) -> Tensor:
    """L1 norm of each group's weights: its output rows and its input columns, over every layer it spans."""
    scores = torch.zeros(block.count, device=layer_tensor(model.get_submodule(block.outputs[0])).device)
    for name in block.outputs:
        w = _canonical(model.get_submodule(name))
        scores += w.abs().reshape(block.fused, block.count, block.group, -1).sum((0, 2, 3))
    for name in block.inputs:
        w = _canonical(model.get_submodule(name))
        scores += w.abs().reshape(w.shape[0], block.count, block.group).sum((0, 2))
    return scores


@torch.no_grad()
def _slice(layer: nn.Module, rows: list[int] | None, cols: list[int] | None) -> None:
    """Keep canonical output `rows` and input `cols` of a linear-like layer, in place."""
    adapter = known_adapter(layer)
    weight = adapter.canonical(layer_tensor(layer).detach())
    bias = layer_bias(layer)
    if rows is not None:
        weight = weight[rows]
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach()[rows].clone())
    if cols is not None:
        weight = weight[:, cols]
    layer.weight = nn.Parameter(adapter.stored(weight).contiguous().clone())
    for attr, value in (("out_features", weight.shape[0]), ("in_features", weight.shape[1]), ("nf", weight.shape[0])):
        if hasattr(layer, attr):
            setattr(layer, attr, value)


def _group_rows(block: Block, keep: list[int]) -> list[int]:
    per = [g * block.group + i for g in keep for i in range(block.group)]
    width = block.count * block.group
    return [part * width + r for part in range(block.fused) for r in per]


def apply_block(model: nn.Module, block: Block, keep: list[int]) -> None:
    """Slice one block down to the groups in `keep` (sorted indices into the block's current groups)."""
    keep = sorted(keep)
    if not keep:
        raise UnsupportedLayerError(f"{block.name}: removing every {block.kind[:-1]} would disconnect the block")
    rows = _group_rows(block, keep)
    for name in block.outputs:
        _slice(model.get_submodule(name), rows, None)
    for name in block.inputs:
        _slice(model.get_submodule(name), None, [g * block.group + i for g in keep for i in range(block.group)])
    if block.owner:
        owner = model.get_submodule(block.owner)
        width = len(keep) * block.group
        for attr, value in (("num_attention_heads", len(keep)), ("num_heads", len(keep)), ("all_head_size", width),
                            ("split_size", width), ("embed_dim", width)):
            if attr in vars(owner):
                setattr(owner, attr, value)
    block.count = len(keep)


def prune_heads_and_neurons(model: nn.Module, *, heads: float = 0.0, neurons: float = 0.0,
                            min_groups: int = 1) -> tuple[nn.Module, dict[str, Any]]:
    """Remove the `heads` share of every attention block's heads and the `neurons` share of every MLP's
    neurons (lowest L1 first, at least `min_groups` kept), in place. Returns the model and the plan
    {block name: {"kind", "keep"}} that `apply_transformer_plan` re-applies to a fresh model."""
    if not (0 <= heads < 1 and 0 <= neurons < 1):
        raise UnsupportedLayerError(f"heads and neurons are shares in [0, 1); got heads={heads}, neurons={neurons}")
    blocks = find_blocks(model)
    if not blocks:
        raise UnsupportedLayerError(f"{type(model).__name__} has no attention or MLP block slimkit recognises; "
                                    f"the transformer path knows BERT-, ViT- and GPT-2-style blocks (see "
                                    f"slimkit.channels.transformer)")
    plan: dict[str, Any] = {}
    for block in blocks:
        share = heads if block.kind == "heads" else neurons
        drop = min(int(block.count * share), block.count - min_groups)
        if drop <= 0:
            continue
        order = torch.sort(group_scores(model, block), descending=True, stable=True).indices.tolist()
        keep = sorted(order[: block.count - drop])
        apply_block(model, block, keep)
        plan[block.name + f":{block.kind}"] = {"kind": block.kind, "keep": keep}
    return model, plan


def apply_transformer_plan(model: nn.Module, plan: dict[str, Any]) -> nn.Module:
    """Re-apply a plan from `prune_heads_and_neurons` to a freshly built model of the same architecture."""
    blocks = {f"{b.name}:{b.kind}": b for b in find_blocks(model)}
    for key, entry in plan.items():
        if key not in blocks:
            raise UnsupportedLayerError(f"the plan names {key!r}, which this model does not have")
        apply_block(model, blocks[key], list(entry["keep"]))
    return model


@torch.no_grad()
def zero_heads_and_neurons(model: nn.Module, plan: dict[str, Any]) -> nn.Module:
    """The dead-group reference: the removed heads' value rows and the removed neurons' input rows (with
    their biases) zeroed in an unpruned model, so each removed group outputs exactly 0."""
    blocks = {f"{b.name}:{b.kind}": b for b in find_blocks(model)}
    for key, entry in plan.items():
        block = blocks[key]
        removed = [g for g in range(block.count) if g not in set(entry["keep"])]
        rows = [g * block.group + i for g in removed for i in range(block.group)]
        if block.kind == "heads":  # the value projection: the last of q, k, v
            layer = model.get_submodule(block.outputs[-1])
            rows = [(block.fused - 1) * block.count * block.group + r for r in rows]
        else:
            layer = model.get_submodule(block.outputs[0])
        adapter = known_adapter(layer)
        weight = adapter.canonical(layer_tensor(layer).data).clone()
        weight[rows] = 0
        layer_tensor(layer).data.copy_(adapter.stored(weight))
        bias = layer_bias(layer)
        if bias is not None:
            bias.data[rows] = 0
    return model
