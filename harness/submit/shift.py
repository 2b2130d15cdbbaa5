"""Label shift (prior shift): the test set's class priors, estimated from the ensemble's test
probabilities, and the posteriors re-weighted by them where that helps.

- Calibration: each head's OOF probabilities are temperature-scaled (the temperature that
  minimises the OOF log-loss); EM needs calibrated posteriors.
- Priors: the EM of Saerens, Latinne & Decaestecker (2002) on the calibrated test probabilities
  (QuaPy's EMQ); on a small test set its MAP form, with a Dirichlet prior centred on the training
  priors (Šulc & Matas 2019); BBSE (Lipton et al. 2018, the OOF confusion matrix inverted) as a
  cross-check; the uncertainty is a bootstrap over the test images.
- The correction: p'(k|x) ∝ p(k|x)·π_test(k)/π_train(k), before the cut-offs and the argmax.
- Whether to correct (`submission.label_shift: auto`): the OOF predictions are resampled to other
  class mixes (the rarest class ×0.5, ×2, ×5) and the correction is made only where, on those, it
  raises the metric on average, and the test priors differ from the training ones by more than
  twice their bootstrap deviation and more than the estimate's error on those mixes, and BBSE moves
  them the same way. A rank metric (ROC-AUC) is unchanged by construction.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
from scipy.optimize import minimize_scalar

from ..tasks.base import Head, Task
from ..tasks.metrics import METRICS, is_better

SMALL_TEST = 300  # fewer test images: the MAP estimate, shrunk towards the training priors
MAP_STRENGTH = 20.0  # the Dirichlet prior's weight, in images
BOOTSTRAP = 40  # resamples of the test images for the estimate's uncertainty
MIXES = (0.5, 2.0, 5.0)  # the rarest class's share times these, in the simulated shifts
SIGNIFICANT = 2.0  # a shift is said (and may be corrected) beyond this many standard deviations
EPS = 1e-7


@dataclass
class HeadShift:
    """What `submit` found of one head's test priors, and whether it corrected them."""

    head: str
    classes: List[str]
    train: List[float]
    test: List[float]  # EM (MAP on a small test set) on the calibrated test probabilities
    sd: List[float]  # bootstrap standard deviation of `test`
    bbse: List[float]
    temperature: float
    shifted: bool  # some class beyond SIGNIFICANT deviations and beyond the simulated error
    simulation_error: float  # the estimate's mean absolute error on the simulated shifts
    applied: bool
    why: str  # why the correction is on or off
    simulation: List[dict] = field(default_factory=list)  # mix, estimate's error, metric off / on

    def to_dict(self) -> dict:
        return asdict(self)


def temperature(proba: np.ndarray, y: np.ndarray) -> float:
    """The temperature T of softmax(log p / T) with the lowest log-loss on (`proba`, `y`)."""
    logp = np.log(np.clip(proba, EPS, 1.0))

    def nll(t: float) -> float:
        return float(-np.mean(np.log(tempered(logp, t, is_log=True)[np.arange(len(y)), y] + EPS)))

    return float(minimize_scalar(nll, bounds=(0.05, 20.0), method="bounded").x)


def tempered(proba: np.ndarray, t: float, is_log: bool = False) -> np.ndarray:
    z = (proba if is_log else np.log(np.clip(proba, EPS, 1.0))) / t
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def em_priors(posteriors: np.ndarray, train: np.ndarray) -> np.ndarray:
    """The test priors by EM on calibrated `posteriors` (made under the `train` priors): maximum
    likelihood (QuaPy's EMQ), or MAP on a small test set."""
    if len(posteriors) < SMALL_TEST:
        return map_priors(posteriors, train)
    from quapy.method.aggregative import EMQ  # 1.6 s to import (its plots): only where a submit estimates

    with warnings.catch_warnings():  # a slow convergence is still the best estimate there is
        warnings.simplefilter("ignore")
        return np.asarray(EMQ.EM(train, posteriors)[0], dtype=float)


