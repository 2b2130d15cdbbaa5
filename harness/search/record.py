"""The trial record: every user attribute the harness keeps on a study or its trials, named once,
with small typed readers and writers.

The stored key names never change: a study written by an older harness must still read. Submit
reads trials through this module too (it sits above search); training does not (it is below).
"""
from __future__ import annotations

import os
import socket
from typing import Any, Dict, Iterable, List, Optional, Set, Union

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

# --- trial attributes ---
HOST = "host"  # the machine whose process runs the trial
PID = "pid"  # that process: a RUNNING trial whose process on this host is gone is retried
ARTIFACTS = "artifacts"  # the trial number whose folder holds its folds (`artifact_owner`)
FOLD_SCORES = "fold_scores"  # the scores of its finished folds, in fold order
FOLD_PREFIX = "fold"  # fold1, fold2, …: one number each, which a dashboard can sort by
REUSED_FOLDS = "reused_folds"  # the folds read back from disk, not trained
HEAD_SCORES = "head_scores"  # several heads: the CV of each
SECONDS = "seconds"  # wall-clock of the trial, whatever its end
TIMING = "timing"  # its seconds by phase
BUSY = "busy"  # the share of its seconds that ran the model
IMAGES_TRAINED = "images_trained"  # training images stepped through
FAIL_REASON = "fail_reason"  # why it failed, in one line
INTERRUPTED = "interrupted"  # stopped by Ctrl-C or a fault of the machine: it runs again
PRUNED = "pruned"  # at what progress it was pruned, and against what
RECIPE = "recipe"  # the recipe an enqueued trial stands for
RETRY_OF = "retry_of"  # a retry: the trial whose folder (and finished folds) it reuses
RETRY_SOURCE = "retry_source"  # a retry: the trial it runs again (each is retried once)
BUDGET = "budget"  # a planned search (`budget.py`): the trial's optimizer steps a fold, its rung's
PROMOTED_FROM = "promoted_from"  # a trial run again at the next rung's budget: the one it was promoted from
FOLDS_RUN = "folds_run"  # a planned search's lower rung: the trial trains the first N folds only (no CV); absent: all
REUSES = "reuses"  # a promotion to all folds at the same steps: the trial whose folder (and folds) it trains in
PSEUDO = "pseudo"  # the pseudo-label set its folds also trained on (training/pseudo.py)
PSEUDO_IMAGES = "pseudo_images"  # the test images a fold of it trained on, on average
PSEUDO_OF = "pseudo_of"  # an ensemble member run again with the pseudo-labels: that trial
# --- study attributes ---
PLAN = "plan"  # the budgets planned from measured speed for a deadline (`budget.Plan`)
PACES = "paces"  # a planned search: each finished trial's seconds over what its measured speed said
DEADLINE = "deadline"  # when the latest search with --timeout ends (seconds since the epoch)
WORKER_STARTS = "worker_starts"  # searches started on the study (each draws with a seed of its own)
FINGERPRINT = "fingerprint"  # search space, data and folds the study was started with


def fold_key(k: int) -> str:
    """The attribute of fold `k`'s score (zero-based `k`; the key counts from 1)."""
    return f"{FOLD_PREFIX}{k + 1}"


# --- readers ---

def artifact_owner(trial: FrozenTrial) -> int:
    """The trial number whose directory holds this trial's folds (a retry reuses its original's)."""
    retry_of = trial.user_attrs.get(RETRY_OF, trial.user_attrs.get(REUSES))
    if retry_of is not None:
        return int(retry_of)
    retried = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
    return trial.number if retried is None else retried


def running_owner(trial: optuna.Trial) -> int:
    """`artifact_owner` of a running trial: its stored record is read through its study, since an
    `optuna.Trial` does not show the system attribute a heartbeat's retry is marked with."""
    for frozen in trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if frozen.number == trial.number:
            return artifact_owner(frozen)
    return int(trial.user_attrs.get(RETRY_OF, trial.user_attrs.get(REUSES, trial.number)))  # finished meanwhile


def latest_per_folder(trials: Iterable[FrozenTrial]) -> Dict[int, FrozenTrial]:
    """Trial folder (`artifact_owner`) → its latest trial of `trials` (in number order): a retry that
    trained a finished trial's damaged folds again, in that trial's folder, stands for it."""
    return {artifact_owner(t): t for t in trials}


def retried_sources(trials: Iterable[FrozenTrial]) -> Set[Optional[int]]:
    """The trials already enqueued again (each is retried once)."""
    return {t.user_attrs.get(RETRY_SOURCE) for t in trials}


