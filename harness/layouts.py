"""Data layouts: a spec section + data root → a samples table (one row per image).

A layout is one registered function `(section, root, labelled) -> DataFrame` with columns
`path` (absolute), `listed` (the image as the competition lists it) and, when labelled,
`label`; `group` when the spec declares groups. With several targets (task multihead) each
target has a column `label.<target>` and `label` holds their combination, which folds stratify
on. `PREPARERS` materialise bundled data sets.
"""
from __future__ import annotations

import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from .images import probe_images, read_image
from .registry import Registry
from .spec import SpecError, declares_aux_masks, submission_columns

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
    if spec.prepare:
        prepare_data_root(spec.prepare, data_root, data_root / spec.train.images)
    if not data_root.is_dir():
        raise SpecError(f"data root {data_root} does not exist: pass --data-root or set HARNESS_DATA")
    train = LAYOUTS.get(spec.train.layout)(spec.train, data_root, labelled=True)
    test = LAYOUTS.get(spec.test.layout)(spec.test, data_root, labelled=False)
    if train.empty:
        raise SpecError(f"{data_root / spec.train.images}: no training images found: check train.images "
                        "and train.extensions")
    if test.empty:
        raise SpecError(f"{data_root / spec.test.images}: no test images found: check test.images "
                        "and test.extensions")
    test = _with_ids(test, spec)
    read_sample_submission(spec, data_root, test["id"])
    if spec.task == "segmentation":
        return Samples(train=train.reset_index(drop=True), test=test,
                       heads={"mask": ["background", "positive"]}, y=np.zeros((len(train), 1), int),
                       data_root=data_root)
    if declares_aux_masks(spec):
        train = _with_aux_masks(train, spec.train, data_root)
    columns = {t: f"label.{t}" for t in spec.train.targets} or {spec.train.target or "label": "label"}
    heads = {name: _ordered_classes(train[col], spec) for name, col in columns.items()}
    y = np.stack([train[col].map({c: i for i, c in enumerate(heads[name])}).to_numpy(int)
                  for name, col in columns.items()], axis=1)
    return Samples(train=train.reset_index(drop=True), test=test, heads=heads, y=y, data_root=data_root)


def read_sample_submission(spec: "Competition", data_root: Path, test_ids: pd.Series) -> Optional[pd.DataFrame]:
    """The sample submission, checked against the spec's columns and the test listing's ids; None
    when the spec names none. Read when the data is loaded, so a mismatch stops `validate`."""
    sub = spec.submission
    if not sub.sample:
        return None
    path = data_root / sub.sample
    if not path.is_file():
        raise SpecError(f"submission.sample: {path} does not exist: fix the path or drop the key")
    sample = pd.read_csv(path, dtype=str, keep_default_na=False)
    columns = submission_columns(spec) if sub.format == "csv" else list(sample.columns)
    if list(sample.columns) != columns:
        raise SpecError(f"{path.name}: columns {list(sample.columns)} but the spec writes {columns}: "
                        "set submission.id_column / target_column (or columns) to match")
    if sub.id_column not in sample:
        raise SpecError(f"{path.name}: no id column {sub.id_column!r}: set submission.id_column")
    ours, theirs = set(test_ids), set(sample[sub.id_column])
    if ours != theirs:
        missing, extra = sorted(theirs - ours)[:3], sorted(ours - theirs)[:3]
        raise SpecError(f"{path.name}: ids differ from the test images (in the sample only: {missing}; "
                        f"test images only: {extra}): check test.images and submission.id_from")
    return sample


def _with_ids(test: pd.DataFrame, spec: "Competition") -> pd.DataFrame:
    test = test.reset_index(drop=True)
    test["id"] = [_derive_id(v, spec.submission.id_from) for v in test["listed"]]
    dup = test["id"][test["id"].duplicated()]
    if not dup.empty:
        raise SpecError(
            f"test ids are not unique with submission.id_from={spec.submission.id_from}: {dup.iloc[0]!r}: "
            "use submission.id_from path"
        )
    return test


def _with_aux_masks(train: pd.DataFrame, section: "DataSection", root: Path) -> pd.DataFrame:
    """Column `aux_mask`: the mask of the same file stem under `masks`, or "" (all background)."""
    masks = _masks_by_stem(section, root, "train")
    column = [masks.get(Path(p).stem, "") for p in train["path"]]
    if not any(column):
        raise SpecError(f"train.masks: no mask in {root / section.masks} has the file stem of a training image: "
                        "name each mask after its image")
    _check_aux_masks([p for p, m in zip(train["path"], column) if m], [m for m in column if m])
    return train.assign(aux_mask=column)


