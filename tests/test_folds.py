"""Folds are fixed for a run, stratified, and keep a group in one fold."""
import pandas as pd
import pytest

from harness import SpecError, open_run
from harness.config.paths import RunPaths
from harness.data.folds import save_folds
from harness.data import prepare_data


def test_folds_are_deterministic_and_saved(class_folder_competition, tmp_path):
    comp = class_folder_competition(per_class=10)
    first = prepare_data(open_run(comp, run_dir=str(tmp_path / "a")))
    second = prepare_data(open_run(comp, run_dir=str(tmp_path / "b")))
    assert (first.fold == second.fold).all()
    assert first.folds_hash == second.folds_hash
    folds_csv = RunPaths(tmp_path / "a").folds_csv
    assert not folds_csv.exists()  # a search saves them, once its study holds them
    save_folds(folds_csv, first.samples, first.fold)
    saved = pd.read_csv(folds_csv)
    assert saved["fold"].tolist() == first.fold.tolist()
    # stratified: each fold holds half of each class
    counts = saved.groupby(["fold", "label"]).size()
    assert set(counts) == {5}


def test_groups_never_split_across_folds(csv_competition, tmp_path):
    data = prepare_data(open_run(csv_competition(n_groups=9), run_dir=str(tmp_path / "r"), overrides=["folds=3"]))
    table = data.samples.train.assign(fold=data.fold)
    assert table.groupby("group")["fold"].nunique().max() == 1
    assert sorted(table["fold"].unique()) == [0, 1, 2]


def test_saved_folds_are_reused_and_checked(class_folder_competition, tmp_path):
    comp = class_folder_competition()
    run_dir = str(tmp_path / "r")
    folds_csv = RunPaths(tmp_path / "r").folds_csv
    data = prepare_data(open_run(comp, run_dir=run_dir))
    save_folds(folds_csv, data.samples, data.fold)
    table = pd.read_csv(folds_csv)
    table["fold"] = 1 - table["fold"]  # a user's hand-made split is kept as is
    table.to_csv(folds_csv, index=False)
    again = prepare_data(open_run(comp, run_dir=run_dir))
    assert again.fold.tolist() == table["fold"].tolist()
    with pytest.raises(SpecError, match="has 2 folds, the spec asks 3; use a new --run-dir"):
        prepare_data(open_run(comp, run_dir=run_dir, overrides=["folds=3"]))


def test_too_few_groups_for_the_folds(csv_competition, tmp_path):
    with pytest.raises(SpecError, match="5 folds need at least 5 groups, found 3"):
        prepare_data(open_run(csv_competition(n_groups=3), run_dir=str(tmp_path / "r"), overrides=["folds=5"]))


def test_a_class_rarer_than_the_folds_is_said_once_in_the_harness_words(class_folder_competition, cli, tmp_path,
                                                                       recwarn):
    comp = class_folder_competition(classes=("cat", "dog", "fox"))
    for extra in sorted((comp.parent / "data" / "train" / "fox").iterdir())[1:]:
        extra.unlink()  # one fox for two folds
    out = cli("validate", comp, "--run-dir", tmp_path / "run").output
    assert not [w for w in recwarn if "least populated class" in str(w.message)]  # scikit-learn's own words
    notes = [line for line in out.splitlines() if "'fox'" in line]
    assert notes == ["few images: class 'fox' (1 image, in 1 of the 2 folds): the other folds validate on none "
                     "of it, and its per-class scores (recall, F1) are noisy"]
    assert "'cat'" not in out and "'dog'" not in out
