"""What `status` shows of a study: every trial at full precision (`trial_records`, for `--format
json|csv`), the leaderboard rounded for a terminal (`leaderboard`) and the lines on budgets.

Light on purpose (optuna, pandas, the record): `status` answers without loading torch.
"""
from __future__ import annotations

import datetime
import math
import time
from typing import Any, Dict, List, Optional

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from ..config.paths import RunPaths
from ..training.measured import read_speeds
from . import record
from .plan import Plan

# what the terminal's table leaves out of a record (the csv and json keep them)
DETAIL = ("folds_run", "partial_score", "started", "finished", "host", "pid", "images_trained", "timing", "recipe",
          "retry_of", "promoted_from", "reused_folds", "pseudo", "pseudo_images")


def state_name(trial: FrozenTrial) -> str:
    """Optuna's state, except a trial stopped by Ctrl-C or a fault of the machine: `interrupted` (it
    runs again, not a trial that failed by itself)."""
    if trial.state == TrialState.FAIL and record.interrupted(trial):
        return "interrupted"
    return trial.state.name.lower()


def trial_folder(paths: RunPaths, trial: FrozenTrial) -> str:
    """Where trial `trial`'s files are, relative to the run dir: its own `trials/tNNNN`, or, for a
    retry, the folder of the trial it retried (whose finished folds it reuses)."""
    return paths.trial_dir(record.artifact_owner(trial)).relative_to(paths.root).as_posix()


def trial_seconds(trial: FrozenTrial, now: Optional[float] = None) -> Optional[float]:
    """Wall-clock of a finished trial; of a running one, so far."""
    if trial.duration is not None:
        return trial.duration.total_seconds()
    if trial.state == TrialState.RUNNING and trial.datetime_start is not None:
        return (now or time.time()) - trial.datetime_start.timestamp()
    return None


def trial_note(trial: FrozenTrial, source: Optional[FrozenTrial] = None, k: Optional[int] = None) -> str:
    """Why it failed or was pruned, and what it stands for, each part after a `; `. A retry made
    before retries kept their recipe reads it from `source`, the trial it ran again; `k`: the study's
    folds, when known."""
    label = record.recipe(trial) or (record.recipe(source) if source is not None else None)
    parts = [record.fail_reason(trial) or record.pruned_reason(trial),
             f"recipe {label}" if label else "",
             f"retry of #{record.artifact_owner(trial)}" if _retry(trial) else "",
             f"folds of #{record.artifact_owner(trial)} read back" if record.REUSES in trial.user_attrs else "",
             partial_note(trial, k),
             f"promoted from #{record.promoted_from(trial)}" if record.promoted_from(trial) is not None else "",
             pseudo_note(trial),
             f"reused folds {record.reused_folds(trial)}" if record.reused_folds(trial) else ""]
    return "; ".join(p for p in parts if p)


def _retry(trial: FrozenTrial) -> bool:
    """A retry (of a trial cut short, or of damaged folds), not a promotion that reads its source's folds."""
    return record.RETRY_OF in trial.user_attrs or (
        record.REUSES not in trial.user_attrs and record.artifact_owner(trial) != trial.number)


def partial_note(trial: FrozenTrial, k: Optional[int] = None) -> str:
    """A trial of a planned search's lowest rung: trained on a few folds, ranked within its rung, no CV."""
    n = record.folds_run(trial)
    if n is None:
        return ""
    folds = f"{n} of {k} folds" if k else f"{n} folds"
    if trial.state != TrialState.COMPLETE:
        return folds
    return f"{folds}: {trial.value:.4f} ranks it within its rung; not a CV"


def pseudo_note(trial: FrozenTrial) -> str:
    """A trial trained on pseudo-labels: on how many test images a fold, of which set, re-running whom."""
    if record.pseudo(trial) is None:
        return ""
    images = trial.user_attrs.get(record.PSEUDO_IMAGES)
    again = f", as #{record.pseudo_of(trial)}" if record.pseudo_of(trial) is not None else ""
    return f"pseudo-labels: {'' if images is None else f'{images} test images, '}set {record.pseudo(trial)}{again}"


