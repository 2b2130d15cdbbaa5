"""Pseudo-labels: the submitted ensemble's confident test predictions, a set per fold, for new trials
to train on beside the training images (`harness search --pseudo-labels`, after `harness submit`).

Fold k's set is the ensemble's blend of its members' fold-k models alone (which never trained on
fold k's validation images), labelled at the submitted cut-offs. A head's label of a test image is
taken where its probability reaches that class's cut-off, the lowest at which the ensemble's OOF
labels of that class, on the other folds' images, are right `search.pseudo_precision` of the time
(a head not sure of an image leaves it out of its loss; an image no head is sure of is not taken).
A cut-off per class keeps a rare class from being drowned by a common one's confident
images, or from being taken at a confidence its OOF labels do not earn; the set then keeps the
training images' class mix. Segmentation does the same per pixel: the sure pixels of a test image
are its label, the others are ignored by the loss (`pixel_labels`).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..config.paths import Run
from ..data.prepare import SearchData, prepare_data
from ..errors import SpecError
from ..search.record import artifact_owner
from ..search.storage import read_study
from ..tasks.base import Task
from ..tasks.pixels import IGNORED_PIXEL
from ..training.distill import soft_targets
from ..training.predict import fold_tests
from ..training.pseudo import NOT_TAKEN, PseudoSet, save_pseudo_set
from ..training.store import DamagedFold, FoldResult, load_trial_folds, pool_folds
from .submission import submitted_record, submitted_weights

MIN_TAKEN = 5  # OOF images a cut-off must keep: a precision measured on fewer is luck
PRIOR_KEPT = 0.8  # a class's share of a fold's training rows, with the set, is at least this of its own
SAMPLED_PIXELS = 1_000_000  # OOF pixels a segmentation cut-off is fitted on, at most


def make_pseudo_labels(run: Run, echo: Callable[[str], None] = print) -> Optional[PseudoSet]:
    """The pseudo-label set of the submitted ensemble, written in the run dir's pseudo/ (kept as it
    is when made before); None, in a line, when nothing was submitted yet or no test image is taken."""
    if not run.paths.ensemble_json.is_file():
        echo("pseudo-labels: nothing submitted yet, so this search trains on the training images alone; run "
             "`harness submit`, then `harness search --pseudo-labels` again")
        return None
    submitted = submitted_record(run)
    weights = submitted_weights(submitted)
    thresholds = submitted.get("thresholds") or {}
    data = prepare_data(run)
    members = _member_folds(run, data, weights)
    oof, tests = ensemble_folds(data, weights, members)
    precision = run.spec.search.pseudo_precision
    if data.task.masks_are_labels and tests[0].shape[1:] != oof.shape[1:]:
        raise SpecError(f"pseudo-labels: the test images are {tests[0].shape[2]}x{tests[0].shape[1]} pixels, the "
                        f"training images {oof.shape[2]}x{oof.shape[1]}: a fold trains on images of one size")
    make = pixel_labels if data.task.masks_are_labels else fold_labels
    labels, cutoffs = make(data.task, data.y, data.fold, oof, tests, thresholds, precision)
    record = {"members": {str(n): w for n, w in weights.items()}, "thresholds": thresholds, "precision": precision,
              "test_hash": data.test_hash, "folds_hash": data.folds_hash, "test_images": len(data.samples.test),
              "cutoffs": cutoffs, "taken": taken_counts(labels, data.task)}
    if not PseudoSet("", labels, record).taken.any():
        echo(f"pseudo-labels: none taken, so this search trains on the training images alone: {_why_none(cutoffs)} "
             "(a lower search.pseudo_precision takes more, less surely)")
        return None
    soft = None
    if run.spec.search.pseudo_soft and not data.task.masks_are_labels:  # the probabilities of each head's classes
        soft = np.stack([soft_targets(data.task, t) for t in tests])
    pseudo = save_pseudo_set(run.paths.pseudo, labels, record, soft)
    for line in pseudo_lines(pseudo, run):
        echo(line)
    return pseudo


def _why_none(cutoffs: List[dict]) -> str:
    """Why no fold takes a test image: the classes whose OOF labels reach the precision at no cut-off,
    else the test images' probabilities, below every cut-off."""
    missing = [c for head, classes in cutoffs[0].items() for c in classes
               if all(fold[head][c] is None for fold in cutoffs)]
    if missing:
        return f"the ensemble's OOF labels of {', '.join(missing)} reach the precision asked at no cut-off"
    return "no test image's probability reaches its class's cut-off"


