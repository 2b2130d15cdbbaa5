"""Finished trials → ensemble → test predictions → a checked submission file in the declared format."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, List, Tuple

import numpy as np
import optuna
from optuna.trial import TrialState

from ..config.paths import Run, atomic_write_text
from ..data.prepare import SearchData, prepare_data
from ..errors import SpecError
from ..search.study import open_study
from ..training.config import TrialConfig
from ..training.predict import predict_from_checkpoint
from ..training.store import load_trial_folds, pool_folds, read_done
from .ensemble import Ensemble, TrialPredictions, build_ensemble
from .formats import FORMATS
from .page import write_report
from .report import oof_lines, oof_report


def run_ensemble(run: Run, echo: Callable[[str], None] = print
                 ) -> Tuple[SearchData, optuna.Study, List[TrialPredictions], Ensemble]:
    """The prepared data, the study, every complete trial's predictions and their greedy ensemble."""
    data = prepare_data(run)
    study = open_study(run, create=False)
    preds = load_trial_predictions(run, study, data, echo)
    if not preds:
        raise SpecError(f"study {run.study_name!r} has no complete trial to ensemble yet "
                        "(pruned and failed trials are left out): run `harness search` first")
    return data, study, preds, build_ensemble(preds, data.y, data.task)


def make_submission(run: Run, echo: Callable[[str], None] = print) -> Path:
    """Write `<run-dir>/<submission.file>`, `ensemble.json` and report.html; returns the submission's path."""
    data, study, preds, ens = run_ensemble(run, echo)
    test = ens.blend({p.number: p.test for p in preds})
    written = FORMATS.get(run.spec.submission.format)(run, data, test, ens.thresholds)
    figures = oof_report(run.paths, data, ens)
    record = {**_ensemble_record(ens, run), "heads": {h: {k: v for k, v in f.items() if k != "confusion_matrix"}
                                                      for h, f in figures.items()}}
    atomic_write_text(run.paths.ensemble_json, json.dumps(record, indent=1))
    summary = _summary(run, data, preds, ens)
    write_report(run, data, study, ens, summary, figures)
    for line in summary + oof_lines(figures):
        echo(line)
    echo(f"wrote {written} and {run.paths.report_html}")
    return run.paths.submission(run.spec.submission.file)


def make_report(run: Run, echo: Callable[[str], None] = print) -> Path:
    """Write report.html (and the confusion matrices) of the ensemble `submit` would choose now;
    the submission and ensemble.json are left as they are."""
    data, study, preds, ens = run_ensemble(run, echo)
    write_report(run, data, study, ens, _summary(run, data, preds, ens), oof_report(run.paths, data, ens))
    echo(f"wrote {run.paths.report_html}")
    return run.paths.report_html


def _summary(run: Run, data: SearchData, preds: List[TrialPredictions], ens: Ensemble) -> List[str]:
    metric = run.spec.metric
    summary = [f"ensemble of {len(ens.weights)} trial(s) {_weights_text(ens)}: OOF {metric} {ens.score:.4f}",
               f"best single trial {ens.best_single}: OOF {metric} {ens.best_single_score:.4f}"
               + _threshold_note(ens, preds)]
    if len(data.task.heads) > 1:
        summary.append("ensemble per head: " + ", ".join(
            f"{h} {v:.4f}" for h, v in data.task.head_scores(data.y, ens.oof, ens.thresholds).items()))
    return summary


def _threshold_note(ens: Ensemble, preds: List[TrialPredictions]) -> str:
    """Why the best trial's score here can differ from its CV in `harness status`."""
    cv = next(p.cv for p in preds if p.number == ens.best_single)
    if np.isclose(cv, ens.best_single_score):
        return ""
    return f" with its threshold fitted on OOF (CV {cv:.4f} at the default threshold, as status shows)"


def load_trial_predictions(run: Run, study, data: SearchData,
                           echo: Callable[[str], None] = lambda line: None) -> List[TrialPredictions]:
    """OOF and fold-averaged test predictions of every COMPLETE trial, read from the run directory;
    a trial whose predictions are not finite (a diverged model, finished before this was checked)
    is left out."""
    preds = []
    n_train = len(data.samples.train)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        owner = t.user_attrs.get("artifacts", t.number)
        folds = load_trial_folds(run.paths, owner, run.spec.folds)
        if folds is None:
            continue  # its files were removed by hand: skip rather than guess
        tests = [_test_predictions(run, data, owner, f.fold, f.test) for f in folds]
        # checked before pooling: percentiles of NaN scores would look finite
        if not all(np.isfinite(f.oof).all() and np.isfinite(test).all() for f, test in zip(folds, tests)):
            echo(f"trial {t.number} left out: its predictions are not finite (the model diverged)")
            continue
        oof, test = pool_folds(folds, n_train, data.task, tests)
        preds.append(TrialPredictions(number=t.number, cv=t.value, oof=oof, test=test))
    return preds


def _test_predictions(run: Run, data: SearchData, owner: int, fold: int, stored: np.ndarray) -> np.ndarray:
    """The fold's stored test predictions, or fresh ones from its checkpoint if the test set changed."""
    out = run.paths.fold(owner, fold)
    if read_done(out).get("test_hash") == data.test_hash:
        return stored
    cfg = TrialConfig(**json.loads(run.paths.trial_config(owner).read_text()))
    images = data.task.load_images(data.samples.test, cfg.image_size, data.channels, run.paths.cache_dir)
    return predict_from_checkpoint(cfg, data.task, out, images)


def _ensemble_record(ens: Ensemble, run: Run) -> dict:
    return {"metric": run.spec.metric, "weights": {str(k): v for k, v in ens.weights.items()},
            "oof_score": ens.score, "thresholds": ens.thresholds, "threshold_rules": ens.threshold_rules,
            "best_single_trial": ens.best_single,
            "best_single_score": ens.best_single_score, "greedy_history": ens.history}


def _weights_text(ens: Ensemble) -> str:
    return "(" + ", ".join(f"#{n}×{w:.2f}" for n, w in sorted(ens.weights.items())) + ")"
