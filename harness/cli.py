"""`harness` on the command line: validate, search, status, submit, list."""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable

import click
import pandas as pd
from optuna.trial import TrialState

from .config.paths import Run
from .data.prepare import prepare_data
from .errors import SpecError, os_error_line, shown_url
from .preflight import REGISTRIES, check_run, open_run
from .search import budget, count_finished, read_study, run_search
from .search.launch import STORAGE_ENV, default_worker_count, follow_launcher, run_workers, safe_echo
from .search.tracking import log_report
from .submit import make_report, make_submission
from .submit.predict import predict_images
from .submit.report import data_summary, leaderboard

def run_options(command: Callable) -> Callable:
    """The options every command shares, resolved into a `Run`."""

    @click.argument("competition", type=click.Path(exists=True))
    @click.option("--data-root", help="Data folder (else $HARNESS_DATA, else the spec's data_root).")
    @click.option("--run-dir", help="Run folder (default runs/<name>).")
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                  help="Override a competition.yaml field by dotted path, e.g. search.steps=[50]; "
                       "`search` remembers them for later commands on the same run dir.")
    @click.option("--storage", envvar=STORAGE_ENV,
                  help="Optuna storage URL, else $HARNESS_STORAGE (a password there stays out of `ps`), else "
                       "the URL remembered in the run dir, else sqlite:///<run-dir>/study.db.")
    @functools.wraps(command)
    def wrapper(competition, data_root, run_dir, overrides, storage, **kwargs):
        try:
            run = open_run(competition, data_root, run_dir, overrides, storage)
            if run.remembered:
                click.echo(f"with the overrides remembered in {run.paths.options_json}: "
                           + " ".join(f"--set {item}" for item in run.remembered), err=True)
            return command(run, **kwargs)
        except SpecError as err:
            raise click.ClickException(str(err)) from None
        except OSError as err:  # a full disk, a read-only folder: no traceback, what to do
            raise click.ClickException(os_error_line(err)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


@click.group()
@click.version_option(package_name="harness", message="harness %(version)s")
def main() -> None:
    """AutoML harness for image competitions."""


@main.command()
@run_options
def validate(run: Run) -> None:
    """Check the spec and data; print the samples table summary."""
    data = prepare_data(run)
    weights = check_run(run, data)
    click.echo(f"{run.spec.name}: {run.spec.task}, metric {run.spec.metric}, {run.spec.folds} folds")
    click.echo(data_summary(data))
    for line in weights:
        click.echo(line)
    for line in budget.speed_lines(run, data):
        click.echo(line)
    click.echo("ok")


@main.command()
@run_options
@click.option("--trials", type=click.IntRange(min=1), default=20, show_default=True,
              help="Finished trials the study should hold in total (running again continues).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              help="A deadline in seconds: budgets are planned from this machine's measured speed, the "
                   "trial in flight at the deadline is cut (its finished folds kept), a study to submit is left.")
@click.option("--workers", type=click.IntRange(min=1),
              help="Trials run at once, each in its own process on this study [default: 1 on a CPU; on "
                   "GPUs one per 16 GiB of each GPU's free memory, at most 4 a GPU and half the CPU cores].")
@click.option("--quiet", is_flag=True, help="A line per trial; no progress or fold lines.")
@click.option("--mlflow", is_flag=True,
              help="Log every finished trial (and later the report) to MLflow in <run-dir>/mlruns; remembered "
                   "for the run dir. Needs pip install 'harness[mlflow]'.")
def search(run: Run, trials: int, timeout: float | None, workers: int | None, quiet: bool, mlflow: bool) -> None:
    """Search until the study holds --trials finished trials."""
    try:
        follow_launcher()  # a worker of `--workers N` stops with its launcher
        workers = workers or default_worker_count()
        if workers > 1:
            run_workers(run, str(run.spec.folder), trials, workers, timeout, echo=safe_echo, quiet=quiet,
                        mlflow=mlflow)
            study = read_study(run)
        else:
            study = run_search(run, trials, timeout, echo=safe_echo, quiet=quiet, mlflow=mlflow)
    except RuntimeError as err:
        raise click.ClickException(str(err)) from None
    except KeyboardInterrupt:
        safe_echo("interrupted: run the same command again to resume", err=True)
        sys.exit(130)
    best = study.best_trial if count_finished(study) and _has_complete(study) else None
    safe_echo(f"{count_finished(study)} finished trials in {shown_url(run.storage_url)}"
              + (f"; best #{best.number}: {run.spec.metric} {best.value:.4f}" if best else ""))


@main.command()
@run_options
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="csv and json: every column, for scripts and spreadsheets.")
def status(run: Run, fmt: str) -> None:
    """Leaderboard: trial, state, CV, fold scores, params, duration, busy share, note."""
    study = read_study(run)
    table = leaderboard(study)
    if fmt == "csv":
        click.echo(table.to_csv(index=False), nl=False)
        return
    if fmt == "json":
        click.echo(table.to_json(orient="records", indent=1) if not table.empty else "[]")
        return
    for line in budget.status_lines(study, run):  # the plan, its rungs, the deadline, the measured speeds
        click.echo(line)
    if table.empty:
        click.echo("no trials yet")
    else:  # notes (why a trial failed or was pruned) in full
        with pd.option_context("display.width", 250, "display.max_columns", 40, "display.max_colwidth", None):
            click.echo(table.to_string(index=False, na_rep="-"))


@main.command()
@run_options
def submit(run: Run) -> None:
    """Ensemble the finished trials and write the submission."""
    make_submission(run, echo=click.echo)
    log_report(run, echo=click.echo)  # when the run dir logs to MLflow (`search --mlflow`)


@main.command()
@run_options
def report(run: Run) -> None:
    """Write report.html: search, learning curves, confusion, ROC/PR, worst OOF predictions, trials."""
    make_report(run, echo=click.echo)
    log_report(run, echo=click.echo)


@main.command()
@run_options
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), default="predictions.csv", show_default=True,
              help="The csv to write: image, the target column(s), each class's probability.")
def predict(run: Run, images: tuple, out: str) -> None:
    """Predict IMAGES (files, or folders searched recursively) with the run's ensemble (after submit)."""
    predict_images(run, images, Path(out), echo=click.echo)


@main.command("list")
@click.argument("what", type=click.Choice(sorted(REGISTRIES)))
def list_choices(what: str) -> None:
    """List what a spec may name (tasks, layouts, metrics, losses, formats, …) with a line on each."""
    registry = REGISTRIES[what]
    for name in registry.names():
        click.echo(f"{name:18s} {registry.describe(name)}")


def _has_complete(study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


if __name__ == "__main__":
    sys.exit(main())