def _member_folds(run: Run, data: SearchData, weights: Dict[int, float]) -> Dict[int, Tuple[List[FoldResult], list]]:
    """Each submitted member's folds and its fold models' test predictions (kept by submit)."""
    trials = {t.number: t for t in read_study(run).get_trials(deepcopy=False)}
    out = {}
    for number in weights:
        try:
            if number not in trials:
                raise SpecError(f"trial {number} is not in the study")
            owner = artifact_owner(trials[number])
            folds = load_trial_folds(run.paths, owner, run.spec.folds)
            if folds is None:
                raise SpecError(f"trial {number}'s folds are not all on disk")
            tests = fold_tests(run.paths, owner, folds, data.task, data.test_hash,
                               lambda size: data.test_images(size, cache=run.paths.cache_dir))
        except (SpecError, DamagedFold) as err:
            problem = err.line(run.paths.root) if isinstance(err, DamagedFold) else str(err)
            raise SpecError(f"pseudo-labels: {problem}: run `harness submit` again first") from None
        out[number] = (folds, tests)
    return out


def ensemble_folds(data: SearchData, weights: Dict[int, float], members: Dict[int, Tuple[List[FoldResult], list]]
                   ) -> Tuple[np.ndarray, List[np.ndarray]]:
    """The ensemble's OOF predictions (as submit blends them) and, per fold k, its blend of the
    members' fold-k models' test predictions, each on the task's common scale."""
    n_train = len(data.y)
    oof, tests = None, None
    for number, w in weights.items():
        folds, fold_test = members[number]
        member_oof = pool_folds(folds, n_train, data.task)[0]
        scaled = [data.task.common_scale(f.oof, t)[1].astype(np.float64) for f, t in zip(folds, fold_test)]
        oof = w * member_oof if oof is None else oof + w * member_oof
        tests = [w * t for t in scaled] if tests is None else [a + w * t for a, t in zip(tests, scaled)]
    return oof, tests


def fold_labels(task: Task, y: np.ndarray, fold: np.ndarray, oof: np.ndarray, tests: List[np.ndarray],
                thresholds: dict, precision: float) -> Tuple[np.ndarray, List[dict]]:
    """folds × n_test × H labels (NOT_TAKEN where a head is not sure of an image) and each fold's cut-offs per
    head and class (None: no cut-off reaches `precision`), as pseudo.json shows them."""
    labels = np.full((len(tests), len(tests[0]), len(task.heads)), NOT_TAKEN, dtype=np.int16)
    shown = []
    for k, test in enumerate(tests):
        others = fold != k  # the cut-offs of fold k never see its validation labels
        cut = class_cutoffs(task, y[others], oof[others], thresholds, precision)
        predicted = task.labels(test, thresholds)
        confidence = np.stack([test[np.arange(len(test)), head.offset + predicted[:, h]]
                               for h, head in enumerate(task.heads)], axis=1)
        sure = np.stack([confidence[:, h] >= np.array([np.inf if c is None else c for c in cut[head.name].values()])
                         [predicted[:, h]] for h, head in enumerate(task.heads)], axis=1)
        sure = keep_class_mix(sure, predicted, confidence, y[others], [len(h.classes) for h in task.heads])
        labels[k][sure] = predicted[sure]
        shown.append({h: {c: None if v is None else round(v, 4) for c, v in cuts.items()} for h, cuts in cut.items()})
    return labels, shown


def class_quota(available: np.ndarray, prior: np.ndarray, n: int) -> np.ndarray:
    """How many of each class's sure test images (`available`) a fold of `n` training rows with the
    class shares `prior` takes: as many as keep every class's share of the rows it trains on at
    least PRIOR_KEPT of its training share, and none beyond its share of what is taken. A class
    with no sure image thus limits the set to a quarter of `n`; with enough of every class, the
    set's mix is the training mix."""
    seen = prior > 0
    size = min(float(available.sum()), float(np.min((n + available[seen] / prior[seen]) / PRIOR_KEPT - n)))
    return np.minimum(available, np.floor(size * prior + 1e-9)).astype(int)


def keep_class_mix(take: np.ndarray, predicted: np.ndarray, confidence: np.ndarray, y: np.ndarray,
                   sizes: List[int]) -> np.ndarray:
    """`take` (images × heads: the labels sure enough), head by head, less the least confident labels
    of each class beyond its `class_quota` for the fold's training labels `y`: a set of mostly one
    class would move the model's prior."""
    take = take.copy()
    for h, size in enumerate(sizes):
        prior = np.bincount(y[:, h], minlength=size) / len(y)
        quota = class_quota(np.bincount(predicted[take[:, h], h], minlength=size), prior, len(y))
        for c in range(size):
            rows = np.flatnonzero(take[:, h] & (predicted[:, h] == c))
            if len(rows) > quota[c]:
                take[rows[np.argsort(confidence[rows, h], kind="stable")[:len(rows) - quota[c]]], h] = False
    return take


