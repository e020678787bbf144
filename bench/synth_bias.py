"""How biased is the synthetic benchmark, measured rather than asserted?

``python -m bench.synth_bias --n 10000 --seed 0 [--data DIR] [--json OUT]``

For bias strength 0 and the default strength it generates (or reuses, from ``--data DIR``) a fundus
and a skin set with ``training.synth``, reads them back from disk, and reports:

- generation time;
- group mix (% per attribute value) and per-group label prevalence;
- a deliberately plain baseline -- logistic regression (scikit-learn, unweighted) on ~30 cheap image
  statistics (colour means/stds, a disc-centred radial profile for fundus; lesion darkness, shape and
  colour statistics for skin) -- trained on the training split: per-group test accuracy, MaxAccGap
  for race / ethnicity / gender (fundus) and sex / age group / Fitzpatrick (skin), and TPR per
  sex x age group with its spread (intersectional Delta-TPR) for skin.

The readers here are deliberately minimal (the on-disk layouts documented in training/synth.py);
they are not the project's loaders. Prints a markdown report; ``--json OUT`` also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.ndimage import uniform_filter
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from training import synth

FEATURE_SIZE = 112
FUNDUS_ATTRS = ("race", "ethnicity", "gender")
SKIN_ATTRS = ("sex", "age_group", "fitzpatrick")
MIN_POSITIVES_FOR_TPR = 5
SKIN_N_FEATURES = 19


# ----------------------------------------------------------------------------- reading


def read_fundus(root: Path) -> pd.DataFrame:
    """data_summary.csv plus each row's npz path; split from `use`, label from `glaucoma`."""
    df = pd.read_csv(root / "data_summary.csv", keep_default_na=False)
    folder = {"training": "Training", "validation": "Validation", "test": "Test"}
    df["path"] = [str(root / folder[u] / f) for u, f in zip(df["use"], df["filename"], strict=True)]
    df["split"] = df["use"].map({"training": "train", "validation": "val", "test": "test"})
    df["label"] = (df["glaucoma"] == "yes").astype(int)
    return df


def read_skin(root: Path, seed: int) -> pd.DataFrame:
    """HAM10000_metadata.csv plus image paths; binary malignant label; its split column, else 70/10/20 by lesion_id."""
    df = pd.read_csv(root / "HAM10000_metadata.csv")
    paths = {p.stem: str(p) for p in root.glob("HAM10000_images_part_*/*.jpg")}
    df["path"] = df["image_id"].map(paths)
    df["label"] = df["dx"].isin(synth.SKIN_MALIGNANT).astype(int)
    df["age_group"] = [synth.age_group(a) if a == a else "unknown" for a in df["age"]]
    if "split" in df.columns:  # the generator's own lesion-level split (with its test enrichment)
        return df
    lesions = np.sort(df["lesion_id"].unique())
    lesions = lesions[np.random.default_rng(seed).permutation(len(lesions))]
    cut = np.cumsum(synth.largest_remainder(len(lesions), synth.FUNDUS_SPLIT_FRACTIONS))
    split = {les: "train" if k < cut[0] else "val" if k < cut[1] else "test" for k, les in enumerate(lesions)}
    df["split"] = df["lesion_id"].map(split)
    return df


# ----------------------------------------------------------------------------- features


def fundus_features(path: str) -> np.ndarray:
    """Colour statistics in the field of view, plus a radial profile around the brightest blob (the disc)."""
    with np.load(path) as z:
        img = z["slo_fundus"]
    img = np.asarray(Image.fromarray(img).resize((FEATURE_SIZE, FEATURE_SIZE), Image.BILINEAR), np.float32) / 255
    fov = img.sum(-1) > 0.05
    col = img[fov]
    stats = np.concatenate([col.mean(0), col.std(0)])
    bright = uniform_filter(img[..., 1] + img[..., 2], 7)
    cy, cx = np.unravel_index(np.argmax(bright), bright.shape)
    yy, xx = np.indices(bright.shape)
    dist = np.hypot(yy - cy, xx - cx) / FEATURE_SIZE
    bg = col.mean(0) + 1e-3
    rings = []
    for lo in np.arange(0.0, 0.2, 0.02):
        ring = (dist >= lo) & (dist < lo + 0.02)
        rings.append(img[ring][:, 1:].mean(0) / bg[1:] if ring.any() else np.zeros(2))
    rings = np.concatenate(rings)
    window = dist < 0.2
    pale = img[..., 2][window]
    thr = pale.min() + 0.5 * (pale.max() - pale.min())
    cup_area = np.sqrt((pale > thr).mean())
    disc = (img[..., 0][window] > np.quantile(img[..., 0][window], 0.5) * 1.1).mean()
    return np.concatenate([stats, rings, [cup_area, np.sqrt(disc), cup_area / (np.sqrt(disc) + 1e-3)]])


