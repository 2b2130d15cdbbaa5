"""Finished trials → ensemble → test predictions → a checked submission file in the declared format."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import pandas as pd
from optuna.trial import TrialState

from .ensemble import Ensemble, TrialPredictions, build_ensemble
from .layouts import read_sample_submission
from .paths import Run, atomic_write_text
from .masks import write_submission as write_masks
from .report import leaderboard, oof_lines, oof_report, write_report_page
from .search import SearchData, assemble_oof, open_study, prepare_data
from .spec import Competition, SpecError, submission_columns
from .targets import Targets
from .train import TrialConfig, load_fold, predict_from_checkpoint, read_done


def make_submission(run: Run, echo: Callable[[str], None] = print) -> Path:
    """Write `<run-dir>/<submission.file>` and `ensemble.json`; returns the submission's path."""
    data = prepare_data(run)
    study = open_study(run, create=False)
    preds = load_trial_predictions(run, study, data, echo)
    if not preds:
        raise SpecError(f"study {run.study_name!r} has no complete trial to ensemble yet "
                        "(pruned and failed trials are left out): run `harness search` first")
    ens = build_ensemble(preds, data.y, data.targets)
    test = ens.blend({p.number: p.test for p in preds})
    out = run.paths.submission(run.spec.submission.file)
    out.parent.mkdir(parents=True, exist_ok=True)
    if run.spec.submission.format != "csv":  # masks: tiff, png_folder, rle_csv
        written = write_masks(run.spec, data.samples.test, data.targets.labels(test, ens.thresholds), out)
    else:
        frame = submission_frame(run.spec, data.targets, data.samples.test["id"], test, ens.thresholds)
        frame = check_submission(frame, run.spec, run.data_root, len(data.samples.test))
        frame.to_csv(out.with_name(out.name + ".tmp"), index=False)
        out.with_name(out.name + ".tmp").replace(out)
        written = f"{out} ({len(frame)} rows)"
    figures = oof_report(run.paths, data, ens)
    record = {**_ensemble_record(ens, run), "heads": {h: {k: v for k, v in f.items() if k != "confusion_matrix"}
                                                      for h, f in figures.items()}}
    atomic_write_text(run.paths.ensemble_json, json.dumps(record, indent=1))
    metric = run.spec.metric
    summary = [f"ensemble of {len(ens.weights)} trial(s) {_weights_text(ens)}: OOF {metric} {ens.score:.4f}",
               f"best single trial {ens.best_single}: OOF {metric} {ens.best_single_score:.4f}"
               + _threshold_note(ens, preds)]
    if len(data.targets.heads) > 1:
        summary.append("ensemble per head: " + ", ".join(
            f"{h} {v:.4f}" for h, v in data.targets.head_scores(data.y, ens.oof, ens.thresholds).items()))
    cutoffs = [line for line in oof_lines(figures) if "confusion matrix" not in line]  # tables on the page
    write_report_page(run.paths, f"{run.spec.name}: {metric}", summary + cutoffs, figures, leaderboard(study))
    for line in summary + oof_lines(figures):
        echo(line)
    echo(f"wrote {written} and {run.paths.report_html}")
    return out


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
        folds = [load_fold(run.paths.fold_dir(owner, k)) for k in range(run.spec.folds)]
        if any(f is None for f in folds):
            continue  # its files were removed by hand: skip rather than guess
        tests = [_test_predictions(run, data, owner, f.fold, f.test) for f in folds]
        pred = TrialPredictions(number=t.number, cv=t.value, oof=assemble_oof(folds, n_train),
                                test=np.mean(tests, axis=0))
        if not (np.isfinite(pred.oof).all() and np.isfinite(pred.test).all()):
            echo(f"trial {t.number} left out: its predictions are not finite (the model diverged)")
            continue
        preds.append(pred)
    return preds


def _test_predictions(run: Run, data: SearchData, owner: int, fold: int, stored: np.ndarray) -> np.ndarray:
    """The fold's stored test predictions, or fresh ones from its checkpoint if the test set changed."""
    out_dir = run.paths.fold_dir(owner, fold)
    if read_done(out_dir).get("test_hash") == data.test_hash:
        return stored
    cfg = TrialConfig(**json.loads((run.paths.trial_dir(owner) / "config.json").read_text()))
    images = data.targets.load_images(data.samples.test, cfg.image_size, data.channels, run.paths.cache_dir)
    return predict_from_checkpoint(cfg, data.targets, out_dir, images)


def submission_frame(spec: Competition, targets: Targets, ids: pd.Series, proba: np.ndarray,
                     thresholds: Dict[str, float]) -> pd.DataFrame:
    """Id column, then the target column (or a column per head, and optionally their combination)."""
    sub = spec.submission
    frame = pd.DataFrame({sub.id_column: ids.to_numpy()})
    if sub.value == "probability":
        frame[sub.target_column] = proba[:, targets.heads[0].cols][:, 1]
        return frame
    labels = targets.labels(proba, thresholds)
    columns = submission_columns(spec)[1:]  # a combined column, if any, comes after the heads
    for i, (head, column) in enumerate(zip(targets.heads, columns)):
        frame[column] = np.asarray(head.classes, dtype=object)[labels[:, i]]
    if sub.combined_column:
        # mixed radix in head order, e.g. mask * 6 + gender * 3 + age for 3 × 2 × 3 classes
        frame[sub.combined_column] = np.ravel_multi_index(tuple(labels.T), targets.sizes)
    return frame


def check_submission(frame: pd.DataFrame, spec: Competition, data_root: Path, n_test: int) -> pd.DataFrame:
    """Ids, columns and row count against the sample submission (reordered to it) or the test listing."""
    sub = spec.submission
    if frame.isna().any().any():
        raise SpecError("submission has empty predictions")
    sample = read_sample_submission(spec, data_root, frame[sub.id_column])
    if sample is not None:
        frame = frame.set_index(sub.id_column).loc[sample[sub.id_column]].reset_index()
    elif len(frame) != n_test or frame[sub.id_column].duplicated().any():
        raise SpecError(f"submission has {len(frame)} rows / duplicate ids for {n_test} test images")
    return frame


def _ensemble_record(ens: Ensemble, run: Run) -> dict:
    return {"metric": run.spec.metric, "weights": {str(k): v for k, v in ens.weights.items()},
            "oof_score": ens.score, "thresholds": ens.thresholds, "threshold_rules": ens.threshold_rules,
            "best_single_trial": ens.best_single,
            "best_single_score": ens.best_single_score, "greedy_history": ens.history}


def _weights_text(ens: Ensemble) -> str:
    return "(" + ", ".join(f"#{n}×{w:.2f}" for n, w in sorted(ens.weights.items())) + ")"
