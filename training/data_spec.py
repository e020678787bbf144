"""What a ``--data`` value means: a dataset folder, or a synthetic benchmark generated on first use.

``synth:fundus`` and ``synth:skin[:n=2000,seed=0,strength=1.0,test_min=50]`` name a synthetic benchmark
(``training.synth``) by its arguments. It is written once into the data cache
(``$FAIRDX_DATA_DIR``, default ``data/`` in the repository) under a folder named after those
arguments, and then read back by the same loaders as a real Harvard-FairVLMed or HAM10000 folder,
so the demo exercises the real code path. Anything else is a folder path.

``test_min`` enriches the test split (``training.synth.TEST_ENRICHMENT``) so that every group the
benchmark's claims are judged on has enough test samples: by default at least 300 test samples per
race group (fundus) and at least 50 malignant test images per sex x age subgroup (skin). ``val_min``
(default 0: off) enriches the validation split the same way (``training.synth.VAL_ENRICHMENT``), so a
threshold chosen on it for a target sensitivity holds on test; training and test images are unchanged.

`data_problems` is the data half of `training.config.validate`: it reads nothing and generates
nothing (a folder must exist; a synthetic spec's attributes are known from its generator), so a form
can call it before it queues a job. `dataset_problems` is the rest, run when the job starts on the
loaded metadata: an unknown attribute of a folder, a group with no training samples -- each in words
a user can act on.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from training import synth
from training.data import (
    ATTRIBUTE_JOINER,
    FUNDUS_ATTRIBUTES,
    ROOT_MISSING,
    SKIN_ATTRIBUTES,
    UNKNOWN_ATTRIBUTE,
    Dataset,
    DatasetError,
    check_groups,
    load_dataset,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SYNTH_PREFIX = "synth:"


class SynthDefaults(TypedDict):
    """The default of each `synth:` key (the fields of SynthSpec); test_min defaults per task."""

    n: int
    seed: int
    strength: float
    image_size: int


SYNTH_DEFAULTS: SynthDefaults = {"n": 2000, "seed": 0, "strength": 1.0, "image_size": 224}
SYNTH_KEYS = {"n": int, "seed": int, "strength": float, "image_size": int, "test_min": int, "val_min": int}
TEST_MIN_DEFAULTS = {"fundus": 300, "skin": 50}
SYNTH_ATTRIBUTES = {"fundus": FUNDUS_ATTRIBUTES, "skin": (*SKIN_ATTRIBUTES, "fitzpatrick")}
"""The attributes each generator writes (training.synth's metadata columns, read by training.data)."""

BAD_SYNTH_SPEC = (
    "data '{spec}' is not a valid synthetic spec: {reason}; write e.g. synth:fundus or "
    "synth:skin:n=2000,seed=0,strength=1.0"
)


@dataclass(frozen=True)
class SynthSpec:
    """The arguments of one synthetic benchmark; its folder name spells them out."""

    task: str
    n: int = SYNTH_DEFAULTS["n"]
    seed: int = SYNTH_DEFAULTS["seed"]
    strength: float = SYNTH_DEFAULTS["strength"]
    image_size: int = SYNTH_DEFAULTS["image_size"]
    test_min: int = 0
    val_min: int = 0  # off unless asked for: every spec written before it names the same data

    @property
    def folder_name(self) -> str:
        return (
            f"synth-{self.task}-n{self.n}-seed{self.seed}-s{self.strength:g}-px{self.image_size}"
            f"-t{self.test_min}{f'-val{self.val_min}' if self.val_min else ''}-v{synth.VERSION}"
        )

    def __str__(self) -> str:
        val = f",val_min={self.val_min}" if self.val_min else ""
        return f"synth:{self.task}:n={self.n},seed={self.seed},strength={self.strength:g},test_min={self.test_min}{val}"


def data_dir() -> Path:
    """Where synthetic benchmarks are cached (``$FAIRDX_DATA_DIR`` or ``data/`` in the repository)."""
    return Path(os.environ.get("FAIRDX_DATA_DIR") or REPO_ROOT / "data")


def parse_synth(spec: str) -> SynthSpec:
    """Parse ``synth:<task>[:k=v,...]``; raise ValueError naming what is wrong."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] != "synth":
        raise ValueError(BAD_SYNTH_SPEC.format(spec=spec, reason="expected synth:<task>[:key=value,...]"))
    task = parts[1]
    if task not in synth.GENERATORS:
        raise ValueError(BAD_SYNTH_SPEC.format(spec=spec, reason=f"task '{task}' is not one of fundus, skin"))
    values: dict[str, float | int] = {}
    for item in filter(None, (parts[2].split(",") if len(parts) == 3 else [])):
        key, _, raw = item.partition("=")
        key = key.strip()
        if key not in SYNTH_KEYS:
            raise ValueError(
                BAD_SYNTH_SPEC.format(spec=spec, reason=f"unknown key '{key}' (known: {', '.join(SYNTH_KEYS)})")
            )
        try:
            values[key] = SYNTH_KEYS[key](raw)
        except ValueError:
            raise ValueError(BAD_SYNTH_SPEC.format(spec=spec, reason=f"{key}='{raw}' is not a number")) from None
    values.setdefault("test_min", TEST_MIN_DEFAULTS[task])
    parsed = SynthSpec(task, **values)  # type: ignore[arg-type]
    try:
        synth.validate_args(
            n=parsed.n,
            seed=parsed.seed,
            bias=synth.BiasConfig(parsed.strength),
            image_size=parsed.image_size,
            workers=1,
            test_min=parsed.test_min,
            val_min=parsed.val_min,
        )
    except ValueError as err:
        raise ValueError(BAD_SYNTH_SPEC.format(spec=spec, reason=str(err))) from None
    return parsed


def materialize(spec: str, *, progress: bool = True) -> Path:
    """The folder a data spec points to; a synthetic benchmark is generated into the cache first.

    A file lock makes concurrent jobs that need the same benchmark wait for one generator instead
    of writing it twice; the generator itself renames its output into place only when complete.
    """
    if not spec.startswith(SYNTH_PREFIX):
        return Path(spec).expanduser()
    parsed = parse_synth(spec)
    out = data_dir() / parsed.folder_name
    if (out / synth.CONFIG_NAME).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{parsed.folder_name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / synth.CONFIG_NAME).is_file():
            synth.GENERATORS[parsed.task](
                out,
                n=parsed.n,
                seed=parsed.seed,
                bias=synth.BiasConfig(parsed.strength),
                image_size=parsed.image_size,
                workers=min(2, os.cpu_count() or 1),
                test_min=parsed.test_min,
                val_min=parsed.val_min,
                progress=progress,
            )
    return out


def load(spec: str, *, progress: bool = True) -> Dataset:
    """The dataset a data spec names (generating a synthetic one on first use)."""
    return load_dataset(materialize(spec, progress=progress))


def data_problems(data: str, attributes: Sequence[str | None]) -> list[str]:
    """What can be told of `data` and the `attributes` a config names without reading a file.

    A folder must exist (its attributes are checked by `dataset_problems` when the job starts); a
    synthetic spec must parse, and its attributes are the generator's own.
    """
    if data.startswith(SYNTH_PREFIX):
        try:
            task = parse_synth(data).task
        except ValueError as err:
            return [str(err)]
        available = SYNTH_ATTRIBUTES[task]
        return [
            UNKNOWN_ATTRIBUTE.format(attribute=name.strip(), available=", ".join(available))
            for attribute in dict.fromkeys(a for a in attributes if a)
            for name in attribute.split(ATTRIBUTE_JOINER)
            if name.strip() not in available
        ]
    folder = Path(data).expanduser()
    return [] if folder.is_dir() else [ROOT_MISSING.format(root=folder)]


def dataset_problems(dataset: Dataset, attributes: Sequence[str | None]) -> list[str]:
    """Every problem of the loaded dataset with the attributes named: unknown, or a group without training samples."""
    problems = []
    for attribute in dict.fromkeys(a for a in attributes if a):
        try:
            check_groups(dataset, attribute, "train")
        except DatasetError as err:
            problems.append(str(err))
    return problems
