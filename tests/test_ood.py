"""training.ood: the out-of-distribution score, on simulated embeddings and on the shipped demo adapters."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from inference import diagnose_view
from inference.serving import ModelPool
from training import ood, rundir

SKIN = [run for run in rundir.list_runs(rundir.DEMO_RUNS_DIR) if run.task == "skin"]
FUNDUS = [run for run in rundir.list_runs(rundir.DEMO_RUNS_DIR) if run.task == "fundus"]


def example(name: str) -> Image.Image:
    return Image.open(diagnose_view.EXAMPLES_DIR / f"{name}.png")


def test_points_from_the_training_distribution_pass_and_shifted_ones_are_flagged(tmp_path):
    rng = np.random.default_rng(0)
    d = 16
    scale = rng.uniform(0.5, 2.0, d)
    labels = rng.integers(0, 2, 2000)
    train = rng.normal(0, 1, (2000, d)) * scale + labels[:, None] * 1.5
    val = rng.normal(0, 1, (400, d)) * scale + rng.integers(0, 2, 400)[:, None] * 1.5
    model = ood.fit_embeddings(train, labels, val)
    fresh = rng.normal(0, 1, (2000, d)) * scale
    shifted = fresh + 4.0  # another distribution: far from both class means
    assert 0.97 <= model.in_distribution(fresh).mean() <= 1.0  # about 99 % by the val quantile
    assert model.in_distribution(shifted).mean() < 0.05
    loaded = ood.OodModel.load(model.save(tmp_path / ood.FILE))
    assert loaded.threshold == model.threshold and np.allclose(loaded.distance(shifted), model.distance(shifted))


def test_the_distance_is_mahalanobis_to_the_nearest_class_mean():
    model = ood.OodModel(np.array([[0.0, 0.0], [10.0, 0.0]]), np.diag([1.0, 0.25]), 3.0, 0.99, 10)
    assert model.distance(np.array([[0.0, 2.0], [9.0, 0.0]])).tolist() == pytest.approx([1.0, 1.0])


def test_fitting_needs_both_classes():
    with pytest.raises(ValueError, match="at least 2 training images of each class"):
        ood.fit_embeddings(np.zeros((5, 3)), np.zeros(5), np.zeros((2, 3)))


def test_a_fundus_photo_or_noise_on_the_skin_adapters_is_flagged_and_a_skin_image_is_not():
    pool = ModelPool()
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8))
    for run in SKIN:
        assert (run.path / ood.FILE).is_file()
        fundus = pool.predict(example("fundus-positive-1"), run)
        skin = pool.predict(example("skin-negative-1"), run)
        assert fundus.in_distribution is False and fundus.ood_score > fundus.ood_threshold
        assert skin.in_distribution is True and skin.ood_score <= skin.ood_threshold
        assert pool.predict(noise, run).in_distribution is False
    for run in FUNDUS:  # measured: skin examples 12.6-18.2 against thresholds 9.9-13.0 (Hybrid passes two)
        assert pool.predict(example("skin-negative-2"), run).in_distribution is False
        assert pool.predict(example("fundus-negative-1"), run).in_distribution is True


def test_diagnose_warns_and_its_details_carry_the_score():
    run = next(r for r in SKIN if r.method == "cmac")
    image = example("fundus-positive-1")
    view = diagnose_view.show(ModelPool().predict(image, run), run, image)
    assert view.details["in_distribution"] is False and view.details["ood_score"] > view.details["ood_threshold"]
    assert "does not look like this adapter's training data" in view.summary
    inside = example("skin-negative-2")
    view = diagnose_view.show(ModelPool().predict(inside, run), run, inside)
    assert view.details["in_distribution"] is True and "does not look like" not in view.summary
