"""Wanda and SparseGPT end to end on HF transformers built from configs with random init (nothing downloaded):
GPT-2 (HF's Conv1D, weights stored (in, out), lm_head tied to the token embedding) and BERT (nn.Linear, dict
batches with an attention mask and labels)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

import slimkit  # noqa: E402
from slimkit.layers import canonical_weight  # noqa: E402
from slimkit.sparsity.blocks import is_block_sparse  # noqa: E402
from slimkit.sparsity.nm import is_nm  # noqa: E402

transformers.logging.set_verbosity_error()
HIDDEN, LAYERS, VOCAB, TOKENS = 32, 2, 100, 12


def gpt2(dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=32, bos_token_id=0,
        eos_token_id=0)).to(dtype).eval()


def bert(dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32, num_labels=3)).to(dtype).eval()


def batches(count: int = 4) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(1, VOCAB, (4, TOKENS), generator=g),
             "attention_mask": torch.ones(4, TOKENS, dtype=torch.long),
             "labels": torch.randint(0, 3, (4,), generator=g)} for _ in range(count)]


def pruned_layers(model) -> dict[str, torch.nn.Module]:
    """Every Linear and Conv1D of the blocks (BERT's pooler too); not the heads."""
    return {n: m for n, m in model.named_modules()
            if type(m).__name__ in ("Linear", "Conv1D") and n not in ("lm_head", "classifier")}


LAYOUTS = [{"sparsity": 0.5}, {"n": 2, "m": 4}, {"sparsity": 0.5, "block": 4}]


@pytest.mark.parametrize("build", [gpt2, bert], ids=["gpt2", "bert"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=["unstructured", "2:4", "block4"])
def test_transformers_are_pruned_end_to_end_in_every_layout(build, method, layout):
    model = build()
    embedding = model.get_input_embeddings().weight.detach().clone()
    grad_layer = next(iter(pruned_layers(model).values()))
    grad_layer.weight.grad = torch.ones_like(grad_layer.weight)
    grad = grad_layer.weight.grad
    stage = {"prune": {"method": method, "calibration_batches": 4, "layers": {"types": ["linear"]}, **layout}}
    pruned = slimkit.one_shot(model, stage, batches())
    for name, layer in pruned_layers(pruned).items():
        weight = canonical_weight(layer)  # (out, in), whatever the storage
        zeros, target = int((weight == 0).sum()), round(0.5 * weight.numel())
        if "n" in layout:
            assert is_nm(weight, 2, 4) and zeros == target, name
        elif "block" in layout:
            assert is_block_sparse(weight, 4) and 0 <= target - zeros < 4 * weight.shape[0], name
        else:
            assert zeros == target, name
    assert torch.equal(pruned.get_input_embeddings().weight, embedding)  # the tied head is left alone
    assert grad_layer.weight.grad is grad and bool((grad == 1).all())
    with torch.no_grad():
        logits = pruned(**{k: v for k, v in batches(1)[0].items() if k != "labels"}).logits
    assert torch.isfinite(logits).all()


def test_query_key_and_value_read_one_tensor_and_are_measured_together():
    stage = {"prune": {"method": "sparsegpt", "sparsity": 0.5, "layers": {"types": ["linear"]}}}
    compression = slimkit.prepare(bert(), stage, steps_per_epoch=1, epochs=0, data=batches())
    # per block: {query, key, value}, attention.output.dense, intermediate.dense, output.dense; then the pooler
    assert compression.summaries()[0]["calibration"] == {"batches": 4, "groups": 4 * LAYERS + 1}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64], ids=str)
def test_gpt2_keeps_its_dtype(dtype):
    stage = {"prune": {"method": "sparsegpt", "sparsity": 0.5, "layers": {"types": ["linear"]}}}
    pruned = slimkit.one_shot(gpt2(dtype), stage, batches())
    assert {p.dtype for p in pruned.parameters()} == {dtype}
    weight = pruned.transformer.h[0].mlp.c_fc.weight
    assert int((weight == 0).sum()) == round(0.5 * weight.numel())


@pytest.mark.parametrize("build", [gpt2, bert], ids=["gpt2", "bert"])
def test_sparsegpt_keeps_the_outputs_closer_than_wanda_and_magnitude(build):
    """On the calibration batches, whose outputs SparseGPT reconstructs layer by layer."""
    calibration = batches(8)
    inputs = {k: torch.cat([b[k] for b in calibration]) for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        reference = build()(**inputs).logits
    errors = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        stage = {"method": method, "sparsity": 0.5, "layers": {"types": ["linear"]},
                 **({"scope": "layer"} if method == "magnitude" else {})}
        pruned = slimkit.one_shot(build(), {"prune": stage}, calibration)
        with torch.no_grad():
            errors[method] = float((pruned(**inputs).logits - reference).pow(2).mean())
    assert errors["sparsegpt"] < errors["magnitude"] and errors["sparsegpt"] < errors["wanda"], errors
