"""ImageNet (ILSVRC-2012) as it ships: the val split is one folder of 50,000 JPEGs, labelled by a file.

- The devkit's `data/ILSVRC2012_validation_ground_truth.txt`: line i is the ILSVRC2012_ID (1-1000) of
  ILSVRC2012_val_{i:08d}.JPEG; the devkit's `data/meta.mat` maps those IDs to wnids (not in wnid order).
- Kaggle's `LOC_val_solution.csv`: `ImageId,PredictionString`, the string's first token the wnid.

The classes stay the train split's class folders (sorted wnids, ImageFolder's order), so the labels line up
with training's. WordNet names for wnids come from timm's table of the synsets' lemmas (the names of
`LOC_synset_mapping.txt` and of the devkit's `words`).
"""

import csv
import functools
import os
import re
import zlib
from pathlib import Path

import numpy as np
import torchvision
from timm.data import ImageNetInfo

from cnnbench.errors import DataError

GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
KAGGLE_SOLUTION = "LOC_val_solution.csv"
WNID = re.compile(r"n\d{8}")


def is_flat(folder: Path) -> bool:
    """Files and no class folders: how ILSVRC-2012 ships its val split."""
    if not folder.is_dir():
        return False
    with os.scandir(folder) as entries:
        kinds = {entry.is_dir() for entry in entries}
    return kinds == {False}


def val_labels_file(root: Path, val_labels: str | None) -> Path | None:
    """The labels file of a flat `root/val`: data.val_labels, else a known file under root (the devkit
    unpacked in it) or up to three levels above it (Kaggle's root is ILSVRC/Data/CLS-LOC). None: val/ has
    class folders, which label its images."""
    val = root / "val"
    flat = is_flat(val)
    if val_labels and not flat:
        raise DataError(
            f"data.val_labels: {val} is not one folder of images (class folders label theirs); "
            f"leave data.val_labels null"
        )
    if val_labels:
        val_labels = os.path.expanduser(val_labels)
        if not Path(val_labels).is_file():
            raise DataError(f"data.val_labels: no such file {val_labels}")
        return Path(val_labels)
    if not flat:
        return None
    for place in (root, root / "ILSVRC2012_devkit_t12" / "data", *list(root.resolve().parents)[:3]):
        for name in (GROUND_TRUTH, KAGGLE_SOLUTION):
            if (place / name).is_file():
                return place / name
    raise DataError(
        f"data.val_labels: {val} holds images but no class folders; pass data.val_labels=FILE: the "
        f"devkit's data/{GROUND_TRUTH} (meta.mat beside it) or Kaggle's {KAGGLE_SOLUTION}"
    )


def read_val_labels(path: Path) -> dict[str, str]:
    """Image name (without extension) -> wnid, from either labels file."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"data.val_labels: cannot read {path} ({e})") from None
    if path.suffix == ".csv":
        rows = list(csv.reader(text.splitlines()))
        if not rows or rows[0][:2] != ["ImageId", "PredictionString"]:
            raise DataError(
                f"data.val_labels: {path} is not Kaggle's {KAGGLE_SOLUTION} "
                f"(its first line should be ImageId,PredictionString)"
            )
        labels = {}
        for line, row in enumerate(rows[1:], start=2):
            if len(row) != 2 or not WNID.fullmatch(row[1].split(" ")[0]):
                raise DataError(
                    f"data.val_labels: {path} line {line}: expected ImageId,wnid ..., got {','.join(row)!r}"
                )
            labels[row[0]] = row[1].split(" ")[0]
        return labels
    ids = text.split()
    if not all(i.isdigit() for i in ids):
        line = next(n for n, i in enumerate(text.splitlines(), 1) if i.strip() and not i.strip().isdigit())
        raise DataError(f"data.val_labels: {path} line {line}: expected an ILSVRC2012_ID (the devkit's {GROUND_TRUTH})")
    id_to_wnid = devkit_wnids(path.parent / "meta.mat")
    if unknown := sorted({int(i) for i in ids} - id_to_wnid.keys()):
        raise DataError(
            f"data.val_labels: {path} has ILSVRC2012_IDs that {path.parent / 'meta.mat'} does not "
            f"list as classes: {unknown[:5]}"
        )
    return {f"ILSVRC2012_val_{n:08d}": id_to_wnid[int(i)] for n, i in enumerate(ids, start=1)}


def val_samples(
    folder: Path, labels: dict[str, str], labels_file: Path, classes: list[str]
) -> tuple[list[tuple[str, int]], list[str]]:
    """The (path, class index) of each image in a flat folder by `labels` (read_val_labels), in file-name
    order, and the folder's files that are not images by their names."""
    class_to_idx = {c: i for i, c in enumerate(classes)}
    samples, not_images, unlabelled = [], [], []
    for path in sorted(str(p) for p in folder.iterdir()):
        if not torchvision.datasets.folder.has_file_allowed_extension(path, torchvision.datasets.folder.IMG_EXTENSIONS):
            not_images.append(path)
        elif (wnid := labels.get(Path(path).stem)) is None:
            unlabelled.append(path)
        elif wnid not in class_to_idx:
            raise DataError(
                f"data.val_labels: {labels_file} labels {path} {wnid}, which is not a class of the "
                f"train split ({len(classes)} classes)"
            )
        else:
            samples.append((path, class_to_idx[wnid]))
    if unlabelled:
        raise DataError(
            f"data.val_labels: {len(unlabelled)} images in {folder} have no label in {labels_file}: "
            f"{', '.join(unlabelled[:3])}{', ...' if len(unlabelled) > 3 else ''}"
        )
    return samples, not_images


