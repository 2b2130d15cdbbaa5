"""The study's storage, kept safe: its password is never shown (not in any line, nor on a worker's
command line), a damaged SQLite study says so and names the copy kept after the last finished
trial, workers stop with their launcher (their trials run again), and a timeout must be positive."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from conftest import postgres_cluster
from harness.cli import main
from harness import open_run
from harness.errors import fault_line, storage_error_line
from harness.search.launch import worker_command, worker_environments

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def one_error_line(result) -> str:
    """The single `Error:` line a refused command ends with (no traceback), checked and returned."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert [line for line in lines if "Error" in line or "Traceback" in line] == lines[-1:], lines
    assert lines[-1].startswith("Error: "), lines
    return lines[-1]


def children(pid: int) -> List[int]:
    """The live processes whose parent is `pid`."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaps has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


# --- the password is never shown -------------------------------------------------------------

def test_an_unreachable_url_with_a_password_in_its_query_is_one_line_without_it(class_folder_competition,
                                                                                 tmp_path):
    comp = class_folder_competition()
    url = "postgresql://harness@127.0.0.1:9/studies?password=Qu3ry-s3cret&sslmode=disable"
    result = CliRunner().invoke(main, ["search", str(comp), "--run-dir", str(tmp_path / "run"), "--storage", url])
    line = one_error_line(result)
    assert "?password=***" in line and "Qu3ry-s3cret" not in result.output


def test_an_unparsable_url_with_a_password_is_one_line_without_it(class_folder_competition, tmp_path):
    comp = class_folder_competition()
    url = "postgresql://harness:Unp4rsed-s3cret@127.0.0.1:no-port/studies"
    result = CliRunner().invoke(main, ["status", str(comp), "--run-dir", str(tmp_path / "run"), "--storage", url])
    line = one_error_line(result)
    assert "postgresql://***@127.0.0.1:no-port/studies" in line and "s3cret" not in result.output


def test_a_driver_message_quoting_the_url_or_the_password_is_shown_without_it():
    from sqlalchemy.exc import ArgumentError, OperationalError

    url = "postgresql://harness:p%40ss-W0rd@db/studies"
    quoted = ArgumentError(f"Could not parse SQLAlchemy URL from string '{url}'")
    assert "p%40ss" not in storage_error_line(url, quoted) and "harness:***@db" in storage_error_line(url, quoted)
    echoed = OperationalError("SELECT 1", {}, Exception("login as harness with p@ss-W0rd refused"))
    assert "p@ss-W0rd" not in fault_line(echoed, url) and "with *** refused" in fault_line(echoed, url)


def test_workers_get_the_storage_in_their_environment_not_on_their_command_line(class_folder_competition,
                                                                                 tmp_path):
    url = "postgresql://harness:Cmd-s3cret@127.0.0.1/studies"
    run = open_run(class_folder_competition(), run_dir=str(tmp_path / "run"), storage=url)
    cmd = worker_command(run, str(run.spec.folder), trials=4, timeout=None)
    assert "--storage" not in cmd and not any("s3cret" in part for part in cmd)
    assert [env["HARNESS_STORAGE"] for env in worker_environments(2, base={}, gpus=0, storage=url)] == [url, url]


# --- on a real PostgreSQL server, with a user that has a password ---------------------------

PASSWORD = "Pg-p@ss:w0rd"  # '@' and ':' are written %40 and %3A in the URL
SPELLINGS = ("p@ss:w0rd", "p%40ss%3Aw0rd", "p@ss", "p%40ss")


@pytest.fixture(scope="module")
def postgres_user():
    """The URL (password included) of a database owned by user `harness` on a fresh server that
    asks host connections for a password (scram-sha-256), on 127.0.0.1."""
    import psycopg

    with postgres_cluster("admin-pw") as port:
        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", password="admin-pw", dbname="postgres",
                             autocommit=True) as admin:
            admin.execute(f"CREATE ROLE harness LOGIN PASSWORD '{PASSWORD}'")
            admin.execute("CREATE DATABASE studies OWNER harness")
        yield f"postgresql://harness:Pg-p%40ss%3Aw0rd@127.0.0.1:{port}/studies"


def test_no_output_and_no_worker_command_line_shows_the_password(postgres_user, class_folder_competition, cli,
                                                                 tmp_path):
    comp, run_dir = class_folder_competition(), tmp_path / "run"
    # the storage as the help advises: in the environment, out of `ps`
    env = {**os.environ, "HARNESS_STORAGE": postgres_user}
    launcher = subprocess.Popen([sys.executable, "-m", "harness", "search", str(comp), "--run-dir", str(run_dir),
                                 "--trials", "2", "--workers", "2"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    seen: Dict[int, str] = {}

    def sample() -> None:  # what `ps` shows of each worker while it runs
        while launcher.poll() is None:
            for pid in children(launcher.pid):
                seen[pid] = cmdline(pid) or seen.get(pid, "")
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = launcher.communicate(timeout=600)[0].decode()
    sampler.join()
    assert launcher.returncode == 0, out
    assert len(seen) == 2 and all(" search " in line for line in seen.values()), seen
    outputs = [out, *seen.values(), cli("status", comp, "--run-dir", run_dir).output,
               cli("submit", comp, "--run-dir", run_dir).output]
    assert "2 workers on postgresql://harness:***@127.0.0.1" in out
    assert "2 finished trials in postgresql://harness:***@127.0.0.1" in out
    assert "w1: 2 finished trials in" in out or "w2: 2 finished trials in" in out  # the workers' own last lines
    assert not [text for text in outputs for secret in SPELLINGS if secret in text]
    assert (run_dir / "study.url").stat().st_mode & 0o777 == 0o600  # the one place the password is written
    assert (run_dir / "study.url").read_text().strip() == postgres_user


# --- a damaged SQLite study -----------------------------------------------------------------

def garbage_over_the_first_kilobyte(db: Path) -> None:
    with open(db, "r+b") as handle:
        handle.write(os.urandom(1024))


def cut_to_half(db: Path) -> None:
    os.truncate(db, db.stat().st_size // 2)


def test_a_damaged_study_file_says_so_and_is_put_back_from_its_copy(class_folder_competition, cli, tmp_path):
    comp, run_dir = class_folder_competition(), tmp_path / "run"
    db, backup = run_dir / "study.db", run_dir / "study.db.backup"
    cli("search", comp, "--run-dir", run_dir, "--trials", "2")
    copy = optuna.load_study(study_name="tiny-folders", storage=f"sqlite:///{backup}")
    assert len(copy.get_trials(states=FINISHED)) == 2  # made after the last finished trial
    good = db.read_bytes()
    for damage in (cut_to_half, garbage_over_the_first_kilobyte):
        db.write_bytes(good)
        damage(db)
        for command in (["status"], ["search", "--trials", "3"]):
            line = one_error_line(CliRunner().invoke(main, [*command, str(comp), "--run-dir", str(run_dir)]))
            assert line.startswith(f"Error: {db}: the study database file is damaged ("), line
            assert f"copy from after the last finished trial is in {backup}: copy it over {db}" in line, line
    shutil.copyfile(backup, db)
    cli("search", comp, "--run-dir", run_dir, "--trials", "3")
    study = optuna.load_study(study_name="tiny-folders", storage=f"sqlite:///{db}")
    assert len(study.get_trials(states=FINISHED)) == 3 and len(study.trials) == 3


# --- workers stop with their launcher -------------------------------------------------------

def test_workers_stop_when_their_launcher_is_killed_and_their_trials_run_again(class_folder_competition, cli,
                                                                                tmp_path):
    comp, run_dir = class_folder_competition(search={"steps": [60]}), tmp_path / "run"  # trials of seconds
    storage = f"sqlite:///{run_dir / 'study.db'}"
    with open(tmp_path / "launcher.log", "w") as log:
        launcher = subprocess.Popen([sys.executable, "-m", "harness", "search", str(comp), "--run-dir",
                                     str(run_dir), "--trials", "2", "--workers", "2"], stdout=log,
                                    stderr=subprocess.STDOUT)
    running, deadline = [], time.time() + 120
    while len(running) < 2:  # both workers in a trial
        assert time.time() < deadline and launcher.poll() is None, (tmp_path / "launcher.log").read_text()
        time.sleep(0.1)
        try:
            trials = optuna.load_study(study_name="tiny-folders", storage=storage).trials
        except Exception:  # noqa: BLE001 - not made yet
            continue
        running = [t for t in trials if t.state == TrialState.RUNNING and "pid" in t.user_attrs]
    workers = sorted(t.user_attrs["pid"] for t in running)
    assert sorted(children(launcher.pid)) == workers
    launcher.kill()
    launcher.wait()
    deadline = time.time() + 15
    while any(alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.1)
    orphans = [pid for pid in workers if alive(pid)]
    for pid in orphans:  # not left training after the test
        os.kill(pid, signal.SIGKILL)
    assert not orphans, "workers outlived their launcher"
    out = cli("search", comp, "--run-dir", run_dir, "--trials", "2", "--workers", "2").output
    study = optuna.load_study(study_name="tiny-folders", storage=storage)
    assert len(study.get_trials(states=FINISHED)) == 2, out
    cut = [t for t in study.trials if t.state == TrialState.FAIL]
    assert sorted(t.number for t in cut) == [t.number for t in running]
    reasons = [t.user_attrs.get("fail_reason", "") for t in cut]
    assert all(r.startswith("interrupted") and "BrokenPipe" not in r for r in reasons), reasons
    status = cli("status", comp, "--run-dir", run_dir).output
    assert all(f"retry of #{t.number}" in status for t in cut), status


# --- a timeout must be positive -------------------------------------------------------------

@pytest.mark.parametrize("timeout", ["0", "-5"])
def test_a_timeout_that_is_not_positive_is_a_command_line_mistake(timeout, class_folder_competition, tmp_path):
    comp, run_dir = class_folder_competition(), tmp_path / "run"
    result = CliRunner().invoke(main, ["search", str(comp), "--run-dir", str(run_dir), "--timeout", timeout])
    assert result.exit_code == 2 and "--timeout" in result.output, result.output
    assert not run_dir.exists()


# --- the read-only commands never write the storage ------------------------------------------

def storage_files(run_dir: Path, db: Path) -> Dict[str, int]:
    """Modification time (ns) of each storage file: the database, its copy and lock beside it, and in
    the run dir the remembered URL, any study.db and any lock."""
    found = [p for p in db.parent.glob(db.name + "*")] + [p for p in run_dir.iterdir() if p.name.startswith(
        ("study.", ".create.lock", ".slots.lock")) or p.name.endswith(".lock")]
    return {str(p): p.stat().st_mtime_ns for p in found if p.is_file()}


def test_status_submit_report_and_predict_write_no_storage_file(class_folder_competition, cli, tmp_path):
    comp, run_dir = class_folder_competition(), tmp_path / "run"
    db = tmp_path / "elsewhere" / "study.db"
    db.parent.mkdir()
    storage = f"sqlite:///{db}"
    cli("search", comp, "--run-dir", run_dir, "--trials", "2", "--storage", storage)
    (run_dir / "study.url").unlink()  # so that a command remembering --storage would show
    before = storage_files(run_dir, db)
    assert str(db) in before and not (run_dir / "study.db").exists()
    names = {p.name for p in run_dir.iterdir()}
    given = ["--run-dir", run_dir, "--storage", storage]
    assert " complete " in cli("status", comp, *given).output
    assert "ensemble of" in cli("submit", comp, *given).output
    cli("report", comp, *given)
    cli("predict", comp, *given, tmp_path / "data" / "test", "--out", tmp_path / "predictions.csv")
    assert storage_files(run_dir, db) == before  # none made, none written (not study.url, nor study.db)
    made = {p.name for p in run_dir.iterdir()} - names
    assert made <= {"submission.csv", "ensemble.json", "report.html", "confusion_matrix.csv", "roc.png"}, made
