"""The run directory: the unit the training CLI, the app and the Hub share (DESIGN.md, "Run directory").

    runs/<run_id>/
      config.json      fully resolved TrainConfig + task, family, versions, training summary
      adapter/         adapter_config.json, adapter_model.safetensors (+ head.safetensors)
      metrics.jsonl    one line per logged step: step, epoch, loss parts, lr, samples/s
      predictions.csv  per val/test sample: id, split, label, prob, margin, every attribute
      eval.json        training.metrics.evaluate_run: threshold, per attribute, intervals, guard
      README.md        model card

A run is written into a hidden staging folder ``runs/.staging-<run_id>/`` (which also holds the
resumable checkpoint) and renamed to ``runs/<run_id>/`` only when every file is there, so a
listing never shows a half-written run. Hidden folders are never listed.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

CONFIG = "config.json"
ADAPTER = "adapter"
METRICS = "metrics.jsonl"
PREDICTIONS = "predictions.csv"
EVAL = "eval.json"
CARD = "README.md"
CHECKPOINT = "checkpoint"
CHECKPOINT_TMP = f"{CHECKPOINT}.tmp"  # the next checkpoint while it is written
CHECKPOINT_OLD = f"{CHECKPOINT}.old"  # the previous one while the new one moves into place
REQUIRED = (CONFIG, f"{ADAPTER}/adapter_config.json", f"{ADAPTER}/adapter_model.safetensors", METRICS,
            PREDICTIONS, EVAL, CARD)
STAGING_PREFIX = ".staging-"

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_RUNS_DIR = REPO_ROOT / "assets" / "runs"

RUN_EXISTS = "run '{name}' already exists in {runs_dir}; pick another --run-name or delete the folder"


@dataclass(frozen=True)
class RunInfo:
    """A complete run on disk, with its config.json read."""

    run_id: str
    path: Path
    config: dict[str, Any] = field(repr=False)

    @property
    def task(self) -> str:
        return self.config["task"]

    @property
    def method(self) -> str:
        return self.config["method"]

    @property
    def backbone(self) -> str:
        return self.config["backbone"]

    @property
    def is_demo(self) -> bool:
        return self.path.parent.resolve() == DEMO_RUNS_DIR.resolve()

    def label(self) -> str:
        """Short human label for menus: '<run_id> (demo)'."""
        return f"{self.run_id} (demo)" if self.is_demo else self.run_id

    def eval(self) -> dict[str, Any]:
        return json.loads((self.path / EVAL).read_text())

    @cached_property
    def evaluation(self) -> dict[str, Any]:
        """The ``report`` of eval.json, read once ({} when unreadable: such a run shows no figures)."""
        try:
            return self.eval().get("report") or {}
        except (OSError, ValueError):
            return {}

    @property
    def threshold(self) -> float:
        """The decision threshold the run was evaluated at (chosen on its validation split); 0.5 for
        runs evaluated before thresholds were chosen. Diagnose and Compare decide at it too."""
        return float(self.evaluation.get("threshold", 0.5))

    @property
    def degenerate(self) -> bool:
        """The degenerate-model guard's verdict from eval.json (training.guard)."""
        return bool((self.evaluation.get("guard") or {}).get("degenerate"))

    @property
    def guard_reasons(self) -> list[str]:
        return list((self.evaluation.get("guard") or {}).get("reasons") or [])


def missing_files(path: Path) -> list[str]:
    """Which required files a run directory lacks (empty for a complete run)."""
    return [name for name in REQUIRED if not (path / name).is_file()]


def read_run(path: str | Path) -> RunInfo:
    """Read a complete run; raise ValueError naming what is missing or unreadable."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"run directory {path} does not exist")
    missing = missing_files(path)
    if missing:
        raise ValueError(f"{path} is not a complete run: missing {', '.join(missing)}")
    try:
        config = json.loads((path / CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {path / CONFIG}: {err}") from None
    for key in ("task", "method", "backbone"):
        if key not in config:
            raise ValueError(f"{path / CONFIG} has no '{key}'; it was not written by FairDx")
    return RunInfo(path.name, path, config)


def list_runs(*runs_dirs: str | Path, task: str | None = None) -> list[RunInfo]:
    """Every complete run in the given folders (hidden and incomplete folders skipped), sorted by id."""
    runs = []
    for runs_dir in runs_dirs:
        runs_dir = Path(runs_dir)
        if not runs_dir.is_dir():
            continue
        for path in sorted(runs_dir.iterdir()):
            if path.name.startswith(".") or not path.is_dir() or missing_files(path):
                continue
            try:
                run = read_run(path)
            except ValueError:
                continue
            if task is None or run.task == task:
                runs.append(run)
    return runs


def staging_dir(runs_dir: str | Path, run_id: str) -> Path:
    """The hidden folder a run is written into before it is complete."""
    return Path(runs_dir) / f"{STAGING_PREFIX}{run_id}"


def checkpoint_in(staging: Path) -> Path | None:
    """The complete checkpoint in a staging folder, or None.

    The trainer replaces its checkpoint by renaming: the new one is written to ``checkpoint.tmp``, the
    old one moved to ``checkpoint.old``, then the new one into place. A kill between the two renames
    leaves only ``checkpoint.old``, which is still a complete checkpoint, one save older.
    """
    for name in (CHECKPOINT, CHECKPOINT_OLD):
        if (staging / name / "state.pt").is_file():
            return staging / name
    return None


def finalize(staging: Path, final: Path) -> Path:
    """Move a complete staging folder into place (checkpoints are dropped first)."""
    missing = missing_files(staging)
    if missing:
        raise RuntimeError(f"refusing to publish {staging}: missing {', '.join(missing)}")
    for name in (CHECKPOINT, CHECKPOINT_OLD, CHECKPOINT_TMP):
        shutil.rmtree(staging / name, ignore_errors=True)
    if final.exists():
        raise FileExistsError(RUN_EXISTS.format(name=final.name, runs_dir=final.parent))
    os.replace(staging, final)
    return final


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON through a temporary file and rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