def map_priors(posteriors: np.ndarray, train: np.ndarray, strength: float = MAP_STRENGTH,
               iterations: int = 500) -> np.ndarray:
    """EM whose M-step adds a Dirichlet prior centred on the training priors (`strength` pseudo
    images): on 60 test images the ML estimate swings with every image (Šulc & Matas 2019)."""
    alpha = strength * train
    q = train.copy()
    for _ in range(iterations):
        w = posteriors * (q / train)
        w /= w.sum(axis=1, keepdims=True)
        new = (w.sum(axis=0) + alpha) / (len(w) + alpha.sum())
        if np.abs(new - q).max() < 1e-7:
            return new
        q = new
    return q


def bbse_priors(oof_labels: np.ndarray, y: np.ndarray, test_labels: np.ndarray, k: int) -> np.ndarray:
    """Black-box shift estimation: the OOF joint of (prediction, truth) solved for the weights that
    give the test's prediction shares; their priors clipped to the simplex."""
    joint = np.zeros((k, k))
    np.add.at(joint, (oof_labels, y), 1.0 / len(y))
    shares = np.bincount(test_labels, minlength=k) / max(len(test_labels), 1)
    weights = np.linalg.lstsq(joint, shares, rcond=None)[0]  # π_test(k) / π_train(k)
    priors = np.clip(weights * joint.sum(axis=0), 0, None)
    return priors / priors.sum() if priors.sum() > 0 else np.full(k, 1.0 / k)


def reweighted(proba: np.ndarray, train: np.ndarray, test: np.ndarray, t: float = 1.0) -> np.ndarray:
    """Posteriors under the `test` priors, from posteriors made under the `train` priors. The ratio
    applies to the calibrated posteriors (temperature `t`); said on the ensemble's own scale it is
    raised to `t`, so that its cut-offs, fitted on OOF, keep their meaning when nothing moved."""
    p = proba * (test / np.clip(train, EPS, None)) ** t
    return (p / p.sum(axis=1, keepdims=True)).astype(proba.dtype)


