"""The run directory: the unit the training CLI, the app and the Hub share (docs/architecture.md, "Run directory").

    runs/<run_id>/
      config.json      fully resolved TrainConfig + task, family, versions, training summary
      adapter/         adapter_config.json, adapter_model.safetensors (+ head.safetensors)
      metrics.jsonl    one line per logged step: step, epoch, loss parts, lr, samples/s; and per epoch a
                       "val" record: validation loss, accuracy and MaxAccGap on the training attribute
      predictions.csv  per val/test sample: id, split, label, prob, margin, every attribute
      eval.json        training.metrics.evaluate_run: threshold, per attribute, intervals, guard
      ood.npz          training.ood: class means, shared precision and the val-set threshold (optional)
      command.txt      the command that started the run, one line per start (a resume adds one; optional)
      README.md        model card

A run is written into a hidden staging folder ``runs/.staging-<run_id>/`` (which also holds the
resumable checkpoint) and renamed to ``runs/<run_id>/`` only when every file is there, so a
listing never shows a half-written run. Hidden folders are never listed.

While a process trains into a run it holds an exclusive lock on ``runs/.lock-<run_id>`` (``lock_run``),
so a second trainer or the Studio's cleanup never removes a staging folder that is being written.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from training.config import ConfigError, TrainConfig

CONFIG = "config.json"
ADAPTER = "adapter"
METRICS = "metrics.jsonl"
PREDICTIONS = "predictions.csv"
EVAL = "eval.json"
CARD = "README.md"
COMMAND = "command.txt"
COMMAND_ENV = "FAIRDX_LAUNCH_COMMAND"  # the Studio puts the exact command it started here for the trainer
CHECKPOINT = "checkpoint"
CHECKPOINT_TMP = f"{CHECKPOINT}.tmp"  # the next checkpoint while it is written
CHECKPOINT_OLD = f"{CHECKPOINT}.old"  # the previous one while the new one moves into place
REQUIRED = (
    CONFIG,
    f"{ADAPTER}/adapter_config.json",
    f"{ADAPTER}/adapter_model.safetensors",
    METRICS,
    PREDICTIONS,
    EVAL,
    CARD,
)
STAGING_PREFIX = ".staging-"
LOCK_PREFIX = ".lock-"  # runs/.lock-<run_id>: held by the process that trains into the run

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_RUNS_DIR = REPO_ROOT / "assets" / "runs"

RUN_EXISTS = "run '{name}' already exists in {runs_dir}; pick another --run-name or delete the folder"
RUN_LOCKED = (
    "run '{name}' is being trained right now by another process{holder} (it holds {lock}); "
    "wait for it to finish or cancel it, or pick another --run-name"
)


class RunRecord(BaseModel):
    """What ``training.train`` records in config.json beside the settings (training.config.RUN_RECORD_KEYS)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    task: str
    family: str = ""
    run_id: str | None = None
    created: str | None = None
    versions: dict[str, str] = {}
    dataset: dict[str, Any] = {}
    """spec, root, samples per split (``n``), attributes, training ``group_counts`` per attribute."""
    training: dict[str, Any] = {}
    """The training summary: steps, effective batch, processes, seconds, final losses."""

    @property
    def group_counts(self) -> dict[str, dict[str, int]]:
        """Training samples per group, per attribute the trainer counted."""
        return dict(self.dataset.get("group_counts") or {})


@dataclass(frozen=True)
class RunInfo:
    """A complete run on disk: its typed settings and record (config.json, read and validated once)."""

    run_id: str
    path: Path
    config: dict[str, Any] = field(repr=False)
    """config.json as written (for the model card and the Hub, which publish it as is)."""
    settings: TrainConfig = field(repr=False)
    record: RunRecord = field(repr=False)

    @property
    def task(self) -> str:
        return self.record.task

    @property
    def method(self) -> str:
        return self.settings.method

    @property
    def backbone(self) -> str:
        return self.settings.backbone or ""

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
    return run_from_config(path, config)


def run_from_config(path: Path, config: dict[str, Any]) -> RunInfo:
    """A RunInfo from a run folder's config.json values; ValueError naming what is wrong."""
    if not isinstance(config, dict):
        raise ValueError(f"{path / CONFIG} does not hold a JSON object; it was not written by FairDx")
    for key in ("task", "method", "backbone"):
        if key not in config:
            raise ValueError(f"{path / CONFIG} has no '{key}'; it was not written by FairDx")
    try:
        settings = TrainConfig.from_dict({k: v for k, v in config.items() if k in TrainConfig.model_fields})
        record = RunRecord.model_validate(config)
    except (ConfigError, ValidationError) as err:
        raise ValueError(f"{path / CONFIG} is not a valid FairDx run config: {err}") from None
    return RunInfo(path.name, path, config, settings, record)


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


def lock_path(runs_dir: str | Path, run_id: str) -> Path:
    """The lock file of a run name (hidden, like the staging folder, and never listed)."""
    return Path(runs_dir) / f"{LOCK_PREFIX}{run_id}"


class RunLock:
    """An exclusive ``flock`` on a run's lock file, held while one process trains into (or cleans) the run.

    The kernel drops the lock when its holder dies however it dies (SIGKILL included), so a lock file
    left behind by a killed trainer never blocks the next one. ``release`` removes the file.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                os.unlink(self.path)  # while still locked: a waiter that opened it retries (lock_run)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_run(runs_dir: str | Path, run_id: str) -> RunLock | None:
    """Take the lock of a run name without waiting; None when another process holds it.

    The holder's pid is written into the file for messages (``lock_holder``). A holder removes the file
    when it releases it, so after locking, check that the file we locked is still the one at the path.
    """
    path = lock_path(runs_dir, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder removed it between our open and our lock: lock the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return RunLock(path, fd)


def lock_holder(runs_dir: str | Path, run_id: str) -> int | None:
    """The pid written into a run's lock file by the process that holds it (None if unknown)."""
    try:
        return int(lock_path(runs_dir, run_id).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def run_locked_message(runs_dir: str | Path, run_id: str) -> str:
    holder = lock_holder(runs_dir, run_id)
    return RUN_LOCKED.format(name=run_id, holder=f" (pid {holder})" if holder else "", lock=lock_path(runs_dir, run_id))


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


def record_command(folder: Path, command: str) -> None:
    """Append the command that started a run to its ``command.txt`` (written in the staging folder, so it
    moves into the published run with everything else; a resumed run lists every start)."""
    with (folder / COMMAND).open("a") as file:
        file.write(command.strip() + "\n")


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON through a temporary file and rename, so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
