"""What runs next in a planned search: a scheduler enqueues the trial that should run before the
sampler draws a new one (a promotion), or nothing.

One small interface, as Optuna's pruners have: `Scheduler.enqueue_next`. Successive halving is one
implementation; another (BOHB's model-based promotions, a cost-aware draw) is one more class here.
The loop asks it under the study's slot lock before each trial; the clock (`budget.py`) and the code
that runs a trial's folds (`objective.py`) are not its business.
"""
from __future__ import annotations

import abc
from typing import Dict, List, Optional, Tuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from . import record
from .budget import promoted_seconds
from .plan import ETA, Plan


class Scheduler(abc.ABC):
    """Decides what runs before a new draw."""

    @abc.abstractmethod
    def enqueue_next(self, study: optuna.Study, plan: Plan, seconds_left: Optional[float]) -> Optional[str]:
        """Enqueue the trial that runs next, if any, when it fits in `seconds_left` (None: no deadline);
        the line that says so, or None to let the sampler draw."""


class SuccessiveHalving(Scheduler):
    """Asynchronous successive halving (ASHA) over the plan's rungs, each a number of steps on a
    number of folds: the best complete trial of a rung that is among its best 1/η and not promoted
    yet runs again at the next rung, highest rung first. A trial is ranked only against trials of its
    own steps and folds. Until one trial of all folds is complete (or running), the best trial ranked
    on a few folds goes up at once: a search has something to submit as early as it can."""

    def enqueue_next(self, study: optuna.Study, plan: Plan, seconds_left: Optional[float]) -> Optional[str]:
        trials = study.get_trials(deepcopy=False)
        promoted = {record.promoted_from(t) for t in trials}
        k = int(plan.shape.get("folds", 0)) or None
        by_rung = rung_members(trials, plan, k)
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        # anytime: until a trial of all folds is complete, the best ranked on a few goes up at once
        first_whole = plan.folds_at(0, k or 0) != plan.folds_at(1, k or 0) and not any(
            record.whole(t, k) for t in trials if t.state != TrialState.FAIL)
        for rung in reversed(range(len(plan.rungs) - 1)):
            ranked = sorted(by_rung.get(rung, []), key=lambda t: -t.value if maximize else t.value)
            steps, folds = plan.rungs[rung + 1], plan.folds_at(rung + 1, k or 0) or None
            for t in ranked[:1 if first_whole and rung == 0 else len(ranked) // ETA]:
                fits = seconds_left is None or promoted_seconds(t, plan, steps, folds) <= seconds_left
                if t.number not in promoted and fits:
                    whole = folds is None or folds == k
                    study.enqueue_trial(t.params, user_attrs=record.promotion_attrs(t, steps, None if whole else folds))
                    return f"trial {t.number} ({_value(t, plan, rung, k)}, best {ranked.index(t) + 1} of {len(ranked)} " \
                           f"at {_rung_name(plan, rung, k)}) goes up to {_rung_name(plan, rung + 1, k)}"
        return None


def rung_members(trials: List[FrozenTrial], plan: Plan, k: Optional[int]) -> Dict[int, List[FrozenTrial]]:
    """The complete trials of each rung (by steps and folds), the latest of a folder's retries."""
    latest: Dict[Tuple[int, Optional[int], Optional[int]], FrozenTrial] = {}
    for t in trials:
        if t.state == TrialState.COMPLETE:
            latest[(record.artifact_owner(t), record.budget(t), record.folds_run(t))] = t
    out: Dict[int, List[FrozenTrial]] = {}
    for t in latest.values():
        rung = plan.rung(record.budget(t) or -1, record.folds_run(t) or k)
        if rung >= 0:
            out.setdefault(rung, []).append(t)
    return out


def _rung_name(plan: Plan, rung: int, k: Optional[int]) -> str:
    folds = plan.folds_at(rung, k or 0)
    return f"{plan.rungs[rung]} steps a fold" + (f" on {folds} of {k} folds" if k and folds and folds < k else "")


def _value(t: FrozenTrial, plan: Plan, rung: int, k: Optional[int]) -> str:
    folds = plan.folds_at(rung, k or 0)
    return f"CV {t.value:.4f}" if not (k and folds and folds < k) else f"{folds} folds {t.value:.4f}"


SCHEDULER: Scheduler = SuccessiveHalving()
