"""What every trial of a study shares, prepared once: samples, task, labels, channels and folds."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Tuple

import numpy as np

from ..tasks import task_type
from .digests import file_digests, listing_digest, same_content
from .folds import folds_hash, load_or_make_folds, sparse_classes
from .images import GREY_MODES, image_channels, load_resized, load_resized_masks, probe_images
from .masks import load_native, mask_labels
from .samples import Samples, load_samples

if TYPE_CHECKING:
    import pandas as pd

    from ..config.paths import Run
    from ..tasks.base import Task


@dataclass
class SearchData:
    """What every trial shares: the samples, the task, their channels and the fixed folds."""

    samples: Samples
    task: "Task"
    channels: int
    fold: np.ndarray
    folds_hash: str
    y: np.ndarray  # N × H class indices, or N × H × W masks
    train_hash: str = ""  # the training listing's files and what they hold
    test_hash: str = ""  # the test listing's: stored with each fold's test predictions
    same: Optional[np.ndarray] = None  # per training row, the first row of the same bytes (itself if unique)
    notes: List[str] = field(default_factory=list)  # what the user should know of the data: `validate` and `search` say it
    _loaded: dict = field(default_factory=dict, repr=False)  # the last size's images, kept for the next trial

    def images(self, size: int, cache: Optional[Path] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Train and test images as the task's model takes them (`model_images`); the same arrays for
        trials of the same size, so that what is made of them (device copies) is reused."""
        if (size, cache) not in self._loaded:
            self._loaded.clear()
            self._loaded[size, cache] = tuple(model_images(self.task, frame, size, self.channels, cache)
                                              for frame in (self.samples.train, self.samples.test))
        return self._loaded[size, cache]

    def test_images(self, size: int, cache: Optional[Path] = None) -> np.ndarray:
        """The test images alone, as the task's model takes them (a fold trained on another test set
        predicts them again)."""
        if (size, cache) in self._loaded:
            return self._loaded[size, cache][1]
        return model_images(self.task, self.samples.test, size, self.channels, cache)

    def aux_masks(self, size: int, cache: Optional[Path] = None) -> Optional[np.ndarray]:
        """The training images' auxiliary masks at `size` (N × size × size, 0/1), or None without train.masks."""
        if "aux_mask" not in self.samples.train:
            return None
        return load_resized_masks(self.samples.train["aux_mask"].tolist(), size, cache)

    @property
    def duplicates(self) -> int:
        """Training rows whose bytes an earlier row holds too (kept in that row's fold)."""
        return 0 if self.same is None else int((self.same != np.arange(len(self.same))).sum())


def prepare_data(run: "Run") -> SearchData:
    """Load and check the data and folds; raises SpecError before anything is trained."""
    task_class = task_type(run.spec)  # the registered task: its traits and rules
    samples = load_samples(run.spec, run.data_root, task_class)
    train_files = samples.train["path"].unique().tolist()
    channels = run.spec.channels or image_channels(train_files)
    notes = [] if run.spec.channels or channels == 3 or not _colour_modes(train_files) else [
        "greyscale in colour files: every training image's three channels are equal, so one channel is used "
        "(a third of the image cache and of the first layer); set channels: 3 to keep three"]
    store = run.paths.digests_json if run.paths.root.is_dir() else None  # a command never creates the run dir for it
    n_train = len(samples.train)  # one pass over both listings: the store is read and written once
    digests = file_digests(samples.train["path"].tolist() + samples.test["path"].tolist(), store)
    train_digests, test_digests = digests[:n_train], digests[n_train:]
    # pages of one volume share its file's digest: only whole files can be duplicates
    whole_files = samples.train["page"].isna().to_numpy() if "page" in samples.train else None
    same = same_content(train_digests, whole_files) if run.spec.fold_by == "stratified" else None
    table = load_or_make_folds(run.paths.folds_csv, samples, run.spec.folds, run.spec.seed,
                               run.spec.fold_by, same)
    task = task_class.from_spec(run.spec, samples.heads)
    y = mask_labels(samples.train, run.spec.positive_value) if task.masks_are_labels else samples.y
    return SearchData(samples=samples, task=task, channels=channels, fold=table["fold"].to_numpy(),
                      folds_hash=folds_hash(table), y=y, same=same,
                      notes=notes + ([] if task.masks_are_labels else sparse_classes(table, run.spec.folds)),
                      # by the names as listed: the same data under another --data-root is the same data
                      train_hash=listing_digest(samples.train["listed"].tolist(), train_digests),
                      test_hash=listing_digest(samples.test["listed"].tolist(), test_digests))


def model_images(task: "Task", frame: "pd.DataFrame", size: int, channels: int,
                 cache: Optional[Path]) -> np.ndarray:
    """The listed images as the task's model takes them: resized to `size` × `size` (whole images),
    or at their own size when the labels are masks (training crops `size`, prediction sees them whole)."""
    if task.trains_on_whole_images:
        return load_resized(frame["path"].tolist(), size, channels, cache)
    return load_native(frame, channels)


def _colour_modes(paths: List[str]) -> bool:
    """Some of the files are stored in a colour mode (RGB, a palette)."""
    return any(mode not in GREY_MODES for mode in probe_images(paths)["mode"])
