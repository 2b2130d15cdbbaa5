"""Every bundled competition folder validates against the real data in ../shared/data, where it is."""
from pathlib import Path

import pytest

from harness import load_competition

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
FOLDERS = sorted(p.parent for p in (REPO / "competitions").glob("*/competition.yaml"))


def test_every_bundled_competition_is_tested():
    assert {f.name for f in FOLDERS} >= {"digits", "uhcs-phase", "surface-defect", "neg-pos", "isbi2012-em",
                                         "faces-multihead"}


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda f: f.name)
def test_bundled_competition_validates(folder, cli, tmp_path, monkeypatch):
    monkeypatch.delenv("HARNESS_DATA", raising=False)
    spec = load_competition(folder)
    if spec.prepare is None and not SHARED.is_dir():
        pytest.skip(f"{SHARED} is not here: the bundled data sets live beside the repository")
    result = cli("validate", folder, "--run-dir", tmp_path / "run")
    assert result.output.strip().splitlines()[-1] == "ok"
