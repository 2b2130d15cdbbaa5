"""Feedback while a search runs: where a fold is, its last validation, how long the fold and the
whole search have left (`FoldProgress`), and a line after each trial (`SearchClock`).

On a terminal one line is redrawn every second; elsewhere (a log file, CI, a worker's relayed
output) a plain line is printed at each quarter of a fold, so a log stays short. The time left
counts every phase a fold still has: its steps, its validations and the final out-of-fold
prediction with its TTA views, then the trial's other folds and the search's other trials.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, List, Optional

import optuna
from optuna.trial import FrozenTrial

from .storage import FINISHED, count_finished

QUARTER = 25  # percent between the plain lines of a fold
REDRAW = 1.0  # seconds between two redraws of the live line


def duration(seconds: float) -> str:
    """`42 s`, `7 min`, `2.5 h`: as precise as a time left is worth."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class SearchClock:
    """The search's own position and time left: trial k of the N the study should hold, and the
    trials still to run at the mean wall-clock of those this search finished (the trial in flight's
    own projection before any), within the deadline. Told each finished trial (a study callback)."""

    def __init__(self, study: optuna.Study, trials: int, deadline: Optional[float] = None,
                 echo: Callable[[str], None] = print) -> None:
        self.study, self.trials, self.deadline, self.echo = study, trials, deadline, echo
        self.seconds: List[float] = []  # wall-clock of each trial this search finished

    def left(self, finished: int, trial_left: float = 0.0, trial_total: Optional[float] = None) -> Optional[float]:
        """Seconds the search has left, `finished` trials in the study, with the trial in flight's
        `trial_left` (`trial_total`: its projected whole, used while no trial of this search has
        finished); None when nothing is known."""
        each = sum(self.seconds) / len(self.seconds) if self.seconds else trial_total
        if each is None:
            return None
        left = trial_left + max(0, self.trials - finished - 1) * each
        return min(left, max(0.0, self.deadline - time.time())) if self.deadline else left

    def in_flight(self, trial_left: float, trial_total: float) -> str:
        """`trial k of N, search about … left`, for the trial in flight (one read of the storage)."""
        finished = count_finished(self.study)
        left = self.left(finished, trial_left, trial_total)
        return (f"trial {min(finished + 1, self.trials)} of {self.trials}"
                + (f", search about {duration(left)} left" if left is not None else ""))

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state not in FINISHED:
            return
        if trial.duration is not None:
            self.seconds.append(trial.duration.total_seconds())
        done = count_finished(self.study)
        if done < self.trials:
            left = self.left(done)
            self.echo(f"search: {done} of {self.trials} trials finished"
                      + (f", about {duration(left)} left" if left is not None else ""))


class FoldProgress:
    """Told after each optimizer step (`step()`) and each validation (`__call__(share_done, score)`)
    of one fold; `close()` when it ends.

    `points`: the steps after which the fold validates; `views`: the TTA views of its final
    out-of-fold prediction (each about a validation's time); `folds`: the trial's folds, this one the
    `fold`-th (0-based); `search`: the search's clock, for its position and time left."""

    def __init__(self, echo: Callable[[str], None], prefix: str, steps: int, metric: str, points: List[int],
                 views: int = 1, fold: int = 0, folds: int = 1, search: Optional[SearchClock] = None,
                 live: Optional[bool] = None) -> None:
        self.echo, self.prefix, self.steps, self.metric = echo, prefix, steps, metric
        self.points, self.views, self.folds, self.search = points, views, folds, search
        self.folds_after = folds - fold - 1
        self.live = sys.stdout.isatty() if live is None else live
        self.start = self.last_event = self.last_draw = time.time()
        self.next_mark, self.drawn = QUARTER, False
        self.steps_done, self.train_seconds, self.val_seconds, self.vals = 0, 0.0, 0.0, 0
        self.score: Optional[float] = None

    def step(self) -> None:
        now = time.time()
        self.steps_done += 1
        self.train_seconds += now - self.last_event
        self.last_event = now
        if self.live and now - self.last_draw >= REDRAW:
            self._draw(now)

    def __call__(self, done: float, score: float) -> None:
        now = time.time()
        self.steps_done = max(self.steps_done, round(done * self.steps))
        self.val_seconds += now - self.last_event
        self.vals += 1
        self.last_event, self.score = now, score
        percent = int(round(100 * done))
        if self.live:
            self._draw(now)
        elif percent >= self.next_mark and percent < 100:  # the fold's own line says 100 %
            self.echo(self.text(now))
            while self.next_mark <= percent:
                self.next_mark += QUARTER

    def fold_left(self) -> float:
        """The fold's steps, validations and final TTA prediction still to come, at the pace so far."""
        per_step = self.train_seconds / self.steps_done if self.steps_done else 0.0
        per_val = self.val_seconds / self.vals if self.vals else 0.0
        vals_left = sum(1 for p in self.points if p > self.steps_done)
        return (self.steps - self.steps_done) * per_step + (vals_left + self.views) * per_val

    def text(self, now: float) -> str:
        elapsed = now - self.start
        fold_left = self.fold_left()
        fold_total = elapsed + fold_left
        trial_left = fold_left + self.folds_after * fold_total
        score = f", {self.metric} {self.score:.4f}" if self.score is not None else ""
        line = (f"{self.prefix}: {100 * self.steps_done / self.steps:3.0f}% (step {self.steps_done} of {self.steps})"
                f"{score}, {elapsed:.0f} s, about {duration(fold_left)} left in the fold")
        if self.search is not None:
            line += "; " + self.search.in_flight(trial_left, self.folds * fold_total)
        return line

    def _draw(self, now: float) -> None:
        sys.stdout.write("\r\033[K" + self.text(now))
        sys.stdout.flush()
        self.drawn, self.last_draw = True, now

    def close(self) -> None:
        """Clear the redrawn line: the fold's result line takes its place."""
        if self.drawn:
            sys.stdout.write("\r\033[K")
            sys.stdout.flush()
