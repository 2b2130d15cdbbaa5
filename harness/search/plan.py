"""The plan of a search with a deadline: what to train, chosen from measured seconds (a pure function
of them, given how a speed is measured: `speed_of`).

Resolution, model, folds and steps are one budget:
- **the floor**: no rung trains a fold less than `FLOOR`'s epochs of its training images and its
  steps (from scratch; fine-tuning: fewer); measured on the bundled competitions
  (`benchmarks/learning_curves.py`, README "Budgets");
- **resolution and model**: the largest image size (within the spec's sizes, read as a range; else
  below them, down to `MIN_IMAGE_SIZE`) at which some backbone trains a whole k-fold trial of the
  floor in `WHOLE_SHARE` of the time, and the backbones that do (`_largest_size` says what it
  measures: little, and no large size that a deadline cannot afford);
- **steps**: rungs of successive halving, η = `ETA` apart, from the floor (or more, when a whole
  trial of more fits in `FIRST_SHARE`) up to the most of `search.steps`;
- **folds**: the lowest rung runs `partial_folds` of the k folds (the same ones for every trial), the
  next the same steps on all k, reading the first ones back; only a whole k-fold trial has a CV;
- **validations**: `search.evals`, fewer on a short rung (`evals_at`).
A spec that fixes the steps (one value) is obeyed as written: one rung on all folds, and a trial may
take up to `FIXED_SHARE` of the time. A deadline too short for the smallest complete trial is a
SpecError that says the time one would need.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import SpecError
from ..training.measured import Speed

if TYPE_CHECKING:
    from ..config.spec import SearchSpace

FIRST_SHARE = 0.1  # of the deadline: the lowest rung gets more steps than the floor while a whole trial fits this
WHOLE_SHARE = 0.25  # of the deadline: a whole k-fold trial at the floor, at most (else a smaller size, a cheaper model)
FIXED_SHARE = 0.9  # a budget the spec fixes may take this much of the deadline
ETA = 3  # each rung η times the steps of the one below; the best 1/η of a rung go up
MIN_STEPS = 20  # fewer steps a fold train nothing worth a CV
MIN_EVALS = 3  # a trial is never judged on a single validation (pruners.EqualBudget)
STEPS_PER_EVAL = 10
# (epochs of a fold's training images, optimizer steps) below which a trial learns too little to rank,
# from learning curves of resnet18 at 64 px (README "Budgets"): from scratch the CV climbs steeply to
# about 12 epochs (faces 0.55 → 0.65 → 0.67 at 3, 6, 12), and a small set needs more (neg-pos's 152
# images: 0.74 at 29 steps, 0.82 at 57, 0.89 at 114); weights that already see need a few epochs
FLOOR = {"scratch": (12.0, 100), "finetune": (3.0, MIN_STEPS)}
MIN_IMAGE_SIZE = 32  # the plan goes no smaller, whatever the deadline
SIZE_STEP = 32  # sizes the plan picks: multiples of it (a U-Net halves the image five times)


@dataclass(frozen=True)
class TrialShape:
    """What a trial's seconds depend on besides its steps."""

    folds: int
    val_images: float  # a fold's validation images
    views: int  # flip TTA views of the OOF predictions (the test set is predicted at submit, by members only)
    train_images: float = 0.0  # a fold's training images: what the floor's epochs count


@dataclass(frozen=True)
class Floor:
    """The fewest optimizer steps a fold of a planned search trains."""

    steps: int
    epochs: float
    kind: str  # scratch or finetune


def learning_floor(train_images: float, batch_size: int, pretrained: bool) -> Floor:
    """`FLOOR`'s epochs of a fold's training images in batches of `batch_size`, and at least its steps."""
    kind = "finetune" if pretrained else "scratch"
    epochs, fewest = FLOOR[kind]
    steps = max(fewest, math.ceil(epochs * train_images / max(1, batch_size)))
    return Floor(steps, round(steps * batch_size / max(1.0, train_images), 1), kind)


