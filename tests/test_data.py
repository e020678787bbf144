"""Loaders on small datasets written here in the real Harvard-FairVLMed and HAM10000 layouts."""

from __future__ import annotations

import csv
import random
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import exactly
from training import data
from training.data import (
    DatasetError,
    Sample,
    check_groups,
    group_key,
    load_dataset,
    load_fairvlmed,
    load_ham10000,
)

# --------------------------------------------------------------------------------------------------
# Fundus fixtures (Harvard-FairVLMed layout)

RACES = ("asian", "black", "white")
ETHNICITIES = {0: "non-hispanic", 1: "hispanic", -1: "unknown"}
FOLDERS = ("Training", "Validation", "Test")

# (index, split, age, male, race code, ethnicity code, glaucoma) — every group occurs in training.
FUNDUS_ROWS = [
    (1, "train", 35.0, 0, 0, 0, 1),
    (2, "train", 40.0, 1, 1, 1, 0),
    (3, "train", 59.9, 0, 2, -1, 1),
    (4, "train", 60.0, 1, 2, 0, 0),
    (5, "train", 72.5, 0, 1, 0, 0),
    (6, "train", 39.9, 1, 0, 1, 1),
    (7, "train", 81.0, 0, 2, -1, 0),
    (8, "train", 55.0, 1, 2, 0, 1),
    (9, "val", 45.0, 0, 2, 0, 0),
    (10, "val", 65.0, 1, 1, 1, 1),
    (11, "test", 30.0, 0, 0, 0, 1),
    (12, "test", 70.0, 1, 2, -1, 0),
]
EXPECTED_FUNDUS = {
    "data_00001": ("train", 1, {"race": "Asian", "ethnicity": "Non-Hispanic", "gender": "Female", "age_group": "0-40"}),
    "data_00002": ("train", 0, {"race": "Black", "ethnicity": "Hispanic", "gender": "Male", "age_group": "40-60"}),
    "data_00003": ("train", 1, {"race": "White", "ethnicity": "Unknown", "gender": "Female", "age_group": "40-60"}),
    "data_00004": ("train", 0, {"race": "White", "ethnicity": "Non-Hispanic", "gender": "Male", "age_group": "60+"}),
    "data_00010": ("val", 1, {"race": "Black", "ethnicity": "Hispanic", "gender": "Male", "age_group": "60+"}),
    "data_00012": ("test", 0, {"race": "White", "ethnicity": "Unknown", "gender": "Male", "age_group": "60+"}),
}


def fundus_image(index: int, rgb: bool = False) -> np.ndarray:
    """A 6x8 (HxW) image whose pixels encode the sample, so load_image can be checked exactly."""
    base = ((np.arange(48).reshape(6, 8) + index * 10) % 250).astype(np.uint8)
    return np.stack([base, base + 1, base + 2], axis=2) if rgb else base


def write_fairvlmed(
    root: Path,
    rows=FUNDUS_ROWS,
    *,
    folders=FOLDERS,
    summary: str | None = "strings",
    npz_keys: str = "ints",
    placeholder_npz: bool = False,
) -> Path:
    """Write the layout; ``summary`` is "strings", "ints" or None, ``npz_keys`` "ints", "strings" or "male"."""
    split_folder = dict(zip(("train", "val", "test"), folders, strict=True))
    for index, split, age, male, race, ethnicity, glaucoma in rows:
        folder = root / split_folder[split]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"data_{index:05d}.npz"
        if placeholder_npz:
            path.write_bytes(b"")
            continue
        meta = {"age": np.float64(age), "glaucoma": np.int64(glaucoma), "note": np.array("a clinical note")}
        if npz_keys == "male":
            meta |= {"male": np.int64(male), "hispanic": np.int64(ethnicity), "race": np.int64(race)}
        elif npz_keys == "strings":
            meta |= {
                "gender": np.array(["Female", "MALE"][male]),
                "ethnicity": np.array(ETHNICITIES[ethnicity]),
                "race": np.array(RACES[race].upper()),
            }
        else:
            meta |= {"gender": np.int64(male), "ethnicity": np.int64(ethnicity), "race": np.int64(race)}
        np.savez_compressed(path, slo_fundus=fundus_image(index, rgb=index % 2 == 0), **meta)
    if summary:
        write_summary(root, rows, encoding=summary)
    return root