def _check_aux_masks(images: List[str], masks: List[str]) -> None:
    """Each auxiliary mask has its image's size and two values, 0 and 255 (or 0 and 1)."""
    image_sizes = probe_images(images)[["width", "height"]].to_numpy()
    mask_sizes = probe_images(masks)[["width", "height"]].to_numpy()
    for image, mask, (iw, ih), (mw, mh) in zip(images, masks, image_sizes, mask_sizes):
        if (iw, ih) != (mw, mh):
            raise SpecError(f"train.masks: {mask} is {mw}x{mh}, its image {Path(image).name} is {iw}x{ih}: "
                            "save each mask at its image's size")
    values = Parallel(n_jobs=-1, prefer="threads")(delayed(_mask_values)(m) for m in masks)
    for mask, found in zip(masks, values):
        if not (found <= {0, 255} or found <= {0, 1}):
            raise SpecError(f"train.masks: {mask} has values {sorted(found)[:6]}, a mask holds 0 and 255 "
                            "(or 0 and 1): save it as a two-valued PNG (JPEG blurs the edges)")


def _mask_values(path: str) -> set:
    return set(np.unique(read_image(path, 1)).tolist())


def _ordered_classes(labels: pd.Series, spec: "Competition") -> List[str]:
    classes = sorted(labels.unique(), key=_natural_key)
    if spec.task == "multihead":
        if len(classes) < 2:
            raise SpecError(f"target {labels.name[6:]!r} has a single class {classes}: nothing to learn; "
                            "drop it from train.targets")
        return classes
    if spec.task == "binary":
        if len(classes) != 2:
            raise SpecError(f"task binary needs 2 classes, found {len(classes)}: {classes}: use task "
                            "multiclass")
        positive = spec.positive if spec.positive is not None else classes[-1]
        if positive not in classes:
            raise SpecError(f"'positive': {positive!r} is not a class (classes: {', '.join(classes)}): name one "
                            "of them")
        classes = [c for c in classes if c != positive] + [positive]
    elif len(classes) < 2:
        raise SpecError(f"task multiclass needs at least 2 classes, found {classes}: check the "
                        "target column or class folders")
    return classes


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


def _derive_id(listed: str, how: str) -> str:
    name = Path(listed).name
    return {"path": listed, "name": name, "stem": Path(listed).stem}[how]


def _image_dir(section: "DataSection", root: Path, what: str) -> Path:
    folder = root / section.images
    if not folder.is_dir():
        raise SpecError(f"{what}.images: folder {folder} does not exist: fix the path, or the data "
                        "root (--data-root)")
    return folder


def _list_images(folder: Path, extensions: List[str], within: Optional[Path] = None) -> List[Path]:
    """The images under `folder`; each must lie inside `within` (default `folder`) once links are
    followed, as the csv layout requires of its paths."""
    exts = {e.lower() for e in extensions}
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in exts)
    inside = (within or folder).resolve()
    for path in paths:
        if not path.resolve().is_relative_to(inside):
            raise SpecError(f"{path}: links to {path.resolve()}, outside {inside}: copy the file into "
                            "the folder or remove the link")
    return paths


