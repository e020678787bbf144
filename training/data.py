"""Datasets as users actually have them on disk: Harvard-FairVLMed (fundus) and HAM10000 (skin).

Everything downstream (training, evaluation, the app) sees one record type, :class:`Sample`, and one
collection, :class:`Dataset`. Loaders read only metadata: images are decoded lazily by
:meth:`Sample.load_image`, so loading 10,000 samples with ``data_summary.csv`` present takes
milliseconds, not minutes.

Decisions every other module relies on:

* Attribute values are canonical strings (``"Asian"``, ``"Female"``, ``"60+"``), whatever encoding
  the files used (integers or strings, any case).
* An intersection of attributes is named ``"a+b"`` (:data:`ATTRIBUTE_JOINER`); its group label joins
  the values with ``" & "`` (:data:`GROUP_JOINER`), e.g. ``"Female & 60+"``. Values are not joined
  with ``"+"`` because the age group ``"60+"`` already contains one.
* Split names are ``"train"``, ``"val"``, ``"test"``. FairVLMed: the split folder a file sits in wins
  over the ``use`` column of ``data_summary.csv`` (with a warning), because the folder is what the
  dataset authors ship and what other tools read. HAM10000: a ``split`` column wins; otherwise a
  seeded, label-stratified split of lesion ids, so one lesion never sits in two splits.
* Every problem a user can cause raises :class:`DatasetError` whose message names the file, the
  column or key, the bad value and what to do. Templates are module constants so tests assert them
  word for word (as fairlearn does).
"""

from __future__ import annotations

import bisect
import csv
import itertools
import math
import os
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# --------------------------------------------------------------------------------------------------
# Public constants

SPLITS: tuple[str, ...] = ("train", "val", "test")
ATTRIBUTE_JOINER = "+"
"""Joins attribute names into an intersection: ``"race+gender"``."""
GROUP_JOINER = " & "
"""Joins the values of an intersection into a group label: ``"White & Female"``."""
UNKNOWN = "Unknown"
FUNDUS_ATTRIBUTES: tuple[str, ...] = ("race", "ethnicity", "gender", "age_group")
SKIN_ATTRIBUTES: tuple[str, ...] = ("sex", "age_group")  # + "fitzpatrick" when the column exists
HAM10000_DX_CODES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
DEFAULT_MALIGNANT: tuple[str, ...] = ("mel", "bcc", "akiec")
DEFAULT_AGE_BINS: tuple[float, ...] = (40, 60)
SUMMARY_FILE = "data_summary.csv"
IMAGE_KEY = "slo_fundus"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})

# --------------------------------------------------------------------------------------------------
# Error and warning templates (asserted word for word by tests/test_data.py)

NO_DATASET = (
    "no dataset found in {root}: expected data_summary.csv + Training/Validation/Test folders "
    "(Harvard-FairVLMed) or HAM10000_metadata.csv + image folders (HAM10000)"
)
ROOT_MISSING = "dataset folder {root} does not exist; check the path"
UNKNOWN_TASK = "unknown task '{task}'; expected one of fundus, skin"
NO_SPLIT_FOLDERS = (
    "no split folders in {root}: expected Training/, Validation/ and Test/ (or train/, val/, test/) "
    "holding data_XXXXX.npz files"
)
DUPLICATE_SPLIT_FOLDERS = "{root} has two folders for split '{split}' ({folders}); keep one"
NO_SAMPLES = "no samples found in {root}: {hint}"
MISSING_COLUMN = "{file} has no column {column}; found: {found}. Add or rename the column"
MISSING_KEY = "{file} has no key {key}; found: {found}. Re-export the file with this key"
BAD_VALUE = "{where}: {field} '{column}' has value '{value}'; expected {expected}"
MISSING_FILES = (
    "{n} file(s) listed in {listing} were not found under {root} (first: row {row}, '{name}'{hint}); "
    "restore them or delete their rows from {listing}"
)
DUPLICATE_ROW = "{where}: {column} '{value}' already appears in row {first_row}; remove the duplicate row"
UNREADABLE_FILE = "cannot read {path}: {reason}; re-download the file or delete it"
BAD_IMAGE_ARRAY = (
    "{path}: key 'slo_fundus' has dtype {dtype} and shape {shape}; expected a uint8 array of shape HxW or HxWx3"
)
UNKNOWN_DX = "unknown dx code '{code}' in malignant; valid codes: {valid}"
AMBIGUOUS_METADATA = "{root} holds several HAM10000 metadata files ({files}); keep one"
BAD_AGE_BINS = "age_bins must be increasing positive ages, e.g. (40, 60); got {bins}"
BAD_FRACTIONS = (
    "split_fractions must be three non-negative numbers (train, val, test) that sum to 1, "
    "e.g. (0.7, 0.1, 0.2); got {fractions}"
)
UNKNOWN_SPLIT = "unknown split '{split}'; expected one of train, val, test"
UNKNOWN_ATTRIBUTE = "unknown attribute '{attribute}'; available: {available}"
EMPTY_SPLIT = "split '{split}' has no samples; check the dataset's split folders or split column"
EMPTY_GROUP = (
    "attribute '{attribute}' has a group '{group}' with 0 {split} samples; pick another attribute or merge groups"
)
SPLIT_MISMATCH_WARNING = (
    "{n} file(s) sit in a split folder that disagrees with the 'use' column of data_summary.csv "
    "(first: '{name}' in {folder}/ but use={use}); the folder wins"
)
UNLISTED_FILES_WARNING = (
    "{n} .npz file(s) under {root} are not listed in data_summary.csv and were skipped "
    "(first: '{name}'); add rows for them, or delete data_summary.csv to read metadata from the files"
)

