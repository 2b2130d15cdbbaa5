"""`harness distill`: one model trained on the training and the test images to match the submitted
ensemble's soft predictions, for a fast `predict --distilled`.

Its targets are the ensemble's OOF probabilities on the training images (what the ensemble says of
an image none of its models trained on, never a model's own training predictions) and the
ensemble's test probabilities on the test images. With no image held out, it has no OOF score: it
is scored by its agreement with the ensemble, on both sets, and by its speed against the ensemble's.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Callable, Dict, List, Optional

import numpy as np

from ..config.paths import FoldPaths, Run
from ..data.prepare import SearchData
from ..errors import SpecError
from ..files import write_file
from ..tasks.base import task_type
from ..training.config import TrialConfig
from ..training.distill import distill_model, save_student
from ..training.models import classifier_config
from ..training.predict import predict_from_checkpoint
from ..training.pseudo import with_test_images
from ..training.store import DamagedFold, load_trial_config
from .ensemble import Ensemble, TrialPredictions
from .shift import correct_label_shift
from .submission import member_tests, run_ensemble, submitted_record, submitted_weights


def make_distilled(run: Run, steps: Optional[int] = None, echo: Callable[[str], None] = print) -> dict:
    """Train the student (the best single trial's configuration, `steps` optimizer steps if given),
    write `<run-dir>/distilled/` (model.pt, config.json, distill.json) and return distill.json's record."""
    if task_type(run.spec).masks_are_labels:
        raise SpecError(f"distill: task {run.spec.task} is not supported yet (the student matches class "
                        "probabilities: classification tasks only)")
    if not run.paths.ensemble_json.is_file():
        raise SpecError(f"distill: no ensemble in {run.paths.root} yet: run `harness submit` first")
    started = time.time()
    data, _, preds, ens = run_ensemble(run, echo)
    preds, ens, test = member_tests(run, data, preds, ens, echo)
    _check_submitted(run, ens)
    # what was submitted: the test probabilities re-weighted by the test priors where submit did so
    test, _ = correct_label_shift(data.task, run.spec.submission.label_shift, data.y, ens.oof, test, ens.thresholds)
    cfg = _student_config(run, next(p.owner for p in preds if p.number == ens.best_single), steps)
    train_images, test_images = data.images(cfg.image_size, cache=run.paths.cache_dir)
    model = distill_model(cfg, data.task, with_test_images(train_images, test_images),
                          np.concatenate([ens.oof, test]))
    student = FoldPaths(run.paths.distilled)  # model.pt where a fold keeps its own: the same loader reads it
    save_student(student.root, model, cfg)
    trained = time.time() - started
    on_train = predict_from_checkpoint(cfg, data.task, student, train_images)
    clock = time.perf_counter()
    on_test = predict_from_checkpoint(cfg, data.task, student, test_images)
    student_seconds = time.perf_counter() - clock
    record = {"trial": ens.best_single, "backbone": cfg.backbone, "steps": cfg.steps,
              "ensemble": {str(n): w for n, w in ens.weights.items()},
              "images": {"train": len(train_images), "test": len(test_images)},
              "agreement": {"train": agreement(data, ens, on_train, ens.oof),
                            "test": agreement(data, ens, on_test, test)},
              "images_per_second": {"student": _rate(len(test_images), student_seconds),
                                    "ensemble": _rate(len(test_images), _ensemble_seconds(run, data, preds, ens))},
              "seconds": {"training": round(trained, 2), "total": round(time.time() - started, 2)}}
    write_file(run.paths.distilled / "distill.json", json.dumps(record, indent=1))
    for line in distill_lines(record, student.model):
        echo(line)
    return record


def agreement(data: SearchData, ens: Ensemble, student: np.ndarray, ensemble: np.ndarray) -> Dict[str, float]:
    """The share of labels (per image and head, at the ensemble's cut-offs) the student and the
    ensemble agree on, and their mean absolute difference of probabilities."""
    same = data.task.labels(student, ens.thresholds) == data.task.labels(ensemble, ens.thresholds)
    return {"labels": round(float(same.mean()), 4) if same.size else 0.0,
            "mean_abs_diff": round(float(np.abs(student - ensemble).mean()), 4) if student.size else 0.0}


def distill_lines(record: dict, model_file) -> List[str]:
    """What `distill` prints: the student, its agreement with the ensemble on both sets, its speed."""
    test, train, speed = record["agreement"]["test"], record["agreement"]["train"], record["images_per_second"]
    n = record["images"]
    return [f"distilled trial #{record['trial']}'s configuration ({record['backbone']}, {record['steps']} steps) on "
            f"{n['train']} training + {n['test']} test images in {record['seconds']['training']:.1f} s: {model_file}",
            f"agreement with the ensemble on the test images: {test['labels']:.1%} of labels, mean |Δp| "
            f"{test['mean_abs_diff']:.4f}",
            f"on the training images: {train['labels']:.1%} of labels, mean |Δp| {train['mean_abs_diff']:.4f} "
            "(optimistic: the student trained on them, with these targets)",
            f"images per second on the test set: student {speed['student']:.1f}, ensemble {speed['ensemble']:.1f} "
            f"({speed['student'] / max(speed['ensemble'], 1e-9):.1f}× the ensemble's)"]


def _check_submitted(run: Run, ens: Ensemble) -> None:
    """The ensemble chosen now is the one `submit` wrote: distilling another would not be what was submitted."""
    weights = submitted_weights(submitted_record(run))
    if set(weights) != set(ens.weights) or not all(np.isclose(weights[n], ens.weights[n]) for n in weights):
        raise SpecError(f"the ensemble changed since {run.paths.ensemble_json} was written (trials finished or "
                        "left out): run `harness submit` again first")


def _trial_config(run: Run, owner: int) -> TrialConfig:
    try:
        return load_trial_config(run.paths, owner)
    except DamagedFold as err:
        raise SpecError(f"{err.line(run.paths.root)}: run `harness submit` again") from None


def _student_config(run: Run, owner: int, steps: Optional[int]) -> TrialConfig:
    """The best single trial's configuration as a plain timm classifier (`steps` optimizer steps if given):
    the student matches class probabilities, so an auxiliary mask head would have nothing to learn."""
    trial = _trial_config(run, owner)
    cfg = classifier_config(trial)
    if cfg is None:
        raise SpecError(f"distill: the best single trial is a {trial.model_family} model; a student of that "
                        "family is not supported yet (timm classifiers only)")
    return replace(cfg, steps=steps or cfg.steps, pseudo="")  # it trains on every test image


def _ensemble_seconds(run: Run, data: SearchData, preds: List[TrialPredictions], ens: Ensemble) -> float:
    """Seconds the ensemble's fold models take to predict the test images once (each from its
    checkpoint, with its trial's TTA), the images decoded beforehand as the student's were."""
    seconds = 0.0
    for p in preds:
        if p.number not in ens.weights:
            continue
        cfg = _trial_config(run, p.owner)
        images = data.test_images(cfg.image_size, cache=run.paths.cache_dir)
        clock = time.perf_counter()
        for f in p.folds:
            predict_from_checkpoint(cfg, data.task, run.paths.fold(p.owner, f.fold), images)
        seconds += time.perf_counter() - clock
    return seconds


def _rate(images: int, seconds: float) -> float:
    return round(images / max(seconds, 1e-9), 1)
