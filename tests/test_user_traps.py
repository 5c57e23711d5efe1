"""Traps a user met with their own models, loops, dtypes and habits (issue 29): each test compares slimkit with
an independently computed result (a KL over the vocabulary by hand, a clean SGD step, parameter counts from
the set of tensors, output dtypes), so a silently wrong answer fails as loudly as a crash."""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

import slimkit
import user_code
from slimkit.errors import SlimkitError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
VOCAB, TOKENS = 100, 8


def _transformers():
    """HF transformers, for the tests that build its models (from configs, with random init: nothing is
    downloaded); only those tests are skipped where it is not installed."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    return transformers


def gpt2(seed: int = 0) -> nn.Module:
    transformers = _transformers()
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=0, eos_token_id=0))


def bert() -> nn.Module:
    transformers = _transformers()
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=32, num_labels=3)).eval()


def token_ids(batch: int = 2, tokens: int = TOKENS) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, tokens), generator=torch.Generator().manual_seed(1))


def _kl_by_hand(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * mean over every token of sum over the vocabulary of q (log q - log p)."""
    q = torch.softmax(teacher.double() / temperature, -1)
    log_p = torch.log_softmax(student.double() / temperature, -1)
    return temperature**2 * (q * (q.log() - log_p)).sum(-1).mean()


# --- distillation normalises over the classes --------------------------------------------------------

def test_hinton_kd_on_token_logits_is_the_kl_over_the_vocabulary():
    student, teacher = gpt2(0), gpt2(1).eval()
    stage = {"distill": {"method": "hinton", "teacher": teacher, "temperature": 2.0, "weight": 1.0}}
    compression = slimkit.prepare(student, stage, steps_per_epoch=1, epochs=1)
    ids = token_ids()
    batch = {"input_ids": ids, "labels": ids}  # HF's causal-LM batch: labels (N, T) mark the last dim
    outputs = student(input_ids=ids)
    with torch.no_grad():
        expected = _kl_by_hand(outputs.logits, teacher(input_ids=ids).logits, 2.0)
    assert outputs.logits.shape == (2, TOKENS, VOCAB)
    assert compression.loss(outputs, batch).item() == pytest.approx(expected.item(), rel=1e-4)  # float32 sums


def test_hinton_kd_takes_the_class_dim_the_stage_names_and_refuses_to_guess():
    student, teacher = gpt2(0), gpt2(1).eval()
    ids = token_ids()
    outputs = student(input_ids=ids)
    ambiguous = slimkit.prepare(student, {"distill": {"method": "hinton", "teacher": teacher}}, steps_per_epoch=1,
                                epochs=1)
    with pytest.raises(SlimkitError, match=r"logits of shape \(2, 8, 100\).*set class_dim"):
        ambiguous.loss(outputs, {"input_ids": ids})  # no target: (N, T, V) and (N, C, L) look alike
    named = slimkit.prepare(gpt2(0), {"distill": {"method": "hinton", "teacher": teacher, "temperature": 3.0,
                                                  "class_dim": -1}}, steps_per_epoch=1, epochs=1)
    with torch.no_grad():
        expected = _kl_by_hand(outputs.logits, teacher(input_ids=ids).logits, 3.0)
    assert named.loss(outputs, {"input_ids": ids}).item() == pytest.approx(expected.item(), rel=1e-4)


def test_hinton_kd_on_channel_first_logits_follows_the_target():
    from slimkit.distill.losses import hinton_kd

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 5, 7, generator=g), torch.randn(4, 5, 7, generator=g)  # (N, C, L): 5 classes, 7 positions
    expected = _kl_by_hand(s.movedim(1, -1), t.movedim(1, -1), 4.0)
    assert hinton_kd(s, t, 4.0, class_dim=1).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(SlimkitError, match="needs class_dim"):
        hinton_kd(s, t, 4.0)


# --- scoring leaves the user's gradients alone ---------------------------------------------------------