def pixel_labels(task: Task, y: np.ndarray, fold: np.ndarray, oof: np.ndarray, tests: List[np.ndarray],
                 thresholds: dict, precision: float) -> Tuple[np.ndarray, List[dict]]:
    """Segmentation: folds × n_test × height × width masks, 1 or 0 where a pixel's probability reaches
    its class's cut-off (fitted on the other folds' OOF pixels, as `fold_labels` does per image),
    IGNORED_PIXEL elsewhere, the taken pixels kept to the training masks' share of positives; and
    each fold's cut-offs."""
    at = (thresholds or {}).get("mask", 0.5)
    background, positive = task.heads[0].classes
    rng = np.random.default_rng(0)
    labels = np.full((len(tests),) + tests[0].shape, IGNORED_PIXEL, dtype=np.uint8)
    shown = []
    for k, test in enumerate(tests):
        p, truth = oof[fold != k].ravel(), y[fold != k].ravel()
        n_pixels = p.size
        if p.size > SAMPLED_PIXELS:  # a precision to a few decimals needs no more
            pick = rng.choice(p.size, SAMPLED_PIXELS, replace=False)
            p, truth = p[pick], truth[pick]
        sure = p >= at
        cut = {background: precision_cutoff(1 - p[~sure], truth[~sure] == 0, precision),
               positive: precision_cutoff(p[sure], truth[sure] == 1, precision)}
        limit = {c: np.inf if v is None else v for c, v in cut.items()}
        ones = (test >= at) & (test >= limit[positive])
        zeros = (test < at) & (1 - test >= limit[background])
        ones, zeros = keep_pixel_mix(ones, zeros, test, float(truth.mean()), n_pixels)
        labels[k][zeros], labels[k][ones] = 0, 1
        shown.append({"mask": {c: None if v is None else round(v, 4) for c, v in cut.items()}})
    return labels, shown


def keep_pixel_mix(ones: np.ndarray, zeros: np.ndarray, p: np.ndarray, share: float,
                   n: int) -> Tuple[np.ndarray, np.ndarray]:
    """The sure positive and background pixels, each kind cut to its `class_quota` (the most sure
    kept) for a fold of `n` training pixels, `share` of them positive."""
    quota = class_quota(np.array([zeros.sum(), ones.sum()]), np.array([1 - share, share]), n)
    return _most_sure(ones, p, int(quota[1])), _most_sure(zeros, 1 - p, int(quota[0]))


def _most_sure(mask: np.ndarray, sureness: np.ndarray, n: int) -> np.ndarray:
    """`mask` reduced to its `n` pixels of the highest `sureness`."""
    where = np.flatnonzero(mask)
    if len(where) <= n:
        return mask
    kept = np.zeros(mask.size, dtype=bool)
    kept[where[np.argpartition(-sureness.ravel()[where], n)[:n]] if n > 0 else []] = True
    return kept.reshape(mask.shape)


def class_cutoffs(task: Task, y: np.ndarray, oof: np.ndarray, thresholds: dict,
                  precision: float) -> Dict[str, Dict[str, Optional[float]]]:
    """Per head and class, the lowest probability of that label at which the OOF labels given it are
    right `precision` of the time (among at least MIN_TAKEN images); None where none is."""
    predicted = task.labels(oof, thresholds)
    out = {}
    for h, head in enumerate(task.heads):
        out[head.name] = {}
        for c, name in enumerate(head.classes):
            rows = np.flatnonzero(predicted[:, h] == c)
            out[head.name][name] = precision_cutoff(oof[rows, head.offset + c], y[rows, h] == c, precision)
    return out


def precision_cutoff(score: np.ndarray, right: np.ndarray, precision: float) -> Optional[float]:
    """The lowest `score` whose images at or above it are right `precision` of the time, at least MIN_TAKEN."""
    order = np.argsort(-score, kind="stable")
    kept = np.arange(1, len(order) + 1)
    hits = np.cumsum(right[order]) / kept
    ok = np.flatnonzero((hits >= precision) & (kept >= MIN_TAKEN))
    return float(score[order][ok[-1]]) if ok.size else None


def taken_counts(labels: np.ndarray, task: Task) -> Dict[str, Dict[str, float]]:
    """Per head and class, the test images a fold takes with that label, on average over the folds
    (for masks, the share of the test pixels taken as that class)."""
    if labels.ndim == 4:
        return {"mask": {c: round(float((labels == j).mean()), 4) for j, c in enumerate(task.heads[0].classes)}}
    return {head.name: {c: int(round(float((labels[:, :, h] == j).sum(1).mean()))) for j, c in enumerate(head.classes)}
            for h, head in enumerate(task.heads)}


def pseudo_lines(pseudo: PseudoSet, run: Run) -> List[str]:
    """What a search on the set says of it: how many test images a fold takes, by class, and which
    classes no cut-off reaches."""
    rec = pseudo.record
    members = ", ".join(f"#{n}×{w:.2f}" for n, w in rec["members"].items())
    by_class = "; ".join(", ".join(f"{c} {n:.0%} of the pixels" if isinstance(n, float) else f"{c} {n}"
                                   for c, n in counts.items()) for counts in rec["taken"].values())
    soft = ", learnt as its probabilities (soft)" if pseudo.soft is not None else ""
    return [f"pseudo-labels of the submitted ensemble ({members}): a fold trains on {pseudo.images} of the "
             f"{rec['test_images']} test images too ({by_class}{soft}), labels whose class's OOF labels are "
             f"{rec['precision']:.0%} right above its cut-off; set {pseudo.id} in {run.paths.pseudo / pseudo.id}"]
