"""The fold store: each fold's OOF and test predictions, model and history on disk, and their reuse.

A fold is finished when its `done.json` exists (written last, atomically): a fold killed half-way
is trained again, a finished one is read back as it is, if it was trained with the same trial
configuration (its digest). A retried trial reuses the folds of the trial it retries.
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

from ..config.paths import FoldPaths, RunPaths, atomic_write_text

if TYPE_CHECKING:
    from ..tasks.base import Task


@dataclass
class FoldResult:
    fold: int
    score: float
    val_index: np.ndarray
    oof: np.ndarray  # len(val_index) × C probabilities
    test: np.ndarray  # n_test × C probabilities
    kept_step: int  # the step whose weights predicted
    val_loss: float
    seconds: float
    reused: bool = False
    timing: Dict[str, float] = field(default_factory=dict)  # seconds by phase (timing.py)


def save_fold(out: FoldPaths, result: FoldResult, model: torch.nn.Module, history: pd.DataFrame,
              digest: str, record: dict) -> None:
    """Write the fold's files, `done.json` last; `record` is merged into done.json, with the fold's
    seconds by phase (`result.timing`, to which the writing itself is added as `save`)."""
    started = time.perf_counter()
    out.root.mkdir(parents=True, exist_ok=True)
    compact = (lambda a: a.astype(np.float16)) if result.oof.ndim > 2 else (lambda a: a)  # maps: half size
    np.save(out.oof, compact(result.oof))
    np.save(out.val_index, result.val_index)
    np.save(out.test, compact(result.test))
    checkpoint = io.BytesIO()  # written by Python, so a full disk is an OSError that names the file
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, checkpoint)
    out.model.write_bytes(checkpoint.getbuffer())
    history.to_csv(out.history, index=False)
    result.timing["save"] = round(result.timing.get("save", 0.0) + time.perf_counter() - started, 3)
    done = {"fold": result.fold, "score": result.score, "kept_step": result.kept_step,
            "val_loss": result.val_loss, "seconds": round(result.seconds, 2),
            "config": digest, "n_val": len(result.val_index), "n_test": len(result.test),
            "timing": result.timing, **record}
    atomic_write_text(out.done, json.dumps(done, indent=1))


def read_done(out: FoldPaths) -> Optional[dict]:
    return json.loads(out.done.read_text()) if out.done.is_file() else None


def load_fold(out: FoldPaths, digest: Optional[str] = None) -> Optional[FoldResult]:
    """A finished fold (of the config with `digest`, if given) from disk; None when it must be trained."""
    done = read_done(out)
    if done is None or (digest is not None and done["config"] != digest):
        return None
    return FoldResult(fold=done["fold"], score=done["score"], val_index=np.load(out.val_index),
                      oof=np.load(out.oof), test=np.load(out.test), kept_step=done["kept_step"],
                      val_loss=done["val_loss"], seconds=done["seconds"], reused=True,
                      timing=done.get("timing", {}))


def load_trial_folds(paths: RunPaths, owner: int, n_folds: int) -> Optional[List[FoldResult]]:
    """Every fold of the trial whose files `owner` holds; None if any is missing (removed by hand)."""
    folds = [load_fold(paths.fold(owner, k)) for k in range(n_folds)]
    return None if any(f is None for f in folds) else folds


def pool_folds(results: List[FoldResult], n: int, task: "Task",
               tests: Optional[List[np.ndarray]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The trial's OOF predictions in sample order (n × C, or n × H × W) and its test predictions
    averaged over the fold models (`tests`, one per fold, else the stored ones), each fold first
    put on the task's common scale (`Task.common_scale`: percentiles for rank metrics)."""
    oof = np.full((n,) + results[0].oof.shape[1:], np.nan, dtype=np.float32)
    test_sum = None
    for r, test in zip(results, tests if tests is not None else [r.test for r in results]):
        fold_oof, fold_test = task.common_scale(r.oof, test)
        oof[r.val_index] = fold_oof
        test_sum = fold_test.astype(np.float64) if test_sum is None else test_sum + fold_test
    return oof, (test_sum / len(results)).astype(np.float32)


def artifact_owner(trial: FrozenTrial) -> int:
    """The trial number whose directory holds this trial's folds (a retry reuses its original's)."""
    retry_of = trial.user_attrs.get("retry_of")
    if retry_of is not None:
        return int(retry_of)
    retried = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
    return trial.number if retried is None else retried