def trial_records(study: optuna.Study, paths: Optional[RunPaths] = None) -> List[Dict[str, Any]]:
    """One dict per trial, numbers as numbers at full precision, lists as lists, in trial order."""
    trials = study.get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    k = ((record.plan(study) or {}).get("shape") or {}).get("folds")
    now = time.time()
    rows = []
    for t in trials:
        attrs = t.user_attrs
        row = {"trial": t.number, "state": state_name(t),
               "cv": t.value if t.state == TrialState.COMPLETE and record.folds_run(t) is None else None,
               **{f"cv.{h}": v for h, v in record.head_scores(t).items()},
               "folds": list(record.fold_scores(t)), **t.params}
        if "steps" not in t.params and record.budget(t):  # a planned search's rung
            row["steps"] = record.budget(t)
        row.update({"seconds": trial_seconds(t, now), "busy": record.busy(t)})
        if paths is not None:
            row["folder"] = trial_folder(paths, t)
        row["note"] = trial_note(t, by_number.get(attrs.get(record.RETRY_SOURCE)), k)
        row.update({"started": _iso(t.datetime_start), "finished": _iso(t.datetime_complete),
                    "host": attrs.get(record.HOST), "pid": attrs.get(record.PID),
                    "images_trained": attrs.get(record.IMAGES_TRAINED), "timing": attrs.get(record.TIMING),
                    "recipe": record.recipe(t), "retry_of": attrs.get(record.RETRY_OF),
                    "promoted_from": record.promoted_from(t), "reused_folds": list(record.reused_folds(t)),
                    "folds_run": record.folds_run(t),
                    "partial_score": t.value if record.folds_run(t) is not None and t.state == TrialState.COMPLETE
                    else None,
                    "pseudo": record.pseudo(t), "pseudo_images": attrs.get(record.PSEUDO_IMAGES)})
        rows.append(row)
    return rows


def ranked(study: optuna.Study, rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Best CV first (the study's direction), then trials without one in number order."""
    sign = 1 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1
    scored = sorted((r for r in rows if _number(r["cv"])), key=lambda r: (sign * r["cv"], r["trial"]))
    return scored + [r for r in rows if not _number(r["cv"])]


def leaderboard(study: optuna.Study, paths: Optional[RunPaths] = None) -> pd.DataFrame:
    """The table `status` prints: best CV first, rounded to read (fold scores in one cell, learning
    rates in 2 digits); `trial_records` has the same trials at full precision."""
    rows = ranked(study, trial_records(study, paths))
    shown = [{k: _rounded(k, v) for k, v in r.items() if k not in DETAIL} for r in rows]
    table = pd.DataFrame(shown)
    if not table.empty:
        table["cv"] = pd.to_numeric(table["cv"])
    return table


def records_csv(rows: List[Dict[str, Any]]) -> str:
    """The records as a spreadsheet: one column per fold (`fold1`, …) and per phase (`timing.train`, …)."""
    flat = []
    for r in rows:
        out = {}
        for key, value in r.items():
            if key == "folds":
                out.update({record.fold_key(k): s for k, s in enumerate(value)})
            elif isinstance(value, dict):
                out.update({f"{key}.{k}": v for k, v in value.items()})
            elif isinstance(value, list):
                out[key] = " ".join(map(str, value))
            else:
                out[key] = value
        flat.append(out)
    return pd.DataFrame(flat).to_csv(index=False)


def json_ready(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """NaN and infinities (a diverged fold) as null: JSON has no such numbers."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v.item() if isinstance(v, np.generic) else v
    return [{k: clean(v) for k, v in r.items()} for r in rows]


def status_lines(study: optuna.Study, paths: RunPaths) -> List[str]:
    """What `status` says of budgets: the plan, its rungs' complete trials, the deadline and the time
    left, and the speeds measured on this machine."""
    lines = []
    kept = record.plan(study)
    if kept is not None:
        plan = Plan.from_dict(kept)
        trials: List[FrozenTrial] = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        k = int(plan.shape.get("folds", 0)) or None
        lines += [plan.line, "rungs: " + ", ".join(
            f"{sum(plan.rung(record.budget(t) or -1, record.folds_run(t) or k) == r for t in trials)} complete at "
            f"{steps} steps" + (f" on {plan.folds[r]} folds" if k and plan.folds and plan.folds[r] < k else "")
            for r, steps in enumerate(plan.rungs))]
    deadline = record.deadline(study)
    if deadline is not None:
        left = deadline - time.time()
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(deadline))
        lines.append(f"deadline {when}: " + (f"{left:.0f} s left" if left > 0 else "passed"))
    known = read_speeds(paths.speed_json)
    lines += [f"speed measured: {key}: {v['step']:.3g} s a step" for key, v in known.items()]
    return lines


def _iso(when: Optional[datetime.datetime]) -> Optional[str]:
    return when.isoformat(timespec="seconds") if when is not None else None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _rounded(key: str, value: Any) -> Any:
    if key == "folds":
        return " ".join(f"{s:.3f}" for s in value)
    if key == "seconds" and value is not None:
        return round(value, 1)
    if key == "cv" or key.startswith("cv."):
        return round(value, 4) if _number(value) else value
    if key == "busy":
        return value
    return f"{value:.2e}" if isinstance(value, float) else value
