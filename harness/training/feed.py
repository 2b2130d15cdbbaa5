"""How batches reach the model: the training fold (augmented, drawn as the imbalance handling
says) and the rows to predict, as normalised float N×C×H×W tensors on the training device.

Training batches come one of two ways (`search.augment_on`):

- `device`: the decoded images are copied once into device memory; each batch is gathered by
  index and augmented there with the policy's batch form (`augment.batch_form`). On a small
  competition an epoch lasts a fraction of a second on a GPU, too short for CPU workers to
  keep up or even start.
- `workers`: a DataLoader over the memory-mapped images, albumentations per item in worker
  processes. Serves every policy, any data size, and segmentation (image and mask together).

`auto` takes `device` on a GPU when the task trains on whole images, the policy has a batch
form and the images take at most a quarter of the free device memory; else `workers`.
`train_batches` makes that choice's batches from a fold's `FoldData` and `BatchPlan`.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .augment import batch_form, random_d4
from .config import TrialConfig
from .datasets import FoldData, train_dataset
from .sampling import Drawing

if TYPE_CHECKING:
    from ..tasks.base import Task

AUGMENT_ON = ("auto", "device", "workers")


@dataclass
class BatchPlan:
    """How one fold's training batches are drawn, augmented and normalised."""

    cfg: TrialConfig  # batch size, augmentation policy, orientation, image size, workers, seed
    fold: int
    drawing: Drawing  # the sampler or batch sampler, and the classes that always get a random D4
    keys: np.ndarray  # each row's class key (`task.stratify_key`): whether its class gets the D4
    mean: torch.Tensor  # normalisation, on the training device
    std: torch.Tensor

    @property
    def seed(self) -> int:
        """Seeds the batch order and the augmentation draws: the trial's seed and the fold."""
        return self.cfg.seed + self.fold


def train_batches(task: "Task", data: FoldData, plan: BatchPlan,
                  resident: Optional[torch.Tensor] = None) -> Union["DeviceBatches", "LoaderBatches"]:
    """The training fold's batches: augmented on the device when `resident` images are given,
    else by DataLoader workers over the task's dataset (datasets.py)."""
    if resident is not None:
        return DeviceBatches(resident, data.y, data.train_idx, plan)
    loader = worker_loader(train_dataset(task, data, plan), plan)
    return LoaderBatches(loader, plan.mean, plan.std)


def to_input(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dev: torch.device) -> torch.Tensor:
    """uint8 N×C×H×W → normalised float on `dev`, channels-last."""
    x = x.to(dev, non_blocking=True).float().div_(255.0).sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last)


_RESIDENT: List[tuple] = []  # (array, device, tensor) of the last upload: the folds of a trial share it


def resident_images(images: np.ndarray, dev: torch.device) -> Optional[torch.Tensor]:
    """The whole uint8 array on `dev` as N×C×H×W (channels-last storage), or None when it would
    take more than a quarter of the free device memory. The same array again (the next fold, or
    the next trial of the same image size) is not copied again."""
    if _RESIDENT and _RESIDENT[0][0] is images and _RESIDENT[0][1] == dev:
        return _RESIDENT[0][2]
    _RESIDENT.clear()  # the previous upload is freed before a new one is counted and made
    if dev.type == "cuda":
        # memory PyTorch holds in its cache but does not use (the last fold's) is free to us
        free = torch.cuda.mem_get_info(dev)[0] + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        if images.nbytes > free // 4:
            return None
    resident = torch.from_numpy(np.array(images)).to(dev).permute(0, 3, 1, 2)  # a copy: memmaps are read-only
    _RESIDENT.append((images, dev, resident))
    return resident


def augments_on_device(augment_on: str, policy: str, task_on_device: bool, dev: torch.device) -> bool:
    """Whether training batches are built on the device (`device`) or by DataLoader workers."""
    if augment_on == "workers" or not task_on_device or batch_form(policy) is None:
        return False
    return augment_on == "device" or dev.type == "cuda"