SCORING = [{"prune": {"method": "snip", "sparsity": 0.5, "scope": "layer"}},
           {"prune": {"method": "gmp", "criterion": "taylor", "initial_sparsity": 0.3, "sparsity": 0.6}}]


def _scored(stage: dict) -> tuple[nn.Module, DataLoader, slimkit.Compression]:
    """A regression MLP prepared with a method that scores on the user's data and loss."""
    torch.manual_seed(0)
    model, loader = user_code.regression_model(), DataLoader(user_code.regression_data()["train"], batch_size=32)
    return model, loader, slimkit.prepare(model, stage, steps_per_epoch=len(loader), epochs=2, data=loader,
                                          loss_fn=F.mse_loss)


@pytest.mark.parametrize("stage", SCORING, ids=["snip", "gmp-taylor"])
def test_scoring_leaves_every_grad_as_it_found_it(stage):
    model, _, compression = _scored(stage)
    params = list(model.parameters())
    found = [None if i % 2 else torch.full_like(p, 0.5) for i, p in enumerate(params)]  # None and values alike
    for p, grad in zip(params, found, strict=True):
        p.grad = grad
    compression.optimizer(torch.optim.SGD, lr=0.1)  # scores one batch now
    assert sum(int((m.weight == 0).sum()) for m in (model[0], model[2])) > 0  # it did score and prune
    for p, grad in zip(params, found, strict=True):
        assert p.grad is grad  # the same tensor with the same values, or still None


@pytest.mark.parametrize("stage", SCORING, ids=["snip", "gmp-taylor"])
def test_the_first_step_of_a_zero_grad_after_step_loop_is_a_clean_sgd_step(stage):
    model, loader, compression = _scored(stage)
    optimizer = compression.optimizer(torch.optim.SGD, lr=0.1)
    reference = copy.deepcopy(model)  # the pruned model, before any training step
    x, y = next(iter(loader))
    F.mse_loss(model(x), y).backward()  # the Hugging Face course's order: backward, step, zero_grad
    optimizer.step()
    optimizer.zero_grad()
    for p in reference.parameters():
        p.grad = None
    F.mse_loss(reference(x), y).backward()
    with torch.no_grad():
        for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
            assert torch.allclose(p, q - 0.1 * q.grad, atol=1e-7, rtol=0), name


# --- the manual stepping path refuses an optimizer built before prepare -------------------------------

def test_a_manual_step_after_layers_were_replaced_is_refused():
    from slimkit.models import lenet

    torch.manual_seed(0)
    model = lenet(in_channels=1, input_size=8)
    stale = torch.optim.SGD(model.parameters(), lr=0.1)  # built before prepare: holds the float layers' tensors
    compression = slimkit.prepare(model, {"binarize": {"method": "xnor"}}, steps_per_epoch=2, epochs=1)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    F.cross_entropy(model(x), y).backward()
    stale.step()
    with pytest.raises(SlimkitError, match=r"binarize:xnor replaced the model's parameters.*compression.wrap"):
        compression.step()


def test_a_manual_step_still_serves_methods_that_replace_nothing():
    torch.manual_seed(0)
    model = user_code.regression_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # built before prepare: masks keep the tensors
    compression = slimkit.prepare(model, {"prune": {"method": "magnitude", "sparsity": 0.5}}, steps_per_epoch=2,
                                  epochs=1)
    compression.step()  # the documented manual path: the epoch starts and the masks are set
    kept = model[2].parametrizations.weight[0].mask.clone()
    before = model[2].parametrizations.weight.original.detach().clone()
    x, y = torch.randn(8, 6), torch.randn(8, 1)
    F.mse_loss(model(x), y).backward()
    grad = model[2].parametrizations.weight.original.grad.clone()
    optimizer.step()
    compression.step()
    after = model[2].parametrizations.weight.original.detach()
    assert torch.allclose(after, before - 0.1 * grad, atol=1e-7) and (grad[~kept] == 0).all()


# --- measurement ----------------------------------------------------------------------------------------

