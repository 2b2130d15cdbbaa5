"""The plan of a search with a deadline: budgets made from measured seconds (a pure function of them).

What the spec leaves open is scaled so that the first complete trial takes `FIRST_SHARE` of the time:
- the steps: rungs of successive halving, η = `ETA` apart. The lowest is as many steps a fold as fit
  the share, each next one η times more, up to the most of `search.steps`; on a short deadline the
  lowest is `MIN_STEPS`, if a trial of them fits in `FIXED_SHARE` of the time;
- the image sizes: the largest of `search.image_size` at which the first trial still gets the
  fewest of `search.steps`, and the smaller ones; else the smallest alone;
- the validations: `search.evals`, fewer on a short rung (one per `STEPS_PER_EVAL` steps, at least
  `MIN_EVALS`), as in any search (`evals_at`).
A spec that fixes the steps (one value) is obeyed as written: one rung, and a trial may take up to
`FIXED_SHARE` of the time. A deadline too short for the smallest complete trial is a SpecError that
says the time one would need.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable, Dict, Tuple

from ..errors import SpecError
from ..training.measured import Speed

if TYPE_CHECKING:
    from ..config.spec import SearchSpace

FIRST_SHARE = 0.1  # of the deadline, for the first complete trial: the rest searches, rung after rung
FIXED_SHARE = 0.9  # a budget the spec fixes may take this much of the deadline
ETA = 3  # each rung η times the steps of the one below; the best 1/η of a rung go up
MIN_STEPS = 20  # fewer steps a fold train nothing worth a CV
MIN_EVALS = 3  # a trial is never judged on a single validation (pruners.EqualBudget)
STEPS_PER_EVAL = 10


@dataclass(frozen=True)
class TrialShape:
    """What a trial's seconds depend on besides its steps."""

    folds: int
    val_images: float  # a fold's validation images
    views: int  # flip TTA views of the OOF predictions (the test set is predicted at submit, by members only)


@dataclass(frozen=True)
class Plan:
    rungs: Tuple[int, ...]  # optimizer steps a fold, lowest first
    evals: Tuple[int, ...]  # validations a fold, at each rung
    seconds: Tuple[float, ...]  # a trial at each rung, at the largest planned image size
    image_sizes: Tuple[int, ...]
    line: str  # the plan and its reason, as the search says it

    def evals_at(self, steps: int) -> int:
        """The validations of a trial of `steps`: its rung's (the nearest rung's for another budget)."""
        nearest = min(range(len(self.rungs)), key=lambda r: abs(self.rungs[r] - steps))
        return self.evals[nearest]

    def rung(self, steps: int) -> int:
        """The rung of `steps` (-1 when it is none of them: a trial of an older plan)."""
        return self.rungs.index(steps) if steps in self.rungs else -1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def trial_seconds(speed: Speed, steps: int, evals: int, shape: TrialShape) -> float:
    """A trial's seconds at `speed`: each fold set up, trained, validated and predicted."""
    predicted = (evals + shape.views) * shape.val_images
    return shape.folds * (speed.setup + steps * speed.step + predicted * speed.image)


def evals_at(search: "SearchSpace", steps: int) -> int:
    """A fold's validations: `search.evals`, but never more than one per `STEPS_PER_EVAL` steps (at
    least `MIN_EVALS`): a spec's 20 on a 20-step smoke run would validate after every step."""
    return max(1, min(search.evals, max(MIN_EVALS, steps // STEPS_PER_EVAL)))


def make_plan(search: "SearchSpace", shape: TrialShape, speeds: Dict[int, Speed], seconds: float,
              model: str, spent: float = 0.0) -> Plan:
    """The budgets for the `seconds` a search has left, given the measured speed of `model` at each
    image size (`spent`: the seconds of its deadline already used, to preparing the data and measuring)."""
    sizes = sorted(set(search.image_size))
    top, low = max(search.steps), min(search.steps)
    fixed = low == top
    def cost(size: int, steps: int) -> float:
        return trial_seconds(speeds[size], steps, evals_at(search, steps), shape)

    share = (FIXED_SHARE if fixed else FIRST_SHARE) * seconds
    if fixed:
        fitting = [size for size in sizes if cost(size, top) <= share]
        if not fitting:
            raise _too_short(seconds + spent, spent, cost(sizes[0], top), top, sizes[0], speeds[sizes[0]], shape, model, FIXED_SHARE)
        size, rungs = fitting[-1], [top]
    else:
        size, base = sizes[0], 0
        for candidate in reversed(sizes):
            size, base = candidate, most_steps(lambda steps: cost(candidate, steps), top, share)
            if base >= low:
                break  # else the loop ends at the smallest size, with the most steps
        if base < MIN_STEPS:  # a short deadline: the first trial the fewest steps, in most of the time
            if cost(sizes[0], MIN_STEPS) > FIXED_SHARE * seconds:
                raise _too_short(seconds + spent, spent, cost(sizes[0], MIN_STEPS), MIN_STEPS, sizes[0], speeds[sizes[0]], shape,
                                 model, FIXED_SHARE)
            base = MIN_STEPS
        rungs = [base]
        while rungs[-1] * ETA <= top:
            rungs.append(rungs[-1] * ETA)
    plan = Plan(rungs=tuple(rungs), evals=tuple(evals_at(search, r) for r in rungs),
                seconds=tuple(round(cost(size, r), 1) for r in rungs),
                image_sizes=tuple(s for s in sizes if s <= size), line="")
    return Plan(**{**plan.to_dict(), "line": _plan_line(plan, seconds, spent, speeds[size], shape, model, fixed)})


def most_steps(cost: Callable[[int], float], top: int, budget: float) -> int:
    """The most steps (at most `top`) whose `cost` is within `budget`; 0 when not even one's is."""
    lo, hi = 0, top
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(mid) <= budget else (lo, mid - 1)
    return lo


def _plan_line(plan: Plan, seconds: float, spent: float, speed: Speed, shape: TrialShape, model: str,
               fixed: bool) -> str:
    size = plan.image_sizes[-1]
    head = (f"plan for {seconds + spent:.4g} s ({seconds:.0f} s left after the data and speed checks): {model} "
            f"takes {speed.step:.3g} s a step at {size} px here; ")
    if fixed:
        return head + (f"search.steps fixes {plan.rungs[0]} steps a fold: about {plan.seconds[0]:.0f} s a "
                       f"trial of {shape.folds} folds; image sizes {list(plan.image_sizes)}")
    rungs = "/".join(str(r) for r in plan.rungs)
    return head + (f"the first trial gets {plan.rungs[0]} steps a fold × {shape.folds} folds (about "
                   f"{plan.seconds[0]:.0f} s, {plan.seconds[0] / seconds:.0%} of the time); rungs {rungs} steps a fold "
                   f"(the best 1/{ETA} of each go up), image sizes {list(plan.image_sizes)}")


def _too_short(seconds: float, spent: float, need: float, steps: int, size: int, speed: Speed, shape: TrialShape, model: str,
               share: float) -> SpecError:
    return SpecError(
        f"--timeout {seconds:.4g} is too short for one complete trial: {shape.folds} folds of {steps} steps of "
        f"{model} at {size} px take about {need:.0f} s on this machine ({speed.step:.3g} s a step, measured); "
        f"give --timeout {math.ceil(spent + need / share)} or more (a first trial may take {share:.0%} of the time "
        "left once the data is ready)")