def write_summary(root: Path, rows=FUNDUS_ROWS, *, encoding: str = "strings", use=None) -> None:
    use = use or {"train": "training", "val": "validation", "test": "test"}
    with open(root / "data_summary.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "age", "gender", "race", "ethnicity", "language", "note", "glaucoma", "use"])
        for index, split, age, male, race, ethnicity, glaucoma in rows:
            if encoding == "strings":
                values = [["female", "male"][male], RACES[race], ETHNICITIES[ethnicity], ["no", "yes"][glaucoma]]
            else:  # integer codes, as some re-exports have them
                values = [male, race, ethnicity, glaucoma]
            gender, race_v, ethnicity_v, glaucoma_v = values
            writer.writerow(
                [
                    f"data_{index:05d}.npz",
                    age,
                    gender,
                    race_v,
                    ethnicity_v,
                    "english",
                    "multi-line\nnote, with comma",
                    glaucoma_v,
                    use[split],
                ]
            )


def records(dataset: data.Dataset) -> dict[str, tuple[str, int, dict[str, str]]]:
    return {s.id: (s.split, s.label, dict(s.attributes)) for s in dataset.samples}


def assert_expected_fundus(dataset: data.Dataset) -> None:
    assert dataset.task == "fundus"
    assert dataset.attributes == ("race", "ethnicity", "gender", "age_group")
    assert len(dataset.samples) == 12
    got = records(dataset)
    for sample_id, expected in EXPECTED_FUNDUS.items():
        assert got[sample_id] == expected
    assert [len(dataset.split(s)) for s in ("train", "val", "test")] == [8, 2, 2]


# --------------------------------------------------------------------------------------------------
# Fundus: values in every encoding


def test_fairvlmed_from_summary_strings(tmp_path):
    dataset = load_fairvlmed(write_fairvlmed(tmp_path))
    assert_expected_fundus(dataset)
    sample = dataset.split("train")[0]
    assert sample == Sample("data_00001", tmp_path / "Training" / "data_00001.npz", 1, sample.attributes, "train")
    assert dataset.root == tmp_path


def test_fairvlmed_from_summary_integer_codes(tmp_path):
    assert_expected_fundus(load_fairvlmed(write_fairvlmed(tmp_path, summary="ints")))


@pytest.mark.parametrize("npz_keys", ["ints", "strings", "male"])
def test_fairvlmed_from_npz_without_summary(tmp_path, npz_keys):
    dataset = load_fairvlmed(
        write_fairvlmed(tmp_path, summary=None, npz_keys=npz_keys, folders=("train", "val", "test"))
    )
    assert_expected_fundus(dataset)
    assert dataset.split("val")[0].path == tmp_path / "val" / "data_00009.npz"


def test_fairvlmed_summary_and_npz_agree(tmp_path):
    from_summary = load_fairvlmed(write_fairvlmed(tmp_path / "a"))
    from_npz = load_fairvlmed(write_fairvlmed(tmp_path / "b", summary=None))
    assert records(from_summary) == records(from_npz)


def test_fairvlmed_summary_with_male_and_hispanic_columns(tmp_path):
    write_fairvlmed(tmp_path, summary="ints")
    path = tmp_path / "data_summary.csv"
    path.write_text(path.read_text().replace("gender", "male", 1).replace("ethnicity", "hispanic", 1))
    assert_expected_fundus(load_fairvlmed(tmp_path))


def test_samples_are_hashable_and_read_only(tmp_path):
    dataset = load_fairvlmed(write_fairvlmed(tmp_path, placeholder_npz=True))
    assert len(set(dataset.samples)) == 12
    with pytest.raises(TypeError):
        dataset.samples[0].attributes["race"] = "Black"


def test_fairvlmed_folder_names_any_case(tmp_path):
    dataset = load_fairvlmed(write_fairvlmed(tmp_path, folders=("TRAINING", "Val", "test")))
    assert [s.id for s in dataset.split("test")] == ["data_00011", "data_00012"]


def test_summary_does_not_open_npz_files(tmp_path):
    """With data_summary.csv present, files are only checked to exist: empty placeholders load fine."""
    dataset = load_fairvlmed(write_fairvlmed(tmp_path, placeholder_npz=True))
    assert_expected_fundus(dataset)


def test_summary_of_many_samples_loads_without_opening_images(tmp_path, monkeypatch):
    """With data_summary.csv, loading reads metadata only (timings belong in bench/, not here)."""
    rows = [(i, ("train", "val", "test")[i % 3], 20 + i % 70, i % 2, i % 3, i % 3 - 1, i % 2) for i in range(1, 3001)]
    write_fairvlmed(tmp_path, rows, placeholder_npz=True)

    def no_npz(*args, **kwargs):
        raise AssertionError("an npz file was opened while loading metadata")

    monkeypatch.setattr(np, "load", no_npz)
    dataset = load_fairvlmed(tmp_path)
    assert len(dataset.samples) == 3000


def test_folder_wins_over_use_column_with_warning(tmp_path):
    write_fairvlmed(tmp_path)
    write_summary(tmp_path, use={"train": "training", "val": "test", "test": "test"})
    mismatch = data.SPLIT_MISMATCH_WARNING.format(n=2, name="data_00009.npz", folder="Validation", use="test")
    with pytest.warns(UserWarning, match=exactly(mismatch)) as caught:
        dataset = load_fairvlmed(tmp_path)
    assert str(caught[0].message) == mismatch
    assert [s.id for s in dataset.split("val")] == ["data_00009", "data_00010"]


def test_unlisted_npz_files_are_skipped_with_warning(tmp_path):
    write_fairvlmed(tmp_path)
    write_summary(tmp_path, FUNDUS_ROWS[1:])
    unlisted = data.UNLISTED_FILES_WARNING.format(n=1, root=tmp_path, name="data_00001.npz")
    with pytest.warns(UserWarning, match=exactly(unlisted)) as caught:
        dataset = load_fairvlmed(tmp_path)
    assert str(caught[0].message) == unlisted
    assert len(dataset.samples) == 11


def test_files_in_root_take_split_from_use_column(tmp_path):
    write_fairvlmed(tmp_path, summary=None)
    for folder in FOLDERS:
        for path in (tmp_path / folder).iterdir():
            path.rename(tmp_path / path.name)
        (tmp_path / folder).rmdir()
    write_summary(tmp_path)
    dataset = load_fairvlmed(tmp_path)
    assert_expected_fundus(dataset)
    assert dataset.split("test")[0].path == tmp_path / "data_00011.npz"


def test_no_warning_on_clean_dataset(tmp_path):
    write_fairvlmed(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_fairvlmed(tmp_path)


# --------------------------------------------------------------------------------------------------
# Age bins, groups and intersections


def test_age_group_labels():
    assert data.age_group_labels() == ("0-40", "40-60", "60+")
    assert data.age_group_labels((50,)) == ("0-50", "50+")
    assert data.age_group_labels((18, 45.5, 65)) == ("0-18", "18-45.5", "45.5-65", "65+")


def test_custom_age_bins_are_half_open(tmp_path):
    dataset = load_fairvlmed(write_fairvlmed(tmp_path), age_bins=(40, 60, 75))
    ages = {s.id: s.attributes["age_group"] for s in dataset.samples}
    # ages 39.9, 40, 59.9, 60, 72.5, 81
    assert [ages[f"data_{i:05d}"] for i in (6, 2, 3, 4, 5, 7)] == ["0-40", "40-60", "40-60", "60-75", "60-75", "75+"]


@pytest.mark.parametrize("bins", [(), (60, 40), (0, 40), ("old",), (40, 40)])
def test_bad_age_bins(tmp_path, bins):
    write_fairvlmed(tmp_path)
    with pytest.raises(DatasetError) as error:
        load_fairvlmed(tmp_path, age_bins=bins)
    assert str(error.value) == data.BAD_AGE_BINS.format(bins=bins)


def test_group_key_and_intersections(tmp_path):
    dataset = load_fairvlmed(write_fairvlmed(tmp_path))
    sample = dataset.samples[3]  # data_00004: White, Non-Hispanic, Male, 60+
    assert group_key(sample, "race") == "White"
    assert group_key(sample, "gender+age_group") == "Male & 60+"
    assert group_key(sample, "race + gender + ethnicity") == "White & Male & Non-Hispanic"
    assert data.GROUP_JOINER == " & " and data.ATTRIBUTE_JOINER == "+"


def test_group_counts(tmp_path):
    dataset = load_fairvlmed(write_fairvlmed(tmp_path))
    assert dataset.group_counts("race") == {"Asian": 2, "Black": 2, "White": 4}
    assert dataset.group_counts("gender", split="test") == {"Female": 1, "Male": 1}
    assert dataset.group_counts("race+gender") == {
        "Asian & Female": 1,
        "Asian & Male": 1,
        "Black & Female": 1,
        "Black & Male": 1,
        "White & Female": 2,
        "White & Male": 2,
    }
    assert check_groups(dataset, "age_group") == {"0-40": 2, "40-60": 3, "60+": 3}


def test_unknown_attribute(tmp_path):
    dataset = load_fairvlmed(write_fairvlmed(tmp_path))
    message = "unknown attribute 'rase'; available: race, ethnicity, gender, age_group"
    for call in (
        lambda: check_groups(dataset, "rase"),
        lambda: dataset.group_counts("gender+rase"),
        lambda: group_key(dataset.samples[0], "rase"),
    ):
        with pytest.raises(DatasetError) as error:
            call()
        assert str(error.value) == message


def test_group_missing_from_training(tmp_path):
    rows = [r for r in FUNDUS_ROWS if not (r[1] == "train" and r[4] == 0)]  # no Asian in training
    dataset = load_fairvlmed(write_fairvlmed(tmp_path, rows))
    with pytest.raises(DatasetError) as error:
        check_groups(dataset, "race")
    assert str(error.value) == (
        "attribute 'race' has a group 'Asian' with 0 training samples; pick another attribute or merge groups"
    )
    with pytest.raises(DatasetError) as error:
        check_groups(dataset, "race+gender")
    assert str(error.value) == data.EMPTY_GROUP.format(
        attribute="race+gender", group="Asian & Female", split="training"
    )


def test_empty_split_and_unknown_split(tmp_path):
    dataset = load_fairvlmed(write_fairvlmed(tmp_path, [r for r in FUNDUS_ROWS if r[1] != "val"]))
    with pytest.raises(DatasetError) as error:
        check_groups(dataset, "race", split="val")
    assert str(error.value) == "split 'val' has no samples; check the dataset's split folders or split column"
    with pytest.raises(DatasetError) as error:
        dataset.split("validation")
    assert str(error.value) == "unknown split 'validation'; expected one of train, val, test"


# --------------------------------------------------------------------------------------------------
# Fundus images


def test_npz_load_image_gray_and_rgb(tmp_path):
    dataset = load_fairvlmed(write_fairvlmed(tmp_path))
    gray = next(s for s in dataset.samples if s.id == "data_00001").load_image()
    assert gray.mode == "RGB" and gray.size == (8, 6)
    pixels = np.asarray(gray)
    assert np.array_equal(pixels[:, :, 0], fundus_image(1)) and np.array_equal(pixels[:, :, 2], fundus_image(1))
    rgb = next(s for s in dataset.samples if s.id == "data_00002").load_image()
    assert rgb.mode == "RGB" and np.array_equal(np.asarray(rgb), fundus_image(2, rgb=True))


def test_npz_load_image_single_channel(tmp_path):
    path = tmp_path / "data_00001.npz"
    np.savez(path, slo_fundus=fundus_image(1)[:, :, None])
    image = Sample("data_00001", path, 0, {}, "train").load_image()
    assert image.mode == "RGB" and image.size == (8, 6)


def test_npz_load_image_errors(tmp_path):
    corrupt = tmp_path / "data_00001.npz"
    corrupt.write_bytes(b"not a zip file")
    with pytest.raises(DatasetError) as error:
        Sample("data_00001", corrupt, 0, {}, "train").load_image()
    assert str(error.value).startswith(f"cannot read {corrupt}: ")
    assert str(error.value).endswith("; re-download the file or delete it")

    no_image = tmp_path / "data_00002.npz"
    np.savez(no_image, glaucoma=1, age=50)
    with pytest.raises(DatasetError) as error:
        Sample("data_00002", no_image, 0, {}, "train").load_image()
    assert str(error.value) == (
        f"{no_image} has no key slo_fundus; found: age, glaucoma. Re-export the file with this key"
    )

    floats = tmp_path / "data_00003.npz"
    np.savez(floats, slo_fundus=np.zeros((6, 8), dtype=np.float32))
    with pytest.raises(DatasetError) as error:
        Sample("data_00003", floats, 0, {}, "train").load_image()
    assert str(error.value) == (
        f"{floats}: key 'slo_fundus' has dtype float32 and shape (6, 8); expected a uint8 array of shape HxW or HxWx3"
    )

    missing = tmp_path / "data_00004.npz"
    with pytest.raises(DatasetError) as error:
        Sample("data_00004", missing, 0, {}, "train").load_image()
    assert str(error.value) == f"cannot read {missing}: file not found; re-download the file or delete it"


# --------------------------------------------------------------------------------------------------
# Fundus errors


def rewrite_summary_cell(root: Path, row: int, column: str, value: str) -> None:
    """Set one cell; ``row`` is numbered as a spreadsheet shows it (header = row 1)."""
    path = root / "data_summary.csv"
    with open(path, newline="") as handle:
        table = list(csv.reader(handle))
    table[row - 1][table[0].index(column)] = value
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(table)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        (
            "race",
            "martian",
            (
                "data_summary.csv row 17: column 'race' has value 'martian'; "
                "expected one of asian, black, white or 0, 1, 2"
            ),
        ),
        ("gender", "3", "data_summary.csv row 17: column 'gender' has value '3'; expected one of female, male or 0, 1"),
        (
            "ethnicity",
            "latino",
            (
                "data_summary.csv row 17: column 'ethnicity' has value 'latino'; "
                "expected one of non-hispanic, hispanic, unknown or 0, 1, -1"
            ),
        ),
        (
            "glaucoma",
            "maybe",
            "data_summary.csv row 17: column 'glaucoma' has value 'maybe'; expected one of yes, no or 0, 1",
        ),
        (
            "use",
            "holdout",
            "data_summary.csv row 17: column 'use' has value 'holdout'; expected one of training, validation, test",
        ),
        (
            "age",
            "old",
            "data_summary.csv row 17: column 'age' has value 'old'; expected an age in years (a number >= 0)",
        ),
        ("age", "", "data_summary.csv row 17: column 'age' has value ''; expected an age in years (a number >= 0)"),
    ],
)
def test_summary_bad_value(tmp_path, column, value, message):
    rows = [(i, "train", 50.0, i % 2, i % 3, 0, i % 2) for i in range(1, 20)]
    write_fairvlmed(tmp_path, rows, placeholder_npz=True)
    rewrite_summary_cell(tmp_path, 17, column, value)
    with pytest.raises(DatasetError) as error:
        load_fairvlmed(tmp_path)
    assert str(error.value) == message


