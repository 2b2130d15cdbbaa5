"""What the harness refuses, and what it never touches.

Every case of the catalogue is a competitor's mistake (or a fault of the machine) run through the
CLI: it must exit with one `Error:` line that names the file or field and says what to do, before
any training, and leave everything outside the run dir exactly as it was.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import pandas as pd
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from conftest import TINY_SEARCH, draw, edit_spec, load_study, tree, write_spec
from harness.cli import main
from harness.config.paths import RunPaths
from harness.files import write_file

DIGITS = Path(__file__).resolve().parents[1] / "competitions" / "digits"


@dataclass
class Kit:
    """What a case builds its competition from."""

    tmp: Path
    folders: Callable  # the class_folder_competition builder
    csv: Callable  # the csv_competition builder

    @property
    def data(self) -> Path:  # the class-folder competition's data root
        return self.tmp / "data"

    @property
    def csv_data(self) -> Path:
        return self.tmp / "csvdata"


@dataclass
class Case:
    name: str
    make: Callable[[Kit], Sequence[str]]  # builds the competition; returns the CLI arguments after the command
    expect: Sequence[str]  # in the error line: the file or field, and the remedy
    command: str = "validate"
    code: int = 1
    after: Optional[Callable[[Path], None]] = None  # more checks, given the run dir


def foreign_data_root(k: Kit) -> List[str]:
    mine = k.tmp / "my-notes"
    (mine / "training").mkdir(parents=True)
    (mine / "notes.txt").write_text("three weeks of labelling\n")
    return [str(DIGITS), "--data-root", str(mine)]


def empty_class_folder(k: Kit) -> List[str]:
    comp = k.folders()
    (k.data / "train" / "fox").mkdir()
    return [str(comp)]


def link_outside(k: Kit) -> List[str]:
    comp = k.folders()
    draw(0, np.random.default_rng(0)).save(k.tmp / "elsewhere.png")
    (k.data / "train" / "cat" / "linked.png").symlink_to(k.tmp / "elsewhere.png")
    return [str(comp)]


def broken_image(content: Callable[[bytes], bytes]) -> Callable[[Kit], List[str]]:
    def make(k: Kit) -> List[str]:
        comp = k.folders()
        path = k.data / "train" / "dog" / "dog 03.png"
        path.write_bytes(content(path.read_bytes()))
        return [str(comp)]
    return make


def no_cache_leftovers(run_dir: Path) -> None:
    assert not list(run_dir.rglob("*.tmp*")), "a failed decode left a temporary file"


def csv_rows(change: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Kit], List[str]]:
    def make(k: Kit) -> List[str]:
        comp = k.csv()
        table = pd.read_csv(k.csv_data / "train.csv", dtype=str, keep_default_na=False)
        change(table).to_csv(k.csv_data / "train.csv", index=False)
        return [str(comp)]
    return make


def set_cell(row: int, column: str, value: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(table: pd.DataFrame) -> pd.DataFrame:
        table.loc[row, column] = value
        return table
    return change


def sample(change: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Kit], List[str]]:
    def make(k: Kit) -> List[str]:
        comp = k.csv()
        path = k.csv_data / "sample_submission.csv"
        change(pd.read_csv(path, dtype=str)).to_csv(path, index=False)
        return [str(comp)]
    return make


def with_set(*items: str, builder: str = "folders") -> Callable[[Kit], List[str]]:
    def make(k: Kit) -> List[str]:
        comp = getattr(k, builder)()
        return [str(comp)] + [a for item in items for a in ("--set", item)]
    return make


def broken_yaml(k: Kit) -> List[str]:
    comp = k.folders()
    text = (comp / "competition.yaml").read_text().splitlines()
    text[2] = "task: [binary"
    (comp / "competition.yaml").write_text("\n".join(text) + "\n")
    return [str(comp)]


def three_classes_binary(k: Kit) -> List[str]:
    return [str(k.folders(classes=["cat", "dog", "fox"], extra={"task": "binary"}))]


def pairs_competition(tmp: Path, mask_size: int = 32) -> Path:
    data = tmp / "pairs"
    for folder in ("images", "masks", "test"):
        (data / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(data / "images" / f"c{i}.png")
        mask = np.zeros((mask_size, mask_size), np.uint8)
        mask[4:12, 4:12] = 255
        Image.fromarray(mask).save(data / "masks" / f"c{i}.png")
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(data / "test" / f"t{i}.png")
    spec = {"name": "tiny-pairs", "task": "segmentation", "data_root": "../pairs",
            "train": {"layout": "image_mask_pairs", "images": "images", "masks": "masks"},
            "test": {"layout": "folder", "images": "test"}, "metric": "dice", "folds": 2,
            "submission": {"file": "masks", "format": "png_folder", "id_from": "stem"},
            "search": {**TINY_SEARCH, "loss": ["bce"], "image_size": [32]}}
    return write_spec(tmp / "pairs-comp", spec)


def odd_label_page(k: Kit) -> List[str]:
    data = k.tmp / "em"
    data.mkdir()
    tifffile.imwrite(data / "volume.tif", np.zeros((4, 32, 32), np.uint8), photometric="minisblack")
    with tifffile.TiffWriter(data / "labels.tif") as tif:
        for i in range(4):
            tif.write(np.zeros((24, 24) if i == 2 else (32, 32), np.uint8), photometric="minisblack")
    spec = {"name": "tiny-em", "task": "segmentation", "data_root": "../em",
            "train": {"layout": "tiff_volume", "volume": "volume.tif", "labels": "labels.tif"},
            "test": {"layout": "tiff_volume", "volume": "volume.tif"}, "metric": "dice", "folds": 2,
            "fold_by": "blocks", "submission": {"file": "out.tif", "format": "tiff"},
            "search": {**TINY_SEARCH, "loss": ["bce"], "image_size": [32]}}
    return [str(write_spec(k.tmp / "em-comp", spec))]


def aux_masks(size: int = 20, value: int = 255) -> Callable[[Kit], List[str]]:
    def make(k: Kit) -> List[str]:
        comp = k.folders(search={"aux_weight": [0.5]}, extra={})
        masks = k.data / "masks"
        masks.mkdir()
        for i in range(3):
            mask = np.zeros((20, 20), np.uint8)
            mask[:10, 10:] = 255 if i else value
            Image.fromarray(mask).resize((size, size)).save(masks / f"dog {i:02d}.png")
        return [str(edit_spec(comp, train__masks="masks"))]
    return make


def under_a_file(k: Kit) -> List[str]:
    (k.tmp / "a-file").write_text("not a folder\n")
    return [str(k.folders()), "--run-dir", str(k.tmp / "a-file" / "run")]


def users_folder_as_run_dir(k: Kit) -> List[str]:
    mine = k.tmp / "thesis"
    mine.mkdir()
    (mine / "submission.csv").write_text("id,label\nmy,answer\n")
    return [str(k.folders()), "--run-dir", str(mine)]


def storage(url: str) -> Callable[[Kit], List[str]]:
    def make(k: Kit) -> List[str]:
        return [str(k.folders()), "--storage", url]
    return make


def no_cache(run_dir: Path) -> None:
    assert not list(RunPaths(run_dir).cache_dir.glob("*.npy")), "images were decoded before the storage was checked"


def no_url_remembered(run_dir: Path) -> None:
    assert not RunPaths(run_dir).study_url_file.exists(), "a URL that did not connect was remembered"


CATALOGUE = [
    Case("preparer-refuses-a-foreign-folder", foreign_data_root,
         ["my-notes", "has files but no train/", "empty folder"]),
    Case("data-root-missing", lambda k: [str(k.folders()), "--data-root", str(k.tmp / "nowhere")],
         ["nowhere", "does not exist", "--data-root"]),
    Case("empty-class-folder", empty_class_folder, ["fox", "has no images", "train.classes"]),
    Case("class-folder-link-outside", link_outside, ["linked.png", "outside", "copy the file"]),
    Case("corrupt-image", broken_image(lambda b: b"\x89PNG garbage" * 10),
         ["dog 03.png", "cannot be decoded", "re-save it"], command="search", after=no_cache_leftovers),
    Case("zero-byte-image", broken_image(lambda b: b""), ["dog 03.png", "re-save it"], command="search",
         after=no_cache_leftovers),
    Case("truncated-image", broken_image(lambda b: b[:len(b) // 2]), ["dog 03.png", "re-save it"],
         command="search", after=no_cache_leftovers),
    Case("csv-image-missing", csv_rows(set_cell(2, "file", "sub/gone.png")),
         ["train.csv line 4", "sub/gone.png", "fix the path or remove the row"]),
    Case("csv-image-outside", csv_rows(set_cell(0, "file", "../../../etc/hosts")),
         ["train.csv line 2", "is outside", "inside it"]),
    Case("csv-empty-target", csv_rows(set_cell(5, "phase", " ")),
         ["train.csv line 7", "empty target 'phase'", "give the row its label"]),
    Case("csv-target-column-missing", with_set("train.target=phase_name", builder="csv"),
         ["train.csv", "no column 'phase_name'", "name one of these"]),
    Case("csv-file-missing", with_set("train.csv=nope.csv", builder="csv"),
         ["train.csv", "nope.csv does not exist", "fix the path"]),
    Case("sample-ids-differ", sample(lambda s: s.replace({"t3.png": "t33.png"})),
         ["sample_submission.csv", "ids differ", "['t33.png']", "['t3.png']", "submission.id_from"]),
    Case("sample-columns-differ", sample(lambda s: s.rename(columns={"phase": "label"})),
         ["sample_submission.csv", "columns ['file', 'label']", "submission.id_column / target_column"]),
    Case("unknown-metric", with_set("metric=f1"), ["'metric': unknown value 'f1'", "allowed: accuracy"]),
    Case("unknown-backbone", with_set("search.backbones=[resnet_tiny]"),
         ["'search.backbones'", "resnet_tiny", "did you mean"]),
    Case("unknown-key", with_set("search.epoch=[3]"), ["unknown key 'search.epoch'", "allowed:"]),
    Case("set-unknown-section", with_set("serch.lr=[1.0e-3]"),
         ["Error: --set 'serch.lr=[1.0e-3]': unknown key 'serch'", "did you mean search?"]),
    Case("set-value-not-yaml", with_set("search.steps=["), ["search.steps=[", "close its brackets"]),
    Case("spec-yaml-syntax", broken_yaml, ["competition.yaml line 4", "fix that line"]),
    Case("patience-not-a-share", with_set("search.patience=4"), ["'search.patience'", "(0, 1]", "e.g. 0.3"]),
    Case("mask-score-without-masks", with_set("search.families=[mask_score]"),
         ["'search.families'", "mask_score trains on the defect masks", "train.masks"]),
    Case("mask-score-multiclass", with_set("search.families=[mask_score]", builder="csv"),
         ["'search.families'", "task multiclass offers classifier", "not mask_score"]),
    Case("recipe-family-not-searched", with_set("search.recipes=[mask_unet_scratch]"),
         ["'search.recipes'", "mask_unet_scratch trains the mask_score family", "search.families"]),
    Case("epochs-retired", with_set("search.epochs=[30]"), ["'search.epochs' is no longer a key", "search.steps"]),
    Case("binary-with-three-classes", three_classes_binary, ["task binary needs 2 classes", "use task multiclass"]),
    Case("weights-file-missing", with_set("search.pretrained=nowhere.pth"),
         ["'search.pretrained'", "nowhere.pth", "give an existing file"]),
    Case("more-folds-than-groups", with_set("folds=9", builder="csv"), ["folds", "found 8", "lower folds"]),
    Case("segmentation-mask-size", lambda k: [str(pairs_competition(k.tmp, mask_size=40))],
         ["c0.png", "40x40", "32x32", "save each mask at its image's size"]),
    Case("label-tiff-odd-page", odd_label_page, ["labels.tif page 2 is 24x24", "one size"]),
    Case("aux-mask-size", aux_masks(size=30), ["dog 00.png", "30x30", "its image's size"]),
    Case("aux-mask-values", aux_masks(value=128), ["dog 00.png", "[0, 128]", "two-valued PNG"]),
    Case("run-dir-not-a-folder", under_a_file, ["a-file", "another --run-dir"], command="search"),
    Case("run-dir-holds-a-users-files", users_folder_as_run_dir,
         ["run dir", "thesis", "holds files the harness did not write (submission.csv)", "new or empty --run-dir"],
         command="search"),
    Case("storage-unreachable", storage("sqlite:////nonexistent-harness-dir/sub/study.db"),
         ["--storage sqlite:////nonexistent-harness-dir", "cannot connect"], command="search",
         after=no_url_remembered),
    Case("storage-not-a-url", storage("sqlit:///study.db"), ["--storage sqlit:///", "not a database URL"],
         command="search", after=no_url_remembered),
    Case("storage-driver-missing", storage("mysql://user:secret@127.0.0.1:9/db"),
         ["--storage mysql://user:***@127.0.0.1:9/db"], command="search", after=no_url_remembered),
    Case("storage-checked-before-decoding", storage("mysql://user:secret@127.0.0.1:9/db"),
         ["--storage mysql://user:***@127.0.0.1:9/db"], command="search",
         after=lambda run_dir: (no_url_remembered(run_dir), no_cache(run_dir))),
    Case("trials-below-one", lambda k: [str(k.folders()), "--trials", "0"], ["--trials"], command="search",
         code=2),
]


@pytest.mark.parametrize("case", CATALOGUE, ids=lambda c: c.name)
def test_refused_in_one_line_and_nothing_touched(case, tmp_path, class_folder_competition, csv_competition):
    args = list(case.make(Kit(tmp_path, class_folder_competition, csv_competition)))
    run_dir = tmp_path / "run"
    if "--run-dir" not in args:
        args += ["--run-dir", str(run_dir)]
    before = tree(tmp_path, skip=run_dir)
    result = CliRunner().invoke(main, [case.command, *args])
    lines = result.output.strip().splitlines()
    assert result.exit_code == case.code, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert [line for line in lines if "Error" in line] == lines[-1:] and lines[-1].startswith("Error: "), lines
    for text in case.expect:
        assert text in lines[-1]
    assert tree(tmp_path, skip=run_dir) == before
    if case.after is not None:
        case.after(run_dir)


def test_a_changed_fold_split_needs_a_new_run_dir(csv_competition, cli, tmp_path):
    comp, run_dir = csv_competition(), tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "1", "--set", "search.steps=[2]")
    result = cli("search", comp, "--run-dir", run_dir, "--trials", "1", "--set", "train.groups=[batch]", ok=False)
    assert "train.groups is ['batch'] but this study was started with ['batch', 'temp']" in result.output
    assert "train.groups" not in RunPaths(run_dir).options_json.read_text()  # a refused change is not remembered


def test_optional_lists_may_be_written_empty(csv_competition, cli, tmp_path):
    assert "ok" in cli("validate", csv_competition(), "--run-dir", tmp_path / "run", "--set", "train.groups=[]").output


def test_catalogue_is_broad():
    assert len(CATALOGUE) >= 25


# ------------------------------------------------------------------ what is accepted, and kept

def test_preparer_fills_an_empty_folder(tmp_path, cli):
    empty = tmp_path / "digits-here"
    empty.mkdir()
    assert "ok" in cli("validate", DIGITS, "--data-root", empty, "--run-dir", tmp_path / "run").output
    assert (empty / "train").is_dir() and (empty / "test_answers.csv").is_file()
    assert not list(tmp_path.glob("*.tmp"))  # the preparer's own folder, renamed into place


def test_a_class_folder_left_out_by_the_classes_map_is_ignored(class_folder_competition, cli, tmp_path):
    comp = class_folder_competition(extra={"train": {"layout": "class_folders", "images": "train",
                                                     "classes": {"cat": "cat", "dog": "dog"}}})
    (tmp_path / "data" / "train" / "empty").mkdir()
    assert "ok" in cli("validate", comp, "--run-dir", tmp_path / "run").output


@pytest.mark.parametrize("labels", [["NA", "None"], ["null", "NaN"]])
def test_labels_spelled_like_missing_values_survive_resume_and_submit(labels, class_folder_competition, cli,
                                                                      tmp_path):
    comp = class_folder_competition(classes=labels)
    run_dir = tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "1")
    cli("search", comp, "--run-dir", run_dir, "--trials", "2")  # reads folds.csv back
    cli("submit", comp, "--run-dir", run_dir)
    submission = pd.read_csv(run_dir / "submission.csv", dtype=str, keep_default_na=False)
    assert set(submission["animal"]) <= set(labels) and len(submission) == 10
    assert pd.read_csv(RunPaths(run_dir).folds_csv, dtype=str, keep_default_na=False)["label"].isin(labels).all()


def test_a_model_that_diverges_fails_its_trial(class_folder_competition, cli, tmp_path):
    comp = class_folder_competition()
    run_dir = tmp_path / "run"
    result = cli("search", comp, "--run-dir", run_dir, "--trials", "1", "--set", "search.lr=[1e30, 1e30]",
                 "--set", "search.weight_decay=[1e-30]", "--set", "search.steps=[1]", ok=False)
    assert result.exit_code == 1 and "3 trials failed in a row" in result.output
    status = cli("status", comp, "--run-dir", run_dir).output
    assert status.count(" fail ") == 3 and status.count("validation predictions at step 1 are not finite") == 3
    assert "lower search.lr" in status
    assert "no complete trial" in cli("submit", comp, "--run-dir", run_dir, ok=False).output


@pytest.mark.parametrize("metric", ["accuracy", "roc_auc"])  # roc_auc pools percentiles: NaN must not hide
def test_trials_finished_with_nan_before_the_check_are_left_out_of_the_ensemble(class_folder_competition, cli,
                                                                                tmp_path, metric):
    comp = class_folder_competition()
    run_dir = tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "2", "--set", f"metric={metric}")
    fold = RunPaths(run_dir).fold(1, 0)  # as an older harness would have kept it:
    np.save(fold.oof, np.full_like(np.load(fold.oof), np.nan))
    done = fold.done  # which recorded no digest of its files
    done.write_text(json.dumps({k: v for k, v in json.loads(done.read_text()).items() if k != "files"}))
    out = cli("submit", comp, "--run-dir", run_dir).output
    assert "trial 1 left out: its predictions are not finite" in out
    assert "ensemble of 1 trial(s) (#0×1.00)" in out


def test_storage_is_remembered_only_once_connected_and_absolute(class_folder_competition, cli, tmp_path,
                                                                monkeypatch):
    comp = class_folder_competition()
    run_dir = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    cli("search", comp, "--run-dir", run_dir, "--trials", "1", "--storage", "sqlite:///elsewhere.db")
    assert RunPaths(run_dir).study_url_file.read_text().strip() == f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.chdir(run_dir)  # another working directory finds the same study
    assert " complete " in cli("status", comp, "--run-dir", run_dir).output
    cli("status", comp, "--run-dir", run_dir, "--storage", "sqlit:///x.db", ok=False)
    assert RunPaths(run_dir).study_url_file.read_text().strip() == f"sqlite:///{tmp_path / 'elsewhere.db'}"


def test_a_full_disk_mid_trial_stops_in_one_line_and_the_trial_resumes(class_folder_competition, cli, tmp_path,
                                                                       disk_full_on_fold_1):
    comp = class_folder_competition()
    run_dir = tmp_path / "run"
    disk_full_on_fold_1(True)
    result = cli("search", comp, "--run-dir", run_dir, "--trials", "1", ok=False)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert lines[-1] == (f"Error: {RunPaths(run_dir).fold(0, 1).model}: no space left on the disk: free "
                         "some space and run the same command again (finished trials and folds are kept)")
    assert not any("failed" in line for line in lines)
    disk_full_on_fold_1(False)
    out = cli("search", comp, "--run-dir", run_dir, "--trials", "1").output
    assert "trial 0 was interrupted" in out
    assert "(reused from disk)" in out.split("trial 1 fold 1/2")[1].splitlines()[0]  # only fold 2 is trained
    study = load_study(run_dir)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE"]


def test_atomic_writes_leave_no_temporary_file(tmp_path):
    target = tmp_path / "error.txt"
    target.mkdir()  # replacing a folder fails as a full disk would: after the temporary file exists
    (target / "keep").write_text("x")
    with pytest.raises(OSError):
        write_file(target, "traceback")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["error.txt"]


# ---------------------------------------------------------------- a real full disk and a read-only one

@pytest.fixture
def small_mount(tmp_path):
    """Mount a tmpfs (root only; skipped elsewhere): `mount(size_kb, read_only)` returns its folder."""
    mounted: List[Path] = []

    def mount(size_kb: int, read_only: bool = False) -> Path:
        where = tmp_path / f"mnt{len(mounted)}"
        where.mkdir()
        options = f"size={size_kb}k" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(where)
        return where

    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a small disk needs root")
    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_real_full_disk_is_one_line(small_mount, class_folder_competition, cli, tmp_path):
    comp = class_folder_competition()
    disk = small_mount(1024)  # the study and cache fit; a resnet10t checkpoint (~10 MB) does not
    result = cli("search", comp, "--run-dir", disk / "run", "--trials", "1", ok=False)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert lines[-1].startswith("Error: ") and "run the same command again" in lines[-1], lines
    assert not list((disk / "run").rglob("*.tmp")) and not list((disk / "run").rglob("*.tmp.npy"))


def test_a_read_only_run_dir_is_one_line(small_mount, class_folder_competition, cli):
    comp = class_folder_competition()
    disk = small_mount(64, read_only=True)
    result = cli("search", comp, "--run-dir", disk / "run", "--trials", "1", ok=False)
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1].startswith(
        f"Error: run dir {disk / 'run'}: cannot be written (Read-only file system): choose another --run-dir")
