"""The synthetic benchmark: bytes, layouts, exact group mix, and bias that exists only when asked for."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from training import synth
from training.synth import BiasConfig

ROOT = Path(__file__).resolve().parents[1]
NO_BIAS = BiasConfig(strength=0.0)
DEFAULT = BiasConfig()


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def fundus_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("f") / "fundus"
    return synth.generate_fundus(out, n=200, seed=3, image_size=48, workers=1, progress=False)


@pytest.fixture(scope="module")
def skin_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("s") / "skin"
    return synth.generate_skin(out, n=120, seed=3, image_size=48, workers=1, progress=False)


# ----------------------------------------------------------------------------- determinism


def test_same_arguments_give_identical_bytes_whatever_the_worker_count(fundus_dir, skin_dir, tmp_path):
    again_f = synth.generate_fundus(tmp_path / "f2", n=200, seed=3, image_size=48, workers=2, progress=False)
    again_s = synth.generate_skin(tmp_path / "s2", n=120, seed=3, image_size=48, workers=2, progress=False)
    assert digests(again_f) == digests(fundus_dir)
    assert digests(again_s) == digests(skin_dir)
    assert len(digests(fundus_dir)) == 200 + 2 and len(digests(skin_dir)) == 120 + 2


def test_another_seed_gives_other_files(fundus_dir, skin_dir, tmp_path):
    other_f = digests(synth.generate_fundus(tmp_path / "f", n=200, seed=4, image_size=48, workers=1, progress=False))
    other_s = digests(synth.generate_skin(tmp_path / "s", n=120, seed=4, image_size=48, workers=1, progress=False))
    base_f, base_s = digests(fundus_dir), digests(skin_dir)
    assert other_f["data_summary.csv"] != base_f["data_summary.csv"]
    assert not any(other_f.get(k) == v for k, v in base_f.items())
    assert other_s["HAM10000_metadata.csv"] != base_s["HAM10000_metadata.csv"]


def test_npz_is_written_with_a_fixed_timestamp(fundus_dir):
    with zipfile.ZipFile(fundus_dir / "Training" / "data_00001.npz") as zf:
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


# ----------------------------------------------------------------------------- fundus layout


def test_fundus_layout_matches_harvard_fairvlmed(fundus_dir):
    assert sorted(p.name for p in fundus_dir.iterdir()) == [
        "Test",
        "Training",
        "Validation",
        "data_summary.csv",
        "synth_config.json",
    ]
    counts = {s: len(list((fundus_dir / s).glob("data_*.npz"))) for s in synth.FUNDUS_SPLITS}
    assert counts == {"Training": 140, "Validation": 20, "Test": 40}
    names = sorted(p.name for p in fundus_dir.rglob("data_*.npz"))
    assert names == [f"data_{i:05d}.npz" for i in range(1, 201)]
    assert min(p.name for p in (fundus_dir / "Training").iterdir()) == "data_00001.npz"

    df = pd.read_csv(fundus_dir / "data_summary.csv", keep_default_na=False)
    assert list(df.columns) == [
        "filename",
        "age",
        "gender",
        "race",
        "ethnicity",
        "language",
        "maritalstatus",
        "note",
        "use",
        "glaucoma",
    ]
    assert set(df["gender"]) == {"female", "male"}
    assert set(df["race"]) == {"asian", "black", "white"}
    assert set(df["ethnicity"]) <= {"non-hispanic", "hispanic", "unknown"}
    assert set(df["use"]) == {"training", "validation", "test"}
    assert set(df["glaucoma"]) == {"yes", "no"}
    assert df["age"].between(18, 90).all()
    assert not df["note"].str.contains("glaucoma", case=False).any()

    row = df.iloc[150]
    folder = {"training": "Training", "validation": "Validation", "test": "Test"}[row["use"]]
    with np.load(fundus_dir / folder / row["filename"]) as z:
        assert set(z.files) >= {"slo_fundus", "glaucoma", "gender", "race", "ethnicity", "age", "note"}
        img = z["slo_fundus"]
        assert img.dtype == np.uint8 and img.shape == (48, 48, 3)
        assert int(z["glaucoma"]) == (row["glaucoma"] == "yes")
        assert ["female", "male"][int(z["gender"])] == row["gender"]
        assert synth.RACE_NAMES[int(z["race"])] == row["race"]
        assert synth.ETH_NAMES[synth.ETH_CODES.index(int(z["ethnicity"]))] == row["ethnicity"]
        assert float(z["age"]) == pytest.approx(row["age"])
        assert str(z["note"]) == row["note"]
        assert img[0, 0].max() <= 3 and img[24, 24].mean() > 30  # black corner, lit retina


def test_fundus_group_mix_is_exact_and_split_is_stratified():
    plan = synth.plan_fundus(2000, seed=0)
    assert plan["race"].value_counts().to_dict() == {2: 1538, 1: 298, 0: 164}
    assert plan["ethnicity"].value_counts().to_dict() == {0: 1806, -1: 108, 1: 86}
    assert plan["gender"].value_counts().to_dict() == {0: 1142, 1: 858}
    assert plan["use"].value_counts().to_dict() == {"training": 1400, "test": 400, "validation": 200}
    for _, cell in plan.groupby(["race", "ethnicity", "gender", "glaucoma"]):  # every stratum within 2
        for use, frac in zip(synth.FUNDUS_USE, synth.FUNDUS_SPLIT_FRACTIONS, strict=True):
            assert abs((cell["use"] == use).sum() - frac * len(cell)) <= 2


# ----------------------------------------------------------------------------- skin layout


def test_skin_layout_matches_ham10000(skin_dir):
    assert sorted(p.name for p in skin_dir.iterdir()) == [
        "HAM10000_images_part_1",
        "HAM10000_images_part_2",
        "HAM10000_metadata.csv",
        "synth_config.json",
    ]
    df = pd.read_csv(skin_dir / "HAM10000_metadata.csv")
    assert list(df.columns) == [
        "lesion_id",
        "image_id",
        "dx",
        "dx_type",
        "age",
        "sex",
        "localization",
        "fitzpatrick",
        "split",
    ]
    assert len(df) == 120 and df["image_id"].is_unique
    assert df["lesion_id"].str.fullmatch(r"HAM_\d{7}").all()
    assert df["image_id"].str.fullmatch(r"ISIC_\d{7}").all()
    assert set(df["dx"]) <= {"akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"}
    assert set(df["dx_type"]) <= {"histo", "follow_up", "consensus", "confocal"}
    assert set(df["sex"]) <= {"male", "female", "unknown"}
    assert set(df["fitzpatrick"]) <= set(synth.FITZPATRICK)
    assert (df["age"].dropna() % 5 == 0).all()
    per_lesion = df.groupby("lesion_id")
    assert per_lesion.size().between(1, 4).all() and per_lesion.ngroups < 120
    assert (per_lesion[["dx", "sex", "fitzpatrick", "localization"]].nunique() == 1).all().all()

    part1 = sorted(p.stem for p in (skin_dir / "HAM10000_images_part_1").glob("ISIC_*.jpg"))
    part2 = sorted(p.stem for p in (skin_dir / "HAM10000_images_part_2").glob("ISIC_*.jpg"))
    assert (len(part1), len(part2)) == (60, 60)
    assert sorted(part1 + part2) == sorted(df["image_id"])
    with Image.open(skin_dir / "HAM10000_images_part_1" / f"{part1[0]}.jpg") as im:
        assert im.format == "JPEG" and im.size == (48, 48) and im.mode == "RGB"


def test_skin_plan_mix_lesions_and_class_balance():
    plan = synth.plan_skin(10_000, seed=0)
    lesions = plan.drop_duplicates("lesion_id")
    assert 7000 <= len(lesions) <= 8000  # HAM10000: 7470 lesions for 10015 images
    counts = lesions["fitzpatrick"].value_counts()
    assert counts.to_dict() == dict(
        zip(synth.FITZPATRICK, synth.largest_remainder(len(lesions), synth.FITZPATRICK_SHARES), strict=True)
    )
    assert plan["malignant"].mean() == pytest.approx(0.195, abs=0.02)
    assert plan["age"].isna().mean() == pytest.approx(0.006, abs=0.003)


# ----------------------------------------------------------------------------- bias


def prevalence_by(plan: pd.DataFrame, attr: str, label: str) -> pd.Series:
    return plan.groupby(attr)[label].mean()


def test_fundus_prevalence_is_equal_without_bias_and_higher_for_black_and_hispanic_with_it():
    flat = synth.plan_fundus(10_000, seed=1, bias=NO_BIAS)
    for attr in ("race", "ethnicity", "gender"):
        assert (prevalence_by(flat, attr, "glaucoma") - 0.48).abs().max() < 0.006
    biased = synth.plan_fundus(10_000, seed=1, bias=DEFAULT)
    race = prevalence_by(biased, "race", "glaucoma")
    eth = prevalence_by(biased, "ethnicity", "glaucoma")
    assert biased["glaucoma"].mean() == pytest.approx(0.48, abs=0.002)  # overall rate kept
    assert race[1] - race[2] > 0.15 and eth[1] - eth[0] > 0.15
    odds = lambda p: p / (1 - p)  # noqa: E731
    assert odds(race[1]) / odds(race[2]) == pytest.approx(2.5, rel=0.2)


def test_skin_prevalence_is_equal_without_bias_and_rises_with_age_with_it():
    flat = synth.plan_skin(10_000, seed=1, bias=NO_BIAS).drop_duplicates("lesion_id")
    assert (prevalence_by(flat, "age_group", "malignant") - 0.195).abs().max() < 0.01
    assert (prevalence_by(flat, "sex", "malignant").drop("unknown") - 0.195).abs().max() < 0.01
    biased = synth.plan_skin(10_000, seed=1, bias=DEFAULT).drop_duplicates("lesion_id")
    age = prevalence_by(biased, "age_group", "malignant")
    sex = prevalence_by(biased, "sex", "malignant")
    assert age["0-40"] < age["40-60"] < age["60+"] and age["60+"] - age["0-40"] > 0.15
    assert sex["male"] - sex["female"] > 0.03


def fundus_evidence(bias: BiasConfig, n: int = 6000) -> pd.DataFrame:
    plan = synth.plan_fundus(n, seed=2, bias=NO_BIAS)  # same labels for both, only the images differ
    rows = []
    for i, row in enumerate(plan.to_dict("records")):
        p = synth.fundus_params(row, 2, bias, i + 1)
        rows.append(
            dict(
                race=row["race"],
                eth=row["ethnicity"],
                label=row["glaucoma"],
                cdr=p["cdr"],
                level=p["appearance_level"],
                agree=p["evidence"] == row["glaucoma"],
                noise_rate=p["label_noise"],
                blur=p["blur"],
            )
        )
    return pd.DataFrame(rows)


def test_fundus_evidence_is_group_blind_without_bias_and_weaker_for_minorities_with_it():
    flat, biased = fundus_evidence(NO_BIAS), fundus_evidence(DEFAULT)

    def cdr_separation(df):
        return df[df.label == 1].groupby("race")["cdr"].mean() - df[df.label == 0].groupby("race")["cdr"].mean()

    sep0, sep1 = cdr_separation(flat), cdr_separation(biased)
    assert (sep0 - sep0.mean()).abs().max() < 0.03
    assert sep1[2] - sep1[1] > 0.06  # White's cups separate the classes more than Black's
    assert flat.groupby("race")["noise_rate"].mean().to_dict() == pytest.approx({0: 0.04, 1: 0.04, 2: 0.04})
    assert biased.groupby("race")["noise_rate"].mean().to_dict() == pytest.approx(
        {0: 0.061, 1: 0.07, 2: 0.04}, abs=0.002
    )
    assert 1 - flat["agree"].mean() == pytest.approx(0.04, abs=0.008)  # the flips really happen
    assert flat["level"].max() == 0.0
    levels = biased.groupby(["race", "eth"])["level"].mean()
    assert levels[(1, 0)] == 1.0 and levels[(0, 0)] == 0.6 and levels[(2, 0)] == 0.0 and levels[(2, 1)] == 0.7
    blur0 = flat.groupby("race")["blur"].mean()
    blur1 = biased[biased.eth == 0].groupby("race")["blur"].mean()
    assert (blur0 - 0.9).abs().max() < 0.02 and blur1[1] - blur1[2] == pytest.approx(1.2, abs=0.03)


def fundus_brightness(bias: BiasConfig, n: int = 240) -> pd.Series:
    plan = synth.plan_fundus(n, seed=5, bias=bias)
    means = [
        synth.render_fundus(synth.fundus_params(r, 5, bias, i + 1), 48)[16:32].mean()
        for i, r in enumerate(plan.to_dict("records"))
    ]
    return pd.Series(means).groupby(plan["race"].to_numpy()).mean()


def test_fundus_images_are_darker_for_black_patients_only_with_bias():
    flat, biased = fundus_brightness(NO_BIAS), fundus_brightness(DEFAULT)
    assert abs(flat[1] - flat[2]) < 0.06 * flat[2]
    assert biased[2] - biased[1] > 0.15 * biased[2]


def lesion_contrast(bias: BiasConfig, fitz: str) -> float:
    plan = synth.plan_skin(200, seed=6, bias=bias)
    out = []
    for row in plan.drop_duplicates("lesion_id").head(40).to_dict("records"):
        row = {**row, "fitzpatrick": fitz}
        lesion = synth.skin_lesion_params(row, 6, bias)
        img = synth.render_skin(lesion, np.random.default_rng(0), 64).astype(float) + 1
        centre, rim = img[28:36, 28:36].mean(), np.median(img[4:12, 20:44])
        out.append(np.log(rim) - np.log(centre))
    return float(np.mean(out))


def test_lesion_contrast_drops_on_dark_skin_only_with_bias():
    flat = lesion_contrast(NO_BIAS, "I"), lesion_contrast(NO_BIAS, "VI")
    biased = lesion_contrast(DEFAULT, "I"), lesion_contrast(DEFAULT, "VI")
    assert flat[1] == pytest.approx(flat[0], rel=0.2)  # measured 0.73 vs 0.64 (uint8 and JPEG rounding)
    assert biased[1] < 0.6 * biased[0]


def test_evidence_masks_mark_the_disc_and_the_lesion_and_leave_the_image_unchanged():
    """The masks saliency is checked against (tests/test_saliency.py) draw nothing from the image streams."""
    plan = synth.plan_fundus(60, seed=5, bias=DEFAULT).to_dict("records")
    for i, row in enumerate(plan[:6]):
        image, disc = synth.render_fundus_with_evidence(synth.fundus_params(row, 5, DEFAULT, i + 1), 96)
        assert np.array_equal(image, synth.render_fundus(synth.fundus_params(row, 5, DEFAULT, i + 1), 96))
        assert 0.01 < disc.mean() < 0.05  # disc radius 0.13-0.16 of the half-width: ~2 % of the image
        assert image[disc].mean() > image[~disc].mean()  # the disc is the brightest part of a fundus
    for row in synth.plan_skin(60, seed=6, bias=DEFAULT).drop_duplicates("lesion_id").head(6).to_dict("records"):
        lesion = synth.skin_lesion_params(row, 6, DEFAULT)
        image, inside = synth.render_skin_with_evidence(lesion, np.random.default_rng(0), 96)
        assert np.array_equal(image, synth.render_skin(lesion, np.random.default_rng(0), 96))
        assert 0.02 < inside.mean() < 0.5  # lesion radius 0.26-0.42 of the half-width, zoomed 0.85-1.15
        assert image[inside].mean() < image[~inside].mean()  # a lesion is darker than the skin around it


def test_malignant_cues_are_subtler_for_young_women_only_with_bias():
    plan = synth.plan_skin(4000, seed=7, bias=NO_BIAS)
    mal = plan[(plan.malignant == 1) & plan.fitzpatrick.isin(["I", "II"])].drop_duplicates("lesion_id")
    young_f = (mal.sex == "female") & (mal.true_age < 40)

    def cue(bias):
        return np.array([synth.skin_lesion_params(r, 7, bias)["cue"] for r in mal.to_dict("records")])

    c0, c1 = cue(NO_BIAS), cue(DEFAULT)
    assert young_f.sum() >= 15
    assert c0[young_f].mean() == pytest.approx(c0[~young_f].mean(), abs=0.08)
    assert c1[~young_f].mean() - c1[young_f].mean() > 0.2


# ----------------------------------------------------------------------------- errors and the CLI


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n=5), "n=5 is too small (use at least 10 samples)"),
        (dict(bias=BiasConfig(strength=1.5)), "bias strength=1.5 must be in [0, 1]"),
        (dict(bias=BiasConfig(difficulty=-1.0)), "bias difficulty=-1.0 must be in [0, 2]"),
        (dict(image_size=8), "image_size=8 must be an integer in [32, 1024]"),
        (dict(workers=0), "workers=0 must be an integer >= 1"),
        (dict(seed=-1), "seed=-1 must be a non-negative integer"),
    ],
)
def test_bad_arguments_raise_a_value_error_naming_the_value(tmp_path, kwargs, message):
    args = dict(n=50, seed=0, image_size=48, workers=1, progress=False) | kwargs
    with pytest.raises(ValueError, match=re.escape(message)):
        synth.generate_fundus(tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()


def test_every_problem_is_named_in_one_error():
    with pytest.raises(ValueError, match=r"^invalid synthetic dataset arguments: ") as err:
        synth.validate_args(n=1, seed=0, bias=BiasConfig(strength=2.0), image_size=224, workers=0)
    assert str(err.value).count(";") == 2 and "n=1" in str(err.value) and "workers=0" in str(err.value)


def test_refuses_non_empty_folder_and_foreign_folders_even_with_overwrite(tmp_path, fundus_dir):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="is not empty; pick another folder or pass --overwrite"):
        synth.generate_skin(tmp_path, n=20, image_size=48, workers=1, progress=False)
    with pytest.raises(ValueError, match="refusing to overwrite a folder that this generator did not write"):
        synth.generate_skin(tmp_path, n=20, image_size=48, workers=1, progress=False, overwrite=True)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_overwrite_replaces_a_synthetic_set_atomically(tmp_path):
    out = synth.generate_skin(tmp_path / "s", n=20, seed=0, image_size=48, workers=1, progress=False)
    synth.generate_skin(out, n=30, seed=1, image_size=48, workers=1, progress=False, overwrite=True)
    assert len(pd.read_csv(out / "HAM10000_metadata.csv")) == 30
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temp or old folders left behind


def test_cli_prints_the_message_and_exits_2(tmp_path, capsys):
    assert synth.main(["fundus", "--out", str(tmp_path / "x"), "--n", "3", "--strength", "7"]) == 2
    err = capsys.readouterr().err
    assert "n=3 is too small" in err and "bias strength=7.0 must be in [0, 1]" in err
    proc = subprocess.run(
        [sys.executable, "-m", "training.synth", "skin", "--out", str(tmp_path / "y"), "--n", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "error: invalid synthetic dataset arguments: n=3 is too small" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_writes_a_self_documenting_dataset(tmp_path):
    code = synth.main(
        [
            "skin",
            "--out",
            str(tmp_path / "s"),
            "--n",
            "12",
            "--image-size",
            "32",
            "--workers",
            "1",
            "--strength",
            "0.5",
            "--no-progress",
        ]
    )
    assert code == 0
    cfg = __import__("json").loads((tmp_path / "s" / "synth_config.json").read_text())
    assert cfg["kind"] == "skin" and cfg["n"] == 12 and cfg["version"] == synth.VERSION
    assert cfg["effective_bias"] == {"appearance": 0.5, "prevalence": 0.5, "difficulty": 0.5}


# ----------------------------------------------------------------------------- test-split enrichment


def test_fundus_enrichment_gives_every_race_group_test_min_test_samples_and_nothing_else():
    plain = synth.plan_fundus(2000, 0, BiasConfig())
    enriched = synth.plan_fundus(2000, 0, BiasConfig(), 300)
    test = enriched[enriched["split"] == 2]
    assert test.groupby("race").size().min() >= 300
    assert (enriched.loc[enriched["enriched"], "split"] == 2).all(), "added samples are test-only"
    assert (enriched.groupby("split").size()[[0, 1]] == plain.groupby("split").size()[[0, 1]]).all()
    assert enriched["filename"].is_unique
    added = enriched[enriched["enriched"]]
    assert added["ethnicity"].value_counts(normalize=True)[0] == pytest.approx(0.903, abs=0.05)


def test_skin_enrichment_gives_every_sex_age_subgroup_test_min_malignant_test_images():
    plan = synth.plan_skin(2000, 0, BiasConfig(), 50)
    test = plan[(plan["split"] == "test") & (plan["sex"] != "unknown")]
    positives = test[test["malignant"] == 1].groupby(["sex", "age_group"]).size()
    assert len(positives) == 6 and positives.min() >= 50
    assert plan.groupby("lesion_id")["split"].nunique().max() == 1, "a lesion never spans two splits"
    assert (plan.loc[plan["enriched"], "split"] == "test").all()
    train = plan[plan["split"] == "train"]
    rare = plan.groupby(["sex", "age_group"]).size()
    assert set(rare.index) <= set(train.groupby(["sex", "age_group"]).size().index), "every stratum trains"


def test_validation_enrichment_adds_validation_samples_and_leaves_every_other_row_as_it_was():
    """val_min draws from streams of its own after everything else: training and test images are unchanged."""
    fundus = synth.plan_fundus(2000, 0, BiasConfig(), 300)
    with_val = synth.plan_fundus(2000, 0, BiasConfig(), 300, 300)
    assert with_val.iloc[: len(fundus)].equals(fundus)
    val = with_val[with_val["split"] == 1]
    assert val.groupby("race").size().min() >= 300 and with_val["filename"].is_unique
    assert (with_val.iloc[len(fundus) :]["split"] == 1).all()

    skin = synth.plan_skin(2000, 0, BiasConfig(), 50)
    skin_val = synth.plan_skin(2000, 0, BiasConfig(), 50, 50)
    kept = skin_val.set_index("image_id").loc[skin["image_id"]].reset_index()
    assert kept.equals(skin[kept.columns]), "every existing image keeps its row (lesion, view, dx, split)"
    val = skin_val[(skin_val["split"] == "val") & (skin_val["sex"] != "unknown")]
    assert val[val["malignant"] == 1].groupby(["sex", "age_group"]).size().min() >= 50
    assert skin_val["image_id"].is_unique and skin_val.groupby("lesion_id")["split"].nunique().max() == 1
    assert (skin_val.loc[~skin_val["image_id"].isin(skin["image_id"]), "split"] == "val").all()


def test_latent_scores_are_the_ceiling_and_the_bias_lowers_it_for_young_women():
    from sklearn.metrics import roc_auc_score

    for strength in (0.0, 1.0):
        plan = synth.plan_skin(3000, 1, BiasConfig(strength))
        scores = synth.latent_scores("skin", 3000, 1, BiasConfig(strength))
        young_women = plan[(plan["sex"] == "female") & (plan["age_group"] == "0-40")]
        auc_all = roc_auc_score(plan["malignant"], scores.loc[plan["image_id"]])
        auc_young = roc_auc_score(young_women["malignant"], scores.loc[young_women["image_id"]])
        if strength == 0.0:
            assert auc_all > 0.97 and auc_young > 0.95
        else:
            assert auc_young < auc_all - 0.05


def test_a_val_min_spec_names_its_own_folder_and_older_specs_keep_theirs():
    from training import data_spec

    plain = data_spec.parse_synth("synth:skin")
    enriched = data_spec.parse_synth("synth:skin:val_min=50")
    assert plain.val_min == 0 and enriched.val_min == 50 and enriched.test_min == plain.test_min == 50
    assert "val" not in plain.folder_name and "val" not in str(plain)  # data written before val_min: same folder
    assert enriched.folder_name == plain.folder_name.replace("-t50-", "-t50-val50-")
    assert data_spec.parse_synth(str(enriched)) == enriched
    with pytest.raises(ValueError, match="val_min=-1 must be an integer"):
        data_spec.parse_synth("synth:fundus:val_min=-1")