@dataclass(frozen=True)
class Plan:
    rungs: Tuple[int, ...]  # optimizer steps a fold, lowest first
    evals: Tuple[int, ...]  # validations a fold, at each rung
    seconds: Tuple[float, ...]  # a trial at each rung, at the largest planned image size, with the slowest backbone
    image_sizes: Tuple[int, ...]
    line: str  # the plan and its reason, as the search says it
    folds: Tuple[int, ...] = ()  # folds a trial of each rung trains (the first ones); () : all, at every rung
    backbones: Tuple[str, ...] = ()  # the models the sampler draws in this study; (): the spec's
    floor: int = 0  # the learning floor, in steps a fold
    speeds: Dict[str, List[float]] = field(default_factory=dict)  # "model@size" → [step, image, setup], as measured
    shape: Dict[str, float] = field(default_factory=dict)  # TrialShape's fields, to time a trial of any model
    pace: float = 1.0  # what trials took over what their measured speed said (re-planned: `budget.check_pace`)
    family: str = ""  # the model family measured (the first recipe's): another's trials are not held to it

    def evals_at(self, steps: int) -> int:
        """The validations of a trial of `steps`: its rung's (the nearest rung's for another budget)."""
        nearest = min(range(len(self.rungs)), key=lambda r: abs(self.rungs[r] - steps))
        return self.evals[nearest]

    def folds_at(self, rung: int, k: int) -> int:  # the folds a trial of rung `rung` trains, of `k`
        return self.folds[rung] if self.folds and 0 <= rung < len(self.folds) else k

    def rung(self, steps: int, folds: Optional[int] = None) -> int:
        """The rung of `steps` on `folds` folds (None: all); -1 for none (a trial of an older plan)."""
        for r, s in enumerate(self.rungs):
            if s == steps and (folds is None or not self.folds or self.folds[r] == folds):
                return r
        return -1

    def trial_seconds(self, model: str, size: int, steps: int, folds: int) -> Optional[float]:
        """A trial's seconds by `model`'s speed measured at `size`, at the trials' pace (None: not measured)."""
        speed = self.speeds.get(speed_name(model, size))
        if speed is None or not self.shape:
            return None
        shape = TrialShape(**{**self.shape, "folds": folds})
        return self.pace * trial_seconds(Speed(*speed), steps, self.evals_at(steps), shape)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) and k not in ("speeds",) else v
                      for k, v in d.items() if k in known})


def speed_name(model: str, size: int) -> str:  # how a plan keys its measured speeds
    return f"{model}@{size}"


def trial_seconds(speed: Speed, steps: int, evals: int, shape: TrialShape) -> float:
    """A trial's seconds at `speed`: each fold set up, trained, validated and predicted."""
    predicted = (evals + shape.views) * shape.val_images
    return shape.folds * (speed.setup + steps * speed.step + predicted * speed.image)


