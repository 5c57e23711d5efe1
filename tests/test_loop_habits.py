"""The loop habits docs/own-code.md promises to support, each run in a user's own loop with slimkit.prepare:
zero_grad before or after step, best-model deep copies, gradient accumulation, mixed precision (autocast bf16
on the CPU). Each is checked against the same loop without the habit, or against a value taken by hand."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import slimkit
import user_code
from slimkit.sparsity.topk import keep_count

# one-shot scoring on data (SNIP) and Taylor sums between mask updates (gmp): the gradient-reading methods
STAGES = [{"prune": {"method": "snip", "sparsity": 0.5, "scope": "layer"}},
          {"prune": {"method": "gmp", "criterion": "taylor", "initial_sparsity": 0.3, "sparsity": 0.7,
                     "end_epoch": 2}}]
IDS = ["snip", "gmp-taylor"]


def _train(stage: dict, *, zero_grad_after: bool = False, accumulate: int = 1, epochs: int = 3):
    """A regression MLP trained with SGD in a plain loop; `accumulate` micro-batches per optimizer step."""
    torch.manual_seed(0)
    data = TensorDataset(*(t[:352] for t in user_code.regression_data()["train"].tensors))  # 11 batches of 32
    loader = DataLoader(data, batch_size=32)
    micro = DataLoader(data, batch_size=32 // accumulate)
    model = user_code.regression_model()
    compression = slimkit.prepare(model, stage, steps_per_epoch=len(micro) // accumulate, epochs=epochs,
                                  data=loader, loss_fn=F.mse_loss)  # the same scoring batches every way
    optimizer = compression.optimizer(torch.optim.SGD, lr=0.05, momentum=0.9)
    for _ in range(epochs):
        for i, (x, y) in enumerate(micro):
            if not zero_grad_after and i % accumulate == 0:
                optimizer.zero_grad()
            (F.mse_loss(model(x), y) / accumulate).backward()
            if (i + 1) % accumulate == 0:
                optimizer.step()
                if zero_grad_after:
                    optimizer.zero_grad()
    return model, compression


@pytest.mark.parametrize("stage", STAGES, ids=IDS)
def test_zero_grad_before_or_after_step_trains_the_same(stage):
    before, _ = _train(stage)
    after, _ = _train(stage, zero_grad_after=True)
    for (name, a), b in zip(before.state_dict().items(), after.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("stage", STAGES, ids=IDS)
def test_gradient_accumulation_steps_like_the_whole_batch(stage):
    whole, whole_compression = _train(stage)
    accumulated, compression = _train(stage, accumulate=4)
    assert compression.step_count == whole_compression.step_count == 3 * 11  # optimizer steps, not micro-batches
    for name, mask in whole.state_dict().items():
        if name.endswith(".mask"):
            assert torch.equal(mask, accumulated.state_dict()[name]), name
    for (name, a), b in zip(whole.state_dict().items(), accumulated.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name


def test_a_best_model_deep_copy_outlives_finalize():
    torch.manual_seed(0)
    splits = user_code.regression_data()
    loader = DataLoader(splits["train"], batch_size=32)
    x_val, y_val = splits["val"].tensors
    model = user_code.regression_model()
    stage = {"prune": {"method": "gmp", "sparsity": 0.75, "end_epoch": 2}}
    compression = slimkit.prepare(model, stage, steps_per_epoch=len(loader), epochs=3)
    optimizer = compression.optimizer(torch.optim.Adam, lr=1e-2)
    best, best_loss = None, float("inf")
    for _ in range(3):
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            F.mse_loss(model(x), y).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val_loss = F.mse_loss(model(x_val), y_val).item()
        if val_loss < best_loss:
            best, best_loss = copy.deepcopy(model), val_loss  # the usual best-model copy, masks and all
    model = compression.finalize()
    with torch.no_grad():
        assert F.mse_loss(best(x_val), y_val).item() == best_loss  # the copy is the model it was
        best_again = copy.deepcopy(best)
        assert torch.equal(best_again(x_val), best(x_val))
        assert torch.equal(copy.deepcopy(model)(x_val), model(x_val))


def test_mixed_precision_autocast_bf16_on_the_cpu():
    torch.manual_seed(0)
    train = user_code.cnn_data()[0]
    loader = DataLoader(train, batch_size=40)
    teacher, model = user_code.SmallCNN().eval(), user_code.SmallCNN()
    stages = [{"prune": {"method": "gmp", "sparsity": 0.5, "scope": "layer", "end_epoch": 2}},
              {"distill": {"method": "hinton", "teacher": teacher, "temperature": 2.0, "weight": 0.5}}]
    compression = slimkit.prepare(model, stages, steps_per_epoch=len(loader), epochs=3)
    optimizer = compression.optimizer(torch.optim.SGD, lr=0.05, momentum=0.9)
    losses = []
    for _ in range(3):
        for x, y in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x)
                extra = compression.loss(out, (x, y))
                loss = F.cross_entropy(out, y) + extra
            assert out.dtype == torch.bfloat16 and torch.isfinite(extra)
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # the KD term, by hand
                q = torch.softmax(teacher(x).float() / 2.0, 1)
                by_hand = 0.5 * 4.0 * (q * (q.log() - torch.log_softmax(out.float() / 2.0, 1))).sum(1).mean()
            assert extra.item() == pytest.approx(by_hand.item(), rel=1e-3, abs=1e-4)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # weights and their updates stay fp32
    assert sum(losses[-len(loader):]) < sum(losses[:len(loader)])
    model = compression.finalize()
    assert int((model.conv2.weight != 0).sum()) == keep_count(model.conv2.weight.numel(), 0.5)  # exact, as in fp32
    assert bool((model.conv1.weight != 0).all())  # the first conv is skipped by default
