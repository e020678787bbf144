"""Synthetic fairness benchmark written in the real datasets' on-disk layouts.

What it is
----------
A deterministic generator of two small medical-imaging classification sets whose *bias is known
and tunable*, so that FairDx's loaders, trainers, objectives and audits can be exercised end to end
without access to the real data:

- ``fundus`` -- colour-fundus-like images for glaucoma detection, written in the Harvard-FairVLMed
  layout (``Training/ Validation/ Test/`` folders of ``data_XXXXX.npz`` plus ``data_summary.csv``).
  Group mix as in Gu et al., section 4.1: race White/Black/Asian 76.9/14.9/8.2 %, ethnicity
  non-Hispanic/Hispanic/unknown 90.3/4.3/5.4 %, gender Female/Male 57.1/42.9 % (the paper's
  figures: "Male 42.9%, Female 57.1%"); 70/10/20 split stratified by (race, ethnicity, gender, label).
- ``skin`` -- dermoscopy-like lesion images for malignant-vs-benign classification, written in the
  HAM10000 layout (``HAM10000_metadata.csv`` plus ``HAM10000_images_part_1/`` and ``..._part_2/`` of
  ``ISIC_XXXXXXX.jpg``), 1-4 images per lesion, with ONE extra metadata column ``fitzpatrick``
  (I..VI) that the real file lacks; loaders treat it as an optional attribute.

Each dataset also carries ``synth_config.json`` (generator arguments, version, bias formulas' inputs)
so it documents itself; loaders ignore it.

What it is NOT
--------------
Not clinical data, not derived from clinical data, and no claim that real disparities look like
this. The images are cartoons of the real modalities, drawn from a handful of parameters; the group
effects below are *designed* mechanisms, chosen so that a plain (unweighted) model shows per-group
gaps that fairness objectives can plausibly shrink. Numbers measured on it say whether code works and
whether an objective reacts to a known bias, nothing about patients.

Determinism
-----------
Same arguments give byte-identical files, whatever ``workers`` is: the plan (demographics, labels,
split, ids, notes) is drawn in the parent from ``default_rng([seed, stream])``; each image is drawn
from its own ``default_rng([seed, stream, index])``. ``.npz`` files are written with ``zipfile`` and a
fixed timestamp (1980-01-01); JPEGs with PIL at fixed quality; CSV rows in a fixed order. Group counts
are allocated exactly (largest remainder), labels by systematic sampling within sorted strata (so each
stratum's positive count is within one of its expectation), and the split by a deterministic
deficit scheduler over the strata (70/10/20 exact overall, within one per stratum).

Bias configuration
------------------
``BiasConfig(strength, appearance, prevalence, difficulty)``; the *effective* level of each mechanism
is ``strength * knob``: ``A = strength*appearance``, ``P = strength*prevalence``,
``D = strength*difficulty``. ``strength = 0`` makes appearance, difficulty and prevalence identically
distributed across groups (the group mix itself stays). Group weights ``w`` below are in [0, 1] and
combine race and ethnicity by ``clip(w_race + w_eth, 0, 1)``.

fundus (group weights: appearance  w_a: Black 1.0, Asian 0.6, White 0, Hispanic +0.7;
        difficulty w_d: Black 1.0, Asian 0.7, White 0, Hispanic +1.0, ethnicity unknown +0.3)

- prevalence:  ``logit p = b0 + P * (ln OR_race + ln OR_eth)`` with OR Black 2.5, Asian 1.5,
  Hispanic 2.5 (others 1); ``b0`` is solved so that the overall prevalence is 0.48 at every
  strength, so only the distribution across groups changes. (At this base rate an odds ratio of 2.5
  is ~1.5x the prevalence; the paper's "2-3x" refers to population prevalence, a few percent, where
  odds and prevalence ratios coincide.)
- appearance (a = A * w_a):  pigmentation ``pig = clip(U(0, 0.5) + 0.4 a, 0, 1)`` darkens the retina
  (R x (1 - 0.45 pig), G x (1 - 0.6 pig), B x (1 - 0.5 pig)); disc/cup contrast x ``(1 - 0.5 a)``;
  global contrast x ``(1 - 0.25 a)``; Gaussian blur radius ``(0.6 + U(0, 0.6) + 1.2 a) * S/224`` px;
  additive noise sd ``2 + U(0, 2) + 6 a`` grey levels (inside the field of view).
- difficulty (d = D * w_d):  label noise -- the visible evidence disagrees with the stored label with
  probability ``q = 0.04 + 0.03 d``; cup-to-disc ratio ``CDR ~ N(0.40 + 0.04 d, 0.08 (1 + 0.25 d))``
  for healthy evidence and ``N(0.66 - 0.04 d, 0.08 (1 + 0.25 d))`` for glaucomatous evidence, clipped
  to [0.12, 0.92]; an inferior or superior rim notch with probability ``0.5 (1 - 0.5 d)`` (glaucoma)
  or 0.05 (healthy), depth ``U(0.15, 0.35) (1 - 0.5 d)``.

skin (tone weight t: Fitzpatrick I 0, II 0, III 0.25, IV 0.5, V 0.85, VI 1;
      age weight g = clip((age - 40) / 40, 0, 1))

- prevalence (per lesion): ``logit p = b0 + P * (ln OR_age + ln OR_sex)`` with OR 0-40: 0.5,
  40-60: 1, 60+: 2.0 and male 1.5; ``b0`` solved for an overall malignant fraction of 0.195 (HAM10000:
  mel+bcc+akiec = 19.5 %). dx within class: mel/bcc/akiec 57/26/17 %, nv/bkl/df/vasc 83/13.6/1.6/1.8 %.
- appearance:  the lesion is a multiplicative transmittance ``T`` on the skin, rendered as
  ``skin * exp(alpha * k * ln T)`` with log-contrast ``k = 1 - 0.55 A t`` (darker skin, fainter
  lesion); sun damage: background mottling amplitude ``0.03 + U(0, 0.05) + 0.08 A g`` and
  ``Poisson(1 + 6 A g)`` solar lentigines.
- difficulty (d = D * max(y, t), y = 1 for female aged < 40, 0.5 for male aged < 40, else 0): the
  malignancy cue ``c`` is ``U(0.45, 1.0) - 0.25 d`` for malignant lesions and ``U(0, 0.5)`` for
  benign ones (they overlap only where d > 0, i.e. the bias is what makes a group hard); asymmetry,
  border irregularity, colour variety and diameter each follow ``clip(c + N(0, 0.08), 0, 1)``
  (version 1.0: ``U(0.35, 1) - 0.3 d`` vs ``U(0, 0.6)`` and noise 0.15, whose ceiling -- the AUC of
  ``c`` itself -- left no room above 0.85, and whose overlap hid the bias). A fifth score, structure,
  draws the dermoscopic structures: ``Poisson(1 + 20 s²)`` dark globules scattered up to
  ``0.75 + 0.25 s`` of the lesion radius and ``Poisson(14 max(0, s - 0.35))`` radial streaks at the
  border -- local patterns that global image statistics barely see. The lesion radius is
  ``0.26 + 0.16 diameter ± 0.04``, the shape harmonics 0.02 (order 1, a shift), ``0.02 + 0.24 asymmetry``
  (orders 2-3) and ``(0.01 + 0.12 border) / (k/3)^0.6`` (orders 4-12), each times U(0.6, 1). Colour
  variety: ``round(0.5 + 4 c' U(0.6, 1))`` extra colours (c' the colour cue), black / blue-grey / red /
  white ever likelier as c' grows, whatever the dx; dx sets the base colour and a few motifs (a central
  white patch in df, red-purple lobules in vasc, arborizing vessels in bcc with probability
  ``0.3 + 0.5 c'``).

Test-split enrichment
---------------------
``test_min`` (``TEST_ENRICHMENT``) adds test-only samples so that every group a claim is judged on
has enough of them: fundus, at least ``test_min`` test samples per race group (the demos: 300);
skin, at least ``test_min`` malignant test images per known-sex x age-group subgroup (the demos: 50;
HAM10000's few unknown-sex or unknown-age rows are kept, but stay out of the gaps by size). Added
samples are drawn like population samples of their group (same prevalence, appearance and
difficulty), so each group's own figures are unbiased; the test split's group *mix* is not the
population's, which is why ``eval.json`` also reports the overall figures reweighted to the
training split's mix. The skin metadata gains a ``split`` column (the HAM10000 loader honours one),
because the added lesions must stay in the test split; lesions are never split across splits.

Usage::

    python -m training.synth fundus --out data/synth-fundus --n 10000 --seed 0
    python -m training.synth skin --out data/synth-skin --n 10000 --seed 0 --strength 0
    python -m training.synth skin --out data/synth-skin-test50 --n 2000 --test-min 50
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from PIL import Image, ImageDraw, ImageFilter
from scipy.ndimage import map_coordinates

VERSION = "2.0"
CONFIG_NAME = "synth_config.json"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
JPEG_QUALITY = 90
MIN_N = 10
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 1024
MAX_KNOB = 2.0
MAX_TEST_MIN = 2000

# RNG streams: every random draw comes from default_rng([seed, STREAM, ...]).
_STREAM_FUNDUS_PLAN, _STREAM_FUNDUS_IMAGE = 101, 102
_STREAM_SKIN_PLAN, _STREAM_SKIN_LESION, _STREAM_SKIN_VIEW, _STREAM_SKIN_EXTRA = 201, 202, 203, 204
_STREAM_FUNDUS_EXTRA = 103
_STREAM_FUNDUS_EXTRA_VAL, _STREAM_SKIN_EXTRA_VAL = 104, 205


@dataclass(frozen=True)
class BiasConfig:
    """How strongly minority groups differ; every mechanism's level is ``strength * knob``."""

    strength: float = 1.0
    """Global scale in [0, 1]; 0 = no bias (identical appearance, difficulty, prevalence across groups)."""
    appearance: float = 1.0
    """Image-quality / contrast knob in [0, 2]: darker, lower-contrast, blurrier, noisier images for the
    weighted groups (fundus: Black, Asian, Hispanic; skin: dark skin tones, older age)."""
    prevalence: float = 1.0
    """Label-prevalence knob in [0, 2]: group odds ratios are raised to this power (times strength)."""
    difficulty: float = 1.0
    """Evidence knob in [0, 2]: weaker, more overlapping visual evidence and more label noise for the
    weighted groups (fundus: Black, Asian, Hispanic; skin: young females, dark skin tones)."""

    @property
    def effective(self) -> dict[str, float]:
        """Effective levels A, P, D = strength x knob, as used in the module docstring's formulas."""
        return {k: self.strength * getattr(self, k) for k in ("appearance", "prevalence", "difficulty")}


