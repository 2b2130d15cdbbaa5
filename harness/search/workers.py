"""Many workers on one study: what each creates once, and how each claims its next trial.

Any number of `harness search` processes (on one machine, or on several sharing the run
directory and a PostgreSQL storage) may run on one study at once:

- `creation_lock`: an exclusive file lock in the run directory around everything a search makes
  before its first trial (prepared data, decoded-image cache, folds.csv, storage schema, study,
  recipes, retries). The first worker makes them; the others find them made.
- `TrialSlots.claim`: a worker starts a trial (Optuna's `ask`) only while the study holds fewer
  than `--trials` trials that are finished or running, counted under `slot_lock` (a PostgreSQL
  advisory lock on the study's server, else a file lock beside the SQLite file or in the run
  directory). So the study ends with exactly `--trials` finished ones; a worker finding none left
  waits while others run the last ones, since a trial that fails frees its slot.
- `TrialSlots.heartbeat`: while a claimed trial runs, a thread records its heartbeat every
  `search.heartbeat` seconds, as `Study.optimize` would (the loop is ask-and-tell, `loop.py`).

Optuna's RDB storage is the distributed engine; a trial of a worker that died is failed by its
heartbeat and retried with the same parameters (`study.connect`).
"""
from __future__ import annotations

import contextlib
import fcntl
import threading
import warnings
import zlib
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from ..config.paths import Run, sqlite_lock
from ..errors import sqlite_file
from . import record

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
    return file_lock(run.paths.create_lock)


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
    db_file = sqlite_file(run.storage_url)
    return lambda: file_lock(sqlite_lock(db_file) if db_file is not None else run.paths.slots_lock)


class TrialSlots:
    """The `target` trial slots of a study: `claim` asks Optuna for a trial under `lock` while one is
    free (else raises `NoSlot`); `heartbeat` keeps a claimed trial's heartbeat beating."""

    def __init__(self, study: optuna.Study, storage: RDBStorage, target: int,
                 lock: Callable[[], ContextManager[None]]) -> None:
        self.study, self.storage, self.target, self.lock = study, storage, target, lock

    @property
    def beats(self) -> bool:
        return self.storage.get_heartbeat_interval() is not None

    def claimed(self) -> int:
        """Trials finished or running: the slots taken."""
        return len(self.study.get_trials(deepcopy=False, states=CLAIMED))

    def claim(self) -> optuna.Trial:
        """A new trial (an enqueued one first), counted against `target`; fails the trials whose
        heartbeat stopped first, as `Study.optimize` does before each trial (their retries are
        enqueued by the storage's callback)."""
        if self.beats:
            optuna.storages.fail_stale_trials(self.study)
        with self.lock():
            if self.claimed() >= self.target:
                raise NoSlot
            with warnings.catch_warnings():  # Optuna warns that heartbeats need `optimize`: `heartbeat` beats
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
                return self.study.ask()

    @contextlib.contextmanager
    def heartbeat(self, trial: optuna.Trial) -> Iterator[None]:
        """Record `trial`'s heartbeat now and every heartbeat interval until the block ends."""
        if not self.beats:
            yield
            return
        trial_id = storage_trial_id(self.storage, self.study, trial.number)
        stop = threading.Event()
        beater = threading.Thread(target=_beat, args=(self.storage, trial_id, stop), daemon=True,
                                  name=f"heartbeat of trial {trial.number}")
        beater.start()
        try:
            yield
        finally:
            stop.set()
            beater.join()


def storage_trial_id(storage: RDBStorage, study: optuna.Study, number: int) -> int:
    """The storage's id of the study's trial `number`, through the storage's public methods (what a
    heartbeat and a failed trial of a dead worker are recorded under)."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


def _beat(storage: RDBStorage, trial_id: int, stop: threading.Event) -> None:
    interval = storage.get_heartbeat_interval()
    while True:
        try:
            storage.record_heartbeat(trial_id)
        except Exception:  # noqa: BLE001 - a storage hiccup: the trial itself meets a lasting fault
            pass
        if stop.wait(timeout=interval):
            return


def worker_seed(study: optuna.Study, seed: int) -> int:
    """The sampler seed of this worker: the spec's for the first worker of a fresh study, another
    for each later start (a resume, or a second worker), so that workers started together draw
    different trials and a single-worker fresh study repeats itself. Call under `creation_lock`."""
    return seed + 7919 * record.count_worker_start(study)