def process_of(trial: FrozenTrial) -> tuple:
    """(host, pid) of the process that ran the trial; (None, None) before it recorded them."""
    return trial.user_attrs.get(HOST), trial.user_attrs.get(PID)


def fail_reason(trial: FrozenTrial, default: str = "") -> str:
    return trial.user_attrs.get(FAIL_REASON, default)


def interrupted(trial: FrozenTrial) -> bool:
    return bool(trial.user_attrs.get(INTERRUPTED))


def pruned_reason(trial: FrozenTrial) -> str:
    return trial.user_attrs.get(PRUNED, "")


def recipe(trial: FrozenTrial) -> Optional[str]:
    return trial.user_attrs.get(RECIPE)


def fold_scores(trial: FrozenTrial) -> List[float]:
    return trial.user_attrs.get(FOLD_SCORES, [])


def reused_folds(trial: FrozenTrial) -> List[int]:
    return trial.user_attrs.get(REUSED_FOLDS, [])


def head_scores(trial: FrozenTrial) -> Dict[str, float]:
    return trial.user_attrs.get(HEAD_SCORES, {})


def busy(trial: FrozenTrial) -> Optional[float]:
    return trial.user_attrs.get(BUSY)


def seconds(trial: FrozenTrial) -> Optional[float]:
    return trial.user_attrs.get(SECONDS)


def budget(trial: Union[FrozenTrial, optuna.Trial]) -> Optional[int]:
    """The trial's optimizer steps a fold: its rung's in a planned search, else the drawn `steps`."""
    steps = trial.user_attrs.get(BUDGET, trial.params.get("steps"))
    return None if steps is None else int(steps)


def promoted_from(trial: FrozenTrial) -> Optional[int]:
    return trial.user_attrs.get(PROMOTED_FROM)


def folds_run(trial: Union[FrozenTrial, optuna.Trial]) -> Optional[int]:
    """The folds a trial of a lower rung trains (the first ones); None: all of them."""
    n = trial.user_attrs.get(FOLDS_RUN)
    return None if n is None else int(n)


def whole(trial: FrozenTrial, k: Optional[int] = None) -> bool:
    """Whether the trial trains all (`k`) folds: only such a trial has a CV, ranks or joins an ensemble."""
    return folds_run(trial) in (None, k)


def whole_complete(study: optuna.Study, k: Optional[int] = None) -> List[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if whole(t, k)]


def best_whole(study: optuna.Study, k: Optional[int] = None) -> Optional[FrozenTrial]:
    """The best COMPLETE trial of all `k` folds (a trial of a few folds has no CV); None before one."""
    best = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    return best(whole_complete(study, k), key=lambda t: t.value, default=None)


def paces(study: optuna.Study) -> List[float]:
    return list(study.user_attrs.get(PACES, []))


def pseudo(trial: Union[FrozenTrial, optuna.Trial]) -> Optional[str]:
    return trial.user_attrs.get(PSEUDO)


def enqueued(trial: Union[FrozenTrial, optuna.Trial]) -> bool:
    """Whether the harness enqueued the trial (a recipe, a promotion, a retry, a member run again on
    pseudo-labels) rather than the sampler drawing it."""
    return any(key in trial.user_attrs for key in (RECIPE, PROMOTED_FROM, RETRY_OF, PSEUDO_OF))


def pseudo_of(trial: FrozenTrial) -> Optional[int]:
    return trial.user_attrs.get(PSEUDO_OF)


def plan(study: optuna.Study) -> Optional[dict]:
    return study.user_attrs.get(PLAN)


def deadline(study: optuna.Study) -> Optional[float]:
    return study.user_attrs.get(DEADLINE)


def fingerprint(study: optuna.Study) -> Optional[dict]:
    return study.user_attrs.get(FINGERPRINT)


# --- writers ---

def mark_process(trial: optuna.Trial) -> None:
    """Record the process running the trial (what `retry_interrupted` looks at)."""
    trial.set_user_attr(HOST, socket.gethostname())
    trial.set_user_attr(PID, os.getpid())


def set_artifacts(trial: optuna.Trial, owner: int) -> None:
    trial.set_user_attr(ARTIFACTS, owner)


def set_folds(trial: optuna.Trial, scores: List[float], reused: List[int]) -> None:
    """The scores of the folds finished so far (and each alone), and which were read back."""
    trial.set_user_attr(FOLD_SCORES, scores)
    trial.set_user_attr(fold_key(len(scores) - 1), scores[-1])
    trial.set_user_attr(REUSED_FOLDS, reused)


