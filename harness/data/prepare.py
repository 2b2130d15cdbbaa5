"""What every trial of a study shares, prepared once: samples, task, labels, channels and folds."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Tuple

import numpy as np

from ..errors import SpecError
from .digests import file_digests, listing_digest, same_content
from .folds import folds_hash, load_or_make_folds
from .images import infer_channels, load_resized_masks, probe_images
from .samples import Samples, load_samples

if TYPE_CHECKING:
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
    _loaded: dict = field(default_factory=dict, repr=False)  # the last size's images, kept for the next trial

    def images(self, size: int, cache: Optional[Path] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Train and test images as the task's model takes them (see `Task.load_images`); the same
        arrays for trials of the same size, so that what is made of them (device copies) is reused."""
        if (size, cache) not in self._loaded:
            self._loaded.clear()
            self._loaded[size, cache] = tuple(self.task.load_images(frame, size, self.channels, cache)
                                              for frame in (self.samples.train, self.samples.test))
        return self._loaded[size, cache]

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
    samples = load_samples(run.spec, run.data_root)
    channels = run.spec.channels or infer_channels(
        probe_images(samples.train["path"].unique().tolist())["mode"].tolist()
    )
    store = run.paths.digests_json if run.paths.root.is_dir() else None  # a command never creates the run dir for it
    n_train = len(samples.train)  # one pass over both listings: the store is read and written once
    digests = file_digests(samples.train["path"].tolist() + samples.test["path"].tolist(), store)
    train_digests, test_digests = digests[:n_train], digests[n_train:]
    # pages of one volume share its file's digest: only whole files can be duplicates
    whole_files = samples.train["page"].isna().to_numpy() if "page" in samples.train else None
    same = same_content(train_digests, whole_files) if run.spec.fold_by == "stratified" else None
    table = load_or_make_folds(run.paths.folds_csv, samples, run.spec.folds, run.spec.seed,
                               run.spec.fold_by, same)
    task, y = run.spec.task_type.build(run.spec, samples)
    return SearchData(samples=samples, task=task, channels=channels, fold=table["fold"].to_numpy(),
                      folds_hash=folds_hash(table), y=y, same=same,
                      # by the names as listed: the same data under another --data-root is the same data
                      train_hash=listing_digest(samples.train["listed"].tolist(), train_digests),
                      test_hash=listing_digest(samples.test["listed"].tolist(), test_digests))


def check_trainable(run: "Run", data: SearchData) -> List[str]:
    """What only training needs, checked before any trial: every backbone's weights are there
    (`training/weights.py`), and the task's models build (a ViT has no feature pyramid for a decoder).
    Returns what `auto` (or a mapping) chose for each backbone, a line each, for the caller to say."""
    from ..training.weights import plan_lines, weights_plan

    search = run.spec.search
    plan = weights_plan(search.pretrained, search.backbones)
    data.task.check_buildable(search, data.channels)
    return plan_lines(search.pretrained, plan)
