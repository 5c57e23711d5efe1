"""HF transformers built from configs with random init (nothing is downloaded): BERT and ViT hold nn.Linear,
GPT-2 holds HF's Conv1D (weight stored (in, out)) and ties lm_head to the token embedding."""

from __future__ import annotations

import os

import pytest
import torch
from torch.nn import functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

import slimkit  # noqa: E402
from slimkit.errors import UnsupportedLayerError  # noqa: E402
from slimkit.layers import LayerSelection, canonical_weight, select_layers  # noqa: E402
from slimkit.quant.attach import weight_quantization  # noqa: E402
from slimkit.sparsity.masks import masked_layers  # noqa: E402
from slimkit.sparsity.nm import is_nm  # noqa: E402

transformers.logging.set_verbosity_error()
HIDDEN, LAYERS, VOCAB, TOKENS = 32, 2, 100, 8


def gpt2():
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=32, bos_token_id=0,
        eos_token_id=0)).eval()


def bert():
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=32, num_labels=3)).eval()


def vit():
    torch.manual_seed(0)
    return transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=4, intermediate_size=64, num_labels=5)).eval()


def ids(batch: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(1, VOCAB, (batch, TOKENS), generator=g),
            "attention_mask": torch.ones(batch, TOKENS, dtype=torch.long)}


def _gpt2_conv1d_names(model) -> list[str]:
    return [n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"]


def _prepare(model, stage, epochs: int = 1):
    compression = slimkit.prepare(model, stage, steps_per_epoch=1, epochs=epochs)
    compression.optimizer(torch.optim.SGD, lr=0.0)  # the epoch starts (one-shot methods prune) here
    return compression


def test_every_linear_covers_gpt2_conv1d_and_leaves_the_tied_head_alone():
    model = gpt2()
    embedding = model.transformer.wte.weight.detach().clone()
    stage = {"prune": {"method": "magnitude", "sparsity": 0.8, "scope": "layer", "layers": {"types": ["linear"]}}}
    model = _prepare(model, stage).finalize()
    convs = _gpt2_conv1d_names(model)
    assert len(convs) == 4 * LAYERS
    for name in convs:
        weight = model.get_submodule(name).weight
        assert int((weight == 0).sum()) == round(0.8 * weight.numel()), name
    assert torch.equal(model.transformer.wte.weight, embedding)  # the tied lm_head/embedding is untouched


def test_a_tied_weight_is_refused_naming_both_owners():
    with pytest.raises(UnsupportedLayerError, match=r"lm_head.weight is the same tensor as transformer.wte.weight"):
        select_layers(gpt2(), LayerSelection(types=["linear"], include=["lm_head"], skip_last_linear=False))


def test_nm_groups_run_along_the_inputs_of_conv1d():
    model = _prepare(gpt2(), {"prune": {"method": "nm", "n": 2, "m": 4}}).finalize()
    for name in _gpt2_conv1d_names(model)[1:]:  # the default selection skips nothing here but lm_head
        layer = model.get_submodule(name)
        assert is_nm(canonical_weight(layer), 2, 4), name
        assert not is_nm(layer.weight, 2, 4) or layer.weight.shape[0] % 4 != 0  # stored (in, out): not along rows


def test_optg_on_bert_hits_exact_counts_in_a_user_loop():
    model = bert().train()
    # global OptG would empty query and key (their score gradients are ~0 at random init): capped per layer
    stage = {"prune": {"method": "optg", "sparsity": 0.7, "max_layer_sparsity": 0.95}}
    compression = slimkit.prepare(model, stage, steps_per_epoch=2, epochs=2)
    optimizer = compression.optimizer(torch.optim.SGD, lr=0.05)
    batch = ids(4)
    labels = torch.tensor([0, 1, 2, 1])
    for _ in range(4):
        loss = F.cross_entropy(model(**batch).logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    layers = list(masked_layers(model))
    model = compression.finalize()
    weights = [model.get_submodule(n).weight for n in layers]
    assert sum(int((w == 0).sum()) for w in weights) == round(0.7 * sum(w.numel() for w in weights))


def test_qat_on_conv1d_quantizes_per_output_channel():
    stage = {"quantize": {"method": "uniform", "bits": 8, "first_last_bits": None, "calibration_batches": 0}}
    model = gpt2()
    _prepare(model, stage)
    layer = model.transformer.h[0].attn.c_attn  # Conv1D (32 -> 96), weight stored (32, 96)
    quantizer = weight_quantization(layer).quantizer
    assert quantizer.step.numel() == 96
    grid = layer.weight.detach().t() / quantizer.step.detach()[:, None]  # output channel rows
    assert torch.allclose(grid, grid.round(), atol=1e-3)


def test_binary_linear_scales_the_feature_dimension_of_token_inputs():
    from slimkit.binary.layers import BinaryLinear

    model = gpt2()
    _prepare(model, {"binarize": {"method": "xnor"}})
    layer = model.transformer.h[0].mlp.c_fc
    assert isinstance(layer, BinaryLinear) and layer.weight.shape == (128, HIDDEN)
    x = torch.randn(2, TOKENS, HIDDEN)
    signs, scale = layer.weight_binarizer(layer.weight)
    expected = F.linear(torch.sign(x), signs) * scale.reshape(-1) + layer.bias
    assert torch.allclose(layer.eval()(x), expected, atol=1e-5)
    assert torch.isfinite(model(**ids()).logits).all()


def test_measure_counts_conv1d_macs_on_token_ids():
    result = slimkit.measure(gpt2(), ids(1), latency=False)
    per_token = LAYERS * (HIDDEN * 3 * HIDDEN + HIDDEN * HIDDEN + HIDDEN * 4 * HIDDEN + 4 * HIDDEN * HIDDEN)
    assert result.macs == TOKENS * (per_token + HIDDEN * VOCAB)
    assert result.input_shape == {"input_ids": [TOKENS], "attention_mask": [TOKENS]}


def test_deployed_sparse_bert_runs_token_inputs_like_eval():
    stage = {"prune": {"method": "magnitude", "sparsity": 0.9, "scope": "layer"}}
    model = _prepare(bert(), stage).finalize()
    example = ids(3)
    fast = slimkit.deploy(model)  # no example: every candidate is replaced
    deployed = [e["layer"] for e in fast.deploy_report if e["choice"] == "deployed"]
    assert any("intermediate" in name for name in deployed)
    with torch.inference_mode():
        assert torch.allclose(fast(**example).logits, model(**example).logits, atol=1e-5)
    timed = slimkit.deploy(model, example)  # timed on token inputs: works, and stays exact
    with torch.inference_mode():
        assert torch.allclose(timed(**example).logits, model(**example).logits, atol=1e-5)


def test_deployed_sparse_gpt2_conv1d_matches_eval():
    stage = {"prune": {"method": "magnitude", "sparsity": 0.9, "scope": "layer", "layers": {"types": ["linear"]}}}
    model = _prepare(gpt2(), stage).finalize()
    fast = slimkit.deploy(model)
    assert any(e["layer"].endswith("c_fc") and e["choice"] == "deployed" for e in fast.deploy_report)
    with torch.inference_mode():
        assert torch.allclose(fast(**ids()).logits, model(**ids()).logits, atol=1e-4)


def test_vit_masks_and_measure():
    model = _prepare(vit(), {"prune": {"method": "gmp", "sparsity": 0.5, "scope": "layer"}}).finalize()
    layer = model.vit.layers[0].mlp.fc1
    assert int((layer.weight == 0).sum()) == round(0.5 * layer.weight.numel())
    result = slimkit.measure(model, (3, 16, 16), latency=False)
    assert result.macs > 0 and 0 < result.sparsity < 0.5


def pixels() -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))}


