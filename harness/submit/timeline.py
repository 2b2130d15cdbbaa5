"""The search's wall-clock for report.html: an inline SVG with one bar per trial, from its start to
its end, on its worker's row, coloured by its state, its details on hover."""
from __future__ import annotations

import html
from datetime import datetime
from typing import Dict, List, Optional

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from ..search import record

BEST = "#e41a1c"  # the best trial, in every figure: red stands out from the blues of the others
STATES = {TrialState.COMPLETE: "#4c72b0", TrialState.PRUNED: "#f0a030", TrialState.FAIL: "#222222",
          TrialState.RUNNING: "#b0b0b0"}  # the bars' colours: failed in black, the best's red edge stays apart
WORDS = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
         TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
LANE, AXIS, LABELS, WIDTH = 24, 28, 190, 1300  # the timeline's pixels: a worker's row, the axis, names, all
NICE = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 4 * 3600, 12 * 3600, 86400]


def timeline(trials: List[FrozenTrial], best: Optional[int] = None) -> str:
    """An inline SVG: each trial a bar from its start to its end on its worker's row, coloured by its
    state, its number on it and its details on hover."""
    started = [t for t in trials if t.datetime_start is not None]
    if not started:
        return "<p>(no trial started yet)</p>"
    now = datetime.now()
    origin = min(t.datetime_start for t in started)
    span = max(((t.datetime_complete or now) - origin).total_seconds() for t in started) or 1.0
    lanes = worker_lanes(started)
    names = list(dict.fromkeys(lanes.values()))
    scale = (WIDTH - LABELS - 20) / span
    height = AXIS + LANE * len(names) + 8
    out = [f'<svg class="timeline" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" '
           'role="img" style="font:11px sans-serif;max-width:100%;height:auto">']
    for tick in _ticks(span):
        x = LABELS + tick * scale
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{AXIS - 4}" y2="{height - 8}" stroke="#ddd"/>'
                   f'<text x="{x:.1f}" y="{AXIS - 8}" text-anchor="middle">{_clock(tick)}</text>')
    for i, name in enumerate(names):
        out.append(f'<text x="{LABELS - 6}" y="{AXIS + LANE * i + 16}" text-anchor="end">{html.escape(name)}</text>')
    for t in started:
        start = (t.datetime_start - origin).total_seconds()
        end = ((t.datetime_complete or now) - origin).total_seconds()
        x, y, w = LABELS + start * scale, AXIS + LANE * names.index(lanes[t.number]) + 3, max((end - start) * scale, 2)
        edge = f' stroke="{BEST}" stroke-width="3"' if t.number == best else ""
        out.append(f'<rect class="trial {WORDS[t.state]}" data-trial="{t.number}" x="{x:.1f}" y="{y}" '
                   f'width="{w:.1f}" height="{LANE - 6}" rx="2" fill="{STATES.get(t.state, "#888")}"{edge}>'
                   f"<title>{html.escape(_bar_text(t, end - start, best))}</title></rect>")
        if w > 8 * len(str(t.number)) + 4:
            out.append(f'<text x="{x + w / 2:.1f}" y="{y + LANE / 2 + 1}" text-anchor="middle" fill="white" '
                       f'pointer-events="none">{t.number}</text>')
    return "".join(out) + "</svg>" + _legend(best, span, len(names))


def worker_lanes(trials: List[FrozenTrial]) -> Dict[int, str]:
    """Trial number → the row of its worker (host and process, as the trial recorded them); a trial
    without them (an older study) goes on the first row of such trials that is free when it starts."""
    lanes, free_at = {}, []
    for t in sorted(trials, key=lambda t: t.datetime_start):
        host, pid = record.process_of(t)
        if host is not None:
            lanes[t.number] = f"{host} pid {pid}"
            continue
        row = next((i for i, end in enumerate(free_at) if end <= t.datetime_start), len(free_at))
        free_at[row:row + 1] = [t.datetime_complete or datetime.max]
        lanes[t.number] = f"worker {row + 1}"
    return lanes


def _bar_text(t: FrozenTrial, seconds: float, best: Optional[int]) -> str:
    what = f"CV {t.value:.4f}" if t.state == TrialState.COMPLETE else (
        record.pruned_reason(t) or record.fail_reason(t) or WORDS[t.state])
    return f"trial #{t.number}{' (best)' if t.number == best else ''}, {WORDS[t.state]}, " \
           f"{seconds:.1f} s: {what}"


def _legend(best: Optional[int], span: float, workers: int) -> str:
    keys = "".join(f'<span style="background:{c}"></span>{WORDS[s]} ' for s, c in STATES.items())
    mark = f'<span style="border:3px solid {BEST}"></span>best (#{best})' if best is not None else ""
    return (f'<p class="legend">{keys}{mark}. Seconds since the first trial started: {_clock(round(span))} '
            f"of wall-clock on {workers} worker{'s' if workers > 1 else ''}.</p>")


def _ticks(span: float) -> List[float]:
    """About eight round tick positions over [0, span] seconds (whole minutes or hours for long spans)."""
    step = next((s for s in NICE if s >= span / 8), NICE[-1])
    return list(np.arange(0, span + 1e-9, step))  # none past the end: its label would be cut off


def _clock(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:g} s"
    return f"{seconds / 60:g} min" if seconds < 7200 else f"{seconds / 3600:g} h"
