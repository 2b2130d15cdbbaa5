"""The Optuna study: its storage, creation, fingerprint and the resume of interrupted trials.

Resume rules
- `--trials N` counts COMPLETE and PRUNED trials in the study, so running again continues it.
- A RUNNING trial whose process on this host is gone (kill -9, power cut) is marked FAIL with
  the reason and enqueued again with the same parameters; the retry writes into the same trial
  directory, so its finished folds are read back from disk, not retrained. Trials left behind
  by other machines (shared PostgreSQL storage) are retried the same way by Optuna's heartbeat.
- A study keeps one search space, data and fold split (its fingerprint); a change needs a new
  run directory. How trials are judged (the pruner, its warm-up, validations, patience) may change.
- An SQLite study is copied beside itself (`<db>.backup`) after each finished trial; a damaged
  study file is said as such (not as a storage that cannot be reached), naming that copy
  (`storage.py`).
"""
from __future__ import annotations

import json
import os
import socket
from typing import TYPE_CHECKING, List, Optional, Tuple

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from ..config.paths import Run
from ..config.spec import to_dict
from ..errors import SpecError
from ..files import process_alive
from ..tasks import task_type
from ..training.config import HOW_FIELDS
from ..training.store import first_damage
from . import record
from .pruners import study_pruner
from .storage import connect, read_study
from .workers import storage_trial_id, worker_seed

if TYPE_CHECKING:
    from ..data.prepare import SearchData

# how trials are run and judged, not what a finished fold means: a resume may change them (a fold
# trained with other validations or patience has another digest, so it is trained again, not reused)
POLICY_FIELDS = ("pruner", "prune_warmup", "evals", "patience", "pseudo_labels", "pseudo_precision",
                 "pseudo_soft")


def open_study(run: Run, create: bool, storage: Optional[RDBStorage] = None) -> optuna.Study:
    """The run's study: `create`, made if new (what `search` does, with --storage remembered), else
    only read (`read_study`). `storage`, when the caller has connected already."""
    return create_study(run, storage) if create else read_study(run, storage)


def create_study(run: Run, storage: Optional[RDBStorage] = None) -> optuna.Study:
    """The run's study, made if new, with its direction, pruner and this worker's sampler; --storage
    is remembered in the run dir once it connected."""
    run.paths.root.mkdir(parents=True, exist_ok=True)
    storage = storage or connect(run.storage_url, run.spec.search.heartbeat)
    direction = task_type(run.spec).metrics.get(run.spec.metric).direction
    run.remember_storage()
    study = optuna.create_study(study_name=run.study_name, storage=storage, load_if_exists=True,
                                direction=direction, pruner=study_pruner(run.spec.search))
    # constant_liar: a worker's draw treats the others' running trials as done badly, so that
    # workers explore apart
    study.sampler = optuna.samplers.TPESampler(seed=worker_seed(study, run.spec.seed), n_startup_trials=5,
                                               constant_liar=True)
    return study


def retry_interrupted(study: optuna.Study, storage: RDBStorage) -> List[int]:
    """Enqueue again, with the same parameters, trials cut short by Ctrl-C or by a process that died.

    A Ctrl-C'd trial is already FAIL (the search tells it so) and marked `interrupted`; a killed one
    is still RUNNING with the pid of a process on this host that is gone, and is failed here.
    """
    host, numbers = socket.gethostname(), []
    trials = study.get_trials(deepcopy=False)
    retried = record.retried_sources(trials)
    for t in trials:
        if t.number in retried or t.state not in (TrialState.RUNNING, TrialState.FAIL):
            continue
        if t.state == TrialState.RUNNING:
            owner_host, pid = record.process_of(t)
            if owner_host != host or (pid != os.getpid() and process_alive(pid)):
                continue  # alive, or another machine's: Optuna's heartbeat retries those
            if not _fail_dead(study, storage, t.number, f"interrupted: process {pid} ended"):
                continue  # failed meanwhile by a heartbeat check, which retries it
        elif not record.interrupted(t):
            continue  # a real failure: retrying would fail again
        study.enqueue_trial(t.params, user_attrs=record.retry_attrs(record.artifact_owner(t), t))
        numbers.append(t.number)
    return numbers


def _fail_dead(study: optuna.Study, storage: RDBStorage, number: int, reason: str) -> bool:
    """Fail the RUNNING trial `number` of a process that is gone, with `reason`; False when it was
    finished meanwhile (a heartbeat check failed it, and retries it)."""
    trial_id = storage_trial_id(storage, study, number)
    try:
        storage.set_trial_user_attr(trial_id, record.FAIL_REASON, reason)
        storage.set_trial_user_attr(trial_id, record.INTERRUPTED, True)  # not the trial's fault: `status` says so
        study.tell(number, state=TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError):  # ValueError: "Cannot tell a FAIL trial"
        return False
    return True


def retry_damaged(study: optuna.Study, run: Run) -> List[Tuple[int, str]]:
    """Enqueue again, with the same parameters, complete trials whose fold files were damaged since
    (cut off, edited, removed): the retry trains those folds again in the same folder and reads the
    whole ones back. Returns (trial, the damaged file's line) of each."""
    trials = study.get_trials(deepcopy=False)
    retried = record.retried_sources(trials)
    out = []
    for owner, t in record.latest_per_folder([t for t in trials if t.state == TrialState.COMPLETE]).items():
        damage = None if t.number in retried else first_damage(run.paths, owner, record.folds_run(t) or run.spec.folds)
        if damage is not None:
            study.enqueue_trial(t.params, user_attrs=record.retry_attrs(owner, t))
            out.append((t.number, damage.line(run.paths.root)))
    return out


def _fingerprint(run: Run, data: "SearchData") -> dict:
    spec = to_dict(run.spec)
    keep = ("task", "metric", "folds", "seed", "channels", "orientation", "positive", "positive_value",
            "heads", "fold_by", "search")
    spec["search"] = {k: v for k, v in spec["search"].items() if k not in HOW_FIELDS + POLICY_FIELDS}
    return {**{k: spec[k] for k in keep}, "train.groups": spec["train"]["groups"], "folds_hash": data.folds_hash,
            "classes": data.samples.heads, "train data": data.train_hash}


def check_fingerprint(study: optuna.Study, run: Run, data: "SearchData") -> None:
    """A study keeps one search space, data and fold split; a change needs a new run directory."""
    now = json.loads(json.dumps(_fingerprint(run, data), default=str))
    before = record.fingerprint(study)
    if before is None:
        record.set_fingerprint(study, now)
        return
    for key in now:
        if key == "search":
            changed = [k for k in now[key] if before[key].get(k) != now[key][k]]
            if changed:
                k = changed[0]
                raise SpecError(f"search.{k} is {now[key][k]} but this study was started with "
                                f"{before[key].get(k)}: use another --run-dir (or the same --set)")
        elif key == "train data":
            if before.get(key, now[key]) != now[key]:  # a study older than this key has none
                raise SpecError("the training images hold other bytes than when this study was started (a file "
                                "was replaced or edited): its finished folds were trained on the old ones; use "
                                "another --run-dir")
        elif before.get(key) != now[key]:
            raise SpecError(f"{key} is {now[key]} but this study was started with {before.get(key)}: "
                            "use another --run-dir")
