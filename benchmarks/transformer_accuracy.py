"""The accuracy half of benchmarks/transformers.py: how much of a trained transformer's accuracy Wanda, SparseGPT
and magnitude pruning keep, one shot with no retraining, at the same sparsities (50% and 70% unstructured, 2:4).

Speed does not depend on trained values, accuracy does, so this half trains a model of its own, in the benchmark,
on a synthetic task whose difficulty is known exactly (nothing to download):

MARKERS: sequences of SEQ tokens over a vocabulary of VOCAB ids. Position 0 holds the [CLS] id 0; ids 1-4 are the
markers of classes 0-3; ids 5..VOCAB-1 are filler. A sample's clean class y is uniform over the 4 classes; the
other SEQ-1 positions hold 4 markers of y, 0-3 markers (uniform) of each other class, and uniform filler, in a
random order. So the clean class is the marker that occurs most often, a unique maximum by construction. The
label is y, replaced with probability NOISE by one of the 3 other classes (uniform). No model can predict the
flip, and the rule "the most frequent marker" recovers y always, so the best accuracy any classifier reaches is
exactly 1 - NOISE = 90% (the Bayes rate; chance is 25%). The page reports that rule's accuracy on the same test
set as the ceiling's sample estimate.

The model is a 2-layer BERT (hidden 64, 4 heads, MLP 256), trained with AdamW; each criterion then prunes a copy
of it on 8 calibration batches of training data (slimkit.one_shot; every Linear but the classifier, as slimkit's
default layer selection picks), and each copy's test accuracy is divided by the dense model's ("kept").
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

VOCAB, SEQ, CLASSES, NOISE = 32, 24, 4, 0.1
MARKER_OF_Y = 4  # markers of the clean class; every other class gets 0..MARKER_OF_Y-1
CRITERIA = {"magnitude": "magnitude", "wanda": "wanda", "sparsegpt": "sparsegpt"}
LAYOUTS = {"50%": {"sparsity": 0.5}, "70%": {"sparsity": 0.7}, "2:4": {"n": 2, "m": 4}}


def markers_task(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(token ids [count, SEQ], noisy labels, clean labels) of the MARKERS task (module docstring)."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, CLASSES, (count,), generator=g)
    ids = torch.randint(1 + CLASSES, VOCAB, (count, SEQ), generator=g)
    ids[:, 0] = 0
    others = torch.randint(0, MARKER_OF_Y, (count, CLASSES), generator=g)
    others[torch.arange(count), clean] = MARKER_OF_Y
    for i in range(count):
        markers = torch.repeat_interleave(torch.arange(1, CLASSES + 1), others[i])
        places = 1 + torch.randperm(SEQ - 1, generator=g)[: len(markers)]
        ids[i, places] = markers
    flip = torch.rand(count, generator=g) < NOISE
    shift = torch.randint(1, CLASSES, (count,), generator=g)
    labels = torch.where(flip, (clean + shift) % CLASSES, clean)
    return ids, labels, clean


def most_frequent_marker(ids: torch.Tensor) -> torch.Tensor:
    """The task's own rule, the Bayes-optimal classifier: the class whose marker occurs most often."""
    counts = torch.stack([(ids == c + 1).sum(1) for c in range(CLASSES)], 1)
    return counts.argmax(1)


def small_bert() -> nn.Module:
    import transformers

    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
        max_position_embeddings=SEQ, num_labels=CLASSES, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0))


def batches(ids: torch.Tensor, labels: torch.Tensor, size: int) -> Iterator[dict[str, torch.Tensor]]:
    for start in range(0, len(ids), size):
        chunk = ids[start:start + size]
        yield {"input_ids": chunk, "attention_mask": torch.ones_like(chunk), "labels": labels[start:start + size]}


def accuracy(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.argmax(1)
                        == b["labels"]).sum()) for b in batches(ids, labels, 512))
    return hits / len(ids)


def train(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor, steps: int, batch: int = 64) -> None:
    """AdamW, lr 2e-3 with linear decay; batches drawn in order from a reshuffled training set each pass."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    g = torch.Generator().manual_seed(1)
    model.train()
    step = 0
    while step < steps:
        order = torch.randperm(len(ids), generator=g)
        for b in batches(ids[order], labels[order], batch):
            if step == steps or len(b["labels"]) < batch:
                break
            loss = model(**b).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1


def stage(criterion: str, layout: str) -> dict[str, Any]:
    """The one-shot prune stage of `criterion` at `layout` (magnitude's 2:4 is slimkit's `nm` method)."""
    if criterion == "magnitude":
        body: dict[str, Any] = ({"method": "nm", **LAYOUTS[layout]} if layout == "2:4" else
                                {"method": "magnitude", "scope": "layer", **LAYOUTS[layout]})
    else:
        body = {"method": criterion, "calibration_batches": 8, **LAYOUTS[layout]}
    return {"prune": body}


@dataclass(frozen=True)
class Budget:
    """How much the accuracy half trains and tests: --smoke shrinks it to seconds."""

    train: int = 20000
    test: int = 4000
    steps: int = 400  # measured: 300 steps reach the 90% ceiling (90.9% on 2000 test samples)


def accuracy_rows(budget: Budget) -> dict[str, Any]:
    """The dense model's accuracy, the Bayes ceiling's estimate, and one row per criterion and layout: the
    pruned copy's accuracy, kept = pruned / dense, and each pruned layer's [zeros, weights]."""
    import slimkit
    from transformer_forms import pruned_counts

    train_ids, train_labels, _ = markers_task(budget.train, seed=0)
    test_ids, test_labels, _ = markers_task(budget.test, seed=1)
    model = small_bert()
    train(model, train_ids, train_labels, budget.steps)
    dense = accuracy(model, test_ids, test_labels)
    calibration = list(batches(train_ids[:512], train_labels[:512], 64))
    rows = []
    for criterion in CRITERIA:
        for layout in LAYOUTS:
            pruned = slimkit.one_shot(copy.deepcopy(model).eval(), stage(criterion, layout), calibration)
            acc = accuracy(pruned, test_ids, test_labels)
            rows.append({"criterion": criterion, "layout": layout, "accuracy": acc, "kept": acc / dense,
                         "asked": LAYOUTS[layout], "counts": pruned_counts(pruned)})
    ceiling = float((most_frequent_marker(test_ids) == test_labels).float().mean())
    return {"task": {"vocab": VOCAB, "seq": SEQ, "classes": CLASSES, "noise": NOISE, "bayes": 1 - NOISE,
                     "rule_accuracy": ceiling, "train": budget.train, "test": budget.test, "steps": budget.steps},
            "dense_accuracy": dense, "dense_counts": pruned_counts(model), "rows": rows}
