"""What the harness never does: write outside the run dir, trust stale predictions or data listed
twice, choke on a hostile image, or leave a half-written file.

Each case runs the CLI as a user would and checks what a user would see: one `Error:` line and
nothing changed outside the run dir, or a submission that is right.
"""
from __future__ import annotations

import errno
import os
import shutil
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import harness.files
from conftest import tree
from harness.config.paths import RunPaths
from harness.files import temporary_path

# ------------------------------------------------------------------ nothing written outside the run dir


def refused(cli, *args) -> str:
    """The one `Error:` line of a refused command (exit 1, no traceback)."""
    result = cli(*args, ok=False)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert lines[-1].startswith("Error: ") and sum("Error" in line for line in lines) == 1, lines
    return lines[-1]


@pytest.mark.parametrize("command", ["validate", "search", "submit"])
@pytest.mark.parametrize("where", ["../../x.csv", "ABSOLUTE", "link/x.csv"])
def test_a_submission_file_outside_the_run_dir_is_refused_before_anything_is_written(
        class_folder_competition, cli, tmp_path, command, where):
    comp = class_folder_competition()
    notes = tmp_path / "notes.txt"
    notes.write_text("a week of notes\n")
    run_dir = tmp_path / "runs" / "mine"
    if where == "link/x.csv":  # a folder inside the run dir that leads out of it
        run_dir.mkdir(parents=True)
        (run_dir / "link").symlink_to(tmp_path)
    where = str(notes) if where == "ABSOLUTE" else where
    before = tree(tmp_path, skip=run_dir)
    line = refused(cli, command, comp, "--run-dir", run_dir, "--set", f"submission.file={where}")
    assert f"submission.file: {where!r} is not a file inside the run dir" in line and "relative to it" in line
    assert tree(tmp_path, skip=run_dir) == before and notes.read_text() == "a week of notes\n"
    assert not RunPaths(run_dir).study_db.exists()


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/escaped-harness-run", "a/b", ".."])
def test_a_spec_name_that_is_not_a_folder_name_is_refused(class_folder_competition, cli, tmp_path, monkeypatch,
                                                          name):
    comp = class_folder_competition()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = tree(tmp_path)
    line = refused(cli, "search", comp, "--set", f"name={name}", "--trials", "1")
    assert f"name: {name!r} is not a plain folder name" in line and "--run-dir" in line
    assert tree(tmp_path) == before and not Path("/tmp/escaped-harness-run").exists()


# ------------------------------------------------------------------ no stale prediction, no data listed twice


def test_test_images_replaced_under_the_same_names_are_predicted_again(class_folder_competition, cli, tmp_path):
    comp = class_folder_competition(extra={"submission": {"file": "submission.csv", "id_column": "image",
                                                          "id_from": "name", "target_column": "p",
                                                          "value": "probability"}})
    run_dir = tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "1")
    cli("submit", comp, "--run-dir", run_dir)
    assert pd.read_csv(run_dir / "submission.csv")["p"].nunique() > 1  # ten different images
    for path in (tmp_path / "data" / "test").iterdir():  # the same names, other pixels
        Image.fromarray(np.full((20, 20), 77, np.uint8)).save(path)
    cli("submit", comp, "--run-dir", run_dir)
    submission = pd.read_csv(run_dir / "submission.csv")
    assert len(submission) == 10 and submission["p"].nunique() == 1  # ten identical images now


def test_an_image_listed_twice_is_refused_naming_both_rows(csv_competition, cli, tmp_path):
    comp = csv_competition()
    listing = tmp_path / "csvdata" / "train.csv"
    table = pd.read_csv(listing, dtype=str)
    table.loc[7, "file"] = "./" + table.loc[1, "file"]  # another spelling of the same file
    table.to_csv(listing, index=False)
    line = refused(cli, "validate", comp, "--run-dir", tmp_path / "run")
    assert "train.csv lines 3 and 9: the same image 'g0_1.png' is listed twice: remove one of the rows" in line