# ----------------------------------------------------------------------------- validation


def validate_args(
    *, n: int, seed: int, bias: BiasConfig, image_size: int, workers: int, test_min: int = 0, val_min: int = 0
) -> None:
    """Collect every problem with the generator's arguments and raise one ValueError naming them all."""
    problems = []
    for name, value in (("test_min", test_min), ("val_min", val_min)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 0 <= value <= MAX_TEST_MIN:
            problems.append(f"{name}={value!r} must be an integer in [0, {MAX_TEST_MIN}]")
    if not isinstance(n, (int, np.integer)) or n < MIN_N:
        problems.append(f"n={n!r} is too small (use at least {MIN_N} samples)")
    elif n > 99_999:
        problems.append(f"n={n!r} is too large (filenames hold 5 digits: use at most 99999)")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        problems.append(f"seed={seed!r} must be a non-negative integer")
    if not isinstance(image_size, (int, np.integer)) or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        problems.append(f"image_size={image_size!r} must be an integer in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}]")
    if not isinstance(workers, (int, np.integer)) or workers < 1:
        problems.append(f"workers={workers!r} must be an integer >= 1")
    if not isinstance(bias, BiasConfig):
        problems.append(f"bias={bias!r} must be a BiasConfig")
    else:
        if not _is_number(bias.strength) or not 0.0 <= bias.strength <= 1.0:
            problems.append(f"bias strength={bias.strength!r} must be in [0, 1]")
        for knob in ("appearance", "prevalence", "difficulty"):
            value = getattr(bias, knob)
            if not _is_number(value) or not 0.0 <= value <= MAX_KNOB:
                problems.append(f"bias {knob}={value!r} must be in [0, {MAX_KNOB:g}]")
    if problems:
        raise ValueError("invalid synthetic dataset arguments: " + "; ".join(problems))


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and math.isfinite(float(x))


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"out={str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"out={str(out)!r} is not empty; pick another folder or pass --overwrite")
        if not (out / CONFIG_NAME).is_file():
            raise ValueError(
                f"out={str(out)!r} is not empty and holds no {CONFIG_NAME}; refusing to overwrite a folder "
                "that this generator did not write"
            )


# ----------------------------------------------------------------------------- allocation helpers


def largest_remainder(n: int, shares) -> np.ndarray:
    """Integer counts summing to n, proportional to shares (Hamilton's method; ties by order)."""
    shares = np.asarray(shares, dtype=float)
    raw = n * shares / shares.sum()
    counts = np.floor(raw).astype(int)
    rest = n - counts.sum()
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[:rest]] += 1
    return counts


def _exact_assignment(rng: np.random.Generator, n: int, codes, shares) -> np.ndarray:
    """A random arrangement of exactly largest_remainder(n, shares) copies of each code."""
    values = np.repeat(np.asarray(codes), largest_remainder(n, shares))
    return values[rng.permutation(n)]


def _systematic(p: np.ndarray) -> np.ndarray:
    """0/1 draws with sum over any contiguous run within one of sum(p) (systematic sampling, u=0.5)."""
    c = np.floor(np.cumsum(p) + 0.5)
    return np.diff(np.concatenate([[0.0], c])).astype(int)


def deficit_schedule(n: int, fractions) -> np.ndarray:
    """Category per position: each step takes the category furthest behind its target fraction."""
    fractions = np.asarray(fractions, dtype=float)
    counts = np.zeros(len(fractions))
    out = np.empty(n, dtype=int)
    for k in range(n):
        j = int(np.argmax(fractions * (k + 1) - counts))
        out[k] = j
        counts[j] += 1
    return out


def _solve_intercept(offsets: np.ndarray, target: float) -> float:
    """b0 such that mean(sigmoid(b0 + offsets)) == target (bisection; the mean is monotone in b0)."""
    lo, hi = -30.0, 30.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if np.mean(1.0 / (1.0 + np.exp(-(mid + offsets)))) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ----------------------------------------------------------------------------- file writers


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed, but byte-reproducible: fixed zip timestamps and attributes."""
    with zipfile.ZipFile(path, "w") as zf:
        for key, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=1)


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------- drawing helpers


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] (x to the right, y down), float32."""
    t = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    y, x = np.meshgrid(t, t, indexing="ij")
    return x, y


def _ramp(d: np.ndarray, width: float) -> np.ndarray:
    """Soft inside-indicator of a signed distance d (negative inside), linear over `width`."""
    return np.clip(0.5 - d / width, 0.0, 1.0)


