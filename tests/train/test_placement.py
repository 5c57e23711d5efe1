"""Every method creates its tensors beside the weights they belong to, so that it runs with the model on any
device: masks, scores, binarizer and quantizer state, indices and constants."""

import copy

import pytest
import torch
from torch import nn

from slimkit.recipe import build_modifier, parse_stage
from slimkit.train import Compression


class _Net(nn.Module):
    """3x3 convs with BN (PatDNN, channel pruning, N:M over 8 inputs) and a linear head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


STAGES = [
    {"prune": {"method": "gmp", "sparsity": 0.5, "end_epoch": 2}},
    {"prune": {"method": "gmp", "criterion": "taylor", "sparsity": 0.5, "end_epoch": 2}},
    {"prune": {"method": "snip", "sparsity": 0.5}},
    {"prune": {"method": "optg", "sparsity": 0.5}},
    {"prune": {"method": "movement", "sparsity": 0.5, "end_epoch": 2}},
    {"prune": {"method": "nm", "n": 2, "m": 4}},
    {"prune": {"method": "patdnn", "admm_epochs": 1, "patterns": 4}},
    {"prune": {"method": "sense", "tile": 4, "end_epoch": 2, "calibration_batches": 2}},
    {"prune": {"method": "gmp", "sparsity": 0.5, "block": 4, "end_epoch": 2}},
    {"prune": {"method": "wanda", "sparsity": 0.5, "calibration_batches": 2}},
    {"prune": {"method": "wanda", "n": 2, "m": 4, "calibration_batches": 2}},
    {"prune": {"method": "sparsegpt", "sparsity": 0.5, "block": 4, "calibration_batches": 2}},
    {"prune": {"method": "sparsegpt", "n": 2, "m": 4, "calibration_batches": 2}},
    {"channels": {"method": "l1", "ratio": 0.25}},
    {"channels": {"method": "gfbs", "ratio": 0.25}},
    {"channels": {"method": "taylor", "ratio": 0.25}},
    {"binarize": {"method": "xnor"}},
    {"binarize": {"method": "irnet"}},
    {"binarize": {"method": "rbnn"}},
    {"binarize": {"method": "recu"}},
    {"binarize": {"method": "siman"}},
    {"quantize": {"method": "uniform", "bits": 4, "observer": "mse", "calibration_batches": 2}},
    {"quantize": {"method": "uniform", "bits": 4, "observer": "percentile", "start_epoch": 1}},
    {"quantize": {"method": "sp2", "bits": 4}},
    {"quantize": {"method": "apot", "bits": 4}},
    {"distill": {"method": "hinton"}},
    {"distill": {"method": "graph_kd", "taps": [["features.5", "features.5"]], "class_mask": "intra"}},
    {"distill": {"method": "rkd", "taps": [["features.2", "features.2"]]}},
]


def _stage_id(stage: dict) -> str:
    (kind, body), = stage.items()
    extra = "-".join(f"{k}={v}" for k, v in body.items() if k in ("criterion", "block", "n", "observer", "start_epoch"))
    return f"{kind}-{body['method']}" + (f"-{extra}" if extra else "")


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _tensors(v)


@pytest.mark.parametrize("stage", STAGES, ids=_stage_id)
def test_methods_create_their_tensors_beside_the_weights(stage):
    """The whole loop (attach, forwards, losses, steps, epoch schedules, finalize) runs with the default device
    set to `meta` while the model sits on the CPU: any mask, score, binarizer or quantizer state, index or
    constant made on the default device instead of beside the weights meets a CPU weight and fails, as it
    would meet a CUDA weight on a GPU."""
    torch.manual_seed(0)
    model = _Net()
    if "distill" in stage:
        stage = copy.deepcopy(stage)
        stage["distill"]["teacher"] = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(3)]
    modifier = build_modifier(parse_stage(stage))
    epochs = 3
    with torch.device("meta"):
        compression = Compression(model, [modifier], epochs=epochs, steps_per_epoch=len(batches), data=batches)
        optimizer = compression.optimizer(torch.optim.SGD, lr=0.01, momentum=0.9)
        for _ in range(epochs):
            for x, y in batches:
                out = compression.model(x)
                loss = nn.functional.cross_entropy(out, y) + compression.loss(out, (x, y))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        model = compression.finalize()
        model(batches[0][0])
    placed = {t.device for t in (*_tensors(model.state_dict()), *_tensors(modifier.state_dict()))}
    assert placed == {torch.device("cpu")}
