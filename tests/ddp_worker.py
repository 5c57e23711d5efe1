"""Run by test_ddp under torchrun: trains with gradual magnitude pruning and writes each rank's masks."""

import sys
from pathlib import Path

import torch

from slimkit.data import load_data
from slimkit.models import lenet
from slimkit.recipe import DataConfig, TrainConfig
from slimkit.sparsity import GradualMagnitudeConfig, MagnitudePruner
from slimkit.train import Trainer, distributed


def main(out: Path, break_agreement: bool) -> None:
    info = distributed.init_from_env()
    torch.manual_seed(0)
    data = load_data(DataConfig(name="digits"))
    model = lenet(in_channels=1, input_size=8, width=0.5)
    masks = {}

    class RecordMasks(MagnitudePruner):
        def finalize(self, model):
            masks.update({n: m.mask.clone() for n, (_, m) in self.masks.items()})
            if break_agreement and info.rank == 1:
                with torch.no_grad():
                    model.classifier[3].bias.add_(1.0)
            return super().finalize(model)

    pruner = RecordMasks(GradualMagnitudeConfig(sparsity=0.7, start_epoch=0, end_epoch=2))
    try:
        Trainer(model, data, TrainConfig(epochs=3, lr=0.05), [pruner], batch_size=32, progress=False).fit()
    except RuntimeError as exc:
        (out / f"error{info.rank}.txt").write_text(str(exc))
        return
    torch.save(masks, out / f"masks{info.rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2] == "break")