def test_npz_bad_value_and_missing_key(tmp_path):
    write_fairvlmed(tmp_path, FUNDUS_ROWS[:2], summary=None)
    path = tmp_path / "Training" / "data_00002.npz"
    np.savez(path, slo_fundus=fundus_image(2), race=np.int64(7), gender=1, ethnicity=0, age=50.0, glaucoma=0)
    with pytest.raises(DatasetError) as error:
        load_fairvlmed(tmp_path)
    assert str(error.value) == (
        "Training/data_00002.npz: key 'race' has value '7'; expected one of asian, black, white or 0, 1, 2"
    )

    np.savez(path, slo_fundus=fundus_image(2), race=1, ethnicity=0, age=50.0, glaucoma=0)
    with pytest.raises(DatasetError) as error:
        load_fairvlmed(tmp_path)
    assert str(error.value) == (
        "Training/data_00002.npz has no key 'gender' or 'male'; found: age, ethnicity, glaucoma, race, slo_fundus. "
        "Re-export the file with this key"
    )


def test_npz_unreadable_during_metadata(tmp_path):
    write_fairvlmed(tmp_path, FUNDUS_ROWS[:2], summary=None)
    path = tmp_path / "Training" / "data_00002.npz"
    path.write_bytes(b"\x00" * 10)
    with pytest.raises(DatasetError) as error:
        load_fairvlmed(tmp_path)
    assert str(error.value).startswith(f"cannot read {path}: ")