def _lowfreq(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth random field in about [-1, 1]: a cells x cells normal grid upsampled bicubically."""
    small = rng.standard_normal((cells, cells)).astype(np.float32) / 2.0
    return np.asarray(Image.fromarray(small, mode="F").resize((size, size), Image.Resampling.BICUBIC))


def _to_px(pts: np.ndarray | Iterable[Sequence[float]], size: int) -> list[tuple[float, float]]:
    return [((px + 1.0) * 0.5 * size, (py + 1.0) * 0.5 * size) for px, py in pts]


def _finish(
    img: np.ndarray, rng: np.random.Generator, blur_px: float, noise_sd: float, noise_mask: np.ndarray | None = None
) -> np.ndarray:
    """float RGB in [0, 1] -> uint8, Gaussian blur (PIL), additive Gaussian noise (only inside noise_mask)."""
    u8 = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    pil = Image.fromarray(u8, "RGB")
    if blur_px > 0.05:
        pil = pil.filter(ImageFilter.GaussianBlur(blur_px))
    out = np.asarray(pil, dtype=np.float32)
    if noise_sd > 0:
        noise = rng.standard_normal(out.shape, dtype=np.float32) * np.float32(noise_sd)
        out += noise if noise_mask is None else noise * noise_mask[..., None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


# ============================================================================= fundus

FUNDUS_SPLITS = ("Training", "Validation", "Test")
FUNDUS_USE = ("training", "validation", "test")
SPLIT_FRACTIONS = FUNDUS_SPLIT_FRACTIONS = (0.7, 0.1, 0.2)
RACE_CODES, RACE_NAMES, RACE_SHARES = (0, 1, 2), ("asian", "black", "white"), (8.2, 14.9, 76.9)
ETH_CODES, ETH_NAMES, ETH_SHARES = (0, 1, -1), ("non-hispanic", "hispanic", "unknown"), (90.3, 4.3, 5.4)
GENDER_CODES, GENDER_NAMES, GENDER_SHARES = (0, 1), ("female", "male"), (57.1, 42.9)
LANGUAGES = ("english", "spanish", "other", "unknown")
MARITAL = ("married", "single", "divorced", "widowed", "legally separated", "unknown")
LANGUAGE_P = {True: (0.45, 0.50, 0.03, 0.02), False: (0.93, 0.02, 0.03, 0.02)}  # by Hispanic or not
MARITAL_P = (0.52, 0.24, 0.1, 0.09, 0.01, 0.04)
FUNDUS_PREVALENCE = 0.48
FUNDUS_OR_RACE = {0: 1.5, 1: 2.5, 2: 1.0}
FUNDUS_OR_ETH = {0: 1.0, 1: 2.5, -1: 1.0}
FUNDUS_APPEAR_RACE = {0: 0.6, 1: 1.0, 2: 0.0}
FUNDUS_APPEAR_ETH = {0: 0.0, 1: 0.7, -1: 0.0}
FUNDUS_DIFF_RACE = {0: 0.7, 1: 1.0, 2: 0.0}
FUNDUS_DIFF_ETH = {0: 0.0, 1: 1.0, -1: 0.3}

_NOTE_REASONS = (
    "routine eye examination",
    "annual diabetic eye screening",
    "follow-up visit",
    "blurred vision at near",
    "new glasses prescription",
    "referral from primary care for eye evaluation",
)
_NOTE_HISTORY = (
    "no ocular complaints",
    "history of hypertension",
    "history of type 2 diabetes",
    "history of cataract surgery in one eye",
    "family history of eye disease unknown",
    "occasional dry eye symptoms",
)


def _group_weight(race: int, eth: int, by_race: dict, by_eth: dict) -> float:
    return float(np.clip(by_race[race] + by_eth[eth], 0.0, 1.0))


def plan_fundus(
    n: int, seed: int, bias: BiasConfig = BiasConfig(), test_min: int = 0, val_min: int = 0
) -> pd.DataFrame:
    """Every sample's metadata (no pixels): demographics, label, split, filename, note.

    Rows are in filename order (Training first, then Validation, then Test), like the real release.
    ``test_min`` > 0 adds test-only samples to every race group with fewer than ``test_min`` test
    samples, each drawn like a population sample of that race (ethnicity, gender and age by their
    shares, glaucoma with the group's prevalence), so only the race mix of the test split changes
    (see `TEST_ENRICHMENT`); column ``enriched`` marks them. ``val_min`` does the same for the
    validation split, from a stream of its own, appending its samples after all others: every other
    row, and so every training and test image, is the same with or without it (`VAL_ENRICHMENT`).
    """
    validate_args(n=n, seed=seed, bias=bias, image_size=224, workers=1, test_min=test_min, val_min=val_min)
    rng = np.random.default_rng([seed, _STREAM_FUNDUS_PLAN])
    race = _exact_assignment(rng, n, RACE_CODES, RACE_SHARES)
    eth = _exact_assignment(rng, n, ETH_CODES, ETH_SHARES)
    gender = _exact_assignment(rng, n, GENDER_CODES, GENDER_SHARES)
    age = np.round(np.clip(rng.normal(60.0, 16.0, n), 18.0, 90.0), 2)

    P = bias.effective["prevalence"]
    offsets = P * (np.log([FUNDUS_OR_RACE[r] for r in race]) + np.log([FUNDUS_OR_ETH[e] for e in eth]))
    b0 = _solve_intercept(offsets, FUNDUS_PREVALENCE)
    p = _sigmoid(b0 + offsets)
    key = rng.permutation(n)
    order = np.lexsort((key, gender, eth, race))
    label = np.empty(n, dtype=int)
    label[order] = _systematic(p[order])

    order = np.lexsort((rng.permutation(n), label, gender, eth, race))
    split = np.empty(n, dtype=int)
    split[order] = deficit_schedule(n, FUNDUS_SPLIT_FRACTIONS)

    enriched = np.zeros(n, bool)
    if test_min:
        extra = _fundus_test_samples(
            np.random.default_rng([seed, _STREAM_FUNDUS_EXTRA]), race[split == 2], test_min, b0, P
        )
        race, eth, gender, age, label = (
            np.concatenate([a, extra[k]])
            for a, k in ((race, "race"), (eth, "eth"), (gender, "gender"), (age, "age"), (label, "label"))
        )
        split = np.concatenate([split, np.full(len(extra["race"]), 2)])
        enriched = np.concatenate([enriched, np.ones(len(extra["race"]), bool)])
    total = len(race)

    language = [LANGUAGES[rng.choice(4, p=LANGUAGE_P[bool(e == 1)])] for e in eth]
    marital = [MARITAL[i] for i in rng.choice(len(MARITAL), total, p=MARITAL_P)]
    notes = [_fundus_note(rng, a, g) for a, g in zip(age, gender, strict=True)]

    df = pd.DataFrame(
        dict(
            race=race,
            ethnicity=eth,
            gender=gender,
            age=age,
            language=language,
            maritalstatus=marital,
            note=notes,
            split=split,
            glaucoma=label,
            enriched=enriched,
        )
    )
    df = df.iloc[np.lexsort((rng.permutation(total), df["split"].to_numpy()))].reset_index(drop=True)
    df.insert(0, "filename", [f"data_{i + 1:05d}.npz" for i in range(total)])
    df["use"] = [FUNDUS_USE[s] for s in df["split"]]
    if val_min:
        df = _append_fundus_val(df, np.random.default_rng([seed, _STREAM_FUNDUS_EXTRA_VAL]), val_min, b0, P)
    return df


def _append_fundus_val(df: pd.DataFrame, rng: np.random.Generator, val_min: int, b0: float, P: float) -> pd.DataFrame:
    """`df` plus validation-only samples bringing every race group to `val_min`, drawn like the test-only
    ones (`_fundus_test_samples`) and numbered after every existing file."""
    extra = _fundus_test_samples(rng, df.loc[df["split"] == 1, "race"].to_numpy(), val_min, b0, P)
    m = len(extra["race"])
    added = pd.DataFrame(
        dict(
            filename=[f"data_{len(df) + i + 1:05d}.npz" for i in range(m)],
            race=extra["race"],
            ethnicity=extra["eth"],
            gender=extra["gender"],
            age=extra["age"],
            language=[LANGUAGES[rng.choice(4, p=LANGUAGE_P[bool(e == 1)])] for e in extra["eth"]],
            maritalstatus=[MARITAL[i] for i in rng.choice(len(MARITAL), m, p=MARITAL_P)],
            note=[_fundus_note(rng, a, g) for a, g in zip(extra["age"], extra["gender"], strict=True)],
            split=1,
            glaucoma=extra["label"],
            enriched=True,
            use=FUNDUS_USE[1],
        )
    )
    return pd.concat([df, added[df.columns]], ignore_index=True)


def _fundus_test_samples(
    rng: np.random.Generator, test_race: np.ndarray, test_min: int, b0: float, P: float
) -> dict[str, np.ndarray]:
    """Demographics and labels of the held-out-only samples that bring every race group of a split (its
    races `test_race`) to `test_min`."""
    race = np.concatenate([np.full(max(0, test_min - int((test_race == r).sum())), r) for r in RACE_CODES])
    m = len(race)
    eth = np.asarray(ETH_CODES)[rng.choice(len(ETH_CODES), m, p=np.array(ETH_SHARES) / sum(ETH_SHARES))]
    gender = np.asarray(GENDER_CODES)[rng.choice(2, m, p=np.array(GENDER_SHARES) / sum(GENDER_SHARES))]
    age = np.round(np.clip(rng.normal(60.0, 16.0, m), 18.0, 90.0), 2)
    offsets = P * (np.log([FUNDUS_OR_RACE[r] for r in race]) + np.log([FUNDUS_OR_ETH[e] for e in eth]))
    label = (rng.random(m) < _sigmoid(b0 + offsets)).astype(int)
    return dict(race=race.astype(int), eth=eth.astype(int), gender=gender.astype(int), age=age, label=label)


def _fundus_note(rng: np.random.Generator, age: float, gender: int) -> str:
    """A generic, label-independent clinical note (so the text never gives the diagnosis away)."""
    who = "female" if gender == 0 else "male"
    va = rng.choice(["20/20", "20/25", "20/30", "20/40", "20/50"], 2)
    return (
        f"{int(age)} y/o {who} seen for {_NOTE_REASONS[rng.integers(len(_NOTE_REASONS))]}; "
        f"{_NOTE_HISTORY[rng.integers(len(_NOTE_HISTORY))]}. VA {va[0]} OD, {va[1]} OS. "
        "Fundus photograph obtained."
    )


def fundus_params(row: dict, seed: int, bias: BiasConfig, index: int) -> dict:
    """Draw one image's scene parameters (formulas in the module docstring)."""
    rng = np.random.default_rng([seed, _STREAM_FUNDUS_IMAGE, index])
    eff = bias.effective
    a = eff["appearance"] * _group_weight(row["race"], row["ethnicity"], FUNDUS_APPEAR_RACE, FUNDUS_APPEAR_ETH)
    d = eff["difficulty"] * _group_weight(row["race"], row["ethnicity"], FUNDUS_DIFF_RACE, FUNDUS_DIFF_ETH)
    noise_rate = min(0.04 + 0.03 * d, 0.3)
    evidence = int(row["glaucoma"]) ^ int(rng.random() < noise_rate)
    sd = 0.08 * (1.0 + 0.25 * d)
    mean = 0.66 - 0.04 * d if evidence else 0.40 + 0.04 * d
    cdr = float(np.clip(rng.normal(mean, sd), 0.12, 0.92))
    notch_p = 0.5 * max(0.0, 1.0 - 0.5 * d) if evidence else 0.05
    has_notch = rng.random() < notch_p
    return dict(
        rng=rng,
        appearance_level=a,
        difficulty_level=d,
        label_noise=noise_rate,
        evidence=evidence,
        cdr=cdr,
        notch_depth=float(rng.uniform(0.15, 0.35) * max(0.0, 1.0 - 0.5 * d)) if has_notch else 0.0,
        notch_angle=float(np.pi / 2 if rng.random() < 0.6 else -np.pi / 2),  # inferior more common
        pigment=float(np.clip(rng.uniform(0.0, 0.5) + 0.4 * a, 0.0, 1.0)),
        disc_contrast=float(max(0.1, 1.0 - 0.5 * a)),
        contrast=float(max(0.2, 1.0 - 0.25 * a)),
        blur=float(0.6 + rng.uniform(0.0, 0.6) + 1.2 * a),
        noise=float(2.0 + rng.uniform(0.0, 2.0) + 6.0 * a),
        side=float(rng.choice([-1.0, 1.0])),  # left / right eye: disc left or right of the fovea
    )


def render_fundus(params: dict, size: int) -> np.ndarray:
    """Draw a colour-fundus-like uint8 RGB image (vectorised numpy + PIL lines for vessels)."""
    return render_fundus_with_evidence(params, size)[0]


def render_fundus_with_evidence(params: dict, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The image of `render_fundus` and its evidence region: a bool [size, size] mask of the optic disc
    (disc ellipse grown by 10 %), where the cup-to-disc ratio and the notch -- the only drawn signs of
    glaucoma -- are. The mask draws nothing from the image's stream: the image is the same either way.
    Saliency checks (inference.saliency) measure how much attribution falls inside it."""
    rng = params["rng"]
    x, y = _grid(size)
    r = np.sqrt(x * x + y * y)
    side, pig = params["side"], params["pigment"]

    # retina: orange-red, darker with pigmentation, vignetting, choroidal mottling
    base = np.array([0.86 * (1 - 0.45 * pig), 0.40 * (1 - 0.6 * pig), 0.16 * (1 - 0.5 * pig)], np.float32)
    base *= rng.uniform(0.9, 1.1, 3).astype(np.float32)
    gx, gy = rng.uniform(-0.15, 0.15, 2)
    illum = (1.0 - 0.55 * r**2) * (1.0 + gx * x + gy * y) * (1.0 + 0.07 * _lowfreq(rng, size, 7))

    # optic disc (slightly vertical ellipse) and fovea on the other side of centre
    cx, cy = side * rng.uniform(0.32, 0.42), rng.uniform(-0.08, 0.08)
    rd = rng.uniform(0.13, 0.16)
    fx, fy = cx - side * rng.uniform(0.55, 0.65), cy + rng.uniform(0.0, 0.08)
    img = base * illum[..., None]
    win = _window(size, fx, fy, 0.4)  # the macula: darker round area, drawn only where it matters
    img[win] *= (1.0 - 0.35 * np.exp(-((x[win] - fx) ** 2 + (y[win] - fy) ** 2) / (2 * 0.11**2)))[..., None]

    win = _window(size, cx, cy, 1.25 * 1.08 * rd)
    dx, dy = (x[win] - cx) / rd, (y[win] - cy) / (rd * 1.08)
    rho = np.sqrt(dx * dx + dy * dy)
    theta = np.arctan2(dy, dx).astype(np.float32)
    dc = params["disc_contrast"]
    disc_a = (_ramp(rho - 1.0, 0.25) * dc)[..., None]
    rim_col = np.array([0.95, 0.56, 0.36], np.float32) * (1.0 - 0.25 * pig)
    shade = illum[win][..., None]
    patch = img[win] * (1 - disc_a) + rim_col * (0.8 + 0.3 * shade) * disc_a
    dtheta = np.remainder(theta - params["notch_angle"] + np.pi, 2 * np.pi) - np.pi
    cup_r = params["cdr"] * (1.0 + params["notch_depth"] * np.exp(-(dtheta**2) / (2 * 0.4**2)))
    cup_a = (_ramp(rho - np.minimum(cup_r, 0.97), 0.12) * dc)[..., None]
    img[win] = patch * (1 - cup_a) + np.array([1.0, 0.93, 0.78], np.float32) * cup_a
    evidence = np.zeros((size, size), bool)
    evidence[win] = rho <= 1.1

    # vessels: dark red branching lines from the disc
    vmask = _vessel_mask(rng, size, cx, cy, rd, side, fx, fy)
    img = img * (1.0 - vmask[..., None] * np.array([0.45, 0.75, 0.65], np.float32))

    mean = img.mean(axis=(0, 1), keepdims=True)
    img = mean + (img - mean) * params["contrast"]
    fov = _ramp(r - 0.93, 0.02)
    img = img * fov[..., None]
    return _finish(img, rng, params["blur"] * size / 224.0, params["noise"], noise_mask=fov > 0), evidence


def _window(size: int, cx: float, cy: float, half: float) -> tuple[slice, slice]:
    """Row/column slices of the pixels within `half` (grid units) of (cx, cy)."""
    lo = lambda c: int(np.clip(np.floor((c - half + 1.0) * size / 2.0), 0, size))  # noqa: E731
    hi = lambda c: int(np.clip(np.ceil((c + half + 1.0) * size / 2.0), 0, size))  # noqa: E731
    return slice(lo(cy), hi(cy)), slice(lo(cx), hi(cx))


def _vessel_mask(rng, size, cx, cy, rd, side, fx, fy) -> np.ndarray:
    """Branching vessel tree from the disc: four arcades plus nasal branches, drawn with PIL."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    px_per_unit = size / 2.0
    temporal = -side  # direction from disc towards fovea
    starts = [
        (np.arctan2(-0.55, temporal), 0.028, 1.0),  # superotemporal arcade, curving around fovea
        (np.arctan2(0.55, temporal), 0.028, -1.0),  # inferotemporal arcade
        (np.arctan2(-0.8, -temporal), 0.02, 0.0),  # superonasal
        (np.arctan2(0.8, -temporal), 0.02, 0.0),  # inferonasal
        (np.arctan2(rng.uniform(-0.2, 0.2), -temporal), 0.012, 0.0),  # nasal
    ]
    for heading, width, bend in starts:
        curvature = bend * temporal * 1.6
        _draw_vessel(rng, draw, (cx, cy), heading, width, curvature, 34, px_per_unit, size, depth=0)
    mask = np.asarray(canvas, dtype=np.float32) / 255.0
    return mask


def _draw_vessel(rng, draw, start, heading, width, curvature, steps, ppu, size, depth) -> None:
    x0, y0 = start
    pts = [(x0, y0)]
    step = 0.032
    for k in range(steps):
        heading += curvature * step + rng.normal(0.0, 0.08)
        x0, y0 = x0 + step * np.cos(heading), y0 + step * np.sin(heading)
        pts.append((x0, y0))
        if x0 * x0 + y0 * y0 > 0.95**2:
            break
        if depth < 2 and k > 3 and rng.random() < 0.10:
            branch = heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.0)
            _draw_vessel(
                rng, draw, (x0, y0), branch, width * 0.6, curvature * 0.3, int(steps * 0.5), ppu, size, depth + 1
            )
    w = max(1, round(width * ppu))
    draw.line(_to_px(np.asarray(pts), size), fill=255, width=w, joint="curve")


def _render_fundus_task(task) -> int:
    row, seed, bias, size, path = task
    params = fundus_params(row, seed, bias, row["index"])
    image = render_fundus(params, size)
    arrays = {
        "slo_fundus": image,
        "glaucoma": np.array(row["glaucoma"], dtype=np.int64),
        "gender": np.array(row["gender"], dtype=np.int64),
        "race": np.array(row["race"], dtype=np.int64),
        "ethnicity": np.array(row["ethnicity"], dtype=np.int64),
        "age": np.array(row["age"], dtype=np.float64),
        "language": np.array(LANGUAGES.index(row["language"]), dtype=np.int64),
        "maritalstatus": np.array(MARITAL.index(row["maritalstatus"]), dtype=np.int64),
        "note": np.array(row["note"]),
    }
    write_npz(Path(path), arrays)
    return 1


def generate_fundus(
    out: Path,
    n: int = 10_000,
    seed: int = 0,
    bias: BiasConfig = BiasConfig(),
    image_size: int = 224,
    workers: int = 2,
    *,
    test_min: int = 0,
    val_min: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a Harvard-FairVLMed-layout glaucoma set into `out` (atomically); return `out`.

    ``test_min`` / ``val_min``: see `TEST_ENRICHMENT` / `VAL_ENRICHMENT` (0 = a plain 70/10/20 split).
    """
    out = Path(out)
    validate_args(n=n, seed=seed, bias=bias, image_size=image_size, workers=workers, test_min=test_min, val_min=val_min)
    _check_out(out, overwrite)
    plan = plan_fundus(n, seed, bias, test_min, val_min)

    def write(tmp: Path) -> None:
        for folder in FUNDUS_SPLITS:
            (tmp / folder).mkdir()
        tasks = [
            ({**row, "index": i + 1}, seed, bias, image_size, str(tmp / FUNDUS_SPLITS[row["split"]] / row["filename"]))
            for i, row in enumerate(plan.to_dict("records"))
        ]
        _run_pool(_render_fundus_task, tasks, workers, progress, "fundus")
        summary = pd.DataFrame(
            {
                "filename": plan["filename"],
                "age": plan["age"],
                "gender": [GENDER_NAMES[g] for g in plan["gender"]],
                "race": [RACE_NAMES[r] for r in plan["race"]],
                "ethnicity": [ETH_NAMES[ETH_CODES.index(e)] for e in plan["ethnicity"]],
                "language": plan["language"],
                "maritalstatus": plan["maritalstatus"],
                "note": plan["note"],
                "use": plan["use"],
                "glaucoma": np.where(plan["glaucoma"] == 1, "yes", "no"),
            }
        )
        summary.to_csv(tmp / "data_summary.csv", index=False, lineterminator="\n")
        _write_json(tmp / CONFIG_NAME, _config("fundus", n, seed, bias, image_size, test_min, plan, val_min))

    return _atomic_write(out, write)


# ============================================================================= skin

SKIN_MALIGNANT = ("mel", "bcc", "akiec")
SKIN_BENIGN = ("nv", "bkl", "df", "vasc")
SKIN_DX_SHARES = {"mel": 0.57, "bcc": 0.263, "akiec": 0.167, "nv": 0.83, "bkl": 0.136, "df": 0.016, "vasc": 0.018}
SKIN_DX_TYPES = {
    "mel": {"histo": 1.0},
    "bcc": {"histo": 1.0},
    "akiec": {"histo": 1.0},
    "nv": {"follow_up": 0.55, "histo": 0.30, "consensus": 0.15},
    "bkl": {"histo": 0.48, "consensus": 0.27, "confocal": 0.25},
    "df": {"histo": 0.40, "consensus": 0.60},
    "vasc": {"histo": 0.60, "consensus": 0.40},
}
SKIN_LOCALIZATIONS = {
    "back": 0.22,
    "lower extremity": 0.20,
    "trunk": 0.14,
    "upper extremity": 0.11,
    "abdomen": 0.10,
    "face": 0.07,
    "chest": 0.04,
    "foot": 0.03,
    "unknown": 0.02,
    "neck": 0.02,
    "scalp": 0.013,
    "hand": 0.009,
    "ear": 0.005,
    "genital": 0.004,
    "acral": 0.001,
}
SKIN_PREVALENCE = 0.195
SKIN_SEX_NAMES, SKIN_SEX_SHARES = ("male", "female", "unknown"), (54.0, 45.5, 0.5)
FITZPATRICK = ("I", "II", "III", "IV", "V", "VI")
FITZPATRICK_SHARES = (15.0, 30.0, 25.0, 15.0, 9.0, 6.0)
FITZPATRICK_TONE_WEIGHT = (0.0, 0.0, 0.25, 0.5, 0.85, 1.0)
SKIN_RGB = np.array(
    [
        (0.95, 0.80, 0.74),
        (0.91, 0.73, 0.63),
        (0.83, 0.63, 0.50),
        (0.69, 0.49, 0.36),
        (0.52, 0.35, 0.25),
        (0.36, 0.24, 0.17),
    ],
    np.float32,
)
AGE_BINS = ((0, 40, "0-40"), (40, 60, "40-60"), (60, 200, "60+"))
SKIN_OR_AGE = {"0-40": 0.5, "40-60": 1.0, "60+": 2.0}
SKIN_OR_SEX = {"male": 1.5, "female": 1.0, "unknown": 1.0}
IMAGES_PER_LESION = ((1, 2, 3, 4), (0.78, 0.13, 0.06, 0.03))
# The lesion's latent malignancy cue c (module docstring): malignant U(0.45, 1) - 0.25 d, benign U(0, 0.5);
# each of the four visible scores is clip(c + N(0, 0.08), 0, 1).
SKIN_CUE_MALIGNANT, SKIN_CUE_BENIGN, SKIN_CUE_SHIFT, SKIN_SCORE_NOISE = (0.45, 1.0), (0.0, 0.5), 0.25, 0.08
MISSING_AGE_FRACTION = 0.006
FIRST_IMAGE_NUMBER = 24306
# transmittance palettes (multiplicative on skin, <1 darkens)
_PAL = {
    "light": (0.72, 0.58, 0.48),
    "brown": (0.50, 0.36, 0.28),
    "dark": (0.30, 0.20, 0.16),
    "black": (0.16, 0.12, 0.11),
    "bluegrey": (0.42, 0.47, 0.62),
    "red": (0.95, 0.50, 0.52),
    "pink": (1.02, 0.80, 0.80),
    "white": (1.12, 1.16, 1.2),
    "purple": (0.55, 0.24, 0.40),
    "tan": (0.80, 0.66, 0.52),
}


def age_group(age: float) -> str:
    """The CMAC paper's bins: 0-40, 40-60, 60+ (lower bound inclusive)."""
    for lo, hi, name in AGE_BINS:
        if lo <= age < hi:
            return name
    raise ValueError(f"age={age!r} is outside every bin")


def plan_skin(n: int, seed: int, bias: BiasConfig = BiasConfig(), test_min: int = 0, val_min: int = 0) -> pd.DataFrame:
    """Every image's metadata (no pixels), one row per image, in metadata-file order.

    Lesions (not images) are split 70/10/20 within each (sex, age group, label) stratum, so a rare
    stratum's first lesion is a training one and a lesion never spans two splits. ``test_min`` > 0
    then adds test-only lesions to every known-sex x age-group subgroup whose malignant *test images*
    number fewer than ``test_min``; the added lesions follow their subgroup's own prevalence and
    appearance, so per-subgroup figures are unbiased and only the subgroup mix of the test split
    departs from the population's (see `TEST_ENRICHMENT`). ``val_min`` does the same for the validation
    split, from streams of its own, after everything else is drawn: every other row -- every training
    and test image -- is the same with or without it (`VAL_ENRICHMENT`).

    Extra columns (not written to the CSV except ``split``): lesion_index, view, image_index,
    malignant, true_age, age_group, part, enriched.
    """
    validate_args(n=n, seed=seed, bias=bias, image_size=224, workers=1, test_min=test_min, val_min=val_min)
    rng = np.random.default_rng([seed, _STREAM_SKIN_PLAN])
    per_lesion: list[int] = []
    while sum(per_lesion) < n:
        per_lesion.append(_images_of_lesion(rng))
    per_lesion[-1] -= sum(per_lesion) - n
    L = len(per_lesion)

    fitz = _exact_assignment(rng, L, range(6), FITZPATRICK_SHARES)
    sex = _exact_assignment(rng, L, SKIN_SEX_NAMES, SKIN_SEX_SHARES)
    true_age = _skin_ages(rng, L)
    groups = np.array([age_group(a) for a in true_age])
    missing = np.zeros(L, bool)
    missing[rng.permutation(L)[: round(MISSING_AGE_FRACTION * L)]] = True

    P = bias.effective["prevalence"]
    offsets = P * (np.log([SKIN_OR_AGE[g] for g in groups]) + np.log([SKIN_OR_SEX[s] for s in sex]))
    b0 = _solve_intercept(offsets, SKIN_PREVALENCE)
    p = _sigmoid(b0 + offsets)
    order = np.lexsort((rng.permutation(L), fitz, groups, sex))
    malignant = np.empty(L, int)
    malignant[order] = _systematic(p[order])
    visible_group = np.where(missing, "unknown", groups)
    split = _stratified_split(rng, list(zip(sex, visible_group, malignant, strict=True)))
    lesions = pd.DataFrame(
        dict(
            images=per_lesion,
            fitz=fitz,
            sex=sex,
            true_age=true_age,
            age_group=groups,
            missing=missing,
            malignant=malignant,
            split=split,
            enriched=False,
        )
    )
    if test_min:
        extra = _skin_test_lesions(np.random.default_rng([seed, _STREAM_SKIN_EXTRA]), lesions, test_min, b0, P)
        lesions = pd.concat([lesions, extra], ignore_index=True)
    L, n_images = len(lesions), int(lesions["images"].sum())

    dx = [_choice(rng, SKIN_MALIGNANT if m else SKIN_BENIGN, SKIN_DX_SHARES) for m in lesions["malignant"]]
    dx_type = [_choice(rng, tuple(SKIN_DX_TYPES[d]), SKIN_DX_TYPES[d]) for d in dx]
    loc = [_choice(rng, tuple(SKIN_LOCALIZATIONS), SKIN_LOCALIZATIONS) for _ in range(L)]
    lesion_number = np.sort(rng.choice(int(L * 1.02) + 1, L, replace=False))[rng.permutation(L)]
    image_number = FIRST_IMAGE_NUMBER + rng.permutation(n_images)

    half = FIRST_IMAGE_NUMBER + (n_images + 1) // 2  # images numbered below it go to part 1
    df = _skin_rows(lesions, dx, dx_type, loc, lesion_number, image_number, half)
    if val_min:
        rng = np.random.default_rng([seed, _STREAM_SKIN_EXTRA_VAL])
        extra = _skin_test_lesions(rng, lesions, val_min, b0, P, split=1)
        extra.index = extra.index + L  # lesion_index continues after every existing lesion
        m, images = len(extra), int(extra["images"].sum())
        # drawn in this order (dx_type last), which fixes the validation-only lesions' bytes
        extra_dx = [_choice(rng, SKIN_MALIGNANT if v else SKIN_BENIGN, SKIN_DX_SHARES) for v in extra["malignant"]]
        extra_loc = [_choice(rng, tuple(SKIN_LOCALIZATIONS), SKIN_LOCALIZATIONS) for _ in range(m)]
        extra_lesions = int(lesion_number.max()) + 1 + rng.permutation(m)
        extra_images = FIRST_IMAGE_NUMBER + n_images + rng.permutation(images)
        extra_type = [_choice(rng, tuple(SKIN_DX_TYPES[d]), SKIN_DX_TYPES[d]) for d in extra_dx]
        added = _skin_rows(
            extra, extra_dx, extra_type, extra_loc, extra_lesions, extra_images, half, first_image=n_images
        )
        df = pd.concat([df, added], ignore_index=True)
    return df.sort_values(["lesion_id", "image_id"], kind="stable").reset_index(drop=True)


def _skin_rows(
    lesions: pd.DataFrame,
    dx: Sequence[str],
    dx_type: Sequence[str],
    loc: Sequence[str],
    lesion_number: np.ndarray,
    image_number: np.ndarray,
    half: int,
    *,
    first_image: int = 0,
) -> pd.DataFrame:
    """One metadata row per image of `lesions` (indexed by lesion_index), images numbered from `first_image`."""
    rows, k = [], first_image
    for j, (index, lesion) in enumerate(zip(lesions.index, lesions.to_dict("records"), strict=True)):
        for v in range(lesion["images"]):
            number = image_number[k - first_image]
            rows.append(
                dict(
                    lesion_id=f"HAM_{lesion_number[j]:07d}",
                    image_id=f"ISIC_{number:07d}",
                    dx=dx[j],
                    dx_type=dx_type[j],
                    age=np.nan if lesion["missing"] else float(lesion["true_age"]),
                    sex=lesion["sex"],
                    localization=loc[j],
                    fitzpatrick=FITZPATRICK[lesion["fitz"]],
                    split=SKIN_SPLITS[lesion["split"]],
                    lesion_index=int(index),
                    view=v,
                    image_index=k,
                    malignant=int(lesion["malignant"]),
                    true_age=float(lesion["true_age"]),
                    age_group=lesion["age_group"],
                    enriched=bool(lesion["enriched"]),
                    part=1 if number < half else 2,
                )
            )
            k += 1
    return pd.DataFrame(rows)


def _images_of_lesion(rng: np.random.Generator) -> int:
    return int(rng.choice(IMAGES_PER_LESION[0], p=IMAGES_PER_LESION[1]))


def _skin_ages(rng: np.random.Generator, n: int) -> np.ndarray:
    """Ages in 5-year steps, N(52, 17) clipped to [0, 85] (HAM10000's recorded ages are multiples of 5)."""
    return np.clip(np.round(rng.normal(52.0, 17.0, n) / 5.0) * 5.0, 0.0, 85.0)


def _stratified_split(rng: np.random.Generator, strata: list[tuple]) -> np.ndarray:
    """Split code (0 train, 1 val, 2 test) per item: the 70/10/20 deficit schedule run inside each
    stratum over a seeded shuffle, so every stratum is split within one item of 70/10/20 and a stratum's
    first item always goes to training (the largest fraction)."""
    split = np.empty(len(strata), dtype=int)
    by_stratum: dict[tuple, list[int]] = {}
    for i in rng.permutation(len(strata)):
        by_stratum.setdefault(strata[i], []).append(int(i))
    for members in by_stratum.values():
        split[members] = deficit_schedule(len(members), SPLIT_FRACTIONS)
    return split


def _skin_test_lesions(
    rng: np.random.Generator, lesions: pd.DataFrame, test_min: int, b0: float, P: float, split: int = 2
) -> pd.DataFrame:
    """Lesions only for `split` (2 test, 1 validation) for each known-sex x age-group subgroup until it has
    `test_min` malignant images in that split.

    Each added lesion is drawn like a population lesion of that subgroup: age from the population's age
    distribution restricted to the bin, Fitzpatrick type by its shares, malignant with the subgroup's
    prevalence sigmoid(b0 + P (ln OR_age + ln OR_sex)) -- so the subgroup's prevalence and difficulty are
    its own and only the subgroup mix of the test split changes.
    """
    extra = []
    for sex in SKIN_SEX_NAMES[:2]:
        for lo, hi, group in AGE_BINS:
            mine = lesions[(lesions["sex"] == sex) & (lesions["age_group"] == group) & ~lesions["missing"]]
            have = int((mine["images"] * ((mine["split"] == split) & (mine["malignant"] == 1))).sum())
            p = float(_sigmoid(b0 + P * (np.log(SKIN_OR_AGE[group]) + np.log(SKIN_OR_SEX[sex]))))
            while have < test_min:
                age = _skin_ages(rng, 64)
                age = age[(age >= lo) & (age < hi)]
                for a in age:
                    malignant = int(rng.random() < p)
                    images = _images_of_lesion(rng)
                    extra.append(
                        dict(
                            images=images,
                            fitz=int(rng.choice(6, p=np.array(FITZPATRICK_SHARES) / 100.0)),
                            sex=sex,
                            true_age=float(a),
                            age_group=group,
                            missing=False,
                            malignant=malignant,
                            split=split,
                            enriched=True,
                        )
                    )
                    have += images * malignant
                    if have >= test_min:
                        break
    return pd.DataFrame(extra, columns=list(lesions.columns))


def _choice(rng: np.random.Generator, names: tuple, shares: dict) -> str:
    w = np.array([shares[x] for x in names], float)
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def skin_lesion_params(row: dict, seed: int, bias: BiasConfig) -> dict:
    """The lesion's own parameters, shared by all its images (formulas in the module docstring)."""
    rng = np.random.default_rng([seed, _STREAM_SKIN_LESION, row["lesion_index"]])
    eff = bias.effective
    tone = FITZPATRICK_TONE_WEIGHT[FITZPATRICK.index(row["fitzpatrick"])]
    young = row["true_age"] < 40
    y = 1.0 if (young and row["sex"] == "female") else (0.5 if young else 0.0)
    d = eff["difficulty"] * max(y, tone)
    g = float(np.clip((row["true_age"] - 40.0) / 40.0, 0.0, 1.0))
    cue = rng.uniform(*SKIN_CUE_MALIGNANT) - SKIN_CUE_SHIFT * d if row["malignant"] else rng.uniform(*SKIN_CUE_BENIGN)
    cue = float(np.clip(cue, 0.0, 1.0))
    # each visible cue is the lesion's cue plus its own noise: asymmetry, border, colour, diameter
    scores = np.clip(cue + rng.normal(0.0, SKIN_SCORE_NOISE, 5), 0.0, 1.0)
    asym, border, colour, diam, structure = scores
    k = np.arange(1, 13)
    # order 1 only shifts the outline; orders 2-3 make it lopsided (asymmetry), 4-12 ragged (border)
    amp = np.where(k == 1, 0.02, np.where(k <= 3, 0.02 + 0.24 * asym, (0.01 + 0.12 * border) / (k / 3) ** 0.6))
    amp = amp * rng.uniform(0.6, 1.0, 12)
    n_fields = 4
    return dict(
        dx=row["dx"],
        cue=cue,
        scores=scores.astype(float).tolist(),  # asymmetry, border, colour, diameter, structure (pretraining targets)
        skin=SKIN_RGB[FITZPATRICK.index(row["fitzpatrick"])] * rng.uniform(0.95, 1.05, 3).astype(np.float32),
        log_contrast=float(max(0.15, 1.0 - 0.55 * eff["appearance"] * tone)),
        sun=float(0.03 + rng.uniform(0.0, 0.05) + 0.08 * eff["appearance"] * g),
        lentigines=int(rng.poisson(1.0 + 6.0 * eff["appearance"] * g)),
        radius=float(0.26 + 0.16 * diam + rng.uniform(-0.04, 0.04)),
        harm_amp=amp.astype(np.float32),
        harm_phase=rng.uniform(0, 2 * np.pi, 12).astype(np.float32),
        edge=float(0.03 + 0.08 * border * rng.random()),
        fields=rng.standard_normal((n_fields, 7, 7)),  # blobs of colour, in lesion coordinates
        colours=_lesion_colours(rng, row["dx"], colour),
        network=float(rng.uniform(0.0, 0.12) * (1.0 - cue) if row["dx"] in ("nv", "mel") else 0.0),
        net_freq=float(rng.uniform(28, 40)),
        vessels=rng.uniform(-0.8, 0.8, (int(rng.integers(3, 7)), 2))
        if row["dx"] == "vasc" or (row["dx"] == "bcc" and rng.random() < 0.3 + 0.5 * colour)
        else None,
        seed=rng.integers(2**31),
        # dermoscopic structures (module docstring): globules at (angle, radius / lesion radius, size);
        # streaks at (angle, length), radiating from the border
        globules=np.stack(
            [
                rng.uniform(0, 2 * np.pi, n_globules := int(rng.poisson(1.0 + 20.0 * structure**2))),
                rng.uniform(0.15, 0.75 + 0.25 * structure, n_globules),
                rng.uniform(0.03, 0.05, n_globules),
            ],
            1,
        ),
        streaks=np.stack(
            [
                rng.uniform(0, 2 * np.pi, m := int(rng.poisson(14.0 * max(0.0, structure - 0.35)))),
                rng.uniform(0.12, 0.3, m),
            ],
            1,
        ),
    )


_BASE_COLOURS = {
    "nv": {"brown": 0.55, "light": 0.3, "dark": 0.15},
    "bkl": {"tan": 0.5, "light": 0.3, "brown": 0.2},
    "df": {"light": 0.6, "brown": 0.4},
    "vasc": {"red": 0.6, "purple": 0.4},
    "mel": {"brown": 0.5, "dark": 0.3, "light": 0.2},
    "bcc": {"pink": 0.4, "light": 0.3, "brown": 0.3},
    "akiec": {"red": 0.4, "pink": 0.3, "tan": 0.3},
}
_EXTRA_COLOURS = ("dark", "light", "black", "bluegrey", "red", "white")


def _lesion_colours(rng, dx: str, cue: float) -> list[tuple[str, float]]:
    """Base colour (by dx) first, then extra colours: more of them, and more often black, blue-grey,
    red or white, as the colour-variety cue grows -- whatever the dx, so colour alone never decides it."""
    base = str(rng.choice(tuple(_BASE_COLOURS[dx]), p=tuple(_BASE_COLOURS[dx].values())))
    n_extra = min(4, round(0.5 + 4 * cue * rng.uniform(0.6, 1.0)))
    w = np.array([1.0, 1.0, 0.05 + 3 * cue, 0.05 + 3 * cue, 0.05 + 1.5 * cue, 0.05 + 1.5 * cue])
    extra = [str(c) for c in rng.choice(_EXTRA_COLOURS, n_extra, replace=False, p=w / w.sum())]
    motif = {"df": ["white"], "vasc": ["purple"]}.get(dx, [])  # df: central white patch; vasc: lobules
    return [(base, 1.0)] + [(c, float(0.15 + 0.35 * cue)) for c in motif + [c for c in extra if c not in motif]]


def render_skin(lesion: dict, view_rng: np.random.Generator, size: int) -> np.ndarray:
    """Draw one dermoscopy-like uint8 RGB image of `lesion` from a random view (crop/rotation/light)."""
    return render_skin_with_evidence(lesion, view_rng, size)[0]


def render_skin_with_evidence(lesion: dict, view_rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The image of `render_skin` and its evidence region: a bool [size, size] mask of the lesion (its
    opacity above one half), which holds every drawn sign of malignancy -- asymmetry, border, colours,
    structures. Drawing the mask takes nothing from the view's stream."""
    x, y = _grid(size)
    rng = view_rng
    phi, zoom = rng.uniform(0, 2 * np.pi), rng.uniform(0.85, 1.15)
    tx, ty = rng.uniform(-0.1, 0.1, 2)
    c, s = np.cos(phi), np.sin(phi)
    u = (c * (x - tx) + s * (y - ty)) / zoom
    v = (-s * (x - tx) + c * (y - ty)) / zoom

    # skin: colour, dermatoscope illumination, texture and sun damage
    light = rng.uniform(0.9, 1.1)
    r = np.sqrt(x * x + y * y)
    illum = light * (1.05 - 0.25 * r**2)
    tex_rng = np.random.default_rng(lesion["seed"])
    texture = 1.0 + lesion["sun"] * _lowfreq(tex_rng, size, 12) + 0.02 * _lowfreq(rng, size, 40)
    skin = lesion["skin"] * (illum * texture)[..., None]
    if lesion["lentigines"]:
        spots = _lentigo_mask(tex_rng, lesion["lentigines"], size, zoom, phi, tx, ty)
        skin = skin * np.exp(0.6 * spots[..., None] * np.log(np.array(_PAL["light"], np.float32)))

    # lesion shape: radius with harmonics (low orders = asymmetry, high orders = irregular border)
    rho = np.sqrt(u * u + v * v)
    z = (u + 1j * v).astype(np.complex64) / np.maximum(rho, 1e-6)
    zk, wobble = z, np.zeros_like(rho)
    for amp, phase in zip(lesion["harm_amp"], lesion["harm_phase"], strict=True):  # sum_k a_k cos(k theta + phi_k)
        wobble += (zk * np.complex64(amp * np.exp(1j * phase))).real
        zk = zk * z
    border = lesion["radius"] * (1.0 + wobble)
    alpha = _ramp(rho - border, lesion["edge"] * 2)

    # lesion colour: transmittance, base + extra colour regions from smooth fields in lesion coordinates
    logt = np.broadcast_to(np.log(np.array(_PAL[lesion["colours"][0][0]], np.float32)), u.shape + (3,)).copy()
    for j, (name, frac) in enumerate(lesion["colours"][1:]):
        f = _field(u, v, lesion["fields"][j % 4], lesion["radius"])
        inside = f[::3, ::3][alpha[::3, ::3] > 0.5]
        thr = np.quantile(inside, 1.0 - frac) if inside.size else 0.0  # area fraction ~ frac of the lesion
        w = np.clip((f - thr) / 0.3, 0.0, 1.0)
        if lesion["dx"] == "df" and name == "white":
            w = np.clip(1.0 - rho / (0.45 * lesion["radius"]), 0.0, 1.0)
        logt = logt * (1 - w[..., None]) + np.log(np.array(_PAL[name], np.float32)) * w[..., None]
    if lesion["network"] > 0:
        a = lesion["net_freq"]  # honeycomb-like pigment network: three wave directions 60 degrees apart
        net = np.abs(np.sin(a * u) * np.sin(a * (0.5 * u + 0.866 * v)) * np.sin(a * (0.5 * u - 0.866 * v)))
        logt = logt * (1.0 + lesion["network"] * 4 * (net[..., None] - 0.25))
    if lesion["dx"] == "akiec":
        logt = logt + 0.15 * _lowfreq(rng, size, 48)[..., None]  # scale
    img = skin * np.exp(alpha[..., None] * lesion["log_contrast"] * logt)

    structures = _structure_mask(lesion, size, zoom, phi, tx, ty)
    if structures is not None:  # globules and streaks, fainter on dark skin like the rest of the lesion
        img = img * np.exp(lesion["log_contrast"] * structures[..., None] * np.log(np.array(_PAL["dark"], np.float32)))
    if lesion["vessels"] is not None:
        vm = _lesion_vessels(lesion, size, zoom, phi, tx, ty)
        img = img * (1.0 - lesion["log_contrast"] * vm[..., None] * np.array([0.1, 0.55, 0.5], np.float32))
    img = img * (1.0 - _hair_mask(rng, size)[..., None] * 0.85)
    if rng.random() < 0.3:  # dermatoscope's dark circular border
        img = img * _ramp(r - rng.uniform(1.0, 1.3), 0.05)[..., None]
    return _finish(img, rng, 0.5 * size / 224.0, 2.0), alpha > 0.5


def _structure_mask(lesion, size, zoom, phi, tx, ty) -> np.ndarray | None:
    """Globules (dark dots scattered over the lesion) and streaks (short radial lines at its border), in
    lesion coordinates like the lentigines, so every view of a lesion shows the same ones."""
    if not len(lesion["globules"]) and not len(lesion["streaks"]):
        return None
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    c, s = np.cos(phi), np.sin(phi)
    radius = lesion["radius"]

    def to_image(points: ArrayLike) -> list[tuple[float, float]]:
        xy = np.asarray(points) * zoom
        return _to_px(np.stack([c * xy[:, 0] - s * xy[:, 1] + tx, s * xy[:, 0] + c * xy[:, 1] + ty], 1), size)

    for angle, rel, dot in lesion["globules"]:
        ((px, py),) = to_image([[rel * radius * np.cos(angle), rel * radius * np.sin(angle)]])
        rad = dot * zoom * size / 2
        draw.ellipse((px - rad, py - rad, px + rad, py + rad), fill=230)
    for angle, length in lesion["streaks"]:
        direction = np.array([np.cos(angle), np.sin(angle)])
        ends = to_image([0.85 * radius * direction, (radius + length) * direction])
        draw.line(ends, fill=200, width=max(1, round(size / 112)))
    canvas = canvas.filter(ImageFilter.GaussianBlur(size / 224))
    return np.asarray(canvas, np.float32) / 255.0


def _lentigo_mask(rng, count, size, zoom, phi, tx, ty) -> np.ndarray:
    """Solar lentigines: small blurred spots placed in lesion coordinates (same spots in every view)."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    c, s = np.cos(phi), np.sin(phi)
    for _ in range(count):
        lu, lv = rng.uniform(-1.2, 1.2, 2) * zoom
        rad = rng.uniform(0.02, 0.06) * zoom * size / 2
        ((px, py),) = _to_px([(c * lu - s * lv + tx, s * lu + c * lv + ty)], size)
        draw.ellipse((px - rad, py - rad, px + rad, py + rad), fill=255)
    canvas = canvas.filter(ImageFilter.GaussianBlur(size / 80))
    return np.asarray(canvas, np.float32) / 255.0


def _field(u, v, grid: np.ndarray, radius: float) -> np.ndarray:
    """Smooth random field: a 7x7 normal grid spanning the lesion's box, sampled bicubically at (u, v)."""
    size, step = u.shape[0], 4  # smooth at this scale: evaluate on a 4x coarser grid, then upsample
    uc, vc = u[step // 2 :: step, step // 2 :: step], v[step // 2 :: step, step // 2 :: step]
    m = grid.shape[0] - 1
    cu = (uc / (1.6 * radius) + 1.0) * 0.5 * m
    cv = (vc / (1.6 * radius) + 1.0) * 0.5 * m
    coarse = map_coordinates(grid, [cv, cu], order=3, mode="nearest").astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BILINEAR))


def _lesion_vessels(lesion, size, zoom, phi, tx, ty) -> np.ndarray:
    """Arborizing (bcc) or lobular (vasc) red structures, defined in lesion coordinates."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    c, s = np.cos(phi), np.sin(phi)
    R = lesion["radius"] * 0.8
    vrng = np.random.default_rng(lesion["seed"] + 1)
    for p in lesion["vessels"]:
        pts, q, h = [], np.array(p) * R, vrng.uniform(0, 2 * np.pi)
        for _ in range(8):
            pts.append(q.copy())
            h += vrng.normal(0, 0.6)
            q = q + 0.04 * np.array([np.cos(h), np.sin(h)])
        pts = np.array(pts) * zoom
        xy = np.stack([c * pts[:, 0] - s * pts[:, 1] + tx, s * pts[:, 0] + c * pts[:, 1] + ty], 1)
        width = max(1, int(size / 224 * (3 if lesion["dx"] == "vasc" else 2)))
        draw.line(_to_px(xy, size), fill=255, width=width, joint="curve")
    return np.asarray(canvas, np.float32) / 255.0


def _hair_mask(rng, size) -> np.ndarray:
    n = int(rng.choice([0, 0, 0, 1, 2, 4, 6]))
    canvas = Image.new("L", (size, size), 0)
    if n:
        draw = ImageDraw.Draw(canvas)
        for _ in range(n):
            x0, y0 = rng.uniform(-1, 1, 2)
            h, pts = rng.uniform(0, 2 * np.pi), []
            for _ in range(12):
                pts.append((x0, y0))
                h += rng.normal(0, 0.08)
                x0, y0 = x0 + 0.15 * np.cos(h), y0 + 0.15 * np.sin(h)
            draw.line(_to_px(np.array(pts), size), fill=255, width=max(1, size // 224), joint="curve")
    return np.asarray(canvas, np.float32) / 255.0


def _render_skin_task(task) -> int:
    row, seed, bias, size, path = task
    lesion = skin_lesion_params(row, seed, bias)
    view_rng = np.random.default_rng([seed, _STREAM_SKIN_VIEW, row["image_index"]])
    image = render_skin(lesion, view_rng, size)
    Image.fromarray(image, "RGB").save(path, format="JPEG", quality=JPEG_QUALITY)
    return 1


SKIN_COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "fitzpatrick", "split"]
SKIN_SPLITS = ("train", "val", "test")


def generate_skin(
    out: Path,
    n: int = 10_000,
    seed: int = 0,
    bias: BiasConfig = BiasConfig(),
    image_size: int = 224,
    workers: int = 2,
    *,
    test_min: int = 0,
    val_min: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a HAM10000-layout skin-lesion set into `out` (atomically); return `out`.

    ``test_min`` / ``val_min``: see `TEST_ENRICHMENT` / `VAL_ENRICHMENT` (0 = a plain 70/10/20 split).
    """
    out = Path(out)
    validate_args(n=n, seed=seed, bias=bias, image_size=image_size, workers=workers, test_min=test_min, val_min=val_min)
    _check_out(out, overwrite)
    plan = plan_skin(n, seed, bias, test_min, val_min)

    def write(tmp: Path) -> None:
        for part in (1, 2):
            (tmp / f"HAM10000_images_part_{part}").mkdir()
        tasks = [
            (row, seed, bias, image_size, str(tmp / f"HAM10000_images_part_{row['part']}" / f"{row['image_id']}.jpg"))
            for row in plan.to_dict("records")
        ]
        _run_pool(_render_skin_task, tasks, workers, progress, "skin")
        plan[SKIN_COLUMNS].to_csv(tmp / "HAM10000_metadata.csv", index=False, lineterminator="\n")
        _write_json(tmp / CONFIG_NAME, _config("skin", n, seed, bias, image_size, test_min, plan, val_min))

    return _atomic_write(out, write)


# ============================================================================= shared machinery


def _config(
    kind: str, n: int, seed: int, bias: BiasConfig, image_size: int, test_min: int, plan: pd.DataFrame, val_min: int = 0
) -> dict:
    """What synth_config.json records: everything that determines the bytes (not `workers`), and how
    many held-out-only samples the enrichment added (val_min only when set: older files stay equal)."""
    split = plan["split"].map(lambda s: s if isinstance(s, str) else SKIN_SPLITS[s])
    val = {}
    if val_min:
        added = int((plan["enriched"] & (split == SKIN_SPLITS[1])).sum())
        val = dict(val_min=int(val_min), val_enrichment=dict(rule=VAL_ENRICHMENT[kind], added=added))
    return dict(
        generator="training.synth",
        version=VERSION,
        kind=kind,
        n=int(n),
        seed=int(seed),
        image_size=int(image_size),
        bias=asdict(bias),
        effective_bias=bias.effective,
        test_min=int(test_min),
        test_enrichment=dict(
            rule=TEST_ENRICHMENT[kind],
            added=int((plan["enriched"] & (split == SKIN_SPLITS[2])).sum()),
            total=len(plan),
        ),
        **val,
    )


def _run_pool(fn: Callable, tasks: list, workers: int, progress: bool, desc: str) -> None:
    from tqdm.auto import tqdm

    with tqdm(total=len(tasks), desc=desc, unit="img", disable=not progress, file=sys.stderr) as bar:
        if workers == 1:
            for t in tasks:
                bar.update(fn(t))
            return
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        # Workers take the default SIGTERM/SIGINT handlers: a caller that catches them (the trainer
        # saves a checkpoint on SIGTERM) must not make its pool unkillable.
        with ctx.Pool(workers, initializer=_default_signals) as pool:
            for done in pool.imap_unordered(fn, tasks, chunksize=16):
                bar.update(done)


def _default_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _atomic_write(out: Path, write: Callable[[Path], None]) -> Path:
    """Build the dataset in a hidden sibling folder and rename it into place only when complete."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write(tmp)
        os.chmod(tmp, 0o755)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def latent_scores(
    kind: str, n: int, seed: int, bias: BiasConfig = BiasConfig(), test_min: int = 0, val_min: int = 0
) -> pd.Series:
    """The generator's own disease score per sample id (the file stem / image_id), drawn exactly as the
    images are: fundus, the cup-to-disc ratio the image shows (after label noise); skin, the lesion's
    malignancy cue c. Its AUC on a split is the benchmark's ceiling there -- what a model that read the
    one latent perfectly would reach; the visible findings are noisier still."""
    if kind == "fundus":
        plan = plan_fundus(n, seed, bias, test_min, val_min)
        scores = [
            fundus_params({**row, "index": i + 1}, seed, bias, i + 1)["cdr"]
            for i, row in enumerate(plan.to_dict("records"))
        ]
        return pd.Series(scores, index=[Path(f).stem for f in plan["filename"]], name="latent")
    plan = plan_skin(n, seed, bias, test_min, val_min)
    scores = [skin_lesion_params(row, seed, bias)["cue"] for row in plan.to_dict("records")]
    return pd.Series(scores, index=plan["image_id"].tolist(), name="latent")


GENERATORS = {"fundus": generate_fundus, "skin": generate_skin}
TEST_ENRICHMENT = {
    "fundus": "test-only samples added to every race group with fewer than test_min test samples, "
    "drawn like that group's population samples",
    "skin": "test-only lesions added to every known-sex x age-group subgroup with fewer than test_min "
    "malignant test images, drawn like that subgroup's population lesions",
}
"""What ``test_min`` does per task. A test split enriched this way estimates every group's own figures
from enough samples; its overall figures describe the enriched mix, so `training.metrics` also reports
them reweighted to the training split's group mix (the population's)."""
VAL_ENRICHMENT = {
    "fundus": "validation-only samples added to every race group with fewer than val_min validation "
    "samples, drawn like that group's population samples, numbered after every other file",
    "skin": "validation-only lesions added to every known-sex x age-group subgroup with fewer than val_min "
    "malignant validation images, drawn like that subgroup's population lesions, numbered after every other",
}
"""What ``val_min`` does per task. A threshold chosen on validation for a target sensitivity is a quantile
of the validation positives' scores: on the plain 10 % split (fundus ~100 positives, skin ~30) its test
sensitivity lands several points off target by chance alone (standard error ~sqrt(0.09 / positives)).
Drawn from streams of their own after everything else, the added samples leave every training and test
image as it was, so training is unchanged and only the thresholds and validation figures move."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.synth",
        description="Write a deterministic synthetic fairness benchmark in a real dataset's layout.",
    )
    p.add_argument("kind", choices=sorted(GENERATORS), help="fundus: Harvard-FairVLMed layout; skin: HAM10000")
    p.add_argument("--out", type=Path, required=True, help="output folder (must be empty or absent)")
    p.add_argument("--n", type=int, default=10_000, help="number of images (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--image-size", type=int, default=224, help="square image side in pixels (default 224)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (output does not depend on it)")
    p.add_argument("--strength", type=float, default=BiasConfig.strength, help="bias strength in [0, 1]; 0 = none")
    p.add_argument("--appearance", type=float, default=BiasConfig.appearance, help="appearance knob in [0, 2]")
    p.add_argument("--prevalence", type=float, default=BiasConfig.prevalence, help="prevalence knob in [0, 2]")
    p.add_argument("--difficulty", type=float, default=BiasConfig.difficulty, help="difficulty knob in [0, 2]")
    p.add_argument(
        "--test-min",
        type=int,
        default=0,
        help="enrich the test split: fundus, at least this many test samples per race group; skin, at "
        "least this many malignant test images per sex x age subgroup (default 0 = off)",
    )
    p.add_argument(
        "--val-min",
        type=int,
        default=0,
        help="enrich the validation split the same way (thresholds chosen on it; default 0 = off)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing synthetic dataset in --out")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    bias = BiasConfig(args.strength, args.appearance, args.prevalence, args.difficulty)
    import time

    start = time.perf_counter()
    try:
        out = GENERATORS[args.kind](
            args.out,
            n=args.n,
            seed=args.seed,
            bias=bias,
            image_size=args.image_size,
            workers=args.workers,
            test_min=args.test_min,
            val_min=args.val_min,
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    total = json.loads((out / CONFIG_NAME).read_text())["test_enrichment"]["total"]
    print(f"wrote {total} {args.kind} images to {out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
