"""Data layouts: a spec section + data root → a listing (one row per image).

A layout is one registered function `(section, root, labelled) -> DataFrame` with columns
`path` (absolute), `listed` (the image as the competition lists it) and, when labelled,
`label`; `group` when the spec declares groups. With several targets (task multihead) each
target has a column `label.<target>` and `label` holds their combination, which folds stratify
on. A listing's `attrs["skipped"]` counts the files it passed over for their extension, by
extension (`harness validate` says them). `samples.load_samples` turns the listings into the
samples table.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional

import numpy as np
import pandas as pd

from ..errors import SpecError
from ..registry import Registry

if TYPE_CHECKING:
    from ..config.spec import DataSection

LAYOUTS = Registry("layout")


def _image_dir(section: "DataSection", root: Path, what: str) -> Path:
    folder = root / section.images
    if not folder.is_dir():
        raise SpecError(f"{what}.images: folder {folder} does not exist: fix the path, or the data "
                        "root (--data-root)")
    return folder


def _list_images(folder: Path, extensions: List[str], within: Optional[Path] = None,
                 skipped: Optional[Dict[str, int]] = None) -> List[Path]:
    """The images under `folder`; each must lie inside `within` (default `folder`) once links are
    followed, as the csv layout requires of its paths. `skipped` counts, by extension, the files
    left out for theirs (an animated GIF in a class folder); hidden ones (.DS_Store) are not counted."""
    exts = {e.lower() for e in extensions}
    files = [p for p in folder.rglob("*") if p.is_file()]
    paths = sorted(p for p in files if p.suffix.lower() in exts)
    for p in files if skipped is not None else []:
        if p.suffix.lower() not in exts and not p.name.startswith("."):
            ext = p.suffix.lower() or "(none)"
            skipped[ext] = skipped.get(ext, 0) + 1
    inside = (within or folder).resolve()
    for path in paths:
        if not path.resolve().is_relative_to(inside):
            raise SpecError(f"{path}: links to {path.resolve()}, outside {inside}: copy the file into "
                            "the folder or remove the link")
    return paths


def masks_by_stem(section: "DataSection", root: Path, what: str) -> Dict[str, str]:
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
    rows, skipped = [], {}
    for name, label in mapping.items():
        paths = _list_images(folder / name, section.extensions, within=folder, skipped=skipped)
        if not paths:
            raise SpecError(f"{what}.images: class folder {folder / name} has no images "
                            f"({', '.join(section.extensions)}): add images, or leave the folder out of "
                            f"'{what}.classes' (folder: label; others are ignored)")
        rows.extend({"path": str(path), "listed": str(path.relative_to(folder)), "label": label}
                    for path in paths)
    frame = pd.DataFrame(rows, columns=["path", "listed", "label"]).assign(group=None)
    frame.attrs["skipped"] = skipped
    return frame


@LAYOUTS.register("folder")
def image_folder(section: "DataSection", root: Path, labelled: bool) -> pd.DataFrame:
    """Every image under `images` (recursively); unlabelled: for test sets."""
    if labelled:
        raise SpecError("train.layout: 'folder' has no labels; use class_folders or csv")
    folder = _image_dir(section, root, "test")
    skipped: Dict[str, int] = {}
    paths = _list_images(folder, section.extensions, skipped=skipped)
    frame = pd.DataFrame({"path": [str(p) for p in paths], "listed": [str(p.relative_to(folder)) for p in paths]})
    frame.attrs["skipped"] = skipped
    return frame


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
    _refuse_repeated_rows(paths, csv_path.name)
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


def _refuse_repeated_rows(paths: List[str], csv_name: str) -> None:
    """One image listed on two rows would be trained on in one fold and scored in another."""
    first: Dict[str, int] = {}
    for row, path in enumerate(paths, start=2):
        if path in first:
            raise SpecError(f"{csv_name} lines {first[path]} and {row}: the same image {Path(path).name!r} is "
                            "listed twice: remove one of the rows")
        first[path] = row


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
        masks = masks_by_stem(section, root, what)
        missing = [p for p in paths if p.stem not in masks]
        if missing:
            raise SpecError(f"{what}: image {missing[0].name!r} has no mask named {missing[0].stem}.* "
                            f"in {root / section.masks}: add its mask or remove the image")
        out = out.assign(mask_path=[masks[p.stem] for p in paths], mask_page=None, label="mask")
    return out.assign(group=None)