class DeviceBatches:
    """Training batches gathered from device-resident images and augmented on the device.

    Draws the same epochs as the DataLoader path: the drawing's sampler or batch sampler, else
    a seeded shuffle, dropping a last partial batch when the fold holds more than one batch.
    """

    def __init__(self, resident: torch.Tensor, y: np.ndarray, train_idx: np.ndarray, plan: BatchPlan) -> None:
        dev = resident.device
        self.resident, self.mean, self.std = resident, plan.mean, plan.std
        self.rows = torch.as_tensor(train_idx, device=dev)
        self.y = torch.as_tensor(y, device=dev)
        self.d4 = torch.as_tensor(np.isin(plan.keys, list(plan.drawing.d4_classes)), device=dev)
        self.drawing, self.batch_size = plan.drawing, plan.cfg.batch_size
        self.augment, self.orientation = batch_form(plan.cfg.augment), plan.cfg.orientation
        self.order_generator = torch.Generator().manual_seed(plan.seed)
        self.generator = torch.Generator(device=dev).manual_seed(plan.seed)
        self.drop_last = len(train_idx) > self.batch_size

    def __len__(self) -> int:
        if self.drawing.batch_sampler is not None:
            return len(self.drawing.batch_sampler)
        n = len(self.rows)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _positions(self) -> List[np.ndarray]:
        if self.drawing.batch_sampler is not None:
            return [np.asarray(batch) for batch in self.drawing.batch_sampler]
        if self.drawing.sampler is not None:
            order = np.fromiter(iter(self.drawing.sampler), dtype=np.int64)
        else:
            order = torch.randperm(len(self.rows), generator=self.order_generator).numpy()
        return [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(len(self))]

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        positions = self._positions()
        # one host → device copy per epoch: a copy per batch would wait for the previous step
        epoch_rows = self.rows[torch.as_tensor(np.concatenate(positions), device=self.rows.device)]
        for rows in torch.split(epoch_rows, [len(p) for p in positions]):
            x = self.resident[rows].float().div_(255.0)
            x = self.augment(x, self.orientation, self.generator)
            if self.drawing.d4_classes:
                x = random_d4(x, self.generator, self.d4[rows])
            x = x.sub_(self.mean).div_(self.std).contiguous(memory_format=torch.channels_last)
            yield x, self.y[rows]


class LoaderBatches:
    """Training batches from a DataLoader (albumentations in workers), moved and normalised."""

    def __init__(self, loader: DataLoader, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.loader, self.mean, self.std = loader, mean, std

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        dev = self.mean.device
        for x, target in self.loader:
            yield to_input(x, self.mean, self.std, dev), _to_device(target, dev)


def _to_device(target: Union[torch.Tensor, list, tuple], dev: torch.device):
    """Labels, or (labels, auxiliary masks) as the DataLoader collates them, on `dev`."""
    if isinstance(target, (list, tuple)):
        return tuple(t.to(dev, non_blocking=True) for t in target)
    return target.to(dev, non_blocking=True)


def seed_augmentation(dataset: Dataset, seed: int) -> None:
    """Albumentations draws from its own random state, not torch's or numpy's: seed it, so that
    a search with a fixed seed repeats itself."""
    for name in ("transform", "extra"):
        transform = getattr(dataset, name, None)
        if hasattr(transform, "set_random_seed"):
            transform.set_random_seed(seed)


def _seed_worker(seed: int, worker_id: int) -> None:
    # each worker holds a copy of the dataset: the same seed everywhere would repeat augmentations
    seed_augmentation(torch.utils.data.get_worker_info().dataset, seed + 7919 * (worker_id + 1))


def worker_loader(dataset: Dataset, plan: BatchPlan) -> DataLoader:
    """The training fold's DataLoader, drawn as the imbalance handling says, augmentation seeded."""
    drawing, batch_size, num_workers, seed = plan.drawing, plan.cfg.batch_size, plan.cfg.num_workers, plan.seed
    dev = plan.mean.device
    seed_augmentation(dataset, seed)
    common = dict(num_workers=num_workers, persistent_workers=num_workers > 0, pin_memory=dev.type == "cuda",
                  worker_init_fn=functools.partial(_seed_worker, seed) if num_workers else None)
    if drawing.batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=drawing.batch_sampler, **common)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=drawing.sampler,
                      shuffle=drawing.sampler is None, generator=generator if drawing.sampler is None else None,
                      drop_last=len(dataset) > batch_size, **common)


def eval_batches(images: Union[np.ndarray, torch.Tensor], index: np.ndarray, batch_size: int,
                 mean: torch.Tensor, std: torch.Tensor) -> Iterator[torch.Tensor]:
    """Rows `index` in order, normalised on the device, from a uint8 N×H×W×C array (memory-mapped
    or not) or from device-resident N×C×H×W images."""
    dev = mean.device
    resident = isinstance(images, torch.Tensor)
    device_index = torch.as_tensor(index, device=images.device) if resident else None
    for start in range(0, len(index), batch_size):
        rows = index[start:start + batch_size]
        if resident:
            x = images[device_index[start:start + batch_size]]
        else:
            x = torch.from_numpy(np.ascontiguousarray(images[rows])).permute(0, 3, 1, 2)
            x = x.pin_memory() if dev.type == "cuda" else x
        yield to_input(x, mean, std, dev)
