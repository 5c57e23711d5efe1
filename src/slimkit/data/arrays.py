"""In-memory image data sets that hand out whole normalised (and optionally augmented) batches.

Images are kept as stored (uint8 for most sets) and normalised per batch, which keeps 60k Fashion-MNIST
images at 47 MB. Augmentation draws from a generator seeded by (seed, epoch), so a resumed run sees
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info

from slimkit.errors import SlimkitError

Augment = Literal["none", "crop", "crop_flip"]


class ArrayDataset(Dataset):
    """Images (N, C, H, W) and one target each, normalised as (x / scale - mean) / std.

    Integer targets are class ids (held as int64, as cross-entropy takes them); float targets are regression
    targets and keep their dtype and values, so the objective decides what they mean (the default loss
    refuses them and asks for loss_fn). Casting them to ids would truncate -0.59 to 0 without a word.
    """

    def __init__(self, images: Tensor, labels: Tensor, mean: Tensor, std: Tensor, scale: float,
                 augment: Augment = "none", seed: int = 0):
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"images must be (N, C, H, W) with one label each; got {tuple(images.shape)} "
                             f"and {len(labels)} labels")
        if labels.is_floating_point():
            self.labels = labels
        elif labels.dtype != torch.bool and not labels.is_complex():
            self.labels = labels.long()
        else:
            raise SlimkitError(f"image labels are class ids (an integer tensor) or regression targets (a float "
                               f"tensor), not {labels.dtype}")
        self.images = images
        self.mean, self.std, self.scale = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1), scale
        self.augment = augment
        self.pad = max(1, images.shape[-1] // 8)
        self.seed = seed
        self._stream: tuple[int, ...] = (seed,)  # what seeds augmentation: (seed, epoch, rank) once an epoch is set
        self._generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def set_epoch(self, epoch: int, rank: int = 0) -> None:
        """Re-seed augmentation so that every epoch (and every rank) draws a fixed, distinct stream."""
        self._stream = (self.seed, epoch, rank)
        self._generator.manual_seed(hash(self._stream) & 0x7FFF_FFFF)

    def set_worker(self, worker: int) -> None:
        """In DataLoader worker `worker`: a stream of its own within the epoch. Every worker starts from a copy
        of this data set, so without it all workers would draw the same crops and flips."""
        self._generator.manual_seed(hash((*self._stream, worker)) & 0x7FFF_FFFF)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self.images[idx].float().div_(self.scale)
        if self.augment != "none":
            x = self._augment(x)
        return (x - self.mean) / self.std, self.labels[idx]

    def _augment(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        p = self.pad
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        dy = torch.randint(0, 2 * p + 1, (n,), generator=self._generator)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=self._generator)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
        x = padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols]
        if self.augment == "crop_flip":
            flip = torch.rand(n, generator=self._generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x


def collate_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """The data set already returns a stacked batch; the loader must not stack it again."""
    return batch


@dataclass
class RawSplits:
    """What a source reader returns: train and (optional) test arrays, class names and pixel scale."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor | None
    test_y: Tensor | None
    classes: list[str]
    scale: float
    note: str = ""


@dataclass
class DataBundle:
    """Train, validation and test data plus what is known of them. Each split is a torch Dataset (batched
    by slimkit) or a DataLoader (used exactly as given); `classes` is None for data without class names."""

    name: str
    train: Dataset | DataLoader
    val: Dataset | DataLoader | None
    test: Dataset | DataLoader | None
    classes: list[str] | None = None
    note: str = ""

    @property
    def num_classes(self) -> int | None:
        return len(self.classes) if self.classes else None

    @property
    def images(self) -> Tensor | None:
        """The stored training images of slimkit's own image data sets; None for other data."""
        return self.train.images if isinstance(self.train, ArrayDataset) else None

    @property
    def in_channels(self) -> int:
        return self.input_shape[0]

    @property
    def input_size(self) -> int:
        return self.input_shape[-1]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's input shape, for data whose model input is a single tensor."""
        if self.images is not None:
            return tuple(self.images.shape[1:])
        example = self.example()
        if not isinstance(example, Tensor):
            raise SlimkitError(f"data {self.name!r}: the model input is {type(example).__name__}, not one tensor, "
                               f"so it has no single input shape; pass an example input where one is asked for")
        return tuple(example.shape[1:])

    def train_batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterable[Any]:
        """The training split's batches in order: a Dataset batched by slimkit (`batch_size` samples), a
        DataLoader as given."""
        if isinstance(self.train, DataLoader):
            return self.train
        return DataLoader(self.train, batch_size=batch_size, collate_fn=batch_collate(self.train), generator=generator)

    def input_batches(self, count: int, batch_size: int) -> list[Tensor]:
        """The model inputs of the first `count` training batches, for calibration and activation statistics of
        models with one tensor input."""
        inputs = []
        for batch in itertools.islice(self.train_batches(batch_size), count):
            if not (isinstance(batch, Sequence) and batch and isinstance(batch[0], Tensor)):
                raise SlimkitError(f"data {self.name!r}: calibration reads batches (inputs, target) with one input "
                                   f"tensor, not {type(batch).__name__}")
            inputs.append(batch[0])
        return inputs

    def example(self, target_key: str = "labels") -> Any:
        """One training sample as a batch of one: the model input (a tensor, or a dict of tensors without
        the target's key)."""
        batch = next(iter(self.train_batches(1, generator=torch.Generator())), None)
        if batch is None:
            raise SlimkitError(f"data {self.name!r}: the training data is empty")
        if isinstance(batch, Mapping):
            return {k: v[:1] for k, v in batch.items() if k != target_key}
        if isinstance(batch, Sequence) and batch and isinstance(batch[0], Tensor):
            return batch[0][:1]
        raise SlimkitError(f"data {self.name!r}: a batch of type {type(batch).__name__} is not one slimkit reads; "
                           f"batches are tuples (inputs, target) or dicts of tensors")

    def size(self, split: str) -> int | None:
        """Samples in a split (None where a DataLoader's sampler does not say)."""
        data = getattr(self, split)
        if data is None:
            return 0
        items = data.dataset if isinstance(data, DataLoader) else data
        return len(items) if isinstance(items, Sized) else None