def test_summary_missing_column(tmp_path):
    write_fairvlmed(tmp_path)
    text = (tmp_path / "data_summary.csv").read_text().replace("race", "ancestry", 1)
    (tmp_path / "data_summary.csv").write_text(text)
    with pytest.raises(DatasetError) as error:
        load_fairvlmed(tmp_path)
    assert str(error.value) == (
        "data_summary.csv has no column 'race'; found: filename, age, gender, ancestry, ethnicity, language, note, "
        "glaucoma, use. Add or rename the column"
    )


def test_summary_lists_missing_files(tmp_path):
    write_fairvlmed(tmp_path)
    (tmp_path / "Validation" / "data_00010.npz").unlink()
    (tmp_path / "Test" / "data_00012.npz").unlink()
    with pytest.raises(DatasetError) as error:
        load_fairvlmed(tmp_path)
    assert str(error.value) == (
        f"2 file(s) listed in data_summary.csv were not found under {tmp_path} "
        "(first: row 11, 'data_00010.npz', expected in Validation/); "
        "restore them or delete their rows from data_summary.csv"
    )


def test_summary_duplicate_row(tmp_path):
    write_fairvlmed(tmp_path, placeholder_npz=True)
    rewrite_summary_cell(tmp_path, 5, "filename", "data_00001.npz")
    with pytest.raises(DatasetError) as error:
        load_fairvlmed(tmp_path)
    assert str(error.value) == (
        "data_summary.csv row 5: filename 'data_00001.npz' already appears in row 2; remove the duplicate row"
    )