def test_identical_images_under_two_names_stay_in_one_fold(class_folder_competition, cli, tmp_path):
    comp = class_folder_competition(per_class=12)
    train = tmp_path / "data" / "train"
    shutil.copy(train / "cat" / "cat 00.png", train / "cat" / "cat copy.png")
    shutil.copy(train / "cat" / "cat 00.png", train / "dog" / "dog copy.png")  # and mislabelled, as it happens
    shutil.copy(train / "dog" / "dog 05.png", train / "dog" / "dog 05 again.png")
    run_dir = tmp_path / "run"
    out = cli("validate", comp, "--run-dir", run_dir).output
    assert "identical images: 3 training file(s) hold the same bytes as another one" in out
    cli("search", comp, "--run-dir", run_dir, "--trials", "1")
    folds = pd.read_csv(RunPaths(run_dir).folds_csv).set_index("listed")["fold"]
    assert folds["cat/cat 00.png"] == folds["cat/cat copy.png"] == folds["dog/dog copy.png"]
    assert folds["dog/dog 05.png"] == folds["dog/dog 05 again.png"]
    # an older split that put two identical images apart is not trusted
    apart = folds.copy()
    apart["dog/dog 05 again.png"] = 1 - apart["dog/dog 05.png"]
    table = pd.read_csv(RunPaths(run_dir).folds_csv)
    table["fold"] = table["listed"].map(apart)
    table.to_csv(RunPaths(run_dir).folds_csv, index=False)
    line = refused(cli, "search", comp, "--run-dir", run_dir, "--trials", "2")
    assert "'dog/dog 05 again.png' and 'dog/dog 05.png' hold the same bytes but are in different folds" in line
    assert "use a new --run-dir" in line


def test_training_images_changed_under_a_study_need_a_new_run_dir(class_folder_competition, cli, tmp_path):
    comp = class_folder_competition()
    run_dir = tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "1")
    Image.fromarray(np.full((20, 20), 9, np.uint8)).save(tmp_path / "data" / "train" / "cat" / "cat 03.png")
    line = refused(cli, "search", comp, "--run-dir", run_dir, "--trials", "2")
    assert "the training images hold other bytes than when this study was started" in line


# ------------------------------------------------------------------ hostile and odd files


