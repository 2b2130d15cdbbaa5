"""Recipes: every new study starts from a configuration known to work, within its own search space."""
import optuna
import pytest

from conftest import load_study
from harness import SpecError, open_run
from harness.training.recipes import RECIPES, projected


def trials(run_dir, name="tiny-folders"):
    return load_study(run_dir, name).trials


def test_a_new_study_starts_from_the_recipe_within_its_space(class_folder_competition, cli, tmp_path):
    comp = class_folder_competition(search={"augment": ["none", "medium"], "loss": ["ce", "label_smoothing"],
                                            "weight_decay": [1e-5, 1e-3], "steps": [2, 4]})
    out = cli("search", comp, "--run-dir", tmp_path / "run", "--trials", "2").output
    assert "recipe scratch_small: the first trial" in out
    first, second = trials(tmp_path / "run")
    # scratch_small as this space allows it: medium, label smoothing, lr 2e-3; weight decay 0.05
    # clipped to the space's 1e-3, 3000 steps to the nearest offered (4), resnet18 to the only backbone
    assert first.params == {"backbone": "resnet10t", "image_size": 16, "augment": "medium",
                            "loss": "label_smoothing", "imbalance": "none", "lr": 2e-3, "weight_decay": 1e-3,
                            "batch_size": 8, "steps": 4}
    assert first.user_attrs["recipe"] == "scratch_small" and "recipe" not in second.user_attrs
    assert "recipe scratch_small" in cli("status", comp, "--run-dir", tmp_path / "run").output
    cli("search", comp, "--run-dir", tmp_path / "run", "--trials", "3")  # a resume enqueues nothing again
    assert [t.user_attrs.get("recipe") for t in trials(tmp_path / "run")] == ["scratch_small", None, None]


def test_recipes_can_be_named_or_turned_off(class_folder_competition, cli, tmp_path):
    comp = class_folder_competition()
    out = cli("search", comp, "--run-dir", tmp_path / "off", "--trials", "1", "--set", "search.recipes=[]").output
    assert "the first trial" not in out and "recipe" not in trials(tmp_path / "off")[0].user_attrs
    cli("search", comp, "--run-dir", tmp_path / "two", "--trials", "2",
        "--set", "search.recipes=[auto, finetune]")
    assert [t.user_attrs.get("recipe") for t in trials(tmp_path / "two")] == ["scratch_small", "finetune"]
    with pytest.raises(SpecError, match=r"'search.recipes': unknown value 'fast' \(allowed: finetune, "):
        open_run(comp, overrides=["search.recipes=[fast]"])


def test_projection_keeps_the_space():
    space = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-3, log=True),
             "image_size": optuna.distributions.CategoricalDistribution([64, 128]),
             "loss_pose": optuna.distributions.CategoricalDistribution(["ce", "label_smoothing"]),
             "aux_weight": optuna.distributions.CategoricalDistribution([0.0, 0.5])}
    assert projected(RECIPES.get("scratch_small")(None), space) == {
        "lr": 1e-3, "image_size": 128, "loss_pose": "label_smoothing", "aux_weight": 0.0}
