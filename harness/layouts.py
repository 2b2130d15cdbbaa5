"""Data layouts: a spec section + data root → a samples table (one row per image).

A layout is one registered function `(section, root, labelled) -> DataFrame` with columns
`path` (absolute), `listed` (the image as the competition lists it) and, when labelled,
`label`; `group` when the spec declares groups. With several targets (task multihead) each
target has a column `label.<target>` and `label` holds their combination, which folds stratify
on. `PREPARERS` materialise bundled data sets.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List

import numpy as np
import pandas as pd

from .registry import Registry
from .spec import SpecError, declares_aux_masks

if TYPE_CHECKING:
    from .spec import Competition, DataSection

LAYOUTS = Registry("layout")
PREPARERS = Registry("data preparer")


@dataclass
class Samples:
    """The interface between the data and every later stage."""

    train: pd.DataFrame  # path, listed, label (+ label.<target> per head), group
    test: pd.DataFrame  # path, listed, id
    heads: Dict[str, List[str]]  # head → its classes (index = output index; binary: positive last)
    y: np.ndarray  # N × H class indices
    data_root: Path

    @property
    def classes(self) -> List[str]:
        """The classes of a single-head competition."""
        return next(iter(self.heads.values()))


def load_samples(spec: "Competition", data_root: Path) -> Samples:
    """Read train and test listings, derive labels, ids and groups; validate before training."""
    if spec.prepare and not (data_root / spec.train.images).exists():
        PREPARERS.get(spec.prepare)(data_root)
    if not data_root.is_dir():
        raise SpecError(f"data root {data_root} does not exist (set --data-root or HARNESS_DATA)")
    train = LAYOUTS.get(spec.train.layout)(spec.train, data_root, labelled=True)
    test = LAYOUTS.get(spec.test.layout)(spec.test, data_root, labelled=False)
    if train.empty:
        raise SpecError(f"{data_root / spec.train.images}: no training images found")
    if test.empty:
        raise SpecError(f"{data_root / spec.test.images}: no test images found")
    if spec.task == "segmentation":
        return Samples(train=train.reset_index(drop=True), test=_with_ids(test, spec),
                       heads={"mask": ["background", "positive"]}, y=np.zeros((len(train), 1), int),
                       data_root=data_root)
    if declares_aux_masks(spec):
        train = _with_aux_masks(train, spec.train, data_root)
    columns = {t: f"label.{t}" for t in spec.train.targets} or {spec.train.target or "label": "label"}
    heads = {name: _ordered_classes(train[col], spec) for name, col in columns.items()}
    y = np.stack([train[col].map({c: i for i, c in enumerate(heads[name])}).to_numpy(int)
                  for name, col in columns.items()], axis=1)
    return Samples(train=train.reset_index(drop=True), test=_with_ids(test, spec),
                   heads=heads, y=y, data_root=data_root)


def _with_ids(test: pd.DataFrame, spec: "Competition") -> pd.DataFrame:
    test = test.reset_index(drop=True)
    test["id"] = [_derive_id(v, spec.submission.id_from) for v in test["listed"]]
    dup = test["id"][test["id"].duplicated()]
    if not dup.empty:
        raise SpecError(
            f"test ids are not unique with submission.id_from={spec.submission.id_from}: {dup.iloc[0]!r}"
        )
    return test


def _with_aux_masks(train: pd.DataFrame, section: "DataSection", root: Path) -> pd.DataFrame:
    """Column `aux_mask`: the mask of the same file stem under `masks`, or "" (all background)."""
    masks = _masks_by_stem(section, root, "train")
    column = [masks.get(Path(p).stem, "") for p in train["path"]]
    if not any(column):
        raise SpecError(f"train.masks: no mask in {root / section.masks} has the file stem of a training image")
    return train.assign(aux_mask=column)


def _ordered_classes(labels: pd.Series, spec: "Competition") -> List[str]:
    classes = sorted(labels.unique(), key=_natural_key)
    if spec.task == "multihead":
        if len(classes) < 2:
            raise SpecError(f"target {labels.name[6:]!r} has a single class {classes}: nothing to learn")
        return classes
    if spec.task == "binary":
        if len(classes) != 2:
            raise SpecError(f"task binary needs 2 classes, found {len(classes)}: {classes}")
        positive = spec.positive if spec.positive is not None else classes[-1]
        if positive not in classes:
            raise SpecError(f"'positive': {positive!r} is not a class (classes: {', '.join(classes)})")
        classes = [c for c in classes if c != positive] + [positive]
    elif len(classes) < 2:
        raise SpecError(f"task multiclass needs at least 2 classes, found {classes}")
    return classes


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


def _derive_id(listed: str, how: str) -> str:
    name = Path(listed).name
    return {"path": listed, "name": name, "stem": Path(listed).stem}[how]


def _image_dir(section: "DataSection", root: Path, what: str) -> Path:
    folder = root / section.images
    if not folder.is_dir():
        raise SpecError(f"{what}.images: folder {folder} does not exist")
    return folder


def _list_images(folder: Path, extensions: List[str]) -> List[Path]:
    exts = {e.lower() for e in extensions}
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in exts)


def _masks_by_stem(section: "DataSection", root: Path, what: str) -> Dict[str, str]:
    """The mask files under `masks`, by file stem: how masks find their images."""
    folder = root / section.masks if section.masks else None
    if folder is None or not folder.is_dir():
        raise SpecError(f"{what}.masks: needs a folder of masks, and {folder or 'none'} is not one")
    return {p.stem: str(p) for p in _list_images(folder, section.extensions)}


@LAYOUTS.register("class_folders")
def class_folders(section: "DataSection", root: Path, labelled: bool) -> pd.DataFrame:
    """One folder per class under `images`; `classes` maps folder names to labels (others ignored)."""
    what = "train" if labelled else "test"
    folder = _image_dir(section, root, what)
    if section.classes:
        mapping = {str(k): str(v) for k, v in section.classes.items()}
        for name in mapping:
            if not (folder / name).is_dir():
                raise SpecError(f"{what}.classes: folder {folder / name} does not exist")
    else:
        mapping = {p.name: p.name for p in sorted(folder.iterdir()) if p.is_dir()}
    rows = []
    for name, label in mapping.items():
        for path in _list_images(folder / name, section.extensions):
            rows.append({"path": str(path), "listed": str(path.relative_to(folder)), "label": label})
    return pd.DataFrame(rows, columns=["path", "listed", "label"]).assign(group=None)


@LAYOUTS.register("folder")
def image_folder(section: "DataSection", root: Path, labelled: bool) -> pd.DataFrame:
    """Every image under `images` (recursively); unlabelled: for test sets."""
    if labelled:
        raise SpecError("train.layout: 'folder' has no labels; use class_folders or csv")
    folder = _image_dir(section, root, "test")
    paths = _list_images(folder, section.extensions)
    return pd.DataFrame({"path": [str(p) for p in paths],
                         "listed": [str(p.relative_to(folder)) for p in paths]})


@LAYOUTS.register("csv")
def csv_listing(section: "DataSection", root: Path, labelled: bool) -> pd.DataFrame:
    """A CSV with an image column (paths relative to `images`), a target column, optional groups."""
    what = "train" if labelled else "test"
    if not section.csv:
        raise SpecError(f"{what}.csv: the csv layout needs a csv file")
    csv_path = root / section.csv
    if not csv_path.is_file():
        raise SpecError(f"{what}.csv: {csv_path} does not exist")
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    targets = section.targets or ([section.target] if section.target else [])
    needed = [section.image_column] + section.groups + (targets if labelled else [])
    if labelled and not targets:
        raise SpecError(f"{what}.target: the csv layout needs a target column")
    for col in needed:
        if col not in table.columns:
            raise SpecError(f"{csv_path.name}: no column {col!r} (columns: {', '.join(table.columns)})")
    folder = _image_dir(section, root, what).resolve()
    paths = []
    for row, listed in enumerate(table[section.image_column], start=2):  # header is line 1
        path = (folder / listed).resolve()
        if not path.is_relative_to(folder):
            raise SpecError(f"{csv_path.name} line {row}: image {listed!r} is outside {folder}")
        if not path.is_file():
            raise SpecError(f"{csv_path.name} line {row}: image {listed!r} not found in {folder}")
        paths.append(str(path))
    out = pd.DataFrame({"path": paths, "listed": table[section.image_column].to_list()})
    if labelled:
        for target in targets:
            empty = table.index[table[target].str.strip() == ""]
            if len(empty):
                raise SpecError(f"{csv_path.name} line {empty[0] + 2}: empty target {target!r}")
            out[f"label.{target}"] = table[target].to_list()
        out["label"] = out[f"label.{targets[0]}"] if len(targets) == 1 else \
            table[targets].apply(lambda r: "|".join(f"{t}={r[t]}" for t in targets), axis=1).to_list()
    out["group"] = table[section.groups].agg("|".join, axis=1).to_list() if section.groups else None
    return out


@LAYOUTS.register("tiff_volume")
def tiff_volume(section: "DataSection", root: Path, labelled: bool) -> pd.DataFrame:
    """Each page of a multi-page TIFF (`volume`) is a sample; `labels` is the TIFF of its masks."""
    what = "train" if labelled else "test"
    if not section.volume or (labelled and not section.labels):
        raise SpecError(f"{what}: the tiff_volume layout needs 'volume'" + (" and 'labels'" if labelled else ""))
    volume = _page_count(root / section.volume, f"{what}.volume")
    out = pd.DataFrame({"path": str(root / section.volume), "page": np.arange(volume),
                        "listed": [str(i) for i in range(volume)]})
    if labelled:
        labels = _page_count(root / section.labels, f"{what}.labels")
        if labels != volume:
            raise SpecError(f"{what}.labels: {labels} pages, but the volume has {volume}")
        out = out.assign(mask_path=str(root / section.labels), mask_page=out["page"], label="mask")
    return out.assign(group=None)


def _page_count(path: Path, what: str) -> int:
    import tifffile

    if not path.is_file():
        raise SpecError(f"{what}: {path} does not exist")
    try:
        with tifffile.TiffFile(path) as tif:
            return len(tif.pages)
    except Exception as err:  # noqa: BLE001 - tifffile raises many kinds
        raise SpecError(f"{what}: {path} is not a readable TIFF ({err})") from None


@LAYOUTS.register("image_mask_pairs")
def image_mask_pairs(section: "DataSection", root: Path, labelled: bool) -> pd.DataFrame:
    """Images under `images`, each with a mask of the same file stem under `masks`."""
    what = "train" if labelled else "test"
    folder = _image_dir(section, root, what)
    paths = _list_images(folder, section.extensions)
    out = pd.DataFrame({"path": [str(p) for p in paths], "page": None,
                        "listed": [str(p.relative_to(folder)) for p in paths]})
    if labelled:
        masks = _masks_by_stem(section, root, what)
        missing = [p for p in paths if p.stem not in masks]
        if missing:
            raise SpecError(f"{what}: image {missing[0].name!r} has no mask named {missing[0].stem}.* "
                            f"in {root / section.masks}")
        out = out.assign(mask_path=[masks[p.stem] for p in paths], mask_page=None, label="mask")
    return out.assign(group=None)


@PREPARERS.register("sklearn_digits")
def sklearn_digits(root: Path) -> None:
    """scikit-learn's bundled 8×8 handwritten digits as class folders + a held-out test folder."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    idx_train, idx_test = train_test_split(
        np.arange(len(images)), test_size=0.2, random_state=0, stratify=digits.target
    )
    tmp = root.with_name(root.name + ".tmp")
    for i in idx_train:
        out = tmp / "train" / str(digits.target[i])
        out.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(out / f"{i:04d}.png")
    (tmp / "test").mkdir(parents=True, exist_ok=True)
    for i in idx_test:
        Image.fromarray(images[i]).save(tmp / "test" / f"{i:04d}.png")
    # The answers stay beside the data so a user can score a submission, as a leaderboard would.
    pd.DataFrame({"id": [f"{i:04d}" for i in idx_test], "label": digits.target[idx_test]}).to_csv(
        tmp / "test_answers.csv", index=False
    )
    root.parent.mkdir(parents=True, exist_ok=True)
    if root.exists():
        import shutil

        shutil.rmtree(root)
    tmp.rename(root)