def huge_png(path: Path, side: int = 30000) -> None:
    """A tiny file whose header claims side × side pixels: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_one_line_in_validate_and_predict(class_folder_competition, cli, tmp_path):
    comp = class_folder_competition()
    run_dir = tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "1")
    cli("submit", comp, "--run-dir", run_dir)
    bomb = tmp_path / "bomb.png"
    huge_png(bomb)
    line = refused(cli, "predict", comp, "--run-dir", run_dir, bomb, "--out", tmp_path / "p.csv")
    assert line.startswith(f"Error: image {bomb}: too many pixels to decode safely (Image size (900000000 pixels)")
    assert line.endswith(": shrink it (or remove it)") and line.count(str(bomb)) == 1
    huge_png(tmp_path / "data" / "train" / "cat" / "cat 04.png")
    line = refused(cli, "validate", comp, "--run-dir", run_dir)
    assert line.startswith("Error: image ") and line.count("cat 04.png") == 1 and "too many pixels" in line


def test_files_skipped_for_their_extension_are_counted(class_folder_competition, cli, tmp_path):
    comp = class_folder_competition()
    frames = [Image.fromarray(np.full((20, 20), v, np.uint8)) for v in (0, 255)]
    frames[0].save(tmp_path / "data" / "train" / "dog" / "wag.gif", save_all=True, append_images=frames[1:])
    (tmp_path / "data" / "test" / "readme.txt").write_text("ids are file names\n")
    out = cli("validate", comp, "--run-dir", tmp_path / "run").output
    assert "skipped in train: 1 file(s) of other extensions (.gif 1): add them to train.extensions" in out
    assert "skipped in test: 1 file(s) of other extensions (.txt 1)" in out


def test_class_names_with_tex_characters_are_drawn_as_text(class_folder_competition, cli, tmp_path):
    comp = class_folder_competition(classes=["$x^2$", "a\\b_{c}"])
    run_dir = tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "1")
    cli("submit", comp, "--run-dir", run_dir)
    assert set(pd.read_csv(run_dir / "submission.csv")["animal"]) <= {"$x^2$", "a\\b_{c}"}
    assert "$x^2$" in RunPaths(run_dir).report_html.read_text()


# ------------------------------------------------------------------ writes that cannot be half-done


def test_a_full_disk_during_submit_leaves_the_previous_submission_ensemble_and_report(
        class_folder_competition, cli, tmp_path, monkeypatch):
    comp = class_folder_competition()
    run_dir = tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "2")
    cli("submit", comp, "--run-dir", run_dir)
    paths = RunPaths(run_dir)
    kept = {p: p.read_bytes() for p in (run_dir / "submission.csv", paths.ensemble_json, paths.report_html)}
    cli("search", comp, "--run-dir", run_dir, "--trials", "3")
    write = harness.files.Staged.write

    def full_at_the_report(stage, path, content, mode=None):
        if Path(path).name == paths.report_html.name:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return write(stage, path, content, mode)

    monkeypatch.setattr(harness.files.Staged, "write", full_at_the_report)
    line = refused(cli, "submit", comp, "--run-dir", run_dir)
    assert line.startswith(f"Error: {paths.report_html}: no space left on the disk")
    assert {p: p.read_bytes() for p in kept} == kept
    assert not [p for p in run_dir.rglob(".*") if harness.files.is_temporary(p)]


def test_writers_never_share_a_temporary_name(tmp_path):
    target = tmp_path / "submission.csv"
    names = {temporary_path(target) for _ in range(200)}
    assert len(names) == 200 and all(str(os.getpid()) in n.name and n.parent == tmp_path for n in names)


def test_what_a_killed_run_left_half_written_is_removed_by_the_next(class_folder_competition, cli, tmp_path):
    comp = class_folder_competition()
    run_dir = tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "1")
    host = socket.gethostname()
    dead = 4194303  # above any pid this machine hands out by default
    paths = RunPaths(run_dir)
    leftovers = [run_dir / f".submission.csv.{host}-{dead}.0badf00d.tmp",
                 paths.cache_dir / f".16x16x16x1-abc.npy.{host}-{dead}.12345678.tmp",
                 paths.fold(0, 0).root / f".model.pt.{host}-{dead}.cafe0123.tmp"]
    for path in leftovers:
        path.write_bytes(b"cut off")
    leftovers.append(paths.cache_dir / f"16x16x16x1-abc.{dead}.tmp.npy")  # as harness 0.2 named them
    live = run_dir / f".options.json.{host}-{os.getpid()}.aaaabbbb.tmp"  # a process still writing it
    users = [run_dir / "notes.tmp", run_dir / ".my.tmp"]
    for path in [live, *users]:
        path.write_text("keep")
    cli("search", comp, "--run-dir", run_dir, "--trials", "2")
    assert not any(p.exists() for p in leftovers)
    assert live.exists() and all(p.read_text() == "keep" for p in users)


def test_a_killed_preparer_leaves_nothing_behind(tmp_path, cli):
    digits = Path(__file__).resolve().parents[1] / "competitions" / "digits"
    host = socket.gethostname()
    cut = tmp_path / f".digits-data.{host}-4194303.deadbeef.tmp"
    (cut / "train" / "3").mkdir(parents=True)
    (cut / "train" / "3" / "0001.png").write_bytes(b"half")
    cli("validate", digits, "--data-root", tmp_path / "digits-data", "--run-dir", tmp_path / "run")
    assert not cut.exists() and (tmp_path / "digits-data" / "train").is_dir()