def test_missing_split_folders(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetError) as error:
        load_fairvlmed(tmp_path)
    assert str(error.value) == (
        f"no split folders in {tmp_path}: expected Training/, Validation/ and Test/ (or train/, val/, test/) "
        "holding data_XXXXX.npz files"
    )


def test_two_folders_for_one_split(tmp_path):
    write_fairvlmed(tmp_path)
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError) as error:
        load_fairvlmed(tmp_path)
    assert str(error.value) == f"{tmp_path} has two folders for split 'train' (Training/, train/); keep one"


def test_empty_split_folders(tmp_path):
    for folder in FOLDERS:
        (tmp_path / folder).mkdir()
    with pytest.raises(DatasetError) as error:
        load_fairvlmed(tmp_path)
    assert str(error.value) == f"no samples found in {tmp_path}: the split folders hold no .npz files"


# --------------------------------------------------------------------------------------------------
# HAM10000 fixtures

HAM_COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
DX_CYCLE = ("nv", "mel", "bkl", "bcc", "nv", "akiec", "df", "vasc", "nv", "nv")


def ham_rows(n_lesions: int = 40) -> list[dict[str, str]]:
    """Lesions with 1-3 images each; dx, age and sex vary so every group and both labels occur."""
    rows, image = [], 27000
    for lesion in range(n_lesions):
        dx = DX_CYCLE[lesion % len(DX_CYCLE)]
        age = "" if lesion % 13 == 5 else str(float(15 + (lesion * 7) % 70))
        sex = ("male", "female", "unknown")[lesion % 3] if lesion % 11 else "Male"
        for _ in range(1 + lesion % 3):
            rows.append(
                {
                    "lesion_id": f"HAM_{lesion:07d}",
                    "image_id": f"ISIC_{image:07d}",
                    "dx": dx,
                    "dx_type": "histo",
                    "age": age,
                    "sex": sex,
                    "localization": "back",
                }
            )
            image += 1
    return rows


