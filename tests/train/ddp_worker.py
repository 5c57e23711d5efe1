"""Run by test_ddp under torchrun: trains with a pruning stage (JSON) and writes each rank's final masks."""

import json
import sys
from pathlib import Path

import torch

from slimkit.data import load_data
from slimkit.models import lenet
from slimkit.recipe import DataConfig, TrainConfig, build_modifier, parse_stage
from slimkit.train import Trainer, distributed
from slimkit.train.objective import make_objective


def main(out: Path, mode: str, stage: dict) -> None:
    info = distributed.init_from_env()
    torch.manual_seed(0)
    data = load_data(DataConfig(name="digits"))
    model = lenet(in_channels=1, input_size=8, width=0.5)
    pruner = build_modifier(parse_stage({"prune": stage}))
    masks = {}
    finalize = pruner.finalize

    def record_then_finalize(model):
        masks.update({n: m.mask.clone() for n, (_, m) in pruner.masks.items()})
        if mode == "break" and info.rank == 1:
            with torch.no_grad():
                model.classifier[3].bias.add_(1.0)
        if mode == "swap" and info.rank == 1:  # two weights trade places: every sum stays the same
            with torch.no_grad():
                w = model.classifier[3].weight
                w[0, 0], w[0, 1] = w[0, 1].clone() + 0.5, w[0, 0].clone() - 0.5
        return finalize(model)

    pruner.finalize = record_then_finalize
    calls = [0]

    def loss(out, target):  # "nanskip": NaN on rank 1 only, on its 3rd and 4th training batches
        value = torch.nn.functional.cross_entropy(out, target)
        if torch.is_grad_enabled():
            calls[0] += 1
            if mode == "nanskip" and info.rank == 1 and calls[0] in (3, 4):
                return value * float("nan")
        return value

    config = TrainConfig(epochs=3, lr=0.05, nan_policy="skip" if mode == "nanskip" else "stop")
    try:
        result = Trainer(model, data, config, [pruner], batch_size=32, progress=False,
                         objective=make_objective(loss, "accuracy")).fit()
        if mode == "nanskip":
            (out / f"skipped{info.rank}.json").write_text(json.dumps([r.get("skipped_batches", 0)
                                                                      for r in result.history]))
    except RuntimeError as exc:
        (out / f"error{info.rank}.txt").write_text(str(exc))
        return
    torch.save(masks, out / f"masks{info.rank}.pt")


if __name__ == "__main__":
    try:
        main(Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]))
    finally:
        distributed.finish()  # a barrier, then the process group torn down: no rank aborts at exit
