"""Several heads on one backbone, person-grouped folds, one submission column per head."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import TINY_SEARCH, load_study, write_spec
from harness import SpecError, open_run
from harness.config.paths import RunPaths
from harness.data import prepare_data

COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30)}


def face(colour: str, corner: str, rng) -> Image.Image:
    """Colour decides one head, the bright block's position the other."""
    img = np.zeros((16, 16, 3), np.uint8) + np.array(COLOURS[colour], np.uint8) // 3
    img += rng.integers(0, 30, img.shape, dtype=np.uint8)
    rows = slice(0, 8) if corner == "top" else slice(8, 16)
    img[rows, 4:12] = np.array(COLOURS[colour], np.uint8)
    return Image.fromarray(img)


@pytest.fixture
def faces(tmp_path):
    rng = np.random.default_rng(7)
    data = tmp_path / "faces"
    (data / "images").mkdir(parents=True)
    rows = []
    for person in range(8):
        for i in range(8):
            colour, corner = ["red", "green"][i % 2], ["top", "bottom"][(i // 2 + person) % 2]
            name = f"p{person}_{i}.png"
            face(colour, corner, rng).save(data / "images" / name)
            rows.append({"path": name, "person": f"p{person}", "colour": colour, "corner": corner})
    pd.DataFrame(rows).to_csv(data / "train.csv", index=False)
    (data / "test").mkdir()
    test = [(f"t{i}.png", ["red", "green"][i % 2], ["top", "bottom"][i // 2 % 2]) for i in range(8)]
    for name, colour, corner in test:
        face(colour, corner, rng).save(data / "test" / name)
    pd.DataFrame({"path": [t[0] for t in test]}).to_csv(data / "test.csv", index=False)
    spec = {
        "name": "tiny-faces", "task": "multihead", "data_root": "../faces",
        "train": {"layout": "csv", "csv": "train.csv", "images": "images", "image_column": "path",
                  "targets": ["corner", "colour"], "groups": ["person"]},
        "test": {"layout": "csv", "csv": "test.csv", "images": "test", "image_column": "path"},
        "metric": "macro_f1", "heads": {"colour": {"loss_weight": 0.5}}, "folds": 2, "seed": 0,
        "orientation": "fixed",
        "submission": {"file": "submission.csv", "id_column": "path", "columns": ["Corner", "Colour"],
                       "combined_column": "class"},
        "search": {**TINY_SEARCH, "augment": ["none"], "loss": ["ce", "focal"], "steps": [32],
                   "evals": 8, "lr": [3e-3, 3e-3]},
    }
    return write_spec(tmp_path / "faces-comp", spec), {t[0]: (t[2], t[1]) for t in test}


def test_grouped_folds_never_split_a_person(faces, tmp_path):
    comp, _ = faces
    data = prepare_data(open_run(comp, run_dir=str(tmp_path / "r")))
    table = data.samples.train.assign(fold=data.fold)
    assert table.groupby("group")["fold"].nunique().max() == 1
    assert list(data.samples.heads) == ["corner", "colour"]
    assert data.samples.y.shape == (64, 2)


def test_each_head_learns_its_own_signal_and_is_submitted(faces, cli, tmp_path):
    comp, truth = faces
    run_dir = tmp_path / "run"
    assert "corner: bottom 32, top 32" in cli("validate", comp, "--run-dir", run_dir).output
    cli("search", comp, "--run-dir", run_dir, "--trials", "1")
    study = load_study(run_dir)
    trial = study.trials[0]
    assert {"loss_corner", "loss_colour"} <= set(trial.params)
    heads = trial.user_attrs["head_scores"]
    # a head wired to the other's outputs would sit near 0.5 here
    assert heads["colour"] > 0.8 and heads["corner"] > 0.8, heads
    assert trial.value == pytest.approx((heads["colour"] + heads["corner"]) / 2)
    board = cli("status", comp, "--run-dir", run_dir).output
    assert "cv.corner" in board and "cv.colour" in board

    out = cli("submit", comp, "--run-dir", run_dir).output
    assert "ensemble per head: corner" in out
    sub = pd.read_csv(run_dir / "submission.csv")
    assert list(sub.columns) == ["path", "Corner", "Colour", "class"]
    assert sorted(sub["path"]) == sorted(truth)
    corner_idx = sub["Corner"].map({"bottom": 0, "top": 1})
    colour_idx = sub["Colour"].map({"green": 0, "red": 1})
    assert (sub["class"] == corner_idx * 2 + colour_idx).all()
    right = [(r.Corner, r.Colour) == truth[r.path] for r in sub.itertuples()]
    assert np.mean(right) >= 0.75
    assert RunPaths(run_dir).confusion_csv("colour").is_file()
    page = RunPaths(run_dir).report_html.read_text()  # a section per head, with its own confusion and mistakes
    assert "<h2>corner</h2>" in page and "<h2>colour</h2>" in page and page.count('alt="confusion matrix"') == 2
    assert page.count('class="dataframe per-class"') == page.count('class="dataframe row-normalised"') == 2


def test_multihead_spec_errors(faces):
    comp, _ = faces
    with pytest.raises(SpecError, match=r"'heads.mood': not one of train.targets \(corner, colour\)"):
        open_run(comp, overrides=["heads.mood.loss_weight=2"])
    with pytest.raises(SpecError, match="task multihead needs train.layout csv with 'train.targets'"):
        open_run(comp, overrides=["train.targets=[corner]"])
    with pytest.raises(SpecError, match=r"'submission.columns': 1 names for 2 heads"):
        open_run(comp, overrides=["submission.columns=[x]"])
    with pytest.raises(SpecError, match="need task multihead"):
        open_run(comp, overrides=["task=multiclass"])
    # every head minimised while the study maximises `metric`: the best trial would be the worst
    heads = [f"heads.{h}.metric=log_loss" for h in ("corner", "colour")]
    with pytest.raises(SpecError, match="the heads' metrics and 'metric' must all be maximised or all minimised"):
        open_run(comp, overrides=heads)
    assert open_run(comp, overrides=heads + ["metric=log_loss"]).spec.metric == "log_loss"