def write_ham(
    root: Path,
    rows=None,
    *,
    folders=("HAM10000_images_part_1", "HAM10000_images_part_2"),
    metadata: str = "HAM10000_metadata.csv",
    extra_columns=(),
) -> Path:
    rows = ham_rows() if rows is None else rows
    root.mkdir(parents=True, exist_ok=True)
    columns = HAM_COLUMNS + list(extra_columns)
    delimiter = "\t" if metadata.endswith((".tab", ".tsv")) else ","
    with open(root / metadata, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns, delimiter=delimiter, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    for i, row in enumerate(rows):
        folder = root / folders[i % len(folders)]
        folder.mkdir(exist_ok=True)
        Image.new("RGB", (10, 6), (i % 256, 0, 0)).save(folder / f"{row['image_id']}.jpg")
    return root


def lesion_splits(dataset: data.Dataset, rows) -> dict[str, set[str]]:
    lesion_of = {r["image_id"]: r["lesion_id"] for r in rows}
    splits = defaultdict(set)
    for sample in dataset.samples:
        splits[lesion_of[sample.id]].add(sample.split)
    return splits


# --------------------------------------------------------------------------------------------------
# HAM10000


def test_ham_records(tmp_path):
    rows = ham_rows()
    dataset = load_ham10000(write_ham(tmp_path, rows))
    assert dataset.task == "skin" and dataset.attributes == ("sex", "age_group")
    assert len(dataset.samples) == len(rows) == 79
    by_id = {s.id: s for s in dataset.samples}
    first = by_id["ISIC_0027000"]  # lesion 0: nv, age 15, male
    assert (first.label, dict(first.attributes)) == (0, {"sex": "Male", "age_group": "0-40"})
    assert first.path == tmp_path / "HAM10000_images_part_1" / "ISIC_0027000.jpg"
    second = by_id["ISIC_0027001"]  # lesion 1: mel, age 22, female, in part 2
    assert (second.label, dict(second.attributes)) == (1, {"sex": "Female", "age_group": "0-40"})
    assert second.path.parent.name == "HAM10000_images_part_2"
    lesion5 = [s for s in dataset.samples if s.id in {r["image_id"] for r in rows if r["lesion_id"] == "HAM_0000005"}]
    assert {s.attributes["age_group"] for s in lesion5} == {"Unknown"}  # empty age
    labels = {r["image_id"]: int(r["dx"] in ("mel", "bcc", "akiec")) for r in rows}
    assert {s.id: s.label for s in dataset.samples} == labels
    assert Counter(s.attributes["sex"] for s in dataset.samples) == Counter({"Male": 19, "Female": 24, "Unknown": 36})
    assert Counter(s.attributes["sex"] for s in dataset.samples) == Counter(r["sex"].capitalize() for r in rows)


def test_ham_tab_single_folder_and_fitzpatrick(tmp_path):
    rows = ham_rows(12)
    for i, row in enumerate(rows):
        row["fitzpatrick"] = ("1", "II", "iii", "4", "V", "6", "")[i % 7]
    dataset = load_ham10000(
        write_ham(tmp_path, rows, folders=("images",), metadata="HAM10000_metadata.tab", extra_columns=("fitzpatrick",))
    )
    assert dataset.attributes == ("sex", "age_group", "fitzpatrick")
    assert [s.attributes["fitzpatrick"] for s in dataset.samples[:7]] == ["I", "II", "III", "IV", "V", "VI", "Unknown"]
    assert "localization" not in dataset.samples[0].attributes


def test_ham_malignant_set_is_configurable(tmp_path):
    rows = ham_rows()
    dataset = load_ham10000(write_ham(tmp_path, rows), malignant=("mel",))
    assert {s.id: s.label for s in dataset.samples} == {r["image_id"]: int(r["dx"] == "mel") for r in rows}
    with pytest.raises(DatasetError) as error:
        load_ham10000(tmp_path, malignant=("mel", "melanoma"))
    assert (
        str(error.value) == "unknown dx code 'melanoma' in malignant; valid codes: akiec, bcc, bkl, df, mel, nv, vasc"
    )


def test_ham_split_by_lesion(tmp_path):
    rows = ham_rows(200)
    dataset = load_ham10000(write_ham(tmp_path, rows, folders=("images",)))
    splits = lesion_splits(dataset, rows)
    assert all(len(s) == 1 for s in splits.values())  # no lesion in two splits
    per_split = Counter(next(iter(s)) for s in splits.values())
    assert per_split == {"train": 140, "val": 20, "test": 40}
    # stratified by label: malignant lesions are 30 % of every split
    malignant = {r["lesion_id"] for r in rows if r["dx"] in ("mel", "bcc", "akiec")}
    share = {
        split: sum(1 for les, s in splits.items() if split in s and les in malignant) / per_split[split]
        for split in per_split
    }
    assert share == pytest.approx({"train": 0.3, "val": 0.3, "test": 0.3})


def test_ham_split_fractions_and_seed(tmp_path):
    rows = ham_rows(200)
    root = write_ham(tmp_path, rows, folders=("images",))
    a = load_ham10000(root, split_fractions=(0.5, 0.25, 0.25), split_seed=3)
    per_split = Counter(next(iter(s)) for s in lesion_splits(a, rows).values())
    assert per_split == {"train": 100, "val": 50, "test": 50}
    again = load_ham10000(root, split_fractions=(0.5, 0.25, 0.25), split_seed=3)
    other = load_ham10000(root, split_fractions=(0.5, 0.25, 0.25), split_seed=4)
    assert [s.split for s in again.samples] == [s.split for s in a.samples]
    assert [s.split for s in other.samples] != [s.split for s in a.samples]


def test_ham_split_ignores_row_order(tmp_path):
    rows = ham_rows(60)
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    a = load_ham10000(write_ham(tmp_path / "a", rows, folders=("images",)))
    b = load_ham10000(write_ham(tmp_path / "b", shuffled, folders=("images",)))
    assert {s.id: s.split for s in a.samples} == {s.id: s.split for s in b.samples}


def test_ham_split_column_wins(tmp_path):
    rows = ham_rows(10)
    for i, row in enumerate(rows):
        row["split"] = ("train", "Validation", "TEST")[i % 3]
    dataset = load_ham10000(write_ham(tmp_path, rows, extra_columns=("split",)))
    assert [s.split for s in dataset.samples] == [("train", "val", "test")[i % 3] for i in range(len(rows))]
    rows[4]["split"] = "holdout"
    write_ham(tmp_path, rows, extra_columns=("split",))
    with pytest.raises(DatasetError) as error:
        load_ham10000(tmp_path)
    assert str(error.value) == (
        "HAM10000_metadata.csv row 6: column 'split' has value 'holdout'; expected one of train, val, test"
    )


def test_ham_duplicate_image_folders_pick_first_sorted(tmp_path):
    """The Kaggle download ships every image twice; loading must not fail and must be deterministic."""
    rows = ham_rows(5)
    write_ham(tmp_path, rows, folders=("HAM10000_images_part_1",))
    write_ham(tmp_path / "ham10000_images_part_1", rows, folders=("copy",), metadata="unused.csv")
    dataset = load_ham10000(tmp_path)
    assert all(s.path.parent == tmp_path / "HAM10000_images_part_1" for s in dataset.samples)


def test_ham_load_image_exif_and_png(tmp_path):
    rows = ham_rows(2)
    write_ham(tmp_path, rows, folders=("images",))
    rotated = tmp_path / "images" / f"{rows[0]['image_id']}.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    Image.new("L", (10, 6), 128).save(rotated, exif=exif)
    png = tmp_path / "images" / f"{rows[1]['image_id']}.jpg"
    png.unlink()
    Image.new("RGBA", (10, 6), (0, 255, 0, 255)).save(png.with_suffix(".png"))
    dataset = load_ham10000(tmp_path)
    first, second = dataset.samples[0].load_image(), dataset.samples[1].load_image()
    assert (first.mode, first.size) == ("RGB", (6, 10))
    assert (second.mode, second.size) == ("RGB", (10, 6)) and second.getpixel((0, 0)) == (0, 255, 0)


def test_ham_corrupt_jpeg(tmp_path):
    rows = ham_rows(2)
    write_ham(tmp_path, rows, folders=("images",))
    path = tmp_path / "images" / f"{rows[0]['image_id']}.jpg"
    path.write_bytes(b"\xff\xd8\xff garbage")
    sample = load_ham10000(tmp_path).samples[0]
    with pytest.raises(DatasetError) as error:
        sample.load_image()
    assert str(error.value).startswith(f"cannot read {path}: ")
    assert str(error.value).endswith("; re-download the file or delete it")


def test_ham_missing_images(tmp_path):
    rows = ham_rows(10)
    write_ham(tmp_path, rows)
    for image_id in ("ISIC_0027003", "ISIC_0027007"):
        next(tmp_path.rglob(f"{image_id}.jpg")).unlink()
    with pytest.raises(DatasetError) as error:
        load_ham10000(tmp_path)
    assert str(error.value) == (
        f"2 file(s) listed in HAM10000_metadata.csv were not found under {tmp_path} "
        "(first: row 5, 'ISIC_0027003', as .jpg/.jpeg/.png); "
        "restore them or delete their rows from HAM10000_metadata.csv"
    )


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        (
            "dx",
            "melanoma",
            (
                "HAM10000_metadata.csv row 4: column 'dx' has value 'melanoma'; "
                "expected one of akiec, bcc, bkl, df, mel, nv, vasc"
            ),
        ),
        ("sex", "x", "HAM10000_metadata.csv row 4: column 'sex' has value 'x'; expected one of female, male, unknown"),
        (
            "age",
            "-3",
            (
                "HAM10000_metadata.csv row 4: column 'age' has value '-3'; "
                "expected an age in years (a number >= 0) or an empty cell"
            ),
        ),
        ("lesion_id", "", "HAM10000_metadata.csv row 4: column 'lesion_id' has value ''; expected a non-empty id"),
    ],
)
def test_ham_bad_value(tmp_path, column, value, message):
    rows = ham_rows(5)
    rows[2][column] = value
    with pytest.raises(DatasetError) as error:
        load_ham10000(write_ham(tmp_path, rows))
    assert str(error.value) == message


