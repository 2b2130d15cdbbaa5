"""Tiny synthetic competitions, built in a temp dir, in each layout the harness reads."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from harness.cli import main
from harness.config.paths import RunPaths
from harness.registry import Registry

ROOT = Path(__file__).resolve().parents[1]


def load_study(run_dir: Path, name: Optional[str] = None) -> optuna.Study:
    """The study in a run dir's own SQLite storage (`RunPaths.study_db`), to read what a search
    recorded; `name` defaults to the one study it holds."""
    db = RunPaths(Path(run_dir)).study_db
    assert db.is_file(), f"{db}: no study database"  # else SQLAlchemy would create an empty one
    url = f"sqlite:///{db}"
    if name is None:
        (name,) = optuna.get_all_study_names(url)
    return optuna.load_study(study_name=name, storage=url)


def _registries() -> List[Registry]:
    """Every registry of the harness modules imported so far."""
    found: Dict[int, Registry] = {}
    for name, module in list(sys.modules.items()):
        if name == "harness" or name.startswith("harness."):
            found.update((id(v), v) for v in list(vars(module).values()) if isinstance(v, Registry))
    return list(found.values())


@pytest.fixture(autouse=True)
def registries_unchanged():
    """Every registry holds the same names after each test as before it: a test's own choice is
    registered with `Registry.temporarily`, never left behind for the tests that follow."""
    registries = _registries()
    before = [(registry.kind, registry.names()) for registry in registries]
    yield
    after = [(registry.kind, registry.names()) for registry in registries]
    assert after == before, "a test left its registrations behind"


@pytest.fixture
def benchmark():
    """Run `benchmarks/SCRIPT ARGS` as a user does; returns the JSON it prints."""

    def run(script: str, *args) -> dict:
        out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *map(str, args)],
                             capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)

    return run


@contextlib.contextmanager
def postgres_cluster(admin_password: str) -> Iterator[int]:
    """A throw-away PostgreSQL server on 127.0.0.1 (started as the `postgres` user when root, which
    PostgreSQL refuses to run as) that asks host connections for a password; yields its port.
    Skips the test when the server or psycopg 3 is not installed."""
    pytest.importorskip("psycopg", reason="the postgres extra (psycopg 3) is not installed")
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    root = Path(tempfile.mkdtemp(prefix="harness-pg-"))  # not under pytest's root-only tmp: postgres reads it
    as_user: List[str] = []
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
    (root / "pw").write_text(admin_password + "\n")
    if as_user:
        shutil.chown(root / "pw", "postgres")
    data, port = root / "data", free_port()
    subprocess.run(as_user + [initdb, "-D", str(data), "-U", "postgres", "--pwfile", str(root / "pw"),
                              "--auth-host=scram-sha-256", "--auth-local=trust"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(as_user + [pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                              f"-p {port} -h 127.0.0.1 -k {root}", "start"], check=True, stdout=subprocess.DEVNULL)
    try:
        yield port
    finally:
        subprocess.run(as_user + [pg_ctl, "-D", str(data), "-m", "immediate", "stop"], stdout=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)


def _postgres_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None)
    if found is None:
        pytest.skip(f"PostgreSQL's {name} is not installed (`make test` installs the postgresql package)")
    return str(found)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def disk_full_on_fold_1(monkeypatch):
    """While armed (`arm(True)`), saving any trial's fold 1 fails as a full disk does."""
    import harness.training.fit

    save_fold = harness.training.fit.save_fold

    def failing(out, result, *args):
        if result.fold == 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(out.model))
        save_fold(out, result, *args)

    def arm(on: bool = True) -> None:
        monkeypatch.setattr(harness.training.fit, "save_fold", failing if on else save_fold)

    return arm


TINY_SEARCH = {
    "backbones": ["resnet10t"], "image_size": [16], "augment": ["none", "light"], "loss": ["ce"],
    "imbalance": ["none"], "lr": [1e-3, 3e-3], "weight_decay": [1e-5], "batch_size": [8],
    "steps": [2], "evals": 1, "patience": 1.0, "pretrained": False, "pruner": "none",
}