@pytest.mark.parametrize("build,inputs", [(bert, ids), (gpt2, ids), (vit, pixels)], ids=["bert", "gpt2", "vit"])
def test_heads_and_neurons_are_removed_for_real_and_match_the_dead_group_reference(build, inputs):
    import copy

    from slimkit.channels.transformer import apply_transformer_plan, find_blocks, zero_heads_and_neurons

    model, example = build(), inputs()
    pruned, plan = slimkit.channels.prune_heads_and_neurons(copy.deepcopy(model), heads=0.5, neurons=0.5)
    assert {entry["kind"] for entry in plan.values()} == {"heads", "neurons"}
    blocks = find_blocks(pruned)
    assert [b.count for b in blocks if b.kind == "heads"] == [2] * LAYERS  # 4 heads -> 2 in every block
    reference = zero_heads_and_neurons(copy.deepcopy(model), plan)
    with torch.no_grad():
        got, expected, original = (m(**example).logits for m in (pruned, reference, model))
    assert torch.allclose(got, expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(got, original, atol=1e-6, rtol=1e-3)  # and pruning did change the function
    assert sum(p.numel() for p in pruned.parameters()) < 0.75 * sum(p.numel() for p in model.parameters())
    rebuilt = apply_transformer_plan(build(), plan)  # a fresh model takes the plan, then the weights
    rebuilt.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(**example).logits, got)


def test_a_model_without_known_blocks_is_refused():
    with pytest.raises(UnsupportedLayerError, match="no attention or MLP block slimkit recognises"):
        slimkit.channels.prune_heads_and_neurons(torch.nn.Sequential(torch.nn.Linear(4, 4)), heads=0.5)


def test_the_channel_graph_names_the_module_it_cannot_trace():
    from slimkit.channels import UnsupportedOpError, build_graph

    with pytest.raises(UnsupportedOpError, match=r"cannot trace module '<top level>' \(BertForSequence"):
        build_graph(bert(), ids()["input_ids"])


def test_deployed_binary_bert_runs_token_inputs_bit_exactly():
    model = bert()
    compression = _prepare(model, {"binarize": {"method": "xnor"}})
    model = compression.finalize()
    fast = slimkit.deploy(model)
    assert sum(e["choice"] == "deployed" and e["kind"] == "binary" for e in fast.deploy_report) >= 2 * LAYERS
    with torch.inference_mode():
        assert torch.allclose(fast(**ids(3)).logits, model(**ids(3)).logits, atol=1e-5)