_SPLIT_WORDS = {"train": "training", "val": "validation", "test": "test"}


class DatasetError(ValueError):
    """A dataset on disk (or an option describing it) that FairDx cannot use as is."""


# --------------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class Sample:
    """One image with its binary label, canonical attributes and split.

    ``attributes`` is read-only and left out of the hash, so samples can sit in sets keyed by
    ``(id, path, label, split)``.
    """

    id: str
    path: Path
    label: int
    attributes: Mapping[str, str] = field(hash=False)
    split: str
    cluster: str | None = field(default=None, hash=False, compare=False)
    """Samples that are not independent share it (HAM10000: the lesion, 1-4 images each); the bootstrap
    and the noise floor resample and permute whole clusters (training.metrics.CLUSTER)."""

    def load_image(self) -> Image.Image:
        """Decode the image as RGB; metadata loading never calls this, so it stays fast."""
        if self.path.suffix.lower() == ".npz":
            return _load_npz_image(self.path)
        return _load_picture(self.path)


@dataclass(frozen=True)
class Dataset:
    """All samples of one task, with the attribute names they carry."""

    task: str
    root: Path
    samples: tuple[Sample, ...]
    attributes: tuple[str, ...]

    def split(self, name: str) -> list[Sample]:
        """The samples of one split, in loading order."""
        if name not in SPLITS:
            raise DatasetError(UNKNOWN_SPLIT.format(split=name))
        return [s for s in self.samples if s.split == name]

    def group_counts(self, attribute: str, split: str = "train") -> dict[str, int]:
        """Samples per group of ``attribute`` (or intersection ``"a+b"``) in one split, sorted by group.

        The GR objective's weights (Eq. 8, w_s = min(N/N_s, w_max)) are computed from these counts.
        """
        names = _attribute_names(attribute, self.attributes)
        counts = Counter(_join_values(s, names) for s in self.split(split))
        return dict(sorted(counts.items()))


def group_key(sample: Sample, attribute: str) -> str:
    """The group label of ``sample`` for ``attribute``; ``"race+gender"`` gives e.g. ``"White & Female"``.

    Every module that needs a group label (losses, metrics, predictions.csv, eval.json) calls this, so
    intersections are spelled the same way everywhere.
    """
    return _join_values(sample, _attribute_names(attribute, tuple(sample.attributes)))


def check_groups(dataset: Dataset, attribute: str, split: str = "train") -> dict[str, int]:
    """Fail early, with a fix, when a fairness objective could not be computed for ``attribute``.

    A group that appears in another split but has no samples in ``split`` would get an undefined
    weight (N/0) and an empty soft accuracy. Returns the group counts of ``split``.
    """
    counts = dataset.group_counts(attribute, split)
    if not counts:
        raise DatasetError(EMPTY_SPLIT.format(split=split))
    names = _attribute_names(attribute, dataset.attributes)
    for sample in dataset.samples:
        group = _join_values(sample, names)
        if group not in counts:
            raise DatasetError(
                EMPTY_GROUP.format(attribute=attribute, group=group, split=_SPLIT_WORDS.get(split, split))
            )
    return counts