def devkit_wnids(meta: Path) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid of the 1000 classes (the synsets without children) in the devkit's meta.mat."""
    if not meta.is_file():
        raise DataError(
            f"data.val_labels: the devkit's ILSVRC2012_IDs need its meta.mat beside the ground truth; no {meta}"
        )
    try:
        synsets = read_mat(meta)["synsets"]
        return {int(s["ILSVRC2012_ID"].item()): s["WNID"] for s in synsets if s["num_children"].item() == 0}
    except (KeyError, TypeError, ValueError, zlib.error) as e:
        raise DataError(f"data.val_labels: {meta} is not the devkit's meta.mat ({type(e).__name__}: {e})") from None


# MAT-file level 5 data types (MathWorks, "MAT-File Format", 2024): those meta.mat's arrays are stored as
MAT_TYPES = {
    1: "i1",
    2: "u1",
    3: "i2",
    4: "u2",
    5: "i4",
    6: "u4",
    7: "f4",
    9: "f8",
    12: "i8",
    13: "u8",
    16: "u1",
    17: "u2",
    18: "u4",
}  # 16-18: UTF-8, -16, -32 text
MI_MATRIX, MI_COMPRESSED, MX_CELL, MX_STRUCT, MX_CHAR = 14, 15, 1, 2, 4


def read_mat(path: Path) -> dict:
    """The variables of a MATLAB 5/7 MAT-file (not 7.3): structs as lists of dicts (column-major), cells as
    lists, char rows as str, numbers as numpy arrays. What the devkit's meta.mat needs, without scipy."""
    data = path.read_bytes()
    if len(data) < 128 or data[126:128] not in (b"IM", b"MI"):
        raise ValueError("no MAT-file level 5 header")
    endian = "<" if data[126:128] == b"IM" else ">"
    variables = {}
    for kind, payload in _elements(data[128:], endian):
        if kind == MI_MATRIX:
            name, value = _matrix(payload, endian)
            variables[name] = value
    return variables


def _elements(data: bytes, endian: str):
    """The (type, bytes) of each data element; compressed ones inflated."""
    pos = 0
    while pos + 8 <= len(data):
        kind, size = np.frombuffer(data, endian + "u4", 2, pos).tolist()
        if kind >> 16:  # small data element: type and size in one word, the data in the next
            kind, size, start, pos = kind & 0xFFFF, kind >> 16, pos + 4, pos + 8
        else:
            start = pos + 8
            pos = start + size + (0 if kind == MI_COMPRESSED else -size % 8)
        if kind == MI_COMPRESSED:
            yield from _elements(zlib.decompress(data[start : start + size]), endian)
        else:
            yield kind, data[start : start + size]


def _matrix(payload: bytes, endian: str):
    """(name, value) of a miMATRIX element; an empty one is ("", None)."""
    parts = list(_elements(payload, endian))
    if not parts:
        return "", None
    flags, dims, name = (np.frombuffer(data, endian + MAT_TYPES[kind]) for kind, data in parts[:3])
    cls, dims, name = int(flags[0]) & 0xFF, [int(d) for d in dims], bytes(name).decode()
    if cls == MX_STRUCT:
        length = int(np.frombuffer(parts[3][1], endian + "i4")[0])
        names = [parts[4][1][i : i + length].rstrip(b"\0").decode() for i in range(0, len(parts[4][1]), length)]
        values = [_matrix(data, endian)[1] for _, data in parts[5:]]
        return name, [dict(zip(names, values[i : i + len(names)])) for i in range(0, len(values), len(names))]
    if cls == MX_CELL:
        return name, [_matrix(data, endian)[1] for _, data in parts[3:]]
    kind, data = parts[3]
    values = np.frombuffer(data, endian + MAT_TYPES[kind])
    if cls == MX_CHAR:
        return name, data.decode() if kind == 16 else "".join(map(chr, values.tolist()))
    return name, values.reshape(dims, order="F")


@functools.cache
def _lemmas() -> ImageNetInfo:
    return ImageNetInfo()  # its lemma table covers every ImageNet-21k synset, not only the subset's


def class_name(wnid: str) -> str | None:
    """A wnid's first WordNet name ("n02092339" -> "Weimaraner"); None for a class that is not a wnid."""
    if not WNID.fullmatch(wnid):
        return None
    try:
        return _lemmas().label_name_to_description(wnid).split(", ")[0]
    except KeyError:
        return None


def display_name(label: str) -> str:
    """A class as output shows it: the wnid and its name ("n02092339 Weimaraner"), other labels as they are."""
    return f"{label} {name}" if (name := class_name(label)) else label
