"""The training fold as a torch Dataset for DataLoader workers: albumentations per item.

Which dataset a fold trains on follows the task's declarative trait `masks_are_labels`, never
its name: masks that are the targets (segmentation) are augmented and cropped with their image
(`MaskDataset`); class labels come with their image (`ArrayDataset`), and auxiliary masks, when
the trial trains a mask head, are augmented with it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from .augment import AUGMENTS

if TYPE_CHECKING:
    from ..tasks.base import Task
    from .feed import BatchPlan


@dataclass
class FoldData:
    """The arrays one fold reads: every training image and label, and the split."""

    images: np.ndarray  # decoded uint8 N×H×W×C, memory-mapped or not
    y: np.ndarray  # N × H class indices (one column per head), or N × H × W masks
    train_idx: np.ndarray  # the rows trained on
    val_idx: np.ndarray  # the rows validated on: they become out-of-fold predictions
    aux_masks: Optional[np.ndarray] = None  # N × size × size: the auxiliary mask head's targets
    soft: Optional[np.ndarray] = None  # N × ΣC: soft targets of pseudo-labelled rows (zeros: a row's labels)


class ArrayDataset(Dataset):
    """Rows `index` of a decoded uint8 N×H×W×C array, augmented, as uint8 C×H×W tensors
    (with their labels, one per head, when `labels` is given).

    `extra` is applied after `transform` to rows whose `keys` value is in `extra_for`. With
    `masks` (N×H×W auxiliary masks) each mask is transformed with its image, and the label
    becomes (labels, 1×H×W float mask).
    """

    def __init__(self, images: np.ndarray, index: np.ndarray, labels: Optional[np.ndarray] = None,
                 transform: Optional[Callable] = None, keys: Optional[np.ndarray] = None,
                 extra_for: frozenset = frozenset(), extra: Optional[Callable] = None,
                 masks: Optional[np.ndarray] = None) -> None:
        self.images, self.index, self.labels, self.transform = images, index, labels, transform
        self.keys, self.extra_for, self.extra, self.masks = keys, extra_for, extra, masks

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        row = self.index[i]
        item = {"image": np.array(self.images[row])}  # a writable copy of the (memory-mapped) row
        if self.masks is not None:
            item["mask"] = np.array(self.masks[row])
        if self.transform is not None:
            item = self.transform(**item)
        if self.extra is not None and int(self.keys[row]) in self.extra_for:
            item = self.extra(**item)
        x = _chw(item["image"])
        if self.labels is None:
            return x
        label = torch.from_numpy(self.labels[row])
        if self.masks is None:
            return x, label
        return x, (label, _mask(item["mask"]))


class MaskDataset(Dataset):
    """Image + mask pairs, augmented together (flips, elastic, crops), as uint8 C×H×W and float 1×H×W."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, index: np.ndarray, transform: A.Compose) -> None:
        self.images, self.masks, self.index, self.transform = images, masks, index, transform

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        j = self.index[i]
        out = self.transform(image=np.array(self.images[j]), mask=np.array(self.masks[j]))
        return _chw(out["image"]), _mask(out["mask"])


def train_dataset(task: "Task", data: FoldData, plan: "BatchPlan") -> Dataset:
    """The training fold, augmented by the trial's policy.

    Masks that are labels: each image is augmented with its mask, then both are padded and
    cropped to the trial's image size (the images keep their own size). Otherwise each image
    comes with its labels; rows of the classes the drawing names also get a random D4, and
    auxiliary masks, when given, are augmented with their images.
    """
    cfg = plan.cfg
    policy = AUGMENTS.get(cfg.augment)(cfg.orientation)
    if task.masks_are_labels:
        size = cfg.image_size
        crop = [A.PadIfNeeded(min_height=size, min_width=size), A.RandomCrop(height=size, width=size)]
        return MaskDataset(data.images, data.y, data.train_idx, A.Compose(list(policy.transforms) + crop))
    drawing = plan.drawing
    extra = A.D4(p=1.0) if drawing.d4_classes else None
    return ArrayDataset(data.images, data.train_idx, data.y, policy, keys=plan.keys,
                        extra_for=drawing.d4_classes, extra=extra, masks=data.aux_masks)


def _chw(image: np.ndarray) -> torch.Tensor:
    """An augmented H×W(×C) uint8 image as a C×H×W tensor."""
    img = image[:, :, None] if image.ndim == 2 else image
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def _mask(mask: np.ndarray) -> torch.Tensor:
    """An augmented H×W mask as a float 1×H×W tensor."""
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