def draw(label: int, rng: np.random.Generator, size: int = 20, rgb: bool = False) -> Image.Image:
    """A noisy image whose class is a bright block in a class-specific corner."""
    img = rng.integers(0, 60, (size, size), dtype=np.uint8)
    half = size // 2
    r, c = divmod(label % 4, 2)
    img[r * half:(r + 1) * half, c * half:(c + 1) * half] += 150
    if rgb:  # a colour image: its blue channel dimmer (equal channels would count as greyscale)
        return Image.fromarray(np.stack([img, img, img // 2], axis=-1))
    return Image.fromarray(img)


def tree(root: Path, skip: Optional[Path] = None) -> dict:
    """Every file and link under `root` (but `skip`) with a hash of what it holds: what a test
    compares before and after to show that nothing outside the run dir changed."""
    out = {}
    for path in sorted(root.rglob("*")):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        if path.is_symlink():
            out[str(path)] = "-> " + os.readlink(path)
        elif path.is_file():
            out[str(path)] = hashlib.sha1(path.read_bytes()).hexdigest()
        else:
            out[str(path)] = "dir"
    return out


def write_spec(folder: Path, spec: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "competition.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return folder


def edit_spec(folder: Path, **changes) -> Path:
    """Change competition.yaml keys given as section__key=value; returns the folder."""
    spec = yaml.safe_load((folder / "competition.yaml").read_text())
    for dotted, value in changes.items():
        node = spec
        *parents, last = dotted.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    (folder / "competition.yaml").write_text(yaml.safe_dump(spec))
    return folder


@pytest.fixture
def class_folder_competition(tmp_path: Path):
    """Builder: class folders `cat/`, `dog/`, (`fox/`) + a test folder; returns the competition folder."""

    def build(classes: List[str] = ("cat", "dog"), per_class: int = 12, n_test: int = 10,
              extra: Optional[Dict] = None, search: Optional[Dict] = None) -> Path:
        rng = np.random.default_rng(0)
        data = tmp_path / "data"
        for k, name in enumerate(classes):
            (data / "train" / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                draw(k, rng).save(data / "train" / name / f"{name} {i:02d}.png")
        (data / "test").mkdir(parents=True, exist_ok=True)
        for i in range(n_test):
            draw(i % len(classes), rng).save(data / "test" / f"img_{i:03d}.png")
        spec = {
            "name": "tiny-folders", "task": "binary" if len(classes) == 2 else "multiclass",
            "data_root": "../data",
            "train": {"layout": "class_folders", "images": "train"},
            "test": {"layout": "folder", "images": "test"},
            "metric": "accuracy", "folds": 2, "seed": 0, "channels": 1, "orientation": "hflip",
            "submission": {"file": "submission.csv", "id_column": "image", "id_from": "name",
                           "target_column": "animal"},
            "search": {**TINY_SEARCH, **(search or {})},
            **(extra or {}),
        }
        return write_spec(tmp_path / "competition", spec)

    return build


@pytest.fixture
def csv_competition(tmp_path: Path):
    """Builder: train.csv (path, target, group columns) + test.csv + sample submission."""

    def build(n_groups: int = 8, per_group: int = 4, classes: int = 3, n_test: int = 9,
              extra: Optional[Dict] = None) -> Path:
        rng = np.random.default_rng(1)
        data = tmp_path / "csvdata"
        (data / "images" / "sub").mkdir(parents=True, exist_ok=True)
        rows = []
        for g in range(n_groups):
            for i in range(per_group):
                label = (g + i) % classes
                rel = f"sub/g{g}_{i}.png"
                draw(label, rng, rgb=True).save(data / "images" / rel)
                rows.append({"file": rel, "phase": f"phase{label}", "batch": f"b{g}", "temp": "900"})
        pd.DataFrame(rows).to_csv(data / "train.csv", index=False)
        (data / "test_images").mkdir(exist_ok=True)
        test_files = [f"t{i}.png" for i in range(n_test)]
        for i, name in enumerate(test_files):
            draw(i % classes, rng, rgb=True).save(data / "test_images" / name)
        pd.DataFrame({"file": test_files}).to_csv(data / "test.csv", index=False)
        # The sample lists ids in its own order: the submission must follow it.
        pd.DataFrame({"file": test_files[::-1], "phase": "phase0"}).to_csv(
            data / "sample_submission.csv", index=False)
        spec = {
            "name": "tiny-csv", "task": "multiclass", "data_root": "../csvdata",
            "train": {"layout": "csv", "csv": "train.csv", "images": "images", "image_column": "file",
                      "target": "phase", "groups": ["batch", "temp"]},
            "test": {"layout": "csv", "csv": "test.csv", "images": "test_images", "image_column": "file"},
            "metric": "macro_f1", "folds": 2, "seed": 0, "orientation": "free",
            "submission": {"file": "preds.csv", "id_column": "file", "id_from": "path",
                           "target_column": "phase", "sample": "sample_submission.csv"},
            "search": dict(TINY_SEARCH),
            **(extra or {}),
        }
        return write_spec(tmp_path / "csvcomp", spec)

    return build


@pytest.fixture
def cli(tmp_path: Path):
    """Run `harness ARGS` in-process; returns the click Result (exit code and output)."""

    def invoke(*args: str, ok: bool = True):
        result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return invoke
