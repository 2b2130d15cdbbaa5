"""The search's part of report.html: its history, importances and slices, the trials over time
(`timeline.py`), and the learning curves of the top trials and of the best one."""
from __future__ import annotations

import html
import warnings
from typing import TYPE_CHECKING, Dict, List, Optional

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from ..search import record
from . import figures as fig
from .timeline import BEST, STATES, WORDS, timeline

if TYPE_CHECKING:
    from ..config.paths import Run

TOP = 5  # trials whose learning curves are overlaid
FEW_TRIALS = 10  # fewer finished trials than this: importances are noise (3 trials gave lr 0.65)


def search_section(run: "Run", study: optuna.Study) -> List[str]:
    """The search's headings, figures and notes, as HTML pieces."""
    trials = study.get_trials(deepcopy=False)
    complete = _complete(study)
    parts = ["<h2>Search</h2>", f"<p>{html.escape(state_counts(trials))}</p>"]
    if not complete:
        return parts + ["<p>(no complete trial yet)</p>"]
    parts.append(fig.img("Optimisation history", history(study)))
    params = varied_params(complete)
    parts += importance_parts(study, params)
    if params:
        parts.append(fig.img("Parameters against the CV (slices)", slices(study, params)))
    parts += ["<h2>Trials over time</h2>", timeline(trials, _best(study).number)]
    parts += _curves_section(run, study, complete)
    return parts


def state_counts(trials: List[FrozenTrial]) -> str:
    counts = pd.Series([WORDS[t.state] for t in trials]).value_counts()
    return f"{len(trials)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items())


def importance_parts(study: optuna.Study, params: List[str]) -> List[str]:
    """The importances of `params`, with a warning under them while the trials are too few to rank them."""
    image = importances(study, params) if params else None
    if image is None:
        return []
    n = len(_complete(study))
    warning = [f'<p class="warning">Only {n} finished trials: importances from fewer than about {FEW_TRIALS} '
               "trials are noise, not a ranking of the parameters.</p>"] if n < FEW_TRIALS else []
    return [fig.img("Parameter importances", image)] + warning


def _complete(study: optuna.Study) -> List[FrozenTrial]:
    """The complete trials with a CV: a planned search's lowest rung (a few folds) has none."""
    return record.whole_complete(study)


def _best(study: optuna.Study) -> FrozenTrial:
    best = record.best_whole(study)
    assert best is not None  # the callers draw only once a trial is complete
    return best


def varied_params(complete: List[FrozenTrial]) -> List[str]:
    """The parameters that took more than one value: a fixed choice says nothing."""
    return sorted(k for k in {k for t in complete for k in t.params}
                  if len({repr(t.params.get(k)) for t in complete}) > 1)


def _mark_best(ax, x, y, number: int) -> None:
    ax.plot([x], [y], marker="*", markersize=16, color=BEST, markeredgecolor="black", linestyle="none",
            label=f"best #{number}", zorder=5)


@fig.plain_text
def history(study: optuna.Study) -> bytes:
    """Each complete trial's CV against its number (a pruned one's last report), the best so far as a
    line, the best trial marked."""
    plt = fig.pyplot()
    complete, best = _complete(study), _best(study)
    numbers, values = [t.number for t in complete], [t.value for t in complete]
    pick = np.minimum if study.direction == optuna.study.StudyDirection.MINIMIZE else np.maximum
    figure, ax = plt.subplots(figsize=(10, 3.6))
    ax.plot(numbers, values, "o", color=STATES[TrialState.COMPLETE], label="complete trial")
    pruned = [t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)) if t.intermediate_values]
    if pruned:  # where each stopped: its last report, a fold's score part-way
        ax.plot([t.number for t in pruned], [t.intermediate_values[t.last_step] for t in pruned], "x",
                color=STATES[TrialState.PRUNED], label="pruned (its last report)")
    ax.step(numbers, pick.accumulate(values), where="post", color="grey", label="best so far")
    _mark_best(ax, best.number, best.value, best.number)
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))  # trials are counted, not measured
    ax.set(xlabel="trial", ylabel="CV", title="Optimisation history")
    ax.legend(fontsize=8)
    return fig.png(figure)