def set_head_scores(trial: optuna.Trial, scores: Dict[str, float]) -> None:
    trial.set_user_attr(HEAD_SCORES, scores)


def set_time(trial: optuna.Trial, seconds: float, timing: Dict[str, Any], busy_share: Optional[float],
             images: int) -> None:
    trial.set_user_attr(SECONDS, seconds)
    trial.set_user_attr(TIMING, timing)
    trial.set_user_attr(BUSY, busy_share)
    trial.set_user_attr(IMAGES_TRAINED, images)


def set_fail_reason(trial: optuna.Trial, reason: str) -> None:
    trial.set_user_attr(FAIL_REASON, reason)


def mark_interrupted(trial: optuna.Trial, why: str) -> None:
    """Stopped by Ctrl-C or a fault of the machine, not by itself: it runs again next time."""
    trial.set_user_attr(FAIL_REASON, f"interrupted: {why}")
    trial.set_user_attr(INTERRUPTED, True)


def set_pruned(trial: optuna.Trial, reason: str) -> None:
    trial.set_user_attr(PRUNED, reason)


def set_budget(trial: optuna.Trial, steps: int, folds: Optional[int] = None) -> None:
    """A planned trial's steps a fold, and the folds it trains when not all (`folds`)."""
    trial.set_user_attr(BUDGET, steps)
    if folds is not None:
        trial.set_user_attr(FOLDS_RUN, folds)


def set_pseudo(trial: optuna.Trial, set_id: str, images: int) -> None:
    trial.set_user_attr(PSEUDO, set_id)
    trial.set_user_attr(PSEUDO_IMAGES, images)


def retry_attrs(owner: int, source: FrozenTrial) -> Dict[str, Any]:
    """The attributes of an enqueued retry of trial `source`, whose folds are in `owner`'s folder: a
    planned trial's budget goes with it (the same steps: its finished folds are reused), and what it
    stands for (its recipe, the trial it was promoted from, its pseudo-label set)."""
    attrs = {RETRY_OF: owner, RETRY_SOURCE: source.number}
    for key in (BUDGET, FOLDS_RUN, RECIPE, PROMOTED_FROM, PSEUDO, PSEUDO_OF):
        if key in source.user_attrs:
            attrs[key] = source.user_attrs[key]
    return attrs


def promotion_attrs(source: FrozenTrial, steps: int, folds: Optional[int] = None) -> Dict[str, Any]:
    """The attributes of trial `source` enqueued again at the next rung's budget (on its pseudo-labels):
    `steps` a fold on `folds` folds (None: all). The same steps on more folds train in its folder,
    reading its finished folds back."""
    kept = {PSEUDO: source.user_attrs[PSEUDO]} if PSEUDO in source.user_attrs else {}
    if folds is not None:
        kept[FOLDS_RUN] = folds
    if budget(source) == steps:
        kept[REUSES] = artifact_owner(source)
    return {BUDGET: steps, PROMOTED_FROM: source.number, **kept}


def pseudo_attrs(set_id: str, member: FrozenTrial) -> Dict[str, Any]:
    """The attributes of ensemble member `member` enqueued again to train on pseudo-label set `set_id`
    (at its budget, in a planned search)."""
    kept = {BUDGET: member.user_attrs[BUDGET]} if BUDGET in member.user_attrs else {}
    return {PSEUDO: set_id, PSEUDO_OF: member.number, **kept}


def recipe_attrs(name: str) -> Dict[str, str]:
    """The attributes of an enqueued recipe trial."""
    return {RECIPE: name}


def count_worker_start(study: optuna.Study) -> int:
    """Count a search starting on the study; returns how many started before it."""
    starts = int(study.user_attrs.get(WORKER_STARTS, 0))
    study.set_user_attr(WORKER_STARTS, starts + 1)
    return starts


def set_fingerprint(study: optuna.Study, value: dict) -> None:
    study.set_user_attr(FINGERPRINT, value)


def set_plan(study: optuna.Study, value: dict) -> None:
    study.set_user_attr(PLAN, value)


def set_paces(study: optuna.Study, kept: List[float]) -> None:
    study.set_user_attr(PACES, [round(p, 3) for p in kept])


def set_deadline(study: optuna.Study, at: float) -> None:
    study.set_user_attr(DEADLINE, round(at, 1))
