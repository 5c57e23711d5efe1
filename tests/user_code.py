"""Models and data written the way users write them, outside slimkit's zoo and data sets: a regression MLP,
a hand-written 3-channel CNN on a map-style Dataset, and a token model with dict batches and outputs that
carry `.logits`. The CLI tests build them by import path (`user_code:regression_model`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset


def regression_model(inputs: int = 6, hidden: int = 32) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1))


def regression_data(n: int = 512, inputs: int = 6, seed: int = 0) -> dict[str, Dataset]:
    """y = a smooth function of x, plus noise: float targets of shape (n, 1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, inputs, generator=g)
    y = (x[:, :1] * 2 - x[:, 1:2] ** 2 + 0.5 * x[:, 2:3] * x[:, 3:4]) + 0.05 * torch.randn(n, 1, generator=g)
    cut, val = int(0.7 * n), int(0.85 * n)
    return {"train": TensorDataset(x[:cut], y[:cut]), "val": TensorDataset(x[cut:val], y[cut:val]),
            "test": TensorDataset(x[val:], y[val:])}


class ColourImages(Dataset):
    """3x12x12 images whose class is the brightest colour channel: one sample per __getitem__, as a user's
    Dataset yields them (torch's default collate stacks them)."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 3, (n,), generator=g)
        self.images = torch.rand(n, 3, 12, 12, generator=g) * 0.5
        self.images[torch.arange(n), self.labels] += 0.5

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(nn.functional.max_pool2d(x, 2))))
        return self.head(x.mean((2, 3)))


def cnn_data() -> tuple[Dataset, Dataset, Dataset]:
    return ColourImages(240, 0), ColourImages(60, 1), ColourImages(90, 2)


@dataclass
class TokenOutput:
    """What HF models return: an object carrying `.logits`."""

    logits: torch.Tensor


class TokenTagger(nn.Module):
    """Tags every token: embedding, a 2-layer MLP over features, logits (batch, tokens, tags)."""

    def __init__(self, vocab: int = 50, dim: int = 32, tags: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, tags)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TokenOutput:
        h = self.embed(input_ids) * attention_mask.unsqueeze(-1)
        return TokenOutput(self.out(torch.relu(self.mix(h))))


class TokenData(Dataset):
    """Dict samples {input_ids, attention_mask, labels}; the tag of a token is its id mod 4, padding is -100."""

    def __init__(self, n: int, seed: int, length: int = 10):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, 50, (n, length), generator=g)
        lengths = torch.randint(4, length + 1, (n,), generator=g)
        self.mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        self.ids = self.ids * self.mask
        self.labels = torch.where(self.mask.bool(), self.ids % 4, torch.full_like(self.ids, -100))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def token_data() -> dict[str, Dataset]:
    return {"train": TokenData(256, 0), "val": TokenData(64, 1), "test": TokenData(64, 2)}
