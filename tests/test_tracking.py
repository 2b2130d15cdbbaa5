"""`harness search --mlflow`: each finished trial in a real local MLflow store, the report as an artifact."""
import sys

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from conftest import load_study
from harness import open_run
from harness.config.paths import RunPaths
from harness.search import record
from harness.search.launch import worker_command
from harness.search.tracking import CURVE, CV, REPORT_RUN, TrialLog, make_store, store_uri

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # the test makes no network call


def logged_runs(run_dir):
    """MLflow runs of the study's experiment, by run name."""
    client = mlflow.MlflowClient(f"sqlite:///{RunPaths(run_dir).mlruns / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny-folders")
    return client, {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}


def test_each_trial_is_logged_then_the_report_and_the_choice_is_remembered(class_folder_competition, cli, tmp_path):
    comp, run_dir = class_folder_competition(), tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "2", "--mlflow")
    study = load_study(run_dir)
    client, runs = logged_runs(run_dir)
    assert sorted(runs) == ["0", "1"]  # one run per trial, named by its number
    for trial in study.trials:
        logged = runs[str(trial.number)]
        assert logged.data.params == {k: str(v) for k, v in trial.params.items()}
        assert logged.data.metrics[CV] == pytest.approx(trial.value)
        assert logged.data.tags["state"] == "COMPLETE" and logged.data.tags["metric"] == "accuracy"
        scores = record.fold_scores(trial)
        assert len(scores) == 2 and [logged.data.metrics[f"fold{k + 1}"] for k in range(2)] == pytest.approx(scores)
        assert logged.data.metrics["seconds"] > 0
        curve = client.get_metric_history(logged.info.run_id, CURVE)
        assert {m.step: m.value for m in curve} == pytest.approx(trial.intermediate_values)
        assert len(curve) == 2  # a value a fold

    assert "logged report.html" in cli("report", comp, "--run-dir", run_dir).output
    _, runs = logged_runs(run_dir)
    page = client.download_artifacts(runs[REPORT_RUN].info.run_id, "report.html", str(tmp_path))
    assert open(page).read() == RunPaths(run_dir).report_html.read_text()

    cli("search", comp, "--run-dir", run_dir, "--trials", "3")  # no flag: the run dir's store is the choice
    _, runs = logged_runs(run_dir)
    assert sorted(runs) == ["0", "1", "2", REPORT_RUN]


def test_off_by_default_no_store_is_made(class_folder_competition, cli, tmp_path):
    comp, run_dir = class_folder_competition(), tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "1")
    assert RunPaths(run_dir).study_db.is_file() and not RunPaths(run_dir).mlruns.exists()
    run = open_run(comp, run_dir=str(run_dir))
    assert "--mlflow" not in worker_command(run, str(comp), 2, None)
    assert worker_command(run, str(comp), 2, None, mlflow=True)[-1] == "--mlflow"  # workers log too
    assert store_uri(run) == f"sqlite:///{run_dir.resolve() / 'mlruns' / 'mlflow.db'}"


def test_asked_for_without_mlflow_installed_is_one_line_before_training(class_folder_competition, cli, tmp_path,
                                                                        monkeypatch):
    comp, run_dir = class_folder_competition(), tmp_path / "run"
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what `import mlflow` raises ImportError for
    out = cli("search", comp, "--run-dir", run_dir, "--trials", "1", "--mlflow", ok=False).output
    assert out.strip().splitlines()[-1] == "Error: --mlflow: mlflow is not installed: pip install 'harness[mlflow]'"
    assert not (run_dir / "trials").exists() and not RunPaths(run_dir).mlruns.exists()


def test_a_pruned_trial_is_logged_with_its_folds_and_curve_a_failed_one_is_not(class_folder_competition, tmp_path):
    run = open_run(class_folder_competition(), run_dir=str(tmp_path / "run"))
    make_store(run)
    lines = []
    study = optuna.create_study(study_name=run.study_name, direction="maximize")
    for state in (TrialState.PRUNED, TrialState.FAIL):
        study.add_trial(create_trial(state=state, params={"lr": 0.01}, distributions={"lr": FloatDistribution(1e-4, 1)},
                                     intermediate_values={0: 0.4} if state == TrialState.PRUNED else None,
                                     user_attrs={"fold_scores": [0.4]}))
    log = TrialLog(run, lines.append)
    for trial in study.trials:
        log(study, trial)
    client, runs = logged_runs(tmp_path / "run")
    assert sorted(runs) == ["0"] and lines == [f"each finished trial is logged to MLflow in {store_uri(run)}"]
    assert runs["0"].data.tags["state"] == "PRUNED" and runs["0"].data.params == {"lr": "0.01"}
    assert runs["0"].data.metrics == {"fold1": 0.4, CURVE: 0.4}  # no CV: a pruned trial has no value
