"""Optional MLflow tracking: each finished trial of a search logged to `<run-dir>/mlruns`, and the
report as an artifact once `submit` or `report` writes it.

Off by default; `harness search --mlflow` (`run_search(..., mlflow=True)`) turns it on. The store
made is the choice remembered: every later search, worker, submit and report on the run dir logs
to it (remove the folder to stop). It is an SQLite database (`mlflow.db`; MLflow 3 refuses a plain
file store) with the artifacts in a folder beside it: it works offline, with no server, and
`mlflow ui --backend-store-uri sqlite:///<run-dir>/mlruns/mlflow.db` opens it.

Optuna's own `optuna_integration.MLflowCallback` logs a trial's parameters, its CV (metric `cv`),
its state and its attributes as tags; this module adds to the same MLflow run each fold's score
(`fold1`, …), the learning curve (`learning_curve`: the values the pruner was told, by step) and
the trial's seconds and busy share.
"""
from __future__ import annotations

import logging
import time
import warnings
from typing import Callable, List

import optuna
from optuna.trial import FrozenTrial

from ..config.paths import Run
from ..errors import SpecError
from . import record
from .storage import FINISHED

INSTALL = "pip install 'harness[mlflow]'"
CV = "cv"  # the trial's value, the CV of the spec's metric (named in the run's tag `metric`)
CURVE = "learning_curve"
REPORT_RUN = "report"  # the MLflow run that holds the latest report.html


def enabled(run: Run, asked: bool) -> bool:
    """Asked for on this command, or asked for before on this run dir (its store exists)."""
    return asked or run.paths.mlruns.is_dir()


def check_installed(run: Run, asked: bool) -> bool:
    """Whether this search logs to MLflow; one line when it should and MLflow or Optuna's
    integration is not installed, said before any training starts."""
    if not enabled(run, asked):
        return False
    try:
        import mlflow  # noqa: F401
        import optuna_integration.mlflow  # noqa: F401
    except ImportError as err:
        why = "--mlflow" if asked else f"this run dir logs to MLflow ({run.paths.mlruns}; remove it to stop)"
        raise SpecError(f"{why}: {err.name} is not installed: {INSTALL}") from None
    return True


def store_uri(run: Run) -> str:
    return f"sqlite:///{run.paths.mlruns / 'mlflow.db'}"


def make_store(run: Run) -> str:
    """The store and the study's experiment, made once, by the first worker (under its creation
    lock: MLflow's first connection creates the tables); returns the experiment's id."""
    run.paths.mlruns.mkdir(parents=True, exist_ok=True)
    return experiment_id(run, _client(run))


def experiment_id(run: Run, client) -> str:
    """The experiment named after the study; its artifacts in the store's folder, not MLflow's
    default `./mlruns` of the working directory."""
    found = client.get_experiment_by_name(run.study_name)
    if found is not None:
        return found.experiment_id
    artifacts = (run.paths.mlruns / "artifacts").as_uri()
    return client.create_experiment(run.study_name, artifact_location=artifacts)


def _client(run: Run):
    import mlflow

    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # its table creation lines
    with warnings.catch_warnings():  # SQLAlchemy's deprecations of MLflow's mappers, not the user's to act on
        warnings.simplefilter("ignore", DeprecationWarning)
        client = mlflow.MlflowClient(store_uri(run))
        client.search_experiments(max_results=1)  # the store opened now, its warnings silenced here
    return client


class TrialLog:
    """The search's callback that logs each finished trial (complete or pruned) to the store; a
    trial that failed, or was interrupted and runs again, is not logged. A store that cannot be
    written is said in a line: tracking never stops the search."""

    def __init__(self, run: Run, echo: Callable[[str], None]) -> None:
        from optuna_integration import MLflowCallback

        self.client, self.echo = _client(run), echo
        kwargs = {"experiment_id": experiment_id(run, self.client), "tags": {"metric": run.spec.metric}}
        # Optuna marks it deprecated since 4.9 (removal planned for 6.0), yet it is still the integration's
        # MLflow callback: a warning at every search would not be the user's to act on
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.callback = MLflowCallback(tracking_uri=store_uri(run), metric_name=CV, create_experiment=False,
                                           mlflow_kwargs=kwargs)
        echo(f"each finished trial is logged to MLflow in {store_uri(run)}")  # also when only remembered

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state not in FINISHED:
            return
        import mlflow

        try:
            self.callback(study, trial)
            self.client.log_batch(mlflow.last_active_run().info.run_id, metrics=trial_metrics(trial))
        except Exception as err:  # noqa: BLE001 - a locked or full store: the trial itself is kept in the study
            self.echo(f"trial {trial.number}: not logged to MLflow ({type(err).__name__}: {err}); the search goes on")


def trial_metrics(trial: FrozenTrial) -> List:
    """What MLflowCallback does not log: the fold scores, the learning curve by step, the time."""
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    metrics = [Metric(record.fold_key(k), float(s), stamp, 0) for k, s in enumerate(record.fold_scores(trial))]
    metrics += [Metric(CURVE, float(v), stamp, int(step)) for step, v in sorted(trial.intermediate_values.items())]
    extra = {"seconds": record.seconds(trial), "busy": record.busy(trial)}
    return metrics + [Metric(key, float(v), stamp, 0) for key, v in extra.items() if v is not None]


def log_report(run: Run, echo: Callable[[str], None] = print) -> None:
    """report.html, once `submit` or `report` wrote it, as an artifact of the store's `report` run
    (made once, the page replaced each time), when the run dir logs to MLflow; a store that cannot be
    written is said in a line. Called after `make_submission`, not in it: its data path stays short."""
    page = run.paths.report_html
    if not run.paths.mlruns.is_dir() or not page.is_file():
        return
    try:
        check_installed(run, False)
        client = _client(run)
        exp = experiment_id(run, client)
        found = client.search_runs([exp], filter_string=f"attributes.run_name = '{REPORT_RUN}'", max_results=1)
        run_id = found[0].info.run_id if found else client.create_run(exp, run_name=REPORT_RUN).info.run_id
        client.log_artifact(run_id, str(page))
        client.set_terminated(run_id)
    except Exception as err:  # noqa: BLE001 - the report is written: only its copy in the store is missing
        echo(f"{page.name}: not logged to MLflow ({type(err).__name__}: {err})")
        return
    echo(f"logged {page.name} to MLflow run {REPORT_RUN!r} in {store_uri(run)}")
