"""Where pretrained weights come from: `auto` (cached, else from scratch; never the network), a
mapping of one file per backbone, and `true` refused in seconds when neither cache nor hub has them."""
from __future__ import annotations

import json

import huggingface_hub.constants
import pytest
import timm
import torch
from safetensors.torch import save_file

from harness.config.paths import RunPaths
from harness.training import weights


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache; `cache(name)` puts a timm backbone's weights in it, as a download would."""
    root = tmp_path / "hf-cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
    monkeypatch.setattr(weights, "hub_reachable", lambda: False)  # this machine is offline

    def cache(name: str):
        repo = timm.models.get_pretrained_cfg(name).hf_hub_id
        snapshot = root / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc123"
        snapshot.mkdir(parents=True)
        (snapshot.parents[1] / "refs").mkdir()
        (snapshot.parents[1] / "refs" / "main").write_text("abc123")
        save_file(timm.create_model(name, pretrained=False).state_dict(), str(snapshot / "model.safetensors"))
        return str(snapshot / "model.safetensors")
    return cache


def trial_config(run_dir):
    return json.loads(RunPaths(run_dir).trial_config(0).read_text())


def test_auto_trains_from_scratch_offline_and_says_so_once(class_folder_competition, cli, hub_cache, tmp_path):
    comp = class_folder_competition(search={"pretrained": "auto"})
    out = cli("search", comp, "--run-dir", tmp_path / "run", "--trials", "1").output
    assert out.count("weights of resnet10t: from scratch (none on this machine)") == 1
    assert trial_config(tmp_path / "run")["pretrained"] is False


def test_auto_uses_weights_a_download_left_in_the_cache(class_folder_competition, cli, hub_cache, tmp_path):
    cached = hub_cache("resnet10t")
    comp = class_folder_competition(search={"pretrained": "auto"})
    assert f"weights of resnet10t: {cached}" in cli("validate", comp).output
    cli("search", comp, "--run-dir", tmp_path / "run", "--trials", "1")
    assert trial_config(tmp_path / "run")["pretrained"] == cached
    # the recipe for weights is the first trial: fine-tuning, not the from-scratch one
    assert "recipe finetune" in cli("status", comp, "--run-dir", tmp_path / "run").output


def test_a_weights_file_per_backbone(class_folder_competition, cli, hub_cache, tmp_path):
    file = tmp_path / "r10.safetensors"
    save_file(timm.create_model("mobilenetv3_small_050", pretrained=False).state_dict(), str(file))
    comp = class_folder_competition(search={"backbones": ["mobilenetv3_small_050", "resnet10t"],
                                            "pretrained": {"mobilenetv3_small_050": str(file)}})
    out = cli("validate", comp).output
    assert f"weights of mobilenetv3_small_050: {file}" in out
    assert "weights of resnet10t: from scratch" in out  # left out of the mapping: auto
    missing = class_folder_competition(search={"pretrained": {"resnet10t": str(tmp_path / "nowhere.pth")}})
    result = cli("validate", missing, ok=False)
    assert "'search.pretrained': weights file" in result.output and "nowhere.pth does not exist" in result.output


def test_true_without_cache_or_hub_is_refused_by_validate_in_seconds(class_folder_competition, cli, hub_cache):
    comp = class_folder_competition(search={"pretrained": True})
    result = cli("validate", comp, ok=False)
    assert result.exit_code == 1
    assert ("'search.pretrained': true, but the weights of resnet10t are not in this machine's cache and "
            "huggingface.co cannot be reached") in result.output
    hub_cache("resnet10t")  # once downloaded, true works offline
    assert "ok" in cli("validate", comp).output


def test_a_weights_file_that_does_not_fit_is_refused_before_training(class_folder_competition, cli, tmp_path):
    file = tmp_path / "r10.pth"
    torch.save(timm.create_model("resnet10t", pretrained=False).state_dict(), file)
    several = class_folder_competition(search={"backbones": ["resnet10t", "mobilenetv3_small_050"],
                                               "pretrained": str(file)})
    assert "one weights file (" in cli("validate", several, ok=False).output
    wrong = class_folder_competition(search={"backbones": ["mobilenetv3_small_050"], "pretrained": str(file)})
    result = cli("validate", wrong, ok=False)
    assert result.exit_code == 1 and f"weights file {file} does not load into mobilenetv3_small_050" in result.output
    assert "size mismatch for" in result.output  # what does not fit, in the same line
    fits = class_folder_competition(search={"backbones": ["resnet10t"], "pretrained": str(file)})
    assert "ok" in cli("validate", fits).output
    encoder = tmp_path / "r10-encoder.pth"  # no classifier: what a segmentation encoder leaves
    torch.save({k: v for k, v in torch.load(file).items() if not k.startswith("fc.")}, encoder)
    assert "ok" in cli("validate", class_folder_competition(search={"pretrained": str(encoder)})).output