def evals_at(search: "SearchSpace", steps: int) -> int:
    """A fold's validations: `search.evals`, at most one per `STEPS_PER_EVAL` steps, at least `MIN_EVALS`."""
    return max(1, min(search.evals, max(MIN_EVALS, steps // STEPS_PER_EVAL)))


def partial_folds(k: int) -> int:
    """The folds the lowest rung ranks on: two fifths of k (2 of 5, 1 of 3, 4 of 10); all of fewer than 3."""
    return k if k < 3 else max(1, round(0.4 * k))


def candidate_sizes(search: "SearchSpace") -> Tuple[List[int], List[int]]:
    """The sizes a plan may pick, largest first: within the spec's (read as a range), then below it."""
    low, high = min(search.image_size), max(search.image_size)
    inside = sorted({high, low, *range(SIZE_STEP * math.ceil(low / SIZE_STEP), high + 1, SIZE_STEP)}, reverse=True)
    below = list(range(SIZE_STEP * math.ceil(low / SIZE_STEP) - SIZE_STEP, MIN_IMAGE_SIZE - 1, -SIZE_STEP))
    return inside, [s for s in below if s < low]


def make_plan(search: "SearchSpace", shape: TrialShape, speed_of: Callable[[str, int], Speed], seconds: float, backbones: Sequence[str],
              floor: Floor, spent: float = 0.0) -> Plan:
    """The budgets for the `seconds` a search has left. `speed_of(model, size)`: the measured speed of
    `model` at `size` (measured on demand, kept); `backbones`: the models the spec searches, the
    first recipe's first (what the plan is timed with); `floor`: the fewest steps a fold trains;
    `spent`: the seconds of its deadline already used, to preparing the data and measuring."""
    top, low = max(search.steps), min(search.steps)
    measured: Dict[str, Speed] = {}

    def speed(model: str, size: int) -> Speed:
        if speed_name(model, size) not in measured:
            measured[speed_name(model, size)] = speed_of(model, size)
        return measured[speed_name(model, size)]

    def cost(model: str, size: int, steps: int, folds: int = shape.folds) -> float:
        return trial_seconds(speed(model, size), steps, evals_at(search, steps), TrialShape(
            folds, shape.val_images, shape.views, shape.train_images))

    if low == top:
        return _fixed_plan(search, shape, speed, cost, seconds, backbones, floor, spent, measured)
    share = WHOLE_SHARE * seconds
    inside, below = candidate_sizes(search)
    size, models = _largest_size(inside + below, list(backbones), floor.steps, share, cost)
    notes: List[str] = []
    if size in below or backbones[0] not in models:
        notes.append(_leaving_line(backbones[0], inside[0], floor, cost, share))
    if not models:  # not even at the smallest size: the cheapest model alone, the floor in most of the time
        cheapest = min((b for b in backbones if speed_name(b, size) in measured),
                       key=lambda b: cost(b, size, floor.steps))
        if cost(cheapest, size, floor.steps, partial_folds(shape.folds)) > FIXED_SHARE * seconds:
            raise _too_short(seconds + spent, spent, cost(cheapest, size, floor.steps), floor.steps, size,
                             speed(cheapest, size), shape, cheapest, FIXED_SHARE)
        models = [cheapest]
    model = models[0]
    base = max(floor.steps, min(top, _most_steps(lambda s: cost(model, size, s), top, FIRST_SHARE * seconds)))
    rungs = [base]
    while rungs[-1] * ETA <= top:
        rungs.append(rungs[-1] * ETA)
    k, few = shape.folds, partial_folds(shape.folds)
    folds = [k] * len(rungs)
    if few < k:  # the lowest rung ranks on a few folds; the next widens the same steps to all k
        rungs, folds = [rungs[0]] + rungs, [few] + folds
    left_out = [b for b in backbones if b not in models]
    if left_out:
        notes.append(", ".join(left_out) + f" left out: a whole trial of the floor at {size} px takes "
                     + ", ".join(f"{cost(b, size, floor.steps):.0f} s" if speed_name(b, size) in measured else
                                 "far longer" for b in left_out)
                     + f", over a quarter of the time ({share:.0f} s)")
    sizes = [s for s in inside + below if size / 2 <= s <= size and (s in inside) == (size in inside)]
    return _finished(search, shape, rungs, folds, sorted(sizes), models, floor, measured, cost, seconds, spent,
                     notes, fixed=False)


def _largest_size(sizes: List[int], backbones: List[str], floor: int, share: float, cost) -> Tuple[int, List[str]]:
    """The largest of `sizes` (largest first) at which some of `backbones` train a whole trial of the
    `floor` within `share`, and those backbones (in their order); (the smallest size, []) when none
    does. The first backbone is measured at the largest size (on a GPU it usually fits: then only the
    others are measured, there); else every backbone from the smallest size up, each only while it
    fits, since a larger image is never faster: a CPU measures small images in a second, and never
    the large ones a deadline cannot afford."""
    first, largest = backbones[0], sizes[0]
    if cost(first, largest, floor) <= share:
        return largest, [b for b in backbones if b == first or cost(b, largest, floor) <= share]
    alive, found = list(backbones), (sizes[-1], [])
    for size in reversed(sizes):
        fitting = [b for b in alive if not (b == first and size == largest) and cost(b, size, floor) <= share]
        if not fitting:
            break
        alive, found = fitting, (size, fitting)
    return found


def _leaving_line(model: str, size: int, floor: Floor, cost, share: float) -> str:
    """Why the plan trains below the spec's sizes (or a cheaper model): what the largest would give."""
    steps = _most_steps(lambda s: cost(model, size, s), floor.steps, share)
    epochs = steps * floor.epochs / floor.steps
    gives = f"{steps} steps a fold ({epochs:.1f} epochs)" if steps else "not one step a fold"
    return (f"{model} at {size} px would give {gives} in a quarter of the time (a whole trial of {floor.steps} "
            f"steps takes {cost(model, size, floor.steps):.0f} s), below the floor of {floor.steps} steps "
            f"({floor.epochs:g} epochs {_floor_kind(floor)})")


def _floor_kind(floor: Floor) -> str:
    return {"scratch": "from scratch"}.get(floor.kind, "fine-tuning")


def _fixed_plan(search, shape: TrialShape, speed, cost, seconds: float, backbones: Sequence[str], floor: Floor,
                spent: float, measured) -> Plan:
    """A spec that fixes the steps: every trial on all folds at them, up to `FIXED_SHARE` of the time."""
    steps, sizes = search.steps[0], sorted(set(search.image_size))
    fitting = [s for s in sizes if cost(backbones[0], s, steps) <= FIXED_SHARE * seconds]
    if not fitting:
        raise _too_short(seconds + spent, spent, cost(backbones[0], sizes[0], steps), steps, sizes[0],
                         speed(backbones[0], sizes[0]), shape, backbones[0], FIXED_SHARE)
    notes = [] if steps >= floor.steps else [
        f"search.steps fixes {steps} steps a fold, below the floor of {floor.steps} ({floor.epochs:g} epochs "
        f"{_floor_kind(floor)}): obeyed"]
    return _finished(search, shape, [steps], [shape.folds], fitting, list(backbones), floor, measured, cost, seconds,
                     spent, notes, fixed=True)


def _finished(search, shape: TrialShape, rungs: List[int], folds: List[int], sizes: List[int], models: List[str],
              floor: Floor, measured: Dict[str, Speed], cost, seconds: float, spent: float, notes: List[str],
              fixed: bool) -> Plan:
    top_size, model = sizes[-1], models[0]
    # a trial of a rung takes at most this: the slowest model the sampler may draw, at the largest size
    plan = Plan(rungs=tuple(rungs), evals=tuple(evals_at(search, r) for r in rungs),
                seconds=tuple(round(max(cost(m, top_size, r, f) for m in models), 1) for r, f in zip(rungs, folds)),
                image_sizes=tuple(sizes), line="", folds=tuple(folds), backbones=tuple(models),
                floor=floor.steps, speeds={k: [v.step, v.image, v.setup] for k, v in measured.items()},
                shape=asdict(shape))
    line = _plan_line(plan, seconds, spent, measured[speed_name(model, top_size)], shape, model, floor, fixed)
    return replace(plan, line="; ".join([line, *notes]))


def _most_steps(cost: Callable[[int], float], top: int, budget: float) -> int:
    """The most steps (at most `top`) whose `cost` is within `budget`; 0 when not even one's is."""
    lo, hi = 0, top
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cost(mid) <= budget else (lo, mid - 1)
    return lo


def _plan_line(plan: Plan, seconds: float, spent: float, speed: Speed, shape: TrialShape, model: str, floor: Floor,
               fixed: bool) -> str:
    size = plan.image_sizes[-1]
    head = (f"plan for {seconds + spent:.4g} s ({seconds:.0f} s left after the data and speed checks): {model} "
            f"takes {speed.step:.3g} s a step at {size} px here; ")
    if fixed:
        return head + (f"search.steps fixes {plan.rungs[0]} steps a fold: about {plan.seconds[0]:.0f} s a "
                       f"trial of {shape.folds} folds; image sizes {list(plan.image_sizes)}")
    epochs = plan.rungs[0] * floor.epochs / floor.steps
    rungs = " / ".join(f"{r} on {f} of {shape.folds} folds" if f < shape.folds else str(r)
                       for r, f in zip(plan.rungs, plan.folds))
    return head + (f"the floor is {floor.steps} steps a fold ({floor.epochs:g} epochs of {shape.train_images:.0f} "
                   f"images, {_floor_kind(floor)}); the first trial gets {plan.rungs[0]} steps a fold ({epochs:.1f} "
                   f"epochs, about {plan.seconds[0]:.0f} s); rungs {rungs} steps a fold (the best 1/{ETA} of each go "
                   f"up; only a trial of all {shape.folds} folds has a CV); image sizes {list(plan.image_sizes)}; "
                   f"backbones {', '.join(plan.backbones)}")


def _too_short(seconds: float, spent: float, need: float, steps: int, size: int, speed: Speed, shape: TrialShape, model: str,
               share: float) -> SpecError:
    return SpecError(
        f"--timeout {seconds:.4g} is too short for one complete trial: {shape.folds} folds of {steps} steps of "
        f"{model} at {size} px take about {need:.0f} s on this machine ({speed.step:.3g} s a step, measured); "
        f"give --timeout {math.ceil(spent + need / share)} or more (a first trial may take {share:.0%} of the time "
        "left once the data is ready)")