def test_measure_counts_a_tied_weight_once():
    model = gpt2().eval()
    assert model.lm_head.weight is model.transformer.wte.weight
    unique = {id(p): p for m in model.modules() for p in m.parameters(recurse=False)}
    buffers = {id(b): b for m in model.modules() for b in m.buffers(recurse=False) if b.is_floating_point()}
    measured = slimkit.measure(model, {"input_ids": token_ids(1)}, latency=False)
    assert measured.params == sum(p.numel() for p in unique.values())
    assert measured.dense_bytes == (sum(p.numel() * p.element_size() for p in unique.values())
                                    + sum(b.numel() * b.element_size() for b in buffers.values()))
    lm_head = next(layer for layer in measured.layers if layer.name == "lm_head")
    assert lm_head.params == VOCAB * 32  # the layer's own row still shows its weight


@pytest.mark.parametrize("build", [gpt2, bert], ids=["gpt2", "bert"])
def test_measure_from_a_shape_feeds_token_ids_to_an_embedding(build):
    model = build().eval()
    from_shape = slimkit.measure(model, (16,), latency=False)
    from_ids = slimkit.measure(model, {"input_ids": torch.zeros(1, 16, dtype=torch.long)}, latency=False)
    assert from_shape.macs == from_ids.macs > 0
    assert from_shape.input_shape == [16]


def test_measure_from_a_shape_feeds_a_float64_model_float64():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    assert slimkit.measure(model, (4,), latency=False).macs == 4 * 8 + 8 * 2


def test_measure_from_a_shape_the_model_cannot_take_asks_for_an_example():
    class IdsLast(nn.Module):  # registers a float layer first, but its forward starts at the embedding
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(8, 2)
            self.embed = nn.Embedding(10, 8)

        def forward(self, ids):
            return self.head(self.embed(ids))

    with pytest.raises(SlimkitError, match=r"per-sample shape \(5,\).*pass an example input"):
        slimkit.measure(IdsLast(), (5,), latency=False)
    assert slimkit.measure(IdsLast(), torch.zeros(1, 5, dtype=torch.long), latency=False).macs == 5 * 8 * 2


# --- dtypes ---------------------------------------------------------------------------------------------

def test_deploy_keeps_a_float64_model_float64_and_says_why():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8)).double().eval()
    with torch.no_grad():
        model[2].weight[torch.rand(8, 64) < 0.9] = 0  # the output layer: a sparse kernel candidate
    x = torch.randn(4, 16, dtype=torch.float64)
    deployed = slimkit.deploy(model)  # no example: every candidate is replaced, none is timed
    with torch.no_grad():
        out, expected = deployed(x), model(x)
    assert out.dtype == torch.float64 and torch.equal(out, expected)
    entry = next(e for e in deployed.deploy_report if e["layer"] == "2")
    assert entry["choice"] == "dense" and "float64 weights: the kernels compute in float32" in entry["reason"]
    assert type(slimkit.deploy(model.float())[2]).__name__ == "SparseLinear"  # float32 layers still deploy


def test_array_dataset_keeps_float_targets_as_they_are():
    from slimkit.data import ArrayDataset

    images, stats = torch.zeros(3, 1, 2, 2), (torch.zeros(1), torch.ones(1), 1.0)
    targets = torch.tensor([-0.59, 1.67, -4.75])
    regression = ArrayDataset(images, targets, *stats)
    assert torch.equal(regression[0][1], targets[0]) and regression[2][1].dtype == torch.float32
    classes = ArrayDataset(images, torch.tensor([0, 2, 1], dtype=torch.uint8), *stats)
    assert classes[1][1].dtype == torch.int64 and int(classes[1][1]) == 2
    with pytest.raises(SlimkitError, match=r"torch\.bool"):
        ArrayDataset(images, torch.tensor([True, False, True]), *stats)