def test_ham_missing_column_and_duplicate(tmp_path):
    rows = ham_rows(5)
    write_ham(tmp_path, rows)
    meta = tmp_path / "HAM10000_metadata.csv"
    meta.write_text(meta.read_text().replace("lesion_id", "lesion", 1))
    with pytest.raises(DatasetError) as error:
        load_ham10000(tmp_path)
    assert str(error.value) == (
        "HAM10000_metadata.csv has no column 'lesion_id'; found: lesion, image_id, dx, dx_type, age, sex, "
        "localization. Add or rename the column"
    )
    rows[3]["image_id"] = rows[0]["image_id"]
    write_ham(tmp_path, rows)
    with pytest.raises(DatasetError) as error:
        load_ham10000(tmp_path)
    assert str(error.value) == (
        "HAM10000_metadata.csv row 5: image_id 'ISIC_0027000' already appears in row 2; remove the duplicate row"
    )


@pytest.mark.parametrize("fractions", [(0.7, 0.2, 0.2), (0.5, 0.5), (1.2, -0.1, -0.1), ("a", 0, 1)])
def test_ham_bad_fractions(tmp_path, fractions):
    write_ham(tmp_path, ham_rows(3))
    with pytest.raises(DatasetError) as error:
        load_ham10000(tmp_path, split_fractions=fractions)
    assert str(error.value) == data.BAD_FRACTIONS.format(fractions=fractions)