def bootstrap_sd(posteriors: np.ndarray, train: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    draws = [em_priors(posteriors[rng.integers(0, len(posteriors), len(posteriors))], train)
             for _ in range(BOOTSTRAP)]
    return np.std(draws, axis=0)


def simulated_shifts(y: np.ndarray, raw: np.ndarray, t: float, train: np.ndarray,
                     metric: str, cutoff: Optional[float], seed: int = 0) -> List[dict]:
    """The OOF predictions resampled to other class mixes: per mix, the prior estimate's mean
    absolute error and the metric without and with the correction."""
    rng = np.random.default_rng(seed)
    rare = int(np.argmin(np.where(train > 0, train, np.inf)))
    score, calibrated = METRICS.get(metric), tempered(raw, t)
    rows = []
    for factor in MIXES:
        share = float(np.clip(train[rare] * factor, 0.01, 0.95))
        mix = train * (1 - share) / max(1 - train[rare], EPS)
        mix[rare] = share
        counts = np.round(mix * len(y)).astype(int)
        idx = np.concatenate([rng.choice(np.flatnonzero(y == c), n) for c, n in enumerate(counts)
                              if n and (y == c).any()])
        est = em_priors(calibrated[idx], train)
        rows.append({"mix": [round(float(m), 4) for m in mix], "prior_error": float(np.abs(est - mix).mean()),
                     "off": float(score(y[idx], raw[idx], cutoff)),
                     "on": float(score(y[idx], reweighted(raw[idx], train, est, t), cutoff))})
    return rows


def head_shift(head: Head, mode: str, y: np.ndarray, oof: np.ndarray, test: np.ndarray,
               cutoff: Optional[float]) -> HeadShift:
    """One head's estimate, its cross-check, its uncertainty and the decision. The priors moved when
    they differ from the training ones by more than twice their bootstrap deviation and by more than
    the estimator's own error on the simulated shifts (a weak ensemble's EM wanders), and BBSE moves
    them the same way."""
    k = len(head.classes)
    train = np.bincount(y, minlength=k) / len(y)
    t = temperature(oof, y)
    posteriors = tempered(test, t)
    est, sd = em_priors(posteriors, train), bootstrap_sd(posteriors, train)
    bbse = bbse_priors(oof.argmax(axis=1), y, test.argmax(axis=1), k)
    rows = simulated_shifts(y, oof, t, train, head.metric, cutoff)
    error = float(np.mean([r["prior_error"] for r in rows]))
    moved = np.abs(est - train) > np.maximum(SIGNIFICANT * sd, error)
    agreed = np.sign(est - train) == np.sign(bbse - train)  # the cross-check moves the same way
    shifted = bool((moved & agreed).any())
    disputed = bool((moved & ~agreed).any())
    metric = METRICS.get(head.metric)
    off, on = np.mean([r["off"] for r in rows]), np.mean([r["on"] for r in rows])
    said = f"on OOF resampled to other class mixes, {head.metric} {off:.4f} → {on:.4f} corrected"
    if getattr(metric, "ranks", False):
        applied, why = False, f"{head.metric} judges only the order of the scores: unchanged by construction"
    elif mode == "off":
        applied, why = False, f"submission.label_shift is off; {said}"
    elif mode == "on":
        applied, why = True, f"submission.label_shift is on; {said}"
    else:
        helps = bool(is_better(on, off, metric.direction))
        applied = helps and shifted
        why = (f"auto: {said}" + ("" if helps else ": it does not help") + (
            "" if shifted else "; EM and BBSE disagree on which way the priors moved" if disputed
            else "; the test priors are within the estimate's uncertainty of the training ones"))
    return HeadShift(head=head.name, classes=list(head.classes), train=_r(train), test=_r(est), sd=_r(sd),
                     bbse=_r(bbse), temperature=round(t, 3), shifted=shifted, applied=applied, why=why,
                     simulation_error=round(error, 4), simulation=rows)


def correct_label_shift(task: Task, mode: Union[bool, str], y: np.ndarray, oof: np.ndarray, test: np.ndarray,
                        thresholds: Dict[str, float]) -> Tuple[np.ndarray, List[HeadShift]]:
    """The test probabilities, re-weighted by each head's estimated priors where the correction
    applies, and what was found per head (none for mask tasks or an empty test set)."""
    if task.masks_are_labels or len(test) == 0:
        return test, []
    mode = {True: "on", False: "off"}.get(mode, mode)  # YAML reads on/off as booleans
    out, shifts = test.copy(), []
    for i, head in enumerate(task.heads):
        found = head_shift(head, mode, y[:, i], oof[:, head.cols], test[:, head.cols], thresholds.get(head.name))
        if found.applied:
            out[:, head.cols] = reweighted(test[:, head.cols], np.array(found.train), np.array(found.test),
                                           found.temperature)
        shifts.append(found)
    return out, shifts


def shift_lines(shifts: List[HeadShift]) -> List[str]:
    """What `submit` says: the priors, a warning where they moved, and the decision, per head."""
    lines = []
    for s in shifts:
        tag = "" if len(shifts) == 1 else f" ({s.head})"
        pairs = ", ".join(f"{c} {a:.3f} → {b:.3f} ± {d:.3f}" for c, a, b, d in zip(s.classes, s.train, s.test, s.sd))
        lines.append(f"class priors{tag}, training → test estimated: {pairs} (EM on probabilities calibrated at "
                     f"T={s.temperature:.2f}, off by {s.simulation_error:.3f} on simulated shifts; BBSE: "
                     f"{', '.join(f'{b:.3f}' for b in s.bbse)})")
        if s.shifted:
            lines.append(f"warning{tag}: the test set's class priors differ from the training set's by more than "
                         "their uncertainty: a cut-off fitted on OOF assumes the training priors")
        lines.append(f"label-shift correction{tag}: {'on' if s.applied else 'off'} ({s.why})")
    return lines


def _r(values: np.ndarray) -> List[float]:
    return [round(float(v), 4) for v in values]
