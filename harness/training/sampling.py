"""Imbalance handling: how the training fold is drawn and weighted. One registered function each.

Every choice sees only the training fold's labels (`y_train`) and returns positions into that
fold, so nothing of it can reach the validation fold whose predictions become OOF.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, List, Optional

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch.utils.data import Sampler, WeightedRandomSampler

from ..registry import Registry

if TYPE_CHECKING:
    from ..tasks.base import Task

IMBALANCE = Registry("imbalance handling")


@dataclass
class Drawing:
    """How to draw one epoch of the training fold."""

    class_weight: Optional[np.ndarray] = None  # per-class loss weights
    sampler: Optional[Sampler] = None  # yields positions in the training fold
    batch_sampler: Optional[Sampler] = None  # yields lists of positions
    d4_classes: frozenset = frozenset()  # classes that always get a random D4 flip/rotation


def class_counts(y_train: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(y_train, minlength=num_classes)


def minority_classes(y_train: np.ndarray, num_classes: int) -> frozenset:
    counts = class_counts(y_train, num_classes)
    return frozenset(int(c) for c in np.flatnonzero((counts > 0) & (counts < counts.max())))


def _even_sampler(y_train: np.ndarray, num_classes: int, generator: torch.Generator) -> Sampler:
    weights = 1.0 / class_counts(y_train, num_classes)[y_train]
    return WeightedRandomSampler(weights.tolist(), num_samples=len(y_train), replacement=True,
                                 generator=generator)


@IMBALANCE.register("none")
def no_rebalancing(y_train: np.ndarray, num_classes: int, batch_size: int,
                   generator: torch.Generator) -> Drawing:
    """Draw the training fold as it is."""
    return Drawing()


@IMBALANCE.register("class_weights")
def class_weights(y_train: np.ndarray, num_classes: int, batch_size: int,
                  generator: torch.Generator) -> Drawing:
    """Weight the loss by inverse class frequency (scikit-learn's 'balanced')."""
    present = np.unique(y_train)
    weight = np.ones(num_classes, dtype=np.float32)  # a class absent from the fold has no loss to weigh
    weight[present] = compute_class_weight("balanced", classes=present, y=y_train)
    return Drawing(class_weight=weight)


@IMBALANCE.register("oversample")
def oversample(y_train: np.ndarray, num_classes: int, batch_size: int,
               generator: torch.Generator) -> Drawing:
    """Draw classes evenly, with replacement."""
    return Drawing(sampler=_even_sampler(y_train, num_classes, generator))


@IMBALANCE.register("oversample_d4")
def oversample_d4(y_train: np.ndarray, num_classes: int, batch_size: int,
                  generator: torch.Generator) -> Drawing:
    """Draw classes evenly; each repeated minority image gets a random D4 flip/rotation."""
    return Drawing(sampler=_even_sampler(y_train, num_classes, generator),
                   d4_classes=minority_classes(y_train, num_classes))


class BalancedBatchSampler(Sampler):
    """Batches with (nearly) the same number of images of every class present."""

    def __init__(self, y_train: np.ndarray, batch_size: int, generator: torch.Generator) -> None:
        self.by_class = [np.flatnonzero(y_train == c) for c in np.unique(y_train)]
        self.batch_size = batch_size
        self.n_batches = max(1, len(y_train) // batch_size)
        self.generator = generator

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self) -> Iterator[List[int]]:
        k = len(self.by_class)
        for _ in range(self.n_batches):
            batch = []
            for i, members in enumerate(self.by_class):
                take = self.batch_size // k + (1 if i < self.batch_size % k else 0)
                pick = torch.randint(len(members), (take,), generator=self.generator).numpy()
                batch.extend(members[pick].tolist())
            yield batch


@IMBALANCE.register("balanced_batches")
def balanced_batches(y_train: np.ndarray, num_classes: int, batch_size: int,
                     generator: torch.Generator) -> Drawing:
    """Every batch holds each class equally often."""
    return Drawing(batch_sampler=BalancedBatchSampler(y_train, batch_size, generator))


def head_class_weights(task: "Task", y_train: np.ndarray, imbalance: str,
                       batch_size: int) -> List[Optional[np.ndarray]]:
    """Each head's loss weights per class, from the training fold's labels, as `imbalance` gives
    them (or None). Labels that are masks have none: pixels are drawn as they are."""
    if task.masks_are_labels:
        return [None] * len(task.heads)
    # a negative label: a pseudo-labelled image this head is not sure of (training/pseudo.py)
    return [IMBALANCE.get(imbalance)(y_train[y_train[:, i] >= 0, i], len(head.classes), batch_size,
                                     torch.Generator()).class_weight for i, head in enumerate(task.heads)]
