"""A search with a deadline (`--timeout`): its plan made from measured speed, and promotions up its rungs.

Before the first trial of a new study searched with a deadline, the first recipe's model is timed on
this machine at each searched image size (a few optimizer steps, `training/speed.py`, kept in the
run dir's speed.json) and the plan is made from those seconds (`plan.py`), said in one line and kept
on the study: a resume keeps its budgets, whatever its own deadline.

Multi-fidelity, as asynchronous successive halving (ASHA): a new trial runs at the lowest rung;
before a trial starts, the best complete trial of a rung that is in its rung's best 1/η and not
promoted yet runs again, a new trial with the same parameters, at the next rung, if the time left
allows it (`promote`). Each complete trial is a whole k-fold at its own budget: its CV is honest,
it is ranked only against its rung, the pruner compares at equal budget (`pruners.EqualBudget`),
and the ensemble may mix rungs.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from ..config.paths import Run
from ..data.prepare import SearchData
from ..training.augment import tta_views
from ..training.datasets import FoldData
from ..training.measured import Speed, read_speeds
from ..training.speed import measured_speed, speed_key
from . import record
from .plan import ETA, Plan, TrialShape, make_plan
from .space import recipe_config


def plan_search(run: Run, data: SearchData, study: optuna.Study, deadline: Optional[float],
                echo: Callable[[str], None], timeout: Optional[float] = None) -> Optional[Plan]:
    """The study's plan: the one it keeps, else, for a new study searched with a `deadline` (a
    time.time()), one made from measured speed for the seconds left once they are measured (and kept
    on the study). None for a search without a plan (no deadline, or a study started without one:
    its budgets stay as the spec says). `timeout`: the whole deadline's seconds, for its messages."""
    kept = record.plan(study)
    if kept is not None:
        return Plan.from_dict(kept)
    if deadline is None:
        return None
    if study.get_trials(deepcopy=False):
        echo("this study was started without --timeout: its budgets stay as the spec says; the deadline cuts "
             "the trial in flight")
        return None
    speeds = recipe_speeds(run, data)
    model = recipe_config(run, data, min(speeds)).backbone
    left = deadline - time.time()
    spent = 0.0 if timeout is None else max(0.0, timeout - left)
    plan = make_plan(run.spec.search, trial_shape(run, data), speeds, left, model, spent)
    record.set_plan(study, plan.to_dict())
    return plan


def recipe_speeds(run: Run, data: SearchData) -> Dict[int, Speed]:
    """The first recipe's speed on this machine at each searched image size (measured once per machine)."""
    speeds = {}
    for size in sorted(set(run.spec.search.image_size)):
        cfg = recipe_config(run, data, size)
        images, _ = data.images(size, run.paths.cache_dir)
        aux = data.aux_masks(size, run.paths.cache_dir) if cfg.aux_weight else None
        fold = FoldData(images, data.y, np.flatnonzero(data.fold != 0), np.flatnonzero(data.fold == 0), aux)
        speeds[size] = measured_speed(cfg, data.task, fold, run.paths.speed_json)
    return speeds


def speed_lines(run: Run, data: SearchData) -> List[str]:
    """The speeds measured in this run dir for the recipe's model on this machine, one line each."""
    known = read_speeds(run.paths.speed_json)
    lines = []
    for size in sorted(set(run.spec.search.image_size)):
        cfg = recipe_config(run, data, size)
        if speed_key(cfg) in known:
            lines.append("speed: " + Speed(**known[speed_key(cfg)]).line(cfg))
    return lines


def trial_shape(run: Run, data: SearchData) -> TrialShape:
    s = run.spec.search
    return TrialShape(folds=run.spec.folds, val_images=len(data.fold) / run.spec.folds,
                      views=len(tta_views(run.spec.orientation)) if s.tta else 1)


def promote(study: optuna.Study, plan: Plan, seconds_left: Optional[float]) -> Optional[str]:
    """Enqueue the next promotion, highest rung first: the best complete trial of a rung among its best
    1/η, not promoted yet, at the next rung's budget, if it fits in `seconds_left` (`promoted_seconds`).
    Its line."""
    trials = study.get_trials(deepcopy=False)
    promoted = {record.promoted_from(t) for t in trials}
    complete = record.latest_per_folder(t for t in trials if t.state == TrialState.COMPLETE).values()
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    for rung in reversed(range(len(plan.rungs) - 1)):
        ranked = sorted((t for t in complete if record.budget(t) == plan.rungs[rung]),
                        key=lambda t: -t.value if maximize else t.value)
        for t in ranked[:len(ranked) // ETA]:
            fits = seconds_left is None or promoted_seconds(t, plan, plan.rungs[rung + 1]) <= seconds_left
            if t.number not in promoted and fits:
                study.enqueue_trial(t.params, user_attrs=record.promotion_attrs(t, plan.rungs[rung + 1]))
                return (f"trial {t.number} (CV {t.value:.4f}, best {ranked.index(t) + 1} of {len(ranked)} at "
                        f"{plan.rungs[rung]} steps) goes up to {plan.rungs[rung + 1]} steps a fold")
    return None


def promoted_seconds(trial: FrozenTrial, plan: Plan, steps: int) -> float:
    """About how long `trial` takes again at `steps` a fold: its own seconds, scaled by the steps (its
    model may be slower than the recipe's the plan timed; what does not scale makes this an upper bound).
    A trial that kept no seconds (a study of an older harness) is taken at the plan's figure for `steps`."""
    seconds = trial.user_attrs.get(record.SECONDS)
    if seconds is None:
        return plan.seconds[max(plan.rung(steps), 0)]
    return float(seconds) * steps / max(1, record.budget(trial) or steps)


def next_seconds(study: optuna.Study, plan: Plan) -> float:
    """About how long the next trial takes: a waiting promotion's (`promoted_seconds`), a waiting
    trial's rung's, else the lowest rung's."""
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if not waiting:
        return plan.seconds[0]
    steps, source = record.budget(waiting[0]), record.promoted_from(waiting[0])
    if source is not None and steps is not None:
        return promoted_seconds(study.get_trials(deepcopy=False)[source], plan, steps)
    return plan.seconds[max(plan.rung(steps), 0)] if steps is not None else plan.seconds[0]


def out_of_time(study: optuna.Study, plan: Optional[Plan], deadline: float, echo: Callable[[str], None]) -> bool:
    """Whether the search stops here: the deadline passed, or, once a trial is complete, the next
    one would not end by it (its time as planned)."""
    left = deadline - time.time()
    if left <= 0:
        return True
    if plan is None or not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return False
    need = next_seconds(study, plan)
    if need <= left:
        return False
    echo(f"the next trial needs about {need:.0f} s and {left:.0f} s are left: no trial starts")
    return True


def deadline_summary(study: optuna.Study, trials: int, timeout: float, deadline: float) -> str:
    """What a search with a deadline did, in one line."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    complete, pruned = states.count(TrialState.COMPLETE), states.count(TrialState.PRUNED)
    finished = complete + pruned
    spent = timeout - (deadline - time.time())
    best = f"; best CV {study.best_value:.4f} (trial {study.best_trial.number})" if complete else ""
    return (f"deadline: {spent:.0f} s of {timeout:g}: {complete} complete and {pruned} pruned trials in the study"
            f" ({finished} of --trials {trials}){best}"
            + ("" if complete else "; nothing to submit yet: run the same command again to go on"))
