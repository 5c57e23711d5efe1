"""slimkit's loader with worker processes: each worker augments from its own stream, reproducibly."""

import torch
from torch.utils.data import SequentialSampler

from slimkit.data import ArrayDataset, make_loader


def test_loader_workers_draw_their_own_reproducible_augmentation():
    # 64 copies of one image: two batches differ only where their crops and flips differ
    image = torch.randint(0, 256, (1, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    data = ArrayDataset(image.repeat(64, 1, 1, 1), torch.zeros(64), torch.zeros(1), torch.ones(1), 255.0,
                        augment="crop_flip", seed=3)

    def epoch(number: int, workers: int = 2) -> list[torch.Tensor]:
        data.set_epoch(number)
        return [x for x, _ in make_loader(data, 8, SequentialSampler(data), num_workers=workers)]

    first = epoch(0)
    assert len(first) == 8
    assert not torch.equal(first[0], first[1])  # worker 0's first batch against worker 1's: distinct streams
    assert all(torch.equal(a, b) for a, b in zip(first, epoch(0), strict=True))  # the same epoch again: the same
    assert not any(torch.equal(a, b) for a, b in zip(first, epoch(1), strict=True))  # the next epoch: new draws
