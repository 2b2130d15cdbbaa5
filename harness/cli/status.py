"""`harness status`: the leaderboard, for a person (a table, `--watch` to keep it fresh) or a
script (`--format csv|json`: every stored column at full precision). Reads the study only."""
from __future__ import annotations

import json
import time
from typing import Optional

import click
import optuna
import pandas as pd

from ..config.paths import Run
from ..search.board import json_ready, leaderboard, ranked, records_csv, status_lines, trial_records
from ..search.storage import read_study
from .options import open_for_reading, run_options


@click.command()
@run_options(open_for_reading)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="csv and json: every stored column at full precision (fold scores a list in json, "
                   "fold1, fold2, … in csv), for scripts and spreadsheets.")
@click.option("--watch", type=click.FloatRange(min=0.5), is_flag=False, flag_value=5.0, default=None,
              metavar="[SECONDS]", help="Redraw the table in place every SECONDS (5 if not given) until Ctrl-C.")
def status(run: Run, fmt: str, watch: Optional[float]) -> None:
    """Leaderboard: trial, state, CV, fold scores, params, steps, seconds, busy share, folder, note."""
    if fmt != "table":
        study = read_study(run)
        rows = ranked(study, trial_records(study, run.paths))
        if fmt == "json":
            click.echo(json.dumps(json_ready(rows), indent=1))
        else:
            click.echo(records_csv(rows) if rows else "", nl=False)
        return
    if watch is None:
        click.echo(status_page(read_study(run), run))
        return
    try:
        while True:
            page = status_page(read_study(run), run)
            click.clear()  # on a terminal: the page redrawn in place, as `watch` does
            click.echo(f"every {watch:g} s, Ctrl-C to stop: {time.strftime('%H:%M:%S')}\n{page}")
            time.sleep(watch)
    except KeyboardInterrupt:
        return


def status_page(study: optuna.Study, run: Run) -> str:
    """The budget lines, then the table, notes (why a trial failed or was pruned) in full."""
    lines = status_lines(study, run.paths)
    table = leaderboard(study, run.paths)
    if table.empty:
        lines.append("no trials yet")
    else:
        with pd.option_context("display.width", 250, "display.max_columns", 40, "display.max_colwidth", None):
            lines.append(table.to_string(index=False, na_rep="-"))
    return "\n".join(lines)