def skin_features(path: str) -> np.ndarray:
    """Lesion darkness, size, shape (asymmetry, border) and colour-variety statistics."""
    with Image.open(path) as im:
        im.draft("RGB", (FEATURE_SIZE, FEATURE_SIZE))
        img = np.asarray(im.convert("RGB").resize((FEATURE_SIZE, FEATURE_SIZE), Image.BILINEAR), np.float32)
    img = img / 255 + 1e-3
    yy, xx = np.indices(img.shape[:2])
    r = np.hypot(yy - FEATURE_SIZE / 2, xx - FEATURE_SIZE / 2) / (FEATURE_SIZE / 2)
    ring = (r > 0.6) & (r < 0.9) & (img.mean(-1) > 0.08)
    bg = np.median(img[ring], 0) if ring.sum() > 20 else np.median(img.reshape(-1, 3), 0)
    dark = np.log(bg) - np.log(img)  # per-channel optical density relative to the skin
    d = dark.mean(-1)
    mask = (d > 0.25) & (r < 0.8)
    area = mask.mean()
    if mask.sum() < 10:
        return np.concatenate([[area], np.zeros(SKIN_N_FEATURES - 1)])
    my, mx = yy[mask].mean(), xx[mask].mean()
    cov = np.cov(np.stack([yy[mask] - my, xx[mask] - mx]))
    ev = np.sort(np.linalg.eigvalsh(cov))
    ecc = 1 - ev[0] / max(ev[1], 1e-6)
    sy, sx = (
        np.clip(np.round(2 * my - yy).astype(int), 0, FEATURE_SIZE - 1),
        np.clip(np.round(2 * mx - xx).astype(int), 0, FEATURE_SIZE - 1),
    )
    asym = (mask & ~mask[sy, sx]).sum() / mask.sum()  # point-reflection asymmetry
    edge = mask ^ (np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
    irregular = edge.sum() ** 2 / (4 * np.pi * mask.sum())
    inside = dark[mask]
    blue = (inside[:, 2] > inside[:, 0] + 0.1).mean()
    red = (inside[:, 1] - inside[:, 0] > 0.35).mean()
    q = np.quantile(inside.mean(1), [0.1, 0.5, 0.9])
    return np.concatenate(
        [
            [area, np.sqrt(area), ecc, asym, irregular],
            inside.mean(0),
            inside.std(0),
            q,
            [q[2] - q[0], blue, red],
            [np.std(np.argmax(inside, 1)), inside.std(1).mean()],
        ]
    )


def compute_features(fn, paths: list[str], workers: int) -> np.ndarray:
    if workers == 1:
        return np.stack([fn(p) for p in paths])
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return np.stack(pool.map(fn, paths, chunksize=64))


# ----------------------------------------------------------------------------- metrics


def baseline(df: pd.DataFrame, feats: np.ndarray) -> np.ndarray:
    """Unweighted logistic regression fit on the training split; returns P(label=1) for every row."""
    train = (df["split"] == "train").to_numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    model.fit(feats[train], df["label"].to_numpy()[train])
    return model.predict_proba(feats)[:, 1]


def group_report(df: pd.DataFrame, prob: np.ndarray, attrs, intersect: tuple[str, str] | None) -> dict:
    test = (df["split"] == "test").to_numpy()
    t = df[test].assign(prob=prob[test], pred=(prob[test] >= 0.5).astype(int))
    t["correct"] = (t["pred"] == t["label"]).astype(int)
    out = {
        "n_test": len(t),
        "accuracy": float(t["correct"].mean()),
        "auc": float(roc_auc_score(t["label"], t["prob"])),
    }
    for a in attrs:
        g = t.groupby(a, observed=True)
        accs = g["correct"].mean()
        if a in ("sex", "age_group"):
            accs = accs.drop("unknown", errors="ignore")
        out[a] = {
            "accuracy": {str(k): float(v) for k, v in accs.items()},
            "n": {str(k): int(v) for k, v in g.size().items()},
            "max_acc_gap": float(accs.max() - accs.min()),
        }
    if intersect:
        pos = t[(t["label"] == 1) & (t[intersect[0]] != "unknown") & (t[intersect[1]] != "unknown")]
        g = pos.groupby(list(intersect))["pred"]
        tpr = {f"{k[0]}|{k[1]}": (float(v.mean()), len(v)) for k, v in g}
        valid = [v for v, n in tpr.values() if n >= MIN_POSITIVES_FOR_TPR]
        out["tpr"] = {k: {"tpr": v, "n_pos": n} for k, (v, n) in tpr.items()}
        out["delta_tpr"] = float(max(valid) - min(valid)) if valid else float("nan")
    return out


def mix_report(df: pd.DataFrame, attrs) -> dict:
    return {
        a: {
            str(k): {"pct": 100 * float(len(g)) / len(df), "prevalence": float(g["label"].mean())}
            for k, g in df.groupby(a, observed=True)
        }
        for a in attrs
    }


# ----------------------------------------------------------------------------- driver


def ensure_dataset(
    kind: str, root: Path, n: int, seed: int, strength: float, image_size: int, workers: int
) -> tuple[Path, float | None]:
    """Reuse root if it holds exactly this configuration; otherwise (re)generate it. Returns (path, seconds)."""
    bias = synth.BiasConfig(strength=strength)
    want = {
        "version": synth.VERSION,
        "kind": kind,
        "n": n,
        "seed": seed,
        "image_size": image_size,
        "bias": json.loads(json.dumps(asdict(bias))),
        "test_min": 0,
    }
    cfg = root / synth.CONFIG_NAME
    if cfg.is_file() and all(json.loads(cfg.read_text()).get(k) == v for k, v in want.items()):
        return root, None
    start = time.perf_counter()
    synth.GENERATORS[kind](
        root, n=n, seed=seed, bias=bias, image_size=image_size, workers=workers, overwrite=True, progress=True
    )
    return root, time.perf_counter() - start


def evaluate(kind: str, root: Path, seed: int, workers: int) -> dict:
    start = time.perf_counter()
    if kind == "fundus":
        df, fn, attrs, inter = read_fundus(root), fundus_features, FUNDUS_ATTRS, None
    else:
        df, fn, attrs, inter = read_skin(root, seed), skin_features, SKIN_ATTRS, ("sex", "age_group")
    feats = compute_features(fn, df["path"].tolist(), workers)
    prob = baseline(df, feats)
    report = {
        "mix": mix_report(df, attrs),
        "baseline": group_report(df, prob, attrs, inter),
        "n_features": int(feats.shape[1]),
        "feature_seconds": time.perf_counter() - start,
    }
    return report


def run(n: int, seed: int, data: Path | None, strengths: list[float], image_size: int, workers: int) -> dict:
    tmp = None
    if data is None:
        tmp = Path(tempfile.mkdtemp(prefix="synth-bias-"))
        data = tmp
    results = {"n": n, "seed": seed, "image_size": image_size, "workers": workers, "runs": {}}
    try:
        for kind in ("fundus", "skin"):
            for s in strengths:
                root, secs = ensure_dataset(
                    kind, data / f"{kind}-n{n}-seed{seed}-s{s:g}", n, seed, s, image_size, workers
                )
                rep = evaluate(kind, root, seed, workers)
                rep["generation_seconds"] = secs
                results["runs"][f"{kind}@{s:g}"] = rep
                print(
                    f"[{kind} strength={s:g}] generated in "
                    f"{'(reused)' if secs is None else f'{secs:.1f} s'}; features+fit {rep['feature_seconds']:.1f} s",
                    file=sys.stderr,
                )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return results


def markdown(results: dict, strengths: list[float]) -> str:
    runs, lines = results["runs"], []
    lines += [
        (
            f"# Synthetic benchmark bias report (n={results['n']}, seed={results['seed']}, "
            f"image size {results['image_size']}, {results['workers']} workers)"
        ),
        "",
        "## Generation",
        "",
        "| set | strength | seconds | images/s |",
        "|---|---|---|---|",
    ]
    for key, rep in runs.items():
        kind, s = key.split("@")
        secs = rep["generation_seconds"]
        rate = "" if secs is None else f"{results['n'] / secs:.0f}"
        lines.append(f"| {kind} | {s} | {'reused' if secs is None else f'{secs:.1f}'} | {rate} |")
    for kind, attrs in (("fundus", FUNDUS_ATTRS), ("skin", SKIN_ATTRS)):
        keys = [f"{kind}@{s:g}" for s in strengths]
        lines += [
            "",
            f"## {kind}: group mix, prevalence and logistic-baseline test accuracy",
            "",
            "| attribute | group | % | "
            + " | ".join(f"prev s={k.split('@')[1]}" for k in keys)
            + " | "
            + " | ".join(f"n test | acc s={k.split('@')[1]}" for k in keys)
            + " |",
            "|---|---|---|" + "---|" * (3 * len(keys)),
        ]
        for a in attrs:
            for g, m in runs[keys[0]]["mix"][a].items():
                prev = " | ".join(f"{runs[k]['mix'][a][g]['prevalence']:.3f}" for k in keys)
                acc = " | ".join(
                    f"{runs[k]['baseline'][a]['n'].get(g, 0)} | "
                    f"{runs[k]['baseline'][a]['accuracy'].get(g, float('nan')):.3f}"
                    for k in keys
                )
                lines.append(f"| {a} | {g} | {m['pct']:.1f} | {prev} | {acc} |")
        lines += [
            "",
            "| metric | " + " | ".join(f"s={k.split('@')[1]}" for k in keys) + " |",
            "|---|" + "---|" * len(keys),
        ]
        lines.append(
            "| overall accuracy | " + " | ".join(f"{runs[k]['baseline']['accuracy']:.3f}" for k in keys) + " |"
        )
        lines.append("| AUC | " + " | ".join(f"{runs[k]['baseline']['auc']:.3f}" for k in keys) + " |")
        for a in attrs:
            lines.append(
                f"| MaxAccGap {a} | " + " | ".join(f"{runs[k]['baseline'][a]['max_acc_gap']:.3f}" for k in keys) + " |"
            )
        if kind == "skin":
            lines.append(
                "| ΔTPR sex×age_group | " + " | ".join(f"{runs[k]['baseline']['delta_tpr']:.3f}" for k in keys) + " |"
            )
            lines += [
                "",
                "| sex × age_group | " + " | ".join(f"positives | TPR s={k.split('@')[1]}" for k in keys) + " |",
                "|---|" + "---|" * (2 * len(keys)),
            ]
            for g in runs[keys[0]]["baseline"]["tpr"]:
                cells = " | ".join(
                    f"{runs[k]['baseline']['tpr'].get(g, {}).get('n_pos', 0)} | "
                    f"{runs[k]['baseline']['tpr'].get(g, {}).get('tpr', float('nan')):.3f}"
                    for k in keys
                )
                lines.append(f"| {g} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.synth_bias", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000, help="images per set (default 10000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path, default=None, help="cache folder: reuse matching sets, generate missing ones")
    p.add_argument("--strengths", type=float, nargs="+", default=[0.0, synth.BiasConfig.strength])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    args = p.parse_args(argv)
    try:
        for s in args.strengths:
            synth.validate_args(
                n=args.n,
                seed=args.seed,
                bias=synth.BiasConfig(strength=s),
                image_size=args.image_size,
                workers=args.workers,
            )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = run(args.n, args.seed, args.data, args.strengths, args.image_size, args.workers)
    print(markdown(results, args.strengths))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