def _masks_by_stem(section: "DataSection", root: Path, what: str) -> Dict[str, str]:
    """The mask files under `masks`, by file stem: how masks find their images."""
    folder = root / section.masks if section.masks else None
    if folder is None or not folder.is_dir():
        raise SpecError(f"{what}.masks: needs a folder of masks, and {folder or 'none'} is not one: "
                        "fix the path")
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
                raise SpecError(f"{what}.classes: folder {folder / name} does not exist: map only "
                                "existing folders")
    else:
        mapping = {p.name: p.name for p in sorted(folder.iterdir()) if p.is_dir()}
    rows = []
    for name, label in mapping.items():
        paths = _list_images(folder / name, section.extensions, within=folder)
        if not paths:
            raise SpecError(f"{what}.images: class folder {folder / name} has no images "
                            f"({', '.join(section.extensions)}): add images, or leave the folder out of "
                            f"'{what}.classes' (folder: label; others are ignored)")
        rows.extend({"path": str(path), "listed": str(path.relative_to(folder)), "label": label}
                    for path in paths)
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
        raise SpecError(f"{what}.csv: the csv layout needs a csv file: name it in competition.yaml")
    csv_path = root / section.csv
    if not csv_path.is_file():
        raise SpecError(f"{what}.csv: {csv_path} does not exist: fix the path, or the data root "
                        "(--data-root)")
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    targets = section.targets or ([section.target] if section.target else [])
    needed = [section.image_column] + section.groups + (targets if labelled else [])
    if labelled and not targets:
        raise SpecError(f"{what}.target: the csv layout needs a target column: name it in "
                        "competition.yaml")
    for col in needed:
        if col not in table.columns:
            raise SpecError(f"{csv_path.name}: no column {col!r} (columns: {', '.join(table.columns)}): "
                            "name one of these in competition.yaml")
    folder = _image_dir(section, root, what).resolve()
    paths = []
    for row, listed in enumerate(table[section.image_column], start=2):  # header is line 1
        path = (folder / listed).resolve()
        if not path.is_relative_to(folder):
            raise SpecError(f"{csv_path.name} line {row}: image {listed!r} is outside {folder}: list "
                            f"paths relative to {what}.images, inside it")
        if not path.is_file():
            raise SpecError(f"{csv_path.name} line {row}: image {listed!r} not found in {folder}: fix the "
                            "path or remove the row")
        paths.append(str(path))
    out = pd.DataFrame({"path": paths, "listed": table[section.image_column].to_list()})
    if labelled:
        for target in targets:
            empty = table.index[table[target].str.strip() == ""]
            if len(empty):
                raise SpecError(f"{csv_path.name} line {empty[0] + 2}: empty target {target!r}: give "
                                "the row its label or remove it")
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
        raise SpecError(f"{what}: the tiff_volume layout needs 'volume'" + (" and 'labels'" if labelled else "")
                        + ": name them in competition.yaml")
    volume = _page_count(root / section.volume, f"{what}.volume")
    out = pd.DataFrame({"path": str(root / section.volume), "page": np.arange(volume),
                        "listed": [str(i) for i in range(volume)]})
    if labelled:
        labels = _page_count(root / section.labels, f"{what}.labels")
        if labels != volume:
            raise SpecError(f"{what}.labels: {labels} pages, but the volume has {volume}: give each "
                            "page its label page")
        out = out.assign(mask_path=str(root / section.labels), mask_page=out["page"], label="mask")
    return out.assign(group=None)


def _page_count(path: Path, what: str) -> int:
    import tifffile

    if not path.is_file():
        raise SpecError(f"{what}: {path} does not exist: fix the path in competition.yaml")
    try:
        with tifffile.TiffFile(path) as tif:
            shapes = [page.shape[:2] for page in tif.pages]
    except Exception as err:  # noqa: BLE001 - tifffile raises many kinds
        raise SpecError(f"{what}: {path} is not a readable TIFF ({err}): re-export it") from None
    odd = next((i for i, shape in enumerate(shapes) if shape != shapes[0]), None)
    if odd is not None:
        raise SpecError(f"{what}: {path} page {odd} is {shapes[odd][1]}x{shapes[odd][0]}, page 0 is "
                        f"{shapes[0][1]}x{shapes[0][0]}: every page of a volume needs one size")
    return len(shapes)


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
                            f"in {root / section.masks}: add its mask or remove the image")
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
    with preparing(root) as tmp:
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


def prepare_data_root(name: str, root: Path, expected: Path) -> None:
    """Run preparer `name` into `root` unless `expected` (its training images) is already there.

    A preparer writes only into a folder it creates: an existing folder that holds anything is a
    user's, and is refused rather than touched.
    """
    if expected.exists():
        return
    if root.is_dir() and any(root.iterdir()):
        raise SpecError(f"data root {root}: has files but no {expected.relative_to(root)}/, and preparer "
                        f"{name!r} writes only into a new or empty folder: point --data-root (or HARNESS_DATA) "
                        "at an empty folder, or at the prepared data")
    if root.exists() and not root.is_dir():
        raise SpecError(f"data root {root}: is a file, not a folder: point --data-root (or HARNESS_DATA) "
                        "at a folder")
    PREPARERS.get(name)(root)


@contextmanager
def preparing(root: Path) -> Iterator[Path]:
    """A fresh folder beside `root` to write into; renamed to `root` when done, removed on failure.

    Its name is this process's own, so workers preparing at once never write into each other's;
    the first rename wins and the others' copies are dropped.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f"{root.name}.{os.getpid()}.tmp")
    tmp.mkdir()  # never exists_ok: a folder of that name is not ours to fill
    try:
        yield tmp
        try:
            tmp.rename(root)  # onto a missing or empty folder, never onto one with files
        except OSError:
            if not root.is_dir() or not any(root.iterdir()):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)  # ours, created above
