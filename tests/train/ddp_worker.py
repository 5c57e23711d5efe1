"""Run by test_ddp under torchrun: trains with one stage (JSON: {kind: {method: ...}}) on a device (cpu unless
given) and writes each rank's method state as training left it (masks, scores, binarizer buffers and
parameters), the zero weights per layer after finalize, and its process group's backend."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from slimkit.data import load_data
from slimkit.models import lenet
from slimkit.recipe import DataConfig, TrainConfig, build_modifier, parse_stage
from slimkit.train import Trainer, distributed
from slimkit.train.objective import make_objective


def method_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a method adds to the model: masks and scores under parametrizations, binarizer state."""
    return {name: t.detach().clone() for name, t in model.state_dict().items()
            if name.endswith((".mask", ".scores")) or ".weight_binarizer." in name}


def main(out: Path, mode: str, stage: dict, device: str) -> None:
    info = distributed.init_from_env(device)
    (out / f"backend{info.rank}.txt").write_text(dist.get_backend())
    torch.manual_seed(0)
    data = load_data(DataConfig(name="digits"))
    model = lenet(in_channels=1, input_size=8, width=0.5)
    modifier = build_modifier(parse_stage(stage))
    state = {}
    finalize = modifier.finalize

    def record_then_finalize(model):
        state.update(method_state(model))
        if mode == "break" and info.rank == 1:
            with torch.no_grad():
                model.classifier[3].bias.add_(1.0)
        if mode == "swap" and info.rank == 1:  # two weights trade places: every sum stays the same
            with torch.no_grad():
                w = model.classifier[3].weight
                w[0, 0], w[0, 1] = w[0, 1].clone() + 0.5, w[0, 0].clone() - 0.5
        finished = finalize(model)
        zeros = {name: int((p == 0).sum()) for name, p in finished.named_parameters() if name.endswith("weight")}
        (out / f"zeros{info.rank}.json").write_text(json.dumps(zeros))  # what finalize left (one-shot stages)
        return finished

    modifier.finalize = record_then_finalize
    calls = [0]

    def loss(out, target):  # "nanskip": NaN on rank 1 only, on its 3rd and 4th training batches
        value = torch.nn.functional.cross_entropy(out, target)
        if torch.is_grad_enabled():
            calls[0] += 1
            if mode == "nanskip" and info.rank == 1 and calls[0] in (3, 4):
                return value * float("nan")
        return value

    config = TrainConfig(epochs=3, lr=0.05, nan_policy="skip" if mode == "nanskip" else "stop", device=device)
    try:
        result = Trainer(model, data, config, [modifier], batch_size=32, progress=False,
                         objective=make_objective(loss, "accuracy")).fit()
        if mode == "nanskip":
            (out / f"skipped{info.rank}.json").write_text(json.dumps([r.get("skipped_batches", 0)
                                                                      for r in result.history]))
    except RuntimeError as exc:
        (out / f"error{info.rank}.txt").write_text(str(exc))
        return
    torch.save(state, out / f"state{info.rank}.pt")


if __name__ == "__main__":
    try:
        main(Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "cpu")
    finally:
        distributed.finish()  # a barrier, then the process group torn down: no rank aborts at exit
