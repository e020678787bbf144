"""Integrated Gradients (inference.saliency) on the shipped demo adapters, both backbones, real models.

The synthetic generator knows where its evidence is (the optic disc holds the cup-to-disc ratio and the
notch; the lesion holds every sign of malignancy), so the attribution can be checked against ground
truth: per pixel it must be denser inside that region than outside, over a few dozen images.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from inference import diagnose_view, saliency
from inference.serving import ModelPool
from training import rundir, synth
from training.backbones import load_run_classifier

SEED, N_IMAGES, STEPS = 7, 24, 16
RUNS = {"fundus": "fundus-vanilla", "skin": "skin-vanilla"}


@pytest.fixture(scope="module", params=sorted(RUNS))
def classifier(request):
    run = rundir.read_run(rundir.DEMO_RUNS_DIR / RUNS[request.param])
    return request.param, load_run_classifier(run)


def images_with_evidence(task: str, n: int) -> list[tuple[Image.Image, np.ndarray]]:
    """The first `n` images of a seed-7 benchmark plan at strength 1, with the generator's evidence masks."""
    bias = synth.BiasConfig()
    out = []
    if task == "fundus":
        for i, row in enumerate(synth.plan_fundus(10 * n, SEED, bias).to_dict("records")[:n]):
            image, mask = synth.render_fundus_with_evidence(synth.fundus_params(row, SEED, bias, i + 1), 224)
            out.append((Image.fromarray(image), mask))
    else:
        for row in synth.plan_skin(10 * n, SEED, bias).to_dict("records")[:n]:
            view = np.random.default_rng([SEED, synth._STREAM_SKIN_VIEW, row["image_index"]])
            image, mask = synth.render_skin_with_evidence(synth.skin_lesion_params(row, SEED, bias), view, 224)
            out.append((Image.fromarray(image), mask))
    return out


def test_attribution_concentrates_on_the_generators_evidence_region(classifier):
    task, clf = classifier
    ratios = np.array(
        [
            saliency.integrated_gradients(clf, image, steps=STEPS).share_inside(mask)
            for image, mask in images_with_evidence(task, N_IMAGES)
        ]
    )
    # measured: median 90 (fundus, disc) and 11.5 (skin, lesion); lowest 24 and 1.4
    assert np.median(ratios) >= 4.0, ratios.round(2)
    assert (ratios > 1.0).mean() >= 0.9, ratios.round(2)


def test_attributions_sum_to_the_change_in_log_odds(classifier):
    """Completeness (Sundararajan et al., Prop. 1): sum_i IG_i = F(x) - F(x'), up to the Riemann error."""
    task, clf = classifier
    image = Image.open(diagnose_view.EXAMPLES_DIR / f"{task}-positive-1.png")
    coarse, fine = (saliency.integrated_gradients(clf, image, steps=s) for s in (4, 64))
    assert fine.score == pytest.approx(coarse.score) and fine.baseline_score == pytest.approx(coarse.baseline_score)
    change = abs(fine.score - fine.baseline_score)
    assert fine.completeness_error <= 0.02 * change + 1e-3
    assert fine.completeness_error <= coarse.completeness_error + 1e-6
    # F(x) is the positive class's log-odds the diagnosis reports
    with torch.no_grad():
        logits = clf(clf.preprocess([image]))[0]
    assert fine.score == pytest.approx(float(logits[1] - logits[0]), abs=1e-4)


def test_image_layout_gives_back_the_image_the_model_read(classifier):
    """Qwen's processor cuts the image into 2x2-merged patch rows; image_layout must undo exactly that."""
    task, clf = classifier
    image = Image.open(diagnose_view.EXAMPLES_DIR / f"{task}-positive-1.png").convert("RGB")
    batch = clf.preprocess([image])
    layout = clf.image_layout(batch["pixel_values"], batch)
    assert torch.equal(layout[0], layout[-1])  # the temporal copies of a still image are identical
    view = clf.pixels_for_display(layout.mean(dim=0)).permute(1, 2, 0).numpy() * 255
    resized = np.asarray(image.resize((view.shape[1], view.shape[0]), Image.Resampling.BICUBIC), np.float32)
    assert np.abs(view - resized).mean() < 1.0  # grey levels: only the processor's own resampling differs


def test_overlay_and_caption_name_the_method(classifier):
    task, clf = classifier
    attribution = saliency.integrated_gradients(clf, Image.open(diagnose_view.EXAMPLES_DIR / f"{task}-negative-1.png"))
    overlay = attribution.overlay()
    assert overlay.mode == "RGB" and min(overlay.size) >= saliency.DISPLAY_MIN_SIDE
    heat = attribution.heat()
    assert heat.shape == attribution.pixels.shape and heat.min() >= 0.0 and heat.max() <= 1.0
    assert saliency.METHOD in attribution.caption() and f"{STEPS} steps" in attribution.caption()


def test_pool_explains_under_its_lock_and_refuses_bad_steps():
    pool = ModelPool()
    run = rundir.read_run(rundir.DEMO_RUNS_DIR / RUNS["skin"])
    image = Image.open(diagnose_view.EXAMPLES_DIR / "skin-positive-1.png")
    explained = pool.explain(image, run, steps=4)
    assert explained.steps == 4
    p = pool.predict(image, run).prob_positive
    assert explained.score == pytest.approx(math.log(p / (1 - p)), abs=1e-3)  # the same answer, as log-odds
    for steps in (0, saliency.MAX_STEPS + 1, 2.5, True):
        with pytest.raises(ValueError, match="steps must be a whole number"):
            pool.explain(image, run, steps=steps)
