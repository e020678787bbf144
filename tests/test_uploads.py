"""Audit any model: an uploaded predictions CSV (inference.uploads) in Compare, next to FairDx runs."""

from __future__ import annotations

import pandas as pd
import pytest

from inference import compare_stats, compare_view, uploads
from inference.compare_engine import clear_cache, compare_runs
from training import rundir

VANILLA = rundir.read_run(rundir.DEMO_RUNS_DIR / "fundus-vanilla")


@pytest.fixture(autouse=True)
def empty_cache():
    clear_cache()
    yield
    clear_cache()


def demo_predictions() -> pd.DataFrame:
    return pd.read_csv(VANILLA.path / rundir.PREDICTIONS)


def write(tmp_path, frame: pd.DataFrame, name: str = "model.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def refused(path, tmp_path) -> str:
    with pytest.raises(uploads.UploadError) as caught:
        uploads.read_upload(path, tmp_path / "checked", task="fundus")
    assert not (tmp_path / "checked").exists() or not any((tmp_path / "checked").iterdir())  # nothing kept
    return str(caught.value)


def test_another_models_predictions_get_the_same_tables_and_are_paired_by_id(tmp_path):
    # "Another model": the vanilla run's scores, sharpened, written by someone else's script.
    frame = demo_predictions()
    frame["prob"] = frame["prob"].pow(0.7)
    path = write(tmp_path, frame.drop(columns=["margin"]), "my-model.csv")
    upload = uploads.read_upload(path, tmp_path / "checked", task="fundus")
    assert upload.label().startswith("my-model-") and upload.label().endswith(" (uploaded)")
    assert upload.threshold_rule == "youden_on_val" and 0 < upload.threshold < 1
    assert upload.n_rows == (frame["split"] == "test").sum() and not upload.degenerate
    assert upload.attributes == ["race", "ethnicity", "gender", "age_group"]
    comparison = compare_runs([VANILLA, upload], "race", bootstrap=200)
    assert comparison.table["method"].tolist() == ["vanilla", uploads.METHOD]
    assert compare_view.summary_table(comparison)["Method"].tolist() == ["Vanilla", uploads.METHOD_TITLE]
    versus = compare_stats.versus(comparison)
    assert versus.reference.runs == (VANILLA.label(),)
    assert set(versus.table["setting"]) == {upload.label()} and versus.table["p_value"].notna().all()
    view = compare_view.show([VANILLA, upload], "race", bootstrap=50)
    assert view.versus.iloc[0, 0].startswith(upload.label())


def test_a_constant_classifier_uploaded_is_flagged(tmp_path):
    frame = demo_predictions().drop(columns=["margin", "split"])
    frame["prob"] = 0.3
    upload = uploads.read_upload(write(tmp_path, frame), tmp_path / "checked", task="fundus")
    assert upload.degenerate and upload.threshold_rule == "default_0.5"
    comparison = compare_runs([upload], "race", bootstrap=0)
    assert "degenerate" in comparison.table["flags"].iloc[0]
    assert "flagged as degenerate" in compare_view.upload_status(upload)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns=["prob"]), "has no column 'prob'"),
        (lambda f: f[["label", "prob"]], "has no attribute column"),
        (lambda f: f.assign(prob=["high"] + list(f["prob"][1:])), "column 'prob' must hold probabilities in [0, 1]"),
        (lambda f: f.assign(label=[2] + list(f["label"][1:])), "column 'label' must hold only 0 and 1; found '2'"),
        (lambda f: f.assign(split="train"), "column 'split' may hold only val, test; found 'train'"),
        (lambda f: f.assign(split="val"), "has a 'split' column but no 'test' rows"),
        (lambda f: f.assign(id="same"), "column 'id' must name each sample once"),
        (lambda f: f.assign(race=[""] + list(f["race"][1:])), "column 'race' is empty in 1 row(s)"),
        (lambda f: f.iloc[:0], "has no rows"),
    ],
    ids=["no-prob", "no-attribute", "text-prob", "label-2", "bad-split", "no-test", "dup-ids", "empty-race", "empty"],
)
def test_bad_csvs_get_a_specific_message(tmp_path, change, message):
    assert message in refused(write(tmp_path, change(demo_predictions())), tmp_path)


def test_every_problem_is_named_at_once_and_big_or_broken_files_are_refused(tmp_path):
    both = demo_predictions().assign(label=3, prob=-1)
    text = refused(write(tmp_path, both), tmp_path)
    assert "'label' must hold only 0 and 1" in text and "'prob' must hold probabilities" in text
    big = tmp_path / "big.csv"
    with open(big, "wb") as handle:
        handle.truncate(50 * 1024 * 1024)  # a 50 MB file
    assert "is 52.4 MB; the limit is 21 MB" in refused(big, tmp_path)
    binary = tmp_path / "photo.csv"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    assert refused(binary, tmp_path).startswith("the upload 'photo.csv'")


def test_the_session_keeps_its_uploads_apart_and_forgets_them(tmp_path):
    frame = demo_predictions()
    folder = compare_view.upload_folder("session-1")
    first = compare_view.add_upload(write(tmp_path, frame, "a.csv"), "fundus", folder, ())
    again = compare_view.add_upload(write(tmp_path, frame, "a.csv"), "fundus", folder, first)
    assert len(again) == 1  # the same file uploaded twice is one model
    keys = [VANILLA.label(), again[0].label()]
    assert [s.label() for s in compare_view.selected_sources(keys, [VANILLA], "fundus", again)] == keys
    assert again[0].label() in {key for _, key in compare_view.source_choices([VANILLA], "fundus", again)}
    assert again[0].label() not in {key for _, key in compare_view.source_choices([VANILLA], "skin", again)}
    assert (again[0].path / rundir.PREDICTIONS).is_file()
    compare_view.forget_uploads(again)
    assert not again[0].path.exists()
    assert compare_view.upload_folder("../../etc").parent == folder.parent  # a session id cannot leave the folder