@fig.plain_text
def importances(study: optuna.Study, params: List[str]) -> Optional[bytes]:
    """The varied parameters' importances (optuna's default evaluator), or None where the study cannot
    have them yet."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "importances will be equal" of too few trials: the page warns
            found = optuna.importance.get_param_importances(study, params=params)
    except (ValueError, RuntimeError, ZeroDivisionError):
        return None
    plt = fig.pyplot()
    names = list(found)[::-1]
    figure, ax = plt.subplots(figsize=(8, 0.4 * len(names) + 1.4))
    ax.barh(names, [found[n] for n in names], color=STATES[TrialState.COMPLETE])
    for i, n in enumerate(names):
        ax.text(found[n], i, f" {found[n]:.2f}", va="center", fontsize=8)
    n = len(_complete(study))
    ax.set(xlabel="importance (the shares sum to 1)", xlim=(0, 1.1),
           title=f"Parameter importances ({n} complete trials{', too few to trust' if n < FEW_TRIALS else ''})")
    return fig.png(figure)


@fig.plain_text
def slices(study: optuna.Study, params: List[str]) -> bytes:
    """The CV against each varied parameter, coloured by trial number on a colour bar of its own."""
    plt = fig.pyplot()
    complete, best = _complete(study), _best(study)
    columns = min(4, len(params))
    rows = -(-len(params) // columns)
    figure = plt.figure(figsize=(3.4 * columns + 0.6, 3.0 * rows))
    grid = figure.add_gridspec(rows, columns + 1, width_ratios=[1] * columns + [0.06])
    norm = plt.Normalize(min(t.number for t in complete), max(max(t.number for t in complete), 1))
    for i, name in enumerate(params):
        ax = figure.add_subplot(grid[i // columns, i % columns])
        have = [t for t in complete if name in t.params]
        x = _positions(ax, name, have)
        dots = ax.scatter(list(x.values()), [t.value for t in have], c=[t.number for t in have], cmap="Blues",
                          norm=norm, edgecolors="grey", linewidths=0.5)
        if best.number in x:
            _mark_best(ax, x[best.number], best.value, best.number)
        ax.set(xlabel=name, ylabel="CV" if i % columns == 0 else None)
    bar = figure.colorbar(dots, cax=figure.add_subplot(grid[:, -1]))  # its own axis: no panel squeezed
    bar.set_label("trial")
    bar.locator = plt.MaxNLocator(integer=True)
    bar.update_ticks()
    figure.axes[0].legend(fontsize=8, loc="best")
    return fig.png(figure)


def _positions(ax, name: str, trials: List[FrozenTrial]) -> Dict[int, float]:
    """Trial number → x of its value of `name` (a category's index; a log-drawn range on a log axis)."""
    dist = trials[0].distributions[name]
    if isinstance(dist, CategoricalDistribution):
        choices = [repr(c) for c in dist.choices]
        ax.set_xticks(range(len(choices)), [str(c) for c in dist.choices], rotation=20, fontsize=8)
        ax.set_xlim(-0.5, len(choices) - 0.5)
        return {t.number: float(choices.index(repr(t.params[name]))) for t in trials}
    values = [float(t.params[name]) for t in trials]
    if getattr(dist, "log", False):
        ax.set_xscale("log")
        from matplotlib import ticker  # matplotlib loads when a report is drawn, not with the CLI
        wide = max(values) / min(values)  # ticks at each decade, or at 1-2-5 (every digit) in a narrow range
        subs = (1.0,) if wide > 1e3 else (1.0, 2.0, 5.0) if wide > 3 else tuple(range(1, 10))
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=subs))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.0e}".replace("e-0", "e-")))  # not TeX
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    return {t.number: v for t, v in zip(trials, values)}


def _curves_section(run: "Run", study: optuna.Study, complete: List[FrozenTrial]) -> List[str]:
    metric, best = run.spec.metric, _best(study)
    curves = {t.number: (t.value, c) for t in top_trials(study, complete)
              if (c := trial_curve(fold_histories(run, t), metric)) is not None}
    parts = []
    if curves:
        parts += [f"<h2>Learning curves of the top {len(curves)} trials</h2>",
                  fig.img("learning curves of the top trials", top_curves(curves, metric, best.number))]
    histories = [h for h in fold_histories(run, best) if metric in h]
    if histories:
        parts += [f"<h2>Learning curves of the best trial (#{best.number}, CV {best.value:.4f}), fold by fold</h2>",
                  fig.img("learning curves", fig.learning_curves(histories, metric))]
    return parts


def top_trials(study: optuna.Study, complete: List[FrozenTrial]) -> List[FrozenTrial]:
    """The TOP best complete trials, best first; one a trial folder (a retry stands for its original)."""
    descending = study.direction != optuna.study.StudyDirection.MINIMIZE
    return sorted(record.latest_per_folder(complete).values(), key=lambda t: t.value, reverse=descending)[:TOP]


def fold_histories(run: "Run", trial: FrozenTrial) -> List[pd.DataFrame]:
    """The trial's folds' history.csv that are there and whole (the report goes on without the others)."""
    owner = record.artifact_owner(trial)
    return [h for h in (_history(run.paths.fold(owner, k).history) for k in range(run.spec.folds)) if h is not None]


def _history(path) -> Optional[pd.DataFrame]:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError):  # missing, cut off, not text; pandas' parser errors are ValueErrors
        return None


def trial_curve(histories: List[pd.DataFrame], metric: str) -> Optional[pd.DataFrame]:
    """Per validation step: the metric over the folds that reached it, and the seconds a fold took to
    get there (its training and validation; NaN in a history written before they were kept), averaged."""
    frames = [h.assign(elapsed=h["seconds"].cumsum() if "seconds" in h else np.nan) for h in histories if metric in h]
    return pd.concat(frames).groupby("step", as_index=False)[[metric, "elapsed"]].mean() if frames else None


@fig.plain_text
def top_curves(curves: Dict[int, tuple], metric: str, best: int) -> bytes:
    """Each trial's fold-mean validation metric against the step and against the seconds, overlaid;
    the best trial in red, on top."""
    plt = fig.pyplot()
    figure, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True)
    others = iter(["#1f77b4", "#2ca02c", "#9467bd", "#17becf", "#8c564b", "#7f7f7f"])
    for number, (cv, curve) in curves.items():
        style = ({"color": BEST, "linewidth": 2.5, "zorder": 3} if number == best else
                 {"color": next(others, "grey"), "linewidth": 1.2, "alpha": 0.8})
        by_step.plot(curve["step"], curve[metric], marker=".", label=f"#{number} CV {cv:.4f}", **style)
        by_time.plot(curve["elapsed"], curve[metric], marker=".", **style)
    by_step.set(xlabel="optimizer step", ylabel=f"validation {metric} (mean of folds)", title="against steps")
    by_time.set(xlabel="seconds of training and validation (mean of folds)", title="against seconds")
    by_step.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    by_step.legend(fontsize=8)
    return fig.png(figure)