def test_prune_channels_keeps_a_float64_cnn_float64_and_exact():
    from slimkit.channels import build_graph, plan_pruning, prune_channels
    from slimkit.channels.plan import zero_channels

    torch.manual_seed(0)
    model = user_code.SmallCNN().double().eval()
    x = torch.randn(4, 3, 12, 12, dtype=torch.float64)
    graph = build_graph(copy.deepcopy(model), x[:1])
    plan = plan_pruning(copy.deepcopy(model), x[:1], ratio=0.5)
    removed = {graph.find(graph.producers[name][i]) for name, entry in plan.modules.items() if "out" in entry
               for i in range(len(graph.producers[name])) if i not in entry["out"]}
    reference = zero_channels(copy.deepcopy(model), graph, removed)  # the same function with channels zeroed
    pruned, _ = prune_channels(model, x[:1], ratio=0.5)
    assert pruned.conv1.out_channels + pruned.conv2.out_channels == (8 + 16) // 2
    assert {t.dtype for t in (*pruned.parameters(), *pruned.buffers()) if t.is_floating_point()} == {torch.float64}
    with torch.no_grad():
        assert torch.allclose(pruned(x), reference(x), atol=1e-12, rtol=0)


def test_prune_channels_on_a_token_major_feed_forward_points_to_heads_and_neurons():
    from slimkit.channels import prune_channels

    class FeedForward(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = nn.Linear(8, 16), nn.Linear(16, 8)

        def forward(self, x):
            return self.down(torch.relu(self.up(x)))

    with pytest.raises(SlimkitError, match=r"use slimkit\.channels\.prune_heads_and_neurons") as error:
        prune_channels(FeedForward(), torch.randn(1, 5, 8), ratio=0.5)
    assert "use l1" not in str(error.value)


# --- the prepare() lifecycle ---------------------------------------------------------------------------

@pytest.mark.parametrize("stages", [
    [{"prune": {"method": "magnitude", "sparsity": 0.5}}],
    [{"prune": {"method": "magnitude", "sparsity": 0.5}},
     {"quantize": {"method": "uniform", "bits": 8, "calibration_batches": 0}}],
], ids=["prune", "prune+quantize"])
def test_a_copy_taken_during_training_survives_finalize(stages):
    torch.manual_seed(0)
    model = user_code.regression_model()
    compression = slimkit.prepare(model, stages, steps_per_epoch=1, epochs=1)
    optimizer = compression.optimizer(torch.optim.SGD, lr=0.05)
    x, y = torch.randn(16, 6), torch.randn(16, 1)
    F.mse_loss(model(x), y).backward()
    optimizer.step()
    best = copy.deepcopy(model).eval()  # the usual best-model copy, while parametrized
    with torch.no_grad():
        expected = best(x).clone()
    finalized = compression.finalize()
    with torch.no_grad():
        assert torch.equal(best(x), expected)  # the copy still reads its own parametrized weight
        assert torch.equal(copy.deepcopy(finalized)(x), finalized(x))  # and a copy after finalize works too
        assert torch.equal(finalized(x), expected)


def test_a_finished_qat_model_reloads_without_training_data():
    torch.manual_seed(0)
    train = user_code.regression_data()["train"]
    loader = DataLoader(train, batch_size=32)
    stage = {"quantize": {"method": "uniform", "bits": 4}}
    model = user_code.regression_model()
    compression = slimkit.prepare(model, stage, steps_per_epoch=len(loader), epochs=1, data=loader,
                                  loss_fn=F.mse_loss)
    optimizer = compression.optimizer(torch.optim.Adam, lr=1e-3)
    for x, y in loader:
        optimizer.zero_grad()
        F.mse_loss(model(x), y).backward()
        optimizer.step()
    model = compression.finalize()
    saved = {"model": copy.deepcopy(model.state_dict()), "compression": compression.state_dict()}
    fresh = user_code.regression_model()
    slimkit.prepare(fresh, stage, steps_per_epoch=1, epochs=1, state=saved["compression"])  # no data
    fresh.load_state_dict(saved["model"])
    x = train.tensors[0][:64]
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model(x))
