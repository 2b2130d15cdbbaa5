"""Many workers on one study: what each creates once, and how each claims its next trial.

Any number of `harness search` processes (on one machine, or on several sharing the run
directory and a PostgreSQL storage) may run on one study at once:

- `creation_lock`: an exclusive file lock in the run directory around everything a search makes
  before its first trial (prepared data, decoded-image cache, folds.csv, storage schema, study,
  recipes, retries). The first worker makes them; the others find them made.
- `SlotStudy.ask`: a worker starts a trial only while the study holds fewer than `--trials`
  trials that are finished or running, counted under `slot_lock` (a PostgreSQL advisory lock on
  the study's server, else a file lock beside the SQLite file or in the run directory). So the
  study ends with exactly `--trials` finished ones; a worker finding none left waits while others
  run the last ones, since a trial that fails frees its slot.

Optuna's RDB storage is the distributed engine; a trial of a worker that died is failed by its
heartbeat and retried with the same parameters (`study.connect`).
"""
from __future__ import annotations

import contextlib
import fcntl
import zlib
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Optional

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from ..config.paths import Run

CLAIMED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


class NoSlot(Exception):
    """Every one of the `--trials` slots is taken by a finished or running trial."""


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (made if missing), held for the block; waits for other holders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def creation_lock(run: Run) -> ContextManager[None]:
    """Held while a worker makes what the study needs before its first trial."""
    return file_lock(run.paths.root / ".create.lock")


@contextlib.contextmanager
def advisory_lock(storage: RDBStorage, name: str) -> Iterator[None]:
    """A PostgreSQL session advisory lock named after `name`, on its own connection."""
    from sqlalchemy import text

    key = zlib.crc32(name.encode())
    with storage.engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
        try:
            yield
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
            connection.commit()


def slot_lock(storage: RDBStorage, run: Run) -> Callable[[], ContextManager[None]]:
    """The lock under which trials are counted and claimed, as a factory of context managers."""
    if storage.engine.dialect.name == "postgresql":
        return lambda: advisory_lock(storage, f"harness:{run.study_name}")
    url = storage.engine.url
    beside = Path(f"{url.database}.lock") if url.get_backend_name() == "sqlite" and url.database else None
    return lambda: file_lock(beside or run.paths.root / ".slots.lock")


class SlotStudy(optuna.Study):
    """A study whose `ask` claims one of `target` slots under `lock`, or raises `NoSlot`."""

    def __init__(self, study: optuna.Study, target: int, lock: Callable[[], ContextManager[None]]) -> None:
        super().__init__(study_name=study.study_name, storage=study._storage, sampler=study.sampler,
                         pruner=study.pruner)
        self.target, self.lock = target, lock

    def claimed(self) -> int:
        """Trials finished or running: the slots taken."""
        return len(self.get_trials(deepcopy=False, states=CLAIMED))

    def ask(self, fixed_distributions: Optional[dict] = None) -> Any:
        with self.lock():
            if self.claimed() >= self.target:
                raise NoSlot
            return super().ask(fixed_distributions)


def worker_seed(study: optuna.Study, seed: int) -> int:
    """The sampler seed of this worker: the spec's for the first worker of a fresh study, another
    for each later start (a resume, or a second worker), so that workers started together draw
    different trials and a single-worker fresh study repeats itself. Call under `creation_lock`."""
    starts = int(study.user_attrs.get("worker_starts", 0))
    study.set_user_attr("worker_starts", starts + 1)
    return seed + 7919 * starts