def _attribute_names(attribute: str, available: Sequence[str]) -> tuple[str, ...]:
    names = tuple(part.strip() for part in attribute.split(ATTRIBUTE_JOINER))
    for name in names:
        if name not in available:
            raise DatasetError(UNKNOWN_ATTRIBUTE.format(attribute=name, available=", ".join(available)))
    return names


def _join_values(sample: Sample, names: tuple[str, ...]) -> str:
    return GROUP_JOINER.join(sample.attributes[name] for name in names)


# --------------------------------------------------------------------------------------------------
# Images


def _load_npz_image(path: Path) -> Image.Image:
    try:
        with np.load(path, allow_pickle=False) as npz:
            array = npz[IMAGE_KEY]
    except KeyError:
        raise DatasetError(_missing_key(path, IMAGE_KEY, _npz_keys(path))) from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(UNREADABLE_FILE.format(path=path, reason=_reason(exc))) from exc
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise DatasetError(BAD_IMAGE_ARRAY.format(path=path, dtype=array.dtype, shape=array.shape))
    return Image.fromarray(array).convert("RGB")


def _load_picture(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            # Phone and dermatoscope JPEGs store rotation in EXIF; honour it so the model sees what a
            # clinician sees.
            return ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DatasetError(UNREADABLE_FILE.format(path=path, reason=_reason(exc))) from exc


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


def _npz_keys(path: Path) -> list[str]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return sorted(npz.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return []


def _missing_key(path: Path | str, key: str, found: Iterable[str]) -> str:
    return MISSING_KEY.format(file=path, key=key, found=", ".join(found) or "(none)")


# --------------------------------------------------------------------------------------------------
# Parsing values in any encoding into canonical strings


@dataclass(frozen=True)
class _Choices:
    """Accepted spellings of one categorical field; ``names`` and ``codes`` are listed in errors."""

    names: Mapping[str, str]
    codes: Mapping[str, str] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)
    missing: str | None = None  # canonical value for an empty cell, or None if empty is an error

    @property
    def expected(self) -> str:
        text = "one of " + ", ".join(self.names)
        return text + (" or " + ", ".join(self.codes) if self.codes else "")

    def lookup(self, token: str) -> str | None:
        if token in _EMPTY_TOKENS and self.missing is not None:
            return self.missing
        return self.names.get(token) or self.codes.get(token) or self.aliases.get(token)


_EMPTY_TOKENS = frozenset({"", "nan", "na", "n/a", "none", "null"})
_TRUE_FALSE = {"true": "1", "false": "0", "yes": "1", "no": "0"}

RACE = _Choices({"asian": "Asian", "black": "Black", "white": "White"}, {"0": "Asian", "1": "Black", "2": "White"})
ETHNICITY = _Choices(
    {"non-hispanic": "Non-Hispanic", "hispanic": "Hispanic", "unknown": UNKNOWN},
    {"0": "Non-Hispanic", "1": "Hispanic", "-1": UNKNOWN},
    {"nonhispanic": "Non-Hispanic", "non hispanic": "Non-Hispanic", "not hispanic": "Non-Hispanic"},
)
HISPANIC = _Choices(
    {},
    {"0": "Non-Hispanic", "1": "Hispanic", "-1": UNKNOWN},
    {"false": "Non-Hispanic", "true": "Hispanic", "no": "Non-Hispanic", "yes": "Hispanic"},
)
GENDER = _Choices({"female": "Female", "male": "Male"}, {"0": "Female", "1": "Male"}, {"f": "Female", "m": "Male"})
MALE = _Choices({}, {"0": "Female", "1": "Male"}, {"false": "Female", "true": "Male", "no": "Female", "yes": "Male"})
GLAUCOMA = _Choices({"yes": "1", "no": "0"}, {"0": "0", "1": "1"}, {"true": "1", "false": "0"})
USE = _Choices(
    {"training": "train", "validation": "val", "test": "test"},
    {},
    {"train": "train", "val": "val", "valid": "val", "testing": "test"},
)
SPLIT = _Choices(
    {"train": "train", "val": "val", "test": "test"},
    {},
    {"training": "train", "validation": "val", "valid": "val", "testing": "test"},
)
SEX = _Choices(
    {"female": "Female", "male": "Male", "unknown": UNKNOWN}, {}, {"f": "Female", "m": "Male"}, missing=UNKNOWN
)
DX = _Choices({code: code for code in HAM10000_DX_CODES})
_ROMAN = ("I", "II", "III", "IV", "V", "VI")
FITZPATRICK = _Choices(
    {r.lower(): r for r in _ROMAN}, {str(i + 1): r for i, r in enumerate(_ROMAN)}, {"unknown": UNKNOWN}, missing=UNKNOWN
)


def _scalar(value: Any) -> Any:
    if value is None:  # a short csv row
        return ""
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size == 1 else value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value


def _token(value: Any) -> str:
    """Normalise one cell or npz entry: ``b"Asian"``, ``np.int64(0)``, ``"0.0"`` become ``"asian"``, ``"0"``."""
    value = _scalar(value)
    if isinstance(value, bool):
        value = int(value)
    text = str(value).strip().lower()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


@dataclass(frozen=True)
class _Where:
    """Where a value came from, for error messages: ``data_summary.csv row 17`` + ``column``."""

    place: str
    field: str  # "column" or "key"


def _choice(value: Any, choices: _Choices, where: _Where, column: str) -> str:
    canonical = choices.lookup(_token(value))
    if canonical is None:
        raise DatasetError(
            BAD_VALUE.format(
                where=where.place,
                field=where.field,
                column=column,
                value=str(_scalar(value)).strip(),
                expected=choices.expected,
            )
        )
    return canonical


def _age(value: Any, where: _Where, *, allow_missing: bool) -> float | None:
    token = _token(value)
    if token in _EMPTY_TOKENS or token == "unknown":
        if allow_missing:
            return None
        age = math.nan
    else:
        try:
            age = float(token)
        except ValueError:
            age = math.nan
    if not math.isfinite(age) or age < 0:
        expected = "an age in years (a number >= 0)" + (" or an empty cell" if allow_missing else "")
        raise DatasetError(
            BAD_VALUE.format(
                where=where.place, field=where.field, column="age", value=str(_scalar(value)).strip(), expected=expected
            )
        )
    return age


def _check_age_bins(age_bins: Sequence[float]) -> tuple[float, ...]:
    try:
        edges = tuple(float(edge) for edge in age_bins)
    except (TypeError, ValueError):
        raise DatasetError(BAD_AGE_BINS.format(bins=age_bins)) from None
    if not edges or edges[0] <= 0 or any(b <= a for a, b in itertools.pairwise(edges)):
        raise DatasetError(BAD_AGE_BINS.format(bins=age_bins))
    return edges


def age_group_labels(age_bins: Sequence[float] = DEFAULT_AGE_BINS) -> tuple[str, ...]:
    """The age-group labels for ``age_bins``: ``(40, 60)`` gives ``("0-40", "40-60", "60+")``."""
    edges = _check_age_bins(age_bins)
    bounds = (0.0, *edges)
    labels = [f"{lo:g}-{hi:g}" for lo, hi in itertools.pairwise(bounds)]
    return (*labels, f"{edges[-1]:g}+")


def _age_group(age: float | None, edges: tuple[float, ...], labels: tuple[str, ...]) -> str:
    """Half-open bins [0, e1), [e1, e2), …, [ek, inf), as in the CMAC-MMD paper (0–40, 40–60, 60+)."""
    if age is None:
        return UNKNOWN
    return labels[bisect.bisect_right(edges, age)]


# --------------------------------------------------------------------------------------------------
# Tables


def _read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Rows of a csv or tab-separated file; the delimiter is taken from the extension or the header."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header_line = handle.readline()
            handle.seek(0)
            tab = path.suffix.lower() in {".tab", ".tsv"} or ("\t" in header_line and "," not in header_line)
            reader = csv.DictReader(handle, delimiter="\t" if tab else ",")
            rows = list(reader)
            columns = [c.strip() for c in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(UNREADABLE_FILE.format(path=path, reason=_reason(exc))) from exc
    if reader.fieldnames and columns != reader.fieldnames:
        rows = [{k.strip() if k else k: v for k, v in row.items()} for row in rows]
    return columns, rows


def _find_column(columns: Sequence[str], *candidates: str) -> str | None:
    """The first of ``candidates`` in ``columns`` (matched case-insensitively), or None if none is."""
    lowered = {c.lower(): c for c in columns}
    for candidate in candidates:
        if candidate in lowered:
            return lowered[candidate]
    return None


def _pick_column(columns: Sequence[str], file: str, *candidates: str) -> str:
    """Like :func:`_find_column`, but a table without any of ``candidates`` is an error."""
    found = _find_column(columns, *candidates)
    if found is None:
        wanted = " or ".join(f"'{c}'" for c in candidates)
        raise DatasetError(MISSING_COLUMN.format(file=file, column=wanted, found=", ".join(columns) or "(none)"))
    return found


def _row_place(file: str, index: int) -> str:
    """Rows are numbered as a spreadsheet shows them: the header is row 1, the first record row 2."""
    return f"{file} row {index + 2}"


# --------------------------------------------------------------------------------------------------
# Harvard-FairVLMed / Harvard-GF (fundus)

_SPLIT_FOLDER_NAMES = {
    "training": "train",
    "train": "train",
    "validation": "val",
    "val": "val",
    "valid": "val",
    "test": "test",
    "testing": "test",
}


def _split_folders(root: Path) -> dict[str, Path]:
    """Split name -> folder, matching folder names case-insensitively."""
    found: dict[str, list[Path]] = {}
    with os.scandir(root) as entries:
        for entry in entries:
            split = _SPLIT_FOLDER_NAMES.get(entry.name.lower())
            if split and entry.is_dir():
                found.setdefault(split, []).append(Path(entry.path))
    for split, folders in found.items():
        if len(folders) > 1:
            names = ", ".join(sorted(f.name + "/" for f in folders))
            raise DatasetError(DUPLICATE_SPLIT_FOLDERS.format(root=root, split=split, folders=names))
    return {split: folders[0] for split, folders in found.items()}


def _npz_files(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.name.lower().endswith(".npz") and e.is_file())


def load_fairvlmed(root: str | os.PathLike[str], *, age_bins: Sequence[float] = DEFAULT_AGE_BINS) -> Dataset:
    """Load a Harvard-FairVLMed / Harvard-GF folder: split folders of ``data_XXXXX.npz`` files.

    With ``data_summary.csv`` at the root, attributes and labels come from it and each listed file is
    only checked to exist (fast: no npz is opened). Without it, the metadata keys of every npz are read;
    the image array is never decompressed. The label is ``glaucoma``.
    """
    root = _existing_root(root)
    edges = _check_age_bins(age_bins)
    labels = age_group_labels(edges)
    folders = _split_folders(root)
    summary = root / SUMMARY_FILE
    if summary.is_file():
        samples = _fairvlmed_from_summary(root, summary, folders, edges, labels)
    elif folders:
        samples = _fairvlmed_from_npz(root, folders, edges, labels)
    else:
        raise DatasetError(NO_SPLIT_FOLDERS.format(root=root))
    if not samples:
        raise DatasetError(NO_SAMPLES.format(root=root, hint="the split folders hold no .npz files"))
    return Dataset(task="fundus", root=root, samples=tuple(samples), attributes=FUNDUS_ATTRIBUTES)


def _fairvlmed_from_summary(
    root: Path, summary: Path, folders: dict[str, Path], edges: tuple[float, ...], labels: tuple[str, ...]
) -> list[Sample]:
    columns, rows = _read_table(summary)
    col = {
        "filename": _pick_column(columns, SUMMARY_FILE, "filename"),
        "age": _pick_column(columns, SUMMARY_FILE, "age"),
        "race": _pick_column(columns, SUMMARY_FILE, "race"),
        "glaucoma": _pick_column(columns, SUMMARY_FILE, "glaucoma"),
    }
    gender_col = _pick_column(columns, SUMMARY_FILE, "gender", "male")
    ethnicity_col = _pick_column(columns, SUMMARY_FILE, "ethnicity", "hispanic")
    use_col = _find_column(columns, "use")

    located = {name: (split, folder / name) for split, folder in folders.items() for name in _npz_files(folder)}
    in_root = set(_npz_files(root))
    samples: list[Sample] = []
    first_row: dict[str, int] = {}
    missing: list[tuple[int, str, str]] = []
    mismatched: list[tuple[str, str, str]] = []
    for index, row in enumerate(rows):
        where = _Where(_row_place(SUMMARY_FILE, index), "column")
        name = Path((row.get(col["filename"]) or "").strip()).name
        if not name:
            raise DatasetError(
                BAD_VALUE.format(
                    where=where.place,
                    field="column",
                    column=col["filename"],
                    value="",
                    expected="a file name such as data_00001.npz",
                )
            )
        if not name.lower().endswith(".npz"):
            name += ".npz"
        if name in first_row:
            raise DatasetError(
                DUPLICATE_ROW.format(where=where.place, column="filename", value=name, first_row=first_row[name] + 2)
            )
        first_row[name] = index
        use = _choice(row.get(use_col), USE, where, use_col) if use_col else None
        if name in located:
            split, path = located[name]
            if use_col is not None and use is not None and use != split:
                mismatched.append((name, path.parent.name, row[use_col].strip()))
        elif name in in_root and use is not None:
            split, path = use, root / name
        else:
            missing.append((index, name, use or ""))
            continue
        attributes = {
            "race": _choice(row.get(col["race"]), RACE, where, col["race"]),
            "ethnicity": _choice(row.get(ethnicity_col), _ethnicity_choices(ethnicity_col), where, ethnicity_col),
            "gender": _choice(row.get(gender_col), _gender_choices(gender_col), where, gender_col),
            "age_group": _age_group(_age(row.get(col["age"]), where, allow_missing=False), edges, labels),
        }
        label = int(_choice(row.get(col["glaucoma"]), GLAUCOMA, where, col["glaucoma"]))
        samples.append(Sample(Path(name).stem, path, label, MappingProxyType(attributes), split))
    if missing:
        index, name, use = missing[0]
        folder = folders.get(use)
        hint = f", expected in {folder.name}/" if folder else (f", use={use}" if use else "")
        raise DatasetError(
            MISSING_FILES.format(n=len(missing), listing=SUMMARY_FILE, root=root, row=index + 2, name=name, hint=hint)
        )
    if mismatched:
        name, folder_name, use = mismatched[0]
        warnings.warn(
            SPLIT_MISMATCH_WARNING.format(n=len(mismatched), name=name, folder=folder_name, use=use), stacklevel=3
        )
    unlisted = sorted(set(located) - set(first_row))
    if unlisted:
        warnings.warn(UNLISTED_FILES_WARNING.format(n=len(unlisted), root=root, name=unlisted[0]), stacklevel=3)
    return samples


def _gender_choices(key: str) -> _Choices:
    return MALE if key.lower() == "male" else GENDER


def _ethnicity_choices(key: str) -> _Choices:
    return HISPANIC if key.lower() == "hispanic" else ETHNICITY


def _fairvlmed_from_npz(
    root: Path, folders: dict[str, Path], edges: tuple[float, ...], labels: tuple[str, ...]
) -> list[Sample]:
    samples = []
    for split in SPLITS:
        if split not in folders:
            continue
        for name in _npz_files(folders[split]):
            path = folders[split] / name
            samples.append(_fairvlmed_sample(root, path, split, edges, labels))
    return samples


def _fairvlmed_sample(root: Path, path: Path, split: str, edges: tuple[float, ...], labels: tuple[str, ...]) -> Sample:
    """Read one npz's metadata keys; NpzFile decompresses a member only when it is indexed."""
    place = str(path.relative_to(root))
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)

            def get(*candidates: str) -> tuple[str, Any]:
                for key in candidates:
                    if key in keys:
                        return key, npz[key]
                raise DatasetError(_missing_key(place, " or ".join(f"'{k}'" for k in candidates), sorted(keys)))

            where = _Where(place, "key")
            race_key, race = get("race")
            gender_key, gender = get("gender", "male")
            ethnicity_key, ethnicity = get("ethnicity", "hispanic")
            _, age = get("age")
            glaucoma_key, glaucoma = get("glaucoma")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(UNREADABLE_FILE.format(path=path, reason=_reason(exc))) from exc
    attributes = {
        "race": _choice(race, RACE, where, race_key),
        "ethnicity": _choice(ethnicity, _ethnicity_choices(ethnicity_key), where, ethnicity_key),
        "gender": _choice(gender, _gender_choices(gender_key), where, gender_key),
        "age_group": _age_group(_age(age, where, allow_missing=False), edges, labels),
    }
    label = int(_choice(glaucoma, GLAUCOMA, where, glaucoma_key))
    return Sample(path.stem, path, label, MappingProxyType(attributes), split)


# --------------------------------------------------------------------------------------------------
# HAM10000 (skin)

_METADATA_SUFFIXES = frozenset({".csv", ".tab", ".tsv", ".txt", ""})


def _is_ham_metadata(name: str) -> bool:
    stem, suffix = os.path.splitext(name.lower())
    return stem == "ham10000_metadata" and suffix in _METADATA_SUFFIXES


def _find_ham_metadata(root: Path) -> Path | None:
    """``HAM10000_metadata.csv`` (or .tab/.tsv/.txt) in ``root`` or one folder below it (Kaggle nests one)."""
    for folder in (root, *sorted(p for p in root.iterdir() if p.is_dir())):
        found = sorted(p for p in folder.iterdir() if p.is_file() and _is_ham_metadata(p.name))
        if len(found) > 1:
            files = ", ".join(str(p.relative_to(root)) for p in found)
            raise DatasetError(AMBIGUOUS_METADATA.format(root=root, files=files))
        if found:
            return found[0]
    return None


def _index_images(root: Path) -> dict[str, Path]:
    """Image stem -> path for every image under ``root``, walked once in sorted order.

    The Kaggle download holds each image twice (HAM10000_images_part_1 and ham10000_images_part_1);
    the first in sorted order wins, so the choice is deterministic.
    """
    index: dict[str, Path] = {}
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        for name in sorted(files):
            stem, suffix = os.path.splitext(name)
            if suffix.lower() in IMAGE_SUFFIXES:
                index.setdefault(stem, Path(folder) / name)
    return index


def _check_malignant(malignant: Iterable[str] | str) -> frozenset[str]:
    codes = (malignant,) if isinstance(malignant, str) else tuple(malignant)
    for code in codes:
        if str(code).strip().lower() not in HAM10000_DX_CODES:
            raise DatasetError(UNKNOWN_DX.format(code=code, valid=", ".join(HAM10000_DX_CODES)))
    return frozenset(str(code).strip().lower() for code in codes)


def _check_fractions(split_fractions: Sequence[float]) -> tuple[float, float, float]:
    try:
        fractions = tuple(float(f) for f in split_fractions)
    except (TypeError, ValueError):
        raise DatasetError(BAD_FRACTIONS.format(fractions=split_fractions)) from None
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise DatasetError(BAD_FRACTIONS.format(fractions=split_fractions))
    return fractions


def load_ham10000(
    root: str | os.PathLike[str],
    *,
    malignant: Iterable[str] = DEFAULT_MALIGNANT,
    age_bins: Sequence[float] = DEFAULT_AGE_BINS,
    split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
    split_seed: int = 0,
) -> Dataset:
    """Load HAM10000: the metadata table plus JPEGs in any image folders under ``root``.

    The label is 1 when ``dx`` is in ``malignant``. Splits come from a ``split`` column when the table
    has one; otherwise lesions (not images) are split, stratified by label, so images of one lesion
    never leak between train and test.
    """
    root = _existing_root(root)
    malignant_codes = _check_malignant(malignant)
    edges = _check_age_bins(age_bins)
    labels = age_group_labels(edges)
    fractions = _check_fractions(split_fractions)
    metadata = _find_ham_metadata(root)
    if metadata is None:
        raise DatasetError(NO_DATASET.format(root=root))
    file = metadata.name
    columns, rows = _read_table(metadata)
    if not rows:
        raise DatasetError(NO_SAMPLES.format(root=root, hint=f"{file} has no rows"))
    col = {name: _pick_column(columns, file, name) for name in ("lesion_id", "image_id", "dx", "age", "sex")}
    fitz_col = _find_column(columns, "fitzpatrick")
    split_col = _find_column(columns, "split")

    images = _index_images(root)
    # (image_id, path, label, attributes, lesion_id, split); split is None when the table has no split column
    records: list[tuple[str, Path, int, dict[str, str], str, str | None]] = []
    first_row: dict[str, int] = {}
    missing: list[tuple[int, str]] = []
    for index, row in enumerate(rows):
        where = _Where(_row_place(file, index), "column")
        image_id = (row.get(col["image_id"]) or "").strip()
        lesion_id = (row.get(col["lesion_id"]) or "").strip()
        for column, value in ((col["image_id"], image_id), (col["lesion_id"], lesion_id)):
            if not value:
                raise DatasetError(
                    BAD_VALUE.format(
                        where=where.place, field="column", column=column, value="", expected="a non-empty id"
                    )
                )
        if image_id in first_row:
            raise DatasetError(
                DUPLICATE_ROW.format(
                    where=where.place, column="image_id", value=image_id, first_row=first_row[image_id] + 2
                )
            )
        first_row[image_id] = index
        path = images.get(image_id)
        if path is None:
            missing.append((index, image_id))
            continue
        dx = _choice(row.get(col["dx"]), DX, where, col["dx"])
        attributes = {
            "sex": _choice(row.get(col["sex"]), SEX, where, col["sex"]),
            "age_group": _age_group(_age(row.get(col["age"]), where, allow_missing=True), edges, labels),
        }
        if fitz_col:
            attributes["fitzpatrick"] = _choice(row.get(fitz_col), FITZPATRICK, where, fitz_col)
        split = _choice(row.get(split_col), SPLIT, where, split_col) if split_col else None
        records.append((image_id, path, int(dx in malignant_codes), attributes, lesion_id, split))
    if missing:
        index, image_id = missing[0]
        raise DatasetError(
            MISSING_FILES.format(
                n=len(missing), listing=file, root=root, row=index + 2, name=image_id, hint=", as .jpg/.jpeg/.png"
            )
        )
    lesion_split: dict[str, str] = {}
    if not split_col:
        lesion_split = _split_lesions(
            {r[4]: 0 for r in records} | {r[4]: 1 for r in records if r[2]}, fractions, split_seed
        )
    samples = tuple(
        Sample(
            image_id,
            path,
            label,
            MappingProxyType(attrs),
            lesion_split[lesion_id] if split is None else split,
            cluster=lesion_id,
        )
        for image_id, path, label, attrs, lesion_id, split in records
    )
    attribute_names = SKIN_ATTRIBUTES + (("fitzpatrick",) if fitz_col else ())
    return Dataset(task="skin", root=root, samples=samples, attributes=attribute_names)


def _split_lesions(
    lesion_labels: Mapping[str, int], fractions: tuple[float, float, float], seed: int
) -> dict[str, str]:
    """Assign each lesion to a split: a seeded permutation of the sorted ids of each label.

    Sorting first makes the split independent of row order; stratifying by label keeps prevalence
    equal across splits. A lesion is malignant if any of its images is.
    """
    rng = np.random.default_rng(seed)
    assignment: dict[str, str] = {}
    for label in (0, 1):
        ids = sorted(lesion for lesion, y in lesion_labels.items() if y == label)
        order = rng.permutation(len(ids))
        n_train = round(fractions[0] * len(ids))
        n_val = min(round(fractions[1] * len(ids)), len(ids) - n_train)
        for rank, position in enumerate(order):
            split = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
            assignment[ids[position]] = split
    return assignment


# --------------------------------------------------------------------------------------------------
# Auto-detection


def _existing_root(root: str | os.PathLike[str]) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(ROOT_MISSING.format(root=path))
    return path


def detect_task(root: str | os.PathLike[str]) -> str:
    """``"fundus"`` for a FairVLMed layout, ``"skin"`` for HAM10000, else a :class:`DatasetError`."""
    path = _existing_root(root)
    if (path / SUMMARY_FILE).is_file():
        return "fundus"
    folders = _split_folders(path)
    if any(_npz_files(folder) for folder in folders.values()):
        return "fundus"
    if _find_ham_metadata(path) is not None:
        return "skin"
    raise DatasetError(NO_DATASET.format(root=path))


def load_dataset(path: str | os.PathLike[str], *, task: str | None = None, **options: Any) -> Dataset:
    """Load whichever supported layout sits at ``path``; ``options`` go to the matching loader.

    ``task`` ("fundus" or "skin") skips detection, e.g. for a folder that holds both layouts.
    """
    task = detect_task(path) if task is None else task
    if task == "fundus":
        return load_fairvlmed(path, **options)
    if task == "skin":
        return load_ham10000(path, **options)
    raise DatasetError(UNKNOWN_TASK.format(task=task))