def test_ham_two_metadata_files(tmp_path):
    write_ham(tmp_path, ham_rows(3))
    write_ham(tmp_path, ham_rows(3), metadata="HAM10000_metadata.tab")
    with pytest.raises(DatasetError) as error:
        load_ham10000(tmp_path)
    assert str(error.value) == (
        f"{tmp_path} holds several HAM10000 metadata files (HAM10000_metadata.csv, HAM10000_metadata.tab); keep one"
    )


# --------------------------------------------------------------------------------------------------
# Auto-detection


def test_load_dataset_detects_both_layouts(tmp_path):
    fundus = load_dataset(write_fairvlmed(tmp_path / "fundus", summary=None), age_bins=(50,))
    assert fundus.task == "fundus" and {s.attributes["age_group"] for s in fundus.samples} == {"0-50", "50+"}
    skin = load_dataset(write_ham(tmp_path / "skin" / "archive", ham_rows(5)).parent)  # metadata one folder down
    assert skin.task == "skin" and len(skin.samples) == 9
    assert load_dataset(tmp_path / "skin", task="skin", malignant=("nv",)).samples[0].label == 1


def test_load_dataset_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as error:
        load_dataset(tmp_path / "empty")
    assert str(error.value) == (
        f"no dataset found in {tmp_path / 'empty'}: expected data_summary.csv + Training/Validation/Test folders "
        "(Harvard-FairVLMed) or HAM10000_metadata.csv + image folders (HAM10000)"
    )
    with pytest.raises(DatasetError) as error:
        load_dataset(tmp_path / "nowhere")
    assert str(error.value) == f"dataset folder {tmp_path / 'nowhere'} does not exist; check the path"
    with pytest.raises(DatasetError) as error:
        load_dataset(tmp_path / "empty", task="xray")
    assert str(error.value) == "unknown task 'xray'; expected one of fundus, skin"
    assert issubclass(DatasetError, ValueError)
