"""The commands that prepare the data or train: validate, search, submit, report, predict, distill."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from ..config.paths import Run
from ..data.prepare import prepare_data
from ..errors import shown_url
from ..preflight import check_run, open_run
from ..search import budget, record
from ..search.launch import default_worker_count, follow_launcher, run_workers, safe_echo
from ..search.loop import run_search
from ..search.storage import count_finished, read_study
from ..search.tracking import log_report
from ..submit import make_report, make_submission
from ..submit.distill import make_distilled
from ..submit.predict import predict_images
from ..submit.pseudo import make_pseudo_labels
from ..submit.report import data_summary
from . import command_started
from .options import run_options


@click.command()
@run_options(open_run)
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


@click.command()
@run_options(open_run)
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
@click.option("--pseudo-labels", is_flag=True,
              help="New trials (the submitted ensemble's members first) also train on the test images it labels "
                   "with confidence, as search.pseudo_labels: true does. Run `harness submit` first.")
def search(run: Run, trials: int, timeout: float | None, workers: int | None, quiet: bool, mlflow: bool,
           pseudo_labels: bool) -> None:
    """Search until the study holds --trials finished trials."""
    try:
        follow_launcher()  # a worker of `--workers N` stops with its launcher
        started = command_started()  # the deadline is the user's: it counts from the command's start
        workers = workers or default_worker_count()
        made = make_pseudo_labels(run, safe_echo) if pseudo_labels or run.spec.search.pseudo_labels else None
        pseudo = made.id if made else None
        if workers > 1:
            run_workers(run, str(run.spec.folder), trials, workers, timeout, echo=safe_echo, quiet=quiet,
                        mlflow=mlflow, pseudo=pseudo, started=started)
            study = read_study(run)
        else:
            study = run_search(run, trials, timeout, echo=safe_echo, quiet=quiet, mlflow=mlflow, pseudo=pseudo,
                               started=started)
    except RuntimeError as err:
        raise click.ClickException(str(err)) from None
    except KeyboardInterrupt:
        safe_echo("interrupted: run the same command again to resume", err=True)
        sys.exit(130)
    best = record.best_whole(study, run.spec.folds)
    safe_echo(f"{count_finished(study)} finished trials in {shown_url(run.storage_url)}"
              + (f"; best #{best.number}: {run.spec.metric} {best.value:.4f}" if best else ""))


@click.command()
@run_options(open_run)
def submit(run: Run) -> None:
    """Ensemble the finished trials and write the submission."""
    make_submission(run, echo=click.echo)
    log_report(run, echo=click.echo)  # when the run dir logs to MLflow (`search --mlflow`)


@click.command()
@run_options(open_run)
def report(run: Run) -> None:
    """Write report.html: search, learning curves, confusion, ROC/PR, worst OOF predictions, trials."""
    make_report(run, echo=click.echo)
    log_report(run, echo=click.echo)


@click.command()
@run_options(open_run)
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--out", type=click.Path(dir_okay=False), default="predictions.csv", show_default=True,
              help="The csv to write: image, the target column(s), each class's probability.")
@click.option("--distilled", is_flag=True,
              help="Predict with the student `harness distill` trained (one model, at the ensemble's cut-offs).")
def predict(run: Run, images: tuple, out: str, distilled: bool) -> None:
    """Predict IMAGES (files, or folders searched recursively) with the ensemble submit chose (or would choose)."""
    predict_images(run, images, Path(out), echo=click.echo, distilled=distilled)


@click.command()
@run_options(open_run)
@click.option("--steps", type=click.IntRange(min=1),
              help="Optimizer steps of the student [default: those of the best single trial].")
def distill(run: Run, steps: int | None) -> None:
    """Train one model on the training and test images to match the submitted ensemble, for fast `predict`."""
    make_distilled(run, steps, echo=click.echo)

