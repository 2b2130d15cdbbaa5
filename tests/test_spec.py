"""A competitor's mistakes in competition.yaml or the data get one line naming what is wrong."""
import re
from pathlib import Path

import pandas as pd
import pytest

from conftest import edit_spec as edit
from harness import SpecError, load_competition, open_run
from harness.config.paths import RunPaths
from harness.config.spec import SearchSpace


def test_unknown_key_names_key_and_allowed_keys(class_folder_competition):
    comp = class_folder_competition()
    edit(comp, search__step=[3])
    with pytest.raises(SpecError, match=r"unknown key 'search.step' \(allowed: backbones, .*steps"):
        load_competition(comp)


@pytest.mark.parametrize("item, says, close", [
    ("serch.lr=[1.0e-3]", "unknown key 'serch' (allowed: name, ", "did you mean search?"),
    ("search.lrr=[1.0e-3]", "unknown key 'search.lrr' (allowed: backbones, ", "did you mean lr?"),
    ("heads.age.metrc=accuracy", "unknown key 'heads.age.metrc' (allowed: metric, ", "did you mean metric?"),
    ("folds.n=3", "'folds' is a value, not a section: write folds=VALUE", ""),
])
def test_an_unknown_key_on_the_command_line_is_blamed_on_it(class_folder_competition, item, says, close):
    with pytest.raises(SpecError) as caught:
        load_competition(class_folder_competition(), [item])
    line = str(caught.value)
    assert line.startswith(f"--set {item!r}: {says}") and line.endswith(close), line
    assert "competition.yaml" not in line  # the file holds no such key


def test_bad_value_names_allowed_values(class_folder_competition):
    comp = class_folder_competition()
    edit(comp, metric="f1")
    with pytest.raises(SpecError, match=r"'metric': unknown value 'f1' \(allowed: accuracy, log_loss, macro_f1, roc_auc\)"):
        load_competition(comp)


def test_bad_type_and_bad_list_value(class_folder_competition):
    comp = class_folder_competition()
    with pytest.raises(SpecError, match=r"'folds': expected int, got 'five'"):
        load_competition(comp, ["folds=five"])
    with pytest.raises(SpecError, match=r"'search.loss': unknown value 'hinge'"):
        load_competition(comp, ["search.loss=[ce, hinge]"])
    with pytest.raises(SpecError, match=r"'search.lr': expected float, got 'fast'"):
        load_competition(comp, ["search.lr=[fast, 1.0e-3]"])


def test_exponents_without_a_dot_are_numbers(class_folder_competition):
    # YAML 1.1 reads 3e-3 as a string; a competitor writes it that way all the time
    assert load_competition(class_folder_competition(), ["search.lr=[1e-4, 3e-3]"]).search.lr == [1e-4, 3e-3]


def test_unknown_backbone_is_refused_with_suggestions(class_folder_competition):
    comp = class_folder_competition()
    with pytest.raises(SpecError, match=r"unknown timm model 'resnet_tiny'.*did you mean"):
        load_competition(comp, ["search.backbones=[resnet_tiny]"])


@pytest.mark.parametrize("written, meant", [("resnet-18", "resnet18"), ("resnt18", "resnet18"),
                                             ("efficientnet-b0", "efficientnet_b0"), ("ResNet18", "resnet18")])
def test_a_misspelt_backbone_gets_the_timm_name_it_meant(class_folder_competition, cli, written, meant):
    result = cli("validate", class_folder_competition(), "--set", f"search.backbones=[{written}]", ok=False)
    [line] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and f"unknown timm model {written!r}" in line
    assert line.split("did you mean: ")[1].split(", ")[0] == meant  # the nearest first


def test_overrides_set_any_field_by_dotted_path(class_folder_competition):
    spec = load_competition(class_folder_competition(),
                            ["folds=3", "search.steps=2", "search.image_size=[24, 32]"])
    assert spec.folds == 3
    assert spec.search.steps == [2]
    assert spec.search.image_size == [24, 32]


def test_missing_csv_image_names_file_and_line(csv_competition, cli):
    comp = csv_competition()
    table = pd.read_csv(comp.parent / "csvdata" / "train.csv")
    table.loc[4, "file"] = "sub/missing.png"
    table.to_csv(comp.parent / "csvdata" / "train.csv", index=False)
    result = cli("validate", comp, ok=False)
    assert result.exit_code != 0
    assert "train.csv line 6: image 'sub/missing.png' not found" in result.output


def test_csv_path_escaping_the_image_folder_is_refused(csv_competition, cli):
    comp = csv_competition()
    table = pd.read_csv(comp.parent / "csvdata" / "train.csv")
    table.loc[0, "file"] = "../train.csv"
    table.to_csv(comp.parent / "csvdata" / "train.csv", index=False)
    result = cli("validate", comp, ok=False)
    assert "train.csv line 2: image '../train.csv' is outside" in result.output


def test_missing_target_column_lists_columns(csv_competition, cli):
    comp = csv_competition()
    result = cli("validate", comp, "--set", "train.target=phaze", ok=False)
    assert "train.csv: no column 'phaze' (columns: file, phase, batch, temp)" in result.output


def test_corrupt_image_is_named_before_training(class_folder_competition, cli, tmp_path):
    comp = class_folder_competition()
    bad = comp.parent / "data" / "train" / "cat" / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    result = cli("search", comp, "--run-dir", tmp_path / "run", "--trials", "1", ok=False)
    assert result.exit_code != 0
    assert "broken.png" in result.output
    assert not RunPaths(tmp_path / "run").trial_dir(0).exists()


def test_validate_prints_the_samples_summary(csv_competition, cli):
    result = cli("validate", csv_competition())
    assert "train: 32 images, 3 classes; test: 9 images" in result.output
    assert "groups: 8" in result.output
    assert "channels used: 3" in result.output


def test_data_root_precedence(class_folder_competition, tmp_path, monkeypatch):
    comp = class_folder_competition()
    monkeypatch.delenv("HARNESS_DATA", raising=False)
    assert open_run(comp).data_root == (comp.parent / "data").resolve()
    monkeypatch.setenv("HARNESS_DATA", str(tmp_path / "env"))
    assert open_run(comp).data_root == (tmp_path / "env").resolve()
    assert open_run(comp, data_root=str(tmp_path / "cli")).data_root == (tmp_path / "cli").resolve()


def test_list_reads_the_registries(cli):
    assert "soft_f1" in cli("list", "losses").output
    assert "roc_auc" in cli("list", "metrics").output
    assert "class_folders" in cli("list", "layouts").output



def test_the_readme_example_states_the_code_defaults():
    """Where the README's competition.yaml says `(default X)`, X is the SearchSpace default."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = readme.split("\nsearch:\n", 1)[1].split("```", 1)[0]
    said = dict(re.findall(r"^  (\w+): .*\(default ([-\d.e]+)", example, flags=re.M))
    assert {"evals", "patience", "prune_warmup"} <= set(said)
    for key, value in said.items():
        assert float(value) == getattr(SearchSpace(), key), f"README: search.{key} default {value}"
