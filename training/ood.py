"""'This does not look like the training data': an out-of-distribution score per adapter.

An adapter's answer means something only for images like those it was trained on; a fundus photograph
sent to the skin adapter, or a holiday photo, still gets a confident-looking probability. The score is
the Mahalanobis distance of the image's embedding (``Classifier.embed``: the feature vector the class
scores are computed from, under the adapter) to the training embeddings, in the class-conditional form
of Lee et al. (2018), "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
Adversarial Attacks", Eq. 2: one mean per class, one covariance shared by the classes, the distance
to the nearest class mean. The covariance is shrunk with Ledoit & Wolf's estimator
(``sklearn.covariance.LedoitWolf``), so it stays invertible when the embedding has more dimensions than
there are training images (3,584 for Qwen2.5-VL-7B).

The threshold is set on the validation split, never on test or on the image: the :data:`QUANTILE`
(99 %) of the validation images' distances, so about 1 % of in-distribution images are flagged.
A run keeps it in ``ood.npz`` beside its adapter; ``training.train`` writes it when a run is
published and ``python -m training.ood RUN_DIR ...`` (re)computes it for a finished run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from tqdm.auto import tqdm

from training.data import Sample

FILE = "ood.npz"
QUANTILE = 0.99
MAX_TRAIN = 2000  # training images embedded to fit the Gaussian (a seeded subset beyond that)
BATCH = 16
TOO_FEW = "the out-of-distribution score needs at least {need} training images of each class; got {counts}"


@dataclass(frozen=True)
class OodModel:
    """Class means, the shared precision matrix and the validation-set threshold of one adapter."""

    means: np.ndarray  # [classes, D]
    precision: np.ndarray  # [D, D]
    threshold: float
    quantile: float
    n_train: int

    def distance(self, embeddings: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of `embeddings` [B, D] to its nearest class mean."""
        x = np.atleast_2d(np.asarray(embeddings, dtype=np.float64))
        diffs = x[:, None, :] - self.means[None, :, :]  # [B, classes, D]
        squared = np.einsum("bcd,de,bce->bc", diffs, self.precision, diffs)
        return np.sqrt(np.maximum(squared.min(axis=1), 0.0))

    def in_distribution(self, embeddings: np.ndarray) -> np.ndarray:
        return self.distance(embeddings) <= self.threshold

    def save(self, path: str | Path) -> Path:
        """Write atomically (a reader never sees half a file)."""
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        with open(partial, "wb") as handle:
            np.savez(
                handle,
                means=self.means,
                precision=self.precision,
                threshold=self.threshold,
                quantile=self.quantile,
                n_train=self.n_train,
            )
        partial.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> OodModel:
        with np.load(path) as data:
            return cls(
                data["means"],
                data["precision"],
                float(data["threshold"]),
                float(data["quantile"]),
                int(data["n_train"]),
            )


def fit_embeddings(train: np.ndarray, labels: np.ndarray, val: np.ndarray, *, quantile: float = QUANTILE) -> OodModel:
    """Class means and a Ledoit-Wolf shared covariance on `train`; the threshold from `val`'s distances."""
    labels = np.asarray(labels)
    classes = sorted(set(labels.tolist()))
    counts = {c: int((labels == c).sum()) for c in classes}
    if len(classes) < 2 or min(counts.values()) < 2:
        raise ValueError(TOO_FEW.format(need=2, counts=counts))
    train = np.asarray(train, dtype=np.float64)
    means = np.stack([train[labels == c].mean(axis=0) for c in classes])
    centred = train - means[np.searchsorted(classes, labels)]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    model = OodModel(means, precision, float("inf"), quantile, len(train))
    threshold = float(np.quantile(model.distance(val), quantile))
    return OodModel(means, precision, threshold, quantile, len(train))


def embed_samples(clf, samples: Sequence[Sample], *, progress: bool = False) -> np.ndarray:
    """``clf.embed`` of every sample's image, as float64 numpy [N, D]."""
    clf.eval()
    chunks = []
    batches = [samples[i : i + BATCH] for i in range(0, len(samples), BATCH)]
    with torch.inference_mode():
        for chunk in tqdm(batches, desc="embed", unit="batch", disable=not progress):
            batch = clf.preprocess([s.load_image() for s in chunk])
            chunks.append(clf.embed(batch).float().cpu().numpy())
    return np.concatenate(chunks).astype(np.float64)


def fit(clf, train: Sequence[Sample], val: Sequence[Sample], *, seed: int = 0, progress: bool = False) -> OodModel:
    """Embed (at most :data:`MAX_TRAIN`) training images and every validation image, then fit."""
    train = list(train)
    if len(train) > MAX_TRAIN:
        chosen = np.random.default_rng(seed).choice(len(train), MAX_TRAIN, replace=False)
        train = [train[i] for i in sorted(chosen)]
    train_embeddings = embed_samples(clf, train, progress=progress)
    val_embeddings = embed_samples(clf, list(val), progress=progress)
    return fit_embeddings(train_embeddings, np.array([s.label for s in train]), val_embeddings)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.ood RUN_DIR ...``: (re)compute ood.npz for finished runs from their own data."""
    from training import data_spec, rundir
    from training.backbones import load_run_classifier

    parser = argparse.ArgumentParser(prog="python -m training.ood", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="complete run directories")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    for path in args.run_dirs:
        run = rundir.read_run(path)
        dataset = data_spec.load(run.settings.data, progress=not args.no_progress)
        model = fit(
            load_run_classifier(run),
            dataset.split("train"),
            dataset.split("val"),
            seed=run.settings.seed,
            progress=not args.no_progress,
        )
        model.save(run.path / FILE)
        print(f"{run.run_id}: threshold {model.threshold:.3f} ({model.quantile:.0%} of val), {model.n_train} train")
    return 0


if __name__ == "__main__":
    sys.exit(main())