def batch_collate(dataset: Dataset) -> Callable[[Any], Any]:
    """slimkit's array data sets hand out whole batches already; any other data set is collated by torch."""
    return collate_batch if isinstance(dataset, ArrayDataset) else default_collate


def seed_worker(worker: int) -> None:
    """A DataLoader's worker_init_fn: slimkit's array data set in this worker gets its own augmentation stream,
    a pure function of (seed, epoch, rank, worker), so runs (and resumed runs) with the same workers match."""
    info = get_worker_info()
    if info is None:
        raise SlimkitError("seed_worker is a DataLoader's worker_init_fn: it runs in a worker process")
    dataset = info.dataset
    if isinstance(dataset, ArrayDataset):
        dataset.set_worker(worker)


def make_loader(dataset: Dataset, batch_size: int, sampler: Sampler[int], *, num_workers: int = 0,
                pin_memory: bool = False, generator: torch.Generator | None = None) -> DataLoader:
    """The loader slimkit batches a Dataset with, for training and evaluation alike: whole-batch collation for
    its array sets, `num_workers` processes seeded by `seed_worker`, batches in page-locked memory with
    `pin_memory` (for asynchronous copies to a GPU)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=batch_collate(dataset),
                      num_workers=num_workers, pin_memory=pin_memory, generator=generator,
                      worker_init_fn=seed_worker if num_workers else None)


def select_classes(raw: RawSplits, classes: Sequence[int | str], name: str) -> RawSplits:
    """Only the samples of `classes` (ids or names of `raw.classes`), relabelled 0..n-1 in the order given,
    in train and test alike; the class names follow the new labels. A class the data set does not have is an
    error naming data.classes, the value and the classes there are."""
    ids = []
    for c in classes:
        if isinstance(c, str) and c in raw.classes:
            ids.append(raw.classes.index(c))
        elif isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(raw.classes):
            ids.append(c)
        else:
            have = ", ".join(f"{i} {n!r}" for i, n in enumerate(raw.classes))
            raise SlimkitError(f"data.classes: {name} has no class {c!r}; its classes are {have} (give ids or "
                               f"names)")
    if len(set(ids)) < len(ids):
        raise SlimkitError(f"data.classes: {list(classes)} names one class of {name} twice "
                           f"({', '.join(raw.classes[i] for i in sorted(set(ids)) if ids.count(i) > 1)})")
    lookup = torch.full((len(raw.classes),), -1, dtype=torch.long)
    lookup[torch.tensor(ids)] = torch.arange(len(ids))

    def keep(xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
        new = lookup[ys.long()]
        kept = new >= 0
        return xs[kept], new[kept]

    train_x, train_y = keep(raw.train_x, raw.train_y)
    test_x, test_y = raw.test_x, raw.test_y
    if test_x is not None and test_y is not None:
        test_x, test_y = keep(test_x, test_y)
    names = [raw.classes[i] for i in ids]
    note = f"classes {', '.join(f'{i} ({n})' for i, n in zip(ids, names, strict=True))} of {name}, relabelled " \
           f"0..{len(ids) - 1}"
    return RawSplits(train_x, train_y, test_x, test_y, names, raw.scale,
                     note=f"{raw.note}; {note}" if raw.note else note)


def split_bundle(name: str, raw: RawSplits, *, val_fraction: float, split_seed: int,
                 augment: Augment | Literal["auto"],
                 train_subset: int | None, test_fraction: float = 0.2) -> DataBundle:
    """Carve a deterministic validation split (and a test split where the source has none)."""
    x, y = raw.train_x, raw.train_y
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(split_seed))
    test_x, test_y = raw.test_x, raw.test_y
    if test_x is None:
        n_test = round(len(y) * test_fraction)
        test_x, test_y = x[order[:n_test]], y[order[:n_test]]
        order = order[n_test:]
    if test_y is None:
        raise SlimkitError(f"data {name!r}: its source gave test images without labels")
    n_val = round(len(order) * val_fraction)
    val_idx, train_idx = order[:n_val], order[n_val:]
    if train_subset is not None:
        train_idx = train_idx[:train_subset]
    train_x = x[train_idx]
    pixels = train_x.float().div(raw.scale).transpose(0, 1).reshape(train_x.shape[1], -1)
    mean, std = pixels.mean(1), pixels.std(1).clamp_min(1e-6)
    chosen: Augment = augment if augment != "auto" else "crop_flip" if train_x.shape[-1] >= 32 else "none"

    def make(xs: Tensor, ys: Tensor, aug: Augment) -> ArrayDataset:
        return ArrayDataset(xs, ys, mean, std, raw.scale, aug, seed=split_seed)

    return DataBundle(
        name=name,
        train=make(train_x, y[train_idx], chosen),
        val=make(x[val_idx], y[val_idx], "none") if n_val else None,
        test=make(test_x, test_y, "none"),
        classes=raw.classes,
        note=raw.note,
    )
