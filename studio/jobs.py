"""The Studio's persistent job store: training runs queued, started, watched and cancelled.

docs/architecture.md "Jobs". A job is one run of the training CLI (``python -m training.train``) in its own
process group, with stdout and stderr in ``<runs_dir>/.jobs/<job_id>.log`` and its resolved config
in ``<runs_dir>/.jobs/<job_id>.json``. Jobs live in a SQLite table beside the runs
(``<runs_dir>/jobs.sqlite3``), so a page reload, a second tab or a restarted app sees the same
jobs. Every change is one ``BEGIN IMMEDIATE`` transaction on a WAL database, which makes the store
safe to share between threads and between processes.

States: queued → running → succeeded | failed | cancelled.

A failed or cancelled job that left a checkpoint in its staging folder can be *resumed*
(``resume``): a new job, linked to the old one by ``resume_of``, runs the same config with
``--resume`` into the same run id, so a SIGKILLed worker or a cancel loses no finished steps and
the old job's record and log stay as they were. One that left no checkpoint has nothing to resume:
its staging folder is removed when it is reaped (``remove_unresumable_staging``), which frees the
run name again.

- ``tick()`` reaps finished workers, escalates overdue cancels to SIGKILL and starts queued jobs
  while fewer than ``max_concurrent`` run (default 1: one GPU job at a time). The UI's timer, the
  optional scheduler thread (``start_scheduler``) and a watcher thread per worker (which reaps it
  the moment it exits, so no zombie waits for a poll) all call it.
- A process is identified by its pid *and* its start time (psutil's ``create_time``; rows of older
  versions hold clock ticks since boot, read as such), so a reused pid is never taken for a worker,
  nor signalled.
- Only the process that started a worker (its supervisor, recorded the same way) can learn its
  exit code. When the supervisor is gone (the app was restarted or killed) the worker goes on in
  its own session; once it is gone too, its outcome is read from disk: a published run means it
  succeeded, otherwise the log's last ``error:`` or "worker process disappeared".
- Cancel = SIGTERM to the worker's process group: the trainer saves a checkpoint and exits 3.
  A worker still alive ``cancel_grace_s`` later gets SIGKILL.

No Gradio here: app.py wires these calls to buttons and a ``gr.Timer``.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from studio.progress import DEFAULT_TAIL_LINES, Progress, read_progress, tail_lines
from training import methods, rundir
from training.config import TRAIN_MODULE, ConfigError, TrainConfig, launch_arguments, validate
from training.data import DatasetError, detect_task

logger = logging.getLogger(__name__)

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
ACTIVE_STATES = (QUEUED, RUNNING)
FINAL_STATES = (SUCCEEDED, FAILED, CANCELLED)

DB_NAME = "jobs.sqlite3"
JOBS_DIR = ".jobs"
SCHEMA_VERSION = 3  # 2: jobs.resume_of; 3: jobs.command
EXIT_INTERRUPTED = 3  # the trainer's exit code after SIGTERM, once its checkpoint is saved
DEFAULT_LAMBDAS = (0.1, 0.5, 1.0)  # Gu et al., fair LoRA §4.2
DEFAULT_CANCEL_GRACE_S = 30.0
BUSY_TIMEOUT_S = 30.0
ERROR_LINE = re.compile(r"^(?:[\w./-]+: )?error: ?(.*)$")  # "error: ..." and argparse's "train.py: error: ..."

# Reasons a job ended, stored with it and shown to the user.
REASON_DISAPPEARED = "worker process disappeared (app restarted or killed)"
REASON_SIGNAL = "killed by signal {signum}"
REASON_CRASH = "training crashed (exit code {code}): {detail}"
REASON_INTERRUPTED = (
    "training was stopped by a SIGTERM from outside the Studio; its checkpoint is in {staging} "
    "(python -m training.train --resume with the same flags continues it)"
)
REASON_NO_RUN = "training exited with code 0 but published no complete run at {path}"
REASON_UNWATCHED_SUCCESS = "finished while no app was watching it (exit code unknown); its run is complete"
REASON_SPAWN = "could not start the training process: {error}"
REASON_CANCELLED_QUEUED = "cancelled before it started"
REASON_CANCELLED_RUNNING = "cancelled while running"
REASON_CANCELLED_CHECKPOINT = "cancelled while running; the checkpoint it saved is in {staging}"
REASON_CANCELLED_KILLED = "cancelled; it did not stop within {grace:g} s of SIGTERM and was killed"

# Errors a caller can act on.
ERR_UNKNOWN_JOB = "no job '{job_id}' in {db}"
ERR_QUEUE_FULL = "the queue is full ({queued} job(s) waiting, at most {limit}); wait for a job to start or cancel one"
ERR_OWNER_LIMIT = "'{owner}' already has {active} active job(s) (at most {limit}); wait for one to finish or cancel one"
ERR_RUN_TAKEN = (
    "run_name '{name}' is taken in {runs_dir} (by a run, a staging folder or an active job); "
    "pick another name or delete the folder"
)
ERR_SWEEP_METHOD = (
    "a λ sweep needs a method with λ (" + ", ".join(methods.LAMBDA_METHODS) + "); λ has no effect on method '{method}'"
)
ERR_SWEEP_EMPTY = "a λ sweep needs at least one λ value"
ERR_GRID_W_MAX_METHOD = (
    "a w_max sweep needs a method with w_max (" + ", ".join(methods.WEIGHT_METHODS) + "); "
    "w_max has no effect on method '{method}'"
)
ERR_GRID_EMPTY = "a sweep over {name} needs at least one value"
ERR_GRID_DUPLICATES = "{name} values of a sweep must differ (got {values})"
ERR_SWEEP_DUPLICATES = "λ values of a sweep must differ (got {lambdas})"
ERR_BAD_LIMIT = "{name} must be a whole number ≥ {minimum} (got {value!r})"
ERR_BAD_GRACE = "cancel_grace_s must be ≥ 0 (got {value!r})"
ERR_NEWER_SCHEMA = (
    "job database {db} has schema version {found}, newer than this FairDx ({ours}); "
    "upgrade FairDx or point the Studio at another runs folder"
)
ERR_WAIT_TIMEOUT = "job '{job_id}' is still {state} after {timeout:g} s"
ERR_NOT_RESUMABLE = "job '{job_id}' is {state}; only a failed or cancelled job can be resumed"
ERR_NO_CHECKPOINT = (
    "job '{job_id}' left no checkpoint to resume from (it stopped before its first one, every "
    "save_every steps); launch it again instead"
)
ERR_RUN_COMPLETE = "run '{run_id}' of job '{job_id}' is already complete; there is nothing to resume"
ERR_RESUMING = "run '{run_id}' is already being resumed by job '{other}' ({state})"
ERR_NO_CONFIG = "job '{job_id}' cannot be resumed: its config file {path} is gone"

SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS jobs (
        id               TEXT PRIMARY KEY,
        run_id           TEXT NOT NULL,
        owner            TEXT NOT NULL,
        state            TEXT NOT NULL CHECK (state IN {STATES}),
        created          REAL NOT NULL,
        started          REAL,
        finished         REAL,
        pid              INTEGER,
        pid_start        INTEGER,
        supervisor_pid   INTEGER,
        supervisor_start INTEGER,
        cancel_requested REAL,
        exit_code        INTEGER,
        reason           TEXT,
        resume_of        TEXT,
        command          TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created)",
    "CREATE INDEX IF NOT EXISTS jobs_by_run ON jobs (run_id)",
    "CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, state)",
)
MIGRATIONS = {  # user_version before → statements that bring a database to the next version
    1: ("ALTER TABLE jobs ADD COLUMN resume_of TEXT",),
    2: ("ALTER TABLE jobs ADD COLUMN command TEXT",),
}


class JobLimitError(RuntimeError):
    """A guard of the store refused a submission (nothing was queued)."""


class QueueFullError(JobLimitError):
    """More jobs would wait than ``max_queued`` allows."""


class OwnerLimitError(JobLimitError):
    """The owner would have more queued or running jobs than ``max_active_per_owner`` allows."""


class NotResumableError(ValueError):
    """``JobStore.resume`` refused: the job is active or succeeded, or left no checkpoint (nothing queued)."""


class UnknownJobError(LookupError):
    """No job with that id in this store."""


@dataclass(frozen=True)
class Job:
    """One row of the job table, with the paths of its files. Times are Unix seconds."""

    id: str
    run_id: str
    state: str
    owner: str
    created: float
    started: float | None
    finished: float | None
    pid: int | None
    exit_code: int | None
    reason: str | None
    cancel_requested: float | None
    runs_dir: Path
    config_path: Path
    log_path: Path
    resume_of: str | None = None  # the failed or cancelled job this one continues
    command: str | None = None  # the exact command its worker was started with (None before it started)

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def cancelling(self) -> bool:
        """Cancel was asked for and the worker has not exited yet (show "cancelling…")."""
        return self.state == RUNNING and self.cancel_requested is not None

    @property
    def run_path(self) -> Path:
        """Where the run is published when the job succeeds."""
        return self.runs_dir / self.run_id

    @property
    def staging_path(self) -> Path:
        """Where the run is written (and its checkpoint kept) while it trains."""
        return rundir.staging_dir(self.runs_dir, self.run_id)

    def resume_problem(self) -> str | None:
        """Why this job cannot be resumed, from its own state and files (None: it can).

        ``JobStore.resume`` adds the one check that needs the table: no other job resumes the run already.
        """
        if self.state not in (FAILED, CANCELLED):
            return ERR_NOT_RESUMABLE.format(job_id=self.id, state=self.state)
        if self.run_path.exists():
            return ERR_RUN_COMPLETE.format(run_id=self.run_id, job_id=self.id)
        if rundir.checkpoint_in(self.staging_path) is None:
            return ERR_NO_CHECKPOINT.format(job_id=self.id)
        if not self.config_path.is_file():
            return ERR_NO_CONFIG.format(job_id=self.id, path=self.config_path)
        return None

    @property
    def resumable(self) -> bool:
        """Failed or cancelled, with a checkpoint and no published run: ``JobStore.resume`` continues it."""
        return self.resume_problem() is None

    def config_value(self, key: str) -> Any:
        """One setting of the job's config file; None when the file is gone or unreadable (the trainer,
        which reads it in full, says why)."""
        try:
            return json.loads(self.config_path.read_text()).get(key)
        except (OSError, ValueError, AttributeError):
            return None

    @property
    def sweep(self) -> str | None:
        """The sweep this job was queued with (``TrainConfig.sweep``); None for a job of its own."""
        value = self.config_value("sweep")
        return value if isinstance(value, str) and value else None

    @property
    def duration_s(self) -> float | None:
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started


def _folder_task(folder: str) -> str:
    """The task of a dataset folder, from which files it holds (nothing is read)."""
    try:
        return detect_task(folder)
    except DatasetError as err:
        raise ConfigError([str(err)]) from None


def training_command(job: Job) -> list[str]:
    """The training CLI for a job (the default ``command_for``); run with cwd = repository root.

    A job of several processes (``TrainConfig.processes``, one per GPU) runs it under ``accelerate launch``
    on a free port, so two such jobs on one machine never collide on accelerate's default one. A job that
    resumes another adds ``--resume``: the trainer then continues from the checkpoint in the run's staging
    folder and refuses a config that differs from the checkpoint's.
    """
    processes = _processes_of(job)
    launcher = [sys.executable, "-m"]
    if processes > 1:
        launcher += ["accelerate.commands.launch", *launch_arguments(processes)]
        launcher += ["--main_process_port", str(free_port()), "-m"]
    return [
        *launcher,
        TRAIN_MODULE,
        "--config",
        str(job.config_path),
        "--run-name",
        job.run_id,
        "--runs-dir",
        str(job.runs_dir),
        "--no-progress",
        *(["--resume"] if job.resume_of else []),
    ]


def _processes_of(job: Job) -> int:
    """The processes a job's config asks for (1 when its file cannot be read: the trainer will say why)."""
    value = job.config_value("processes")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 1 else 1


def free_port() -> int:
    """A TCP port no process listens on now (the OS picks it), for a launcher's main process."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ---------------------------------------------------------------------- process identity
START_TOLERANCE_S = 1.0  # psutil derives create_time from the boot time, which NTP may move a little


def process_start_time(pid: int) -> float | None:
    """When a process started (Unix seconds, psutil's ``create_time``); with the pid it names the
    process uniquely. None if there is no such process."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def _legacy_start(start: float) -> float | None:
    """A start time stored before psutil (clock ticks since boot, ``/proc/<pid>/stat`` field 22) in
    Unix seconds; None for a value that cannot be one (a float: psutil's create_time)."""
    if not isinstance(start, int):
        return None
    try:
        return psutil.boot_time() + start / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None


def _started_at(proc: psutil.Process, start: float) -> bool:
    """Whether the stored ``start`` is ``proc``'s start time (either format), within START_TOLERANCE_S.

    Jobs stored by an older FairDx hold clock ticks; reading them as such keeps a worker that
    outlived an upgrade of the app recognised (and cancellable) instead of declared gone.
    """
    created = proc.create_time()
    if abs(start - created) < START_TOLERANCE_S:
        return True
    legacy = _legacy_start(start)
    return legacy is not None and abs(legacy - created) < START_TOLERANCE_S


def process_alive(pid: int | None, start: float | None) -> bool:
    """Whether ``pid`` runs and is the process that started at ``start`` (not a zombie, not a reused
    pid); with ``start`` None, whether any live process has that pid."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return False
        return start is None or _started_at(proc, start)
    except psutil.NoSuchProcess:  # ZombieProcess included
        return False
    except psutil.AccessDenied:  # another user's process (macOS): it exists, its identity is unknown
        return start is None


def _signal_group(pid: int | None, start: float | None, signum: int) -> bool:
    """Signal a worker's process group (its pgid is its pid: start_new_session) if it is still that worker.

    A worker this process started and has not reaped cannot have lost its pid, so it is signalled
    without comparing start times; any other pid only when its start time is the stored one.
    """
    if not pid:
        return False
    child = _CHILDREN.get(pid)
    ours = child is not None and child.returncode is None
    if not ours and not process_alive(pid, start):
        return False
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def remove_unresumable_staging(job: Job) -> bool:
    """Remove the staging folder of a failed or cancelled job that holds no checkpoint (True if removed).

    Nothing in it can be resumed, and it would keep the run name taken. A folder with a checkpoint
    stays (``JobStore.resume`` and ``--resume`` continue from it), and so does one whose run lock
    another process holds: a trainer writes into it right now (``rundir.lock_run``).
    """
    staging = job.staging_path
    if not staging.is_dir() or rundir.checkpoint_in(staging) is not None:
        return False
    try:
        lock = rundir.lock_run(job.runs_dir, job.run_id)
    except OSError:
        logger.warning("cannot lock run %s to remove its staging folder %s", job.run_id, staging, exc_info=True)
        return False
    if lock is None:
        return False
    with lock:
        if rundir.checkpoint_in(staging) is not None:
            return False
        shutil.rmtree(staging, ignore_errors=True)
    return True


class _Children:
    """Popen handles of the workers this process started, shared by every JobStore in the process.

    Only a worker's parent learns its exit code and must reap it. A fork inherits this dict but
    not the children, so the registry empties itself in a forked process.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner = os.getpid()
        self._procs: dict[int, subprocess.Popen] = {}

    def _mine(self) -> dict[int, subprocess.Popen]:
        if os.getpid() != self._owner:
            self._owner, self._procs = os.getpid(), {}
        return self._procs

    def add(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._mine()[proc.pid] = proc

    def get(self, pid: int | None) -> subprocess.Popen | None:
        with self._lock:
            return self._mine().get(pid) if pid else None

    def remove(self, pid: int) -> None:
        with self._lock:
            self._mine().pop(pid, None)


_CHILDREN = _Children()


def log_error(path: str | Path) -> str | None:
    """The trainer's last ``error: ...`` message in a log, with its indented continuation lines."""
    lines = tail_lines(path, 200)
    for i in range(len(lines) - 1, -1, -1):
        match = ERROR_LINE.match(lines[i])
        if match:
            block = [match.group(1).strip()]
            for line in lines[i + 1 :]:
                if not line.strip() or not line[0].isspace():
                    break
                block.append(line.rstrip())
            return "\n".join(block)
    return None


# ---------------------------------------------------------------------- the store
class JobStore:
    """Training jobs of one runs folder, persisted in SQLite and shared by threads and processes.

    Args:
        runs_dir: the folder runs are published into; the database and job files live beside them.
        db_path: the SQLite file (default ``<runs_dir>/jobs.sqlite3``).
        max_concurrent: jobs running at once (default 1: one GPU job at a time).
        max_queued: jobs allowed to wait (None = unbounded); a public deployment bounds it.
        max_active_per_owner: queued + running jobs per owner (None = unlimited, as locally).
        cancel_grace_s: seconds between SIGTERM and SIGKILL when a running job is cancelled.
        command_for: the command a job runs (default ``training_command``); tests pass a stand-in.
        env: extra environment variables for the workers (on top of this process's).
    """

    def __init__(
        self,
        runs_dir: str | Path = "runs",
        *,
        db_path: str | Path | None = None,
        max_concurrent: int = 1,
        max_queued: int | None = None,
        max_active_per_owner: int | None = None,
        cancel_grace_s: float = DEFAULT_CANCEL_GRACE_S,
        command_for: Callable[[Job], list[str]] = training_command,
        env: dict[str, str] | None = None,
    ):
        for name, value, minimum in (
            ("max_concurrent", max_concurrent, 1),
            ("max_queued", max_queued, 0),
            ("max_active_per_owner", max_active_per_owner, 1),
        ):
            if value is None:
                valid = name != "max_concurrent"  # the other two are optional
            else:
                valid = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
            if not valid:
                raise ValueError(ERR_BAD_LIMIT.format(name=name, minimum=minimum, value=value))
        if not isinstance(cancel_grace_s, (int, float)) or cancel_grace_s < 0:
            raise ValueError(ERR_BAD_GRACE.format(value=cancel_grace_s))
        self.runs_dir = Path(runs_dir).expanduser().resolve()
        self.jobs_dir = self.runs_dir / JOBS_DIR
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = Path(db_path).expanduser().resolve() if db_path else self.runs_dir / DB_NAME
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.max_active_per_owner = max_active_per_owner
        self.cancel_grace_s = float(cancel_grace_s)
        self.command_for = command_for
        self.env = dict(env or {})
        self._tick_lock = threading.Lock()
        self._closed = threading.Event()
        self._scheduler: threading.Thread | None = None
        self._init_db()
        self.recover()

    # ------------------------------------------------------------------ database
    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        con.row_factory = sqlite3.Row
        return con

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock up front, so a read-then-write
        (count the running jobs, then start one) cannot interleave with another process's."""
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                if con.in_transaction:  # some SQLite errors have rolled back already
                    con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        finally:
            con.close()

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        con = self._connect()
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    def _init_db(self) -> None:
        con = self._connect()
        try:
            con.execute("PRAGMA journal_mode=WAL")
        finally:
            con.close()
        with self._write() as con:
            found = con.execute("PRAGMA user_version").fetchone()[0]
            if found > SCHEMA_VERSION:
                raise RuntimeError(ERR_NEWER_SCHEMA.format(db=self.db_path, found=found, ours=SCHEMA_VERSION))
            if con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'").fetchone():
                for version in range(found, SCHEMA_VERSION):  # an older store keeps its jobs
                    for statement in MIGRATIONS[version]:
                        con.execute(statement)
            for statement in SCHEMA:
                con.execute(statement)
            con.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _job(self, row: sqlite3.Row) -> Job:
        return Job(
            id=row["id"],
            run_id=row["run_id"],
            state=row["state"],
            owner=row["owner"],
            created=row["created"],
            started=row["started"],
            finished=row["finished"],
            pid=row["pid"],
            exit_code=row["exit_code"],
            reason=row["reason"],
            cancel_requested=row["cancel_requested"],
            runs_dir=self.runs_dir,
            config_path=self.jobs_dir / f"{row['id']}.json",
            log_path=self.jobs_dir / f"{row['id']}.log",
            resume_of=row["resume_of"],
            command=row["command"],
        )

    # ------------------------------------------------------------------ reading
    def get(self, job_id: str) -> Job:
        rows = self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise UnknownJobError(ERR_UNKNOWN_JOB.format(job_id=job_id, db=self.db_path))
        return self._job(rows[0])

    def list_jobs(self, *, owner: str | None = None, states: Sequence[str] | None = None) -> list[Job]:
        """Jobs, newest first, optionally of one owner and in some states."""
        sql = "SELECT * FROM jobs WHERE 1 = 1"
        params: list[str] = []
        if owner is not None:
            sql, params = sql + " AND owner = ?", params + [owner]
        if states is not None:
            sql += f" AND state IN ({', '.join('?' * len(states))})"
            params += list(states)
        return [self._job(r) for r in self._read(sql + " ORDER BY created DESC, rowid DESC", params)]

    def is_active(self, *, owner: str | None = None) -> bool:
        """Whether any job is queued or running (the UI's timer can stop polling when not)."""
        return bool(self.list_jobs(owner=owner, states=ACTIVE_STATES))

    def progress(self, job_id: str, *, tail: int = DEFAULT_TAIL_LINES) -> Progress:
        """Step, total, ETA, loss curve and log tail of a job, read from its run's metrics.jsonl."""
        job = self.get(job_id)
        # published, else staging, else published again: the run may be renamed between two looks
        for metrics in (
            job.run_path / rundir.METRICS,
            job.staging_path / rundir.METRICS,
            job.run_path / rundir.METRICS,
        ):
            if metrics.is_file():
                break
        return read_progress(metrics, job.log_path, tail=tail)

    # ------------------------------------------------------------------ submitting
    def submit(self, config: TrainConfig, *, owner: str = "local") -> Job:
        """Validate a config (ConfigError naming every problem, nothing queued), then queue it."""
        return self._submit([config], owner=owner)[0]

    def submit_sweep(
        self, config: TrainConfig, lambdas: Sequence[float] = DEFAULT_LAMBDAS, *, owner: str = "local"
    ) -> list[Job]:
        """One job per λ (Gu et al. compare λ ∈ {0.1, 0.5, 1.0}); all are queued or none is.

        A given run_name gets the λ as a suffix (``name-l0.5``); generated run ids carry it anyway.
        """
        return self.submit_grid(config, lambdas=lambdas, owner=owner)

    def submit_grid(
        self,
        config: TrainConfig,
        *,
        lambdas: Sequence[float] | None = None,
        w_maxes: Sequence[float] | None = None,
        seeds: Sequence[int] | None = None,
        owner: str = "local",
    ) -> list[Job]:
        """One job per point of the grid λ × w_max × seed (an axis left None keeps the config's value);
        all are queued or none is. λ values need a method that reads λ, w_max values one that reads
        w_max; a given run_name gets the swept values as suffixes (``name-l0.5-w10-s1``).

        Every job records the sweep it belongs to (``TrainConfig.sweep``: the config's own, else the given
        run_name, else ``<task>-<method>-sweep-<time>-<4 hex>``), so Compare can group its runs and draw
        their frontier once they finish."""
        problems = []
        axes: dict[str, Sequence] = {}
        for name, values, uses, method_error in (
            ("lam", lambdas, config.objective.uses_lambda, ERR_SWEEP_METHOD),
            ("w_max", w_maxes, config.objective.uses_w_max, ERR_GRID_W_MAX_METHOD),
            ("seed", seeds, True, None),
        ):
            if values is None:
                continue
            if not uses and method_error:
                problems.append(method_error.format(method=config.method))
            if not values:
                problems.append(ERR_SWEEP_EMPTY if name == "lam" else ERR_GRID_EMPTY.format(name=name))
            elif len(set(values)) != len(values):
                shown = ", ".join(f"{v:g}" for v in values)
                problems.append(
                    ERR_SWEEP_DUPLICATES.format(lambdas=shown)
                    if name == "lam"
                    else ERR_GRID_DUPLICATES.format(name=name, values=shown)
                )
            axes[name] = list(values)
        suffix = {"lam": "l", "w_max": "w", "seed": "s"}
        configs = []
        for point in itertools.product(*axes.values()):
            changes = dict(zip(axes, point, strict=True))
            tail = "".join(f"-{suffix[k]}{v:g}" for k, v in changes.items())
            try:
                configs.append(
                    config.replace(**changes, run_name=f"{config.run_name}{tail}" if config.run_name else None)
                )
            except ConfigError as err:
                problems += [p for p in err.problems if p not in problems]
        return self._submit(
            configs or [config], owner=owner, problems=problems, sweep=config.sweep or config.run_name or True
        )

    def _submit(
        self,
        configs: list[TrainConfig],
        *,
        owner: str,
        problems: Sequence[str] = (),
        sweep: str | bool | None = None,
    ) -> list[Job]:
        """Validate, then queue every config (all or none). `sweep`: the name of the sweep they form, or True
        for one generated from the task and method (False / None: separate jobs)."""
        problems = list(problems)
        for i, cfg in enumerate(configs):
            try:
                validate(cfg, check_data=i == 0)  # the configs share their data; read it once
            except ConfigError as err:
                problems += [p for p in err.problems if p not in problems]
        task = None if problems else (configs[0].task or _folder_task(configs[0].data))
        written: list[Path] = []
        ids: list[str] = []
        try:
            with self._write() as con:
                problems += [
                    ERR_RUN_TAKEN.format(name=cfg.run_name, runs_dir=self.runs_dir)
                    for cfg in configs
                    if cfg.run_name and self._run_taken(con, cfg.run_name)
                ]
                if problems:
                    raise ConfigError(problems)
                self._check_limits(con, owner, len(configs))
                name = sweep if isinstance(sweep, str) else None
                if sweep is True:
                    name = f"{task}-{configs[0].method}-sweep-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
                taken: set[str] = set()
                for cfg in configs:
                    run_id = cfg.run_name or self._new_run_id(con, cfg, task, taken)
                    taken.add(run_id)
                    job_id = secrets.token_hex(6)
                    path = self.jobs_dir / f"{job_id}.json"
                    resolved = cfg.replace(run_name=run_id, runs_dir=str(self.runs_dir), sweep=name or cfg.sweep)
                    rundir.write_json_atomic(path, resolved.to_dict())
                    written.append(path)
                    con.execute(
                        "INSERT INTO jobs (id, run_id, owner, state, created) VALUES (?, ?, ?, ?, ?)",
                        (job_id, run_id, owner, QUEUED, time.time()),
                    )
                    ids.append(job_id)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise
        self.tick()
        return [self.get(job_id) for job_id in ids]

    def _check_limits(self, con: sqlite3.Connection, owner: str, new: int) -> None:
        if self.max_queued is not None:
            queued = con.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (QUEUED,)).fetchone()[0]
            if queued + new > self.max_queued:
                raise QueueFullError(ERR_QUEUE_FULL.format(queued=queued, limit=self.max_queued))
        if self.max_active_per_owner is not None:
            active = con.execute(
                "SELECT COUNT(*) FROM jobs WHERE owner = ? AND state IN (?, ?)", (owner, *ACTIVE_STATES)
            ).fetchone()[0]
            if active + new > self.max_active_per_owner:
                raise OwnerLimitError(
                    ERR_OWNER_LIMIT.format(owner=owner, active=active, limit=self.max_active_per_owner)
                )

    def _run_taken(self, con: sqlite3.Connection, name: str) -> bool:
        """A run name is taken by a run folder, a staging folder or a job that may still create one."""
        if (self.runs_dir / name).exists() or rundir.staging_dir(self.runs_dir, name).exists():
            return True
        return (
            con.execute("SELECT 1 FROM jobs WHERE run_id = ? AND state IN (?, ?)", (name, *ACTIVE_STATES)).fetchone()
            is not None
        )

    def _new_run_id(self, con: sqlite3.Connection, cfg: TrainConfig, task: str | None, taken: set[str]) -> str:
        """<task>-<method>-<attr>[-l<λ>][-w<w_max>][-s<seed>]-<yyyymmdd-hhmmss>-<4 hex>: readable, sortable,
        never reused; λ and w_max only for the methods that use them (a vanilla run has neither), the seed
        when it is not the default."""
        attribute = re.sub(r"[^A-Za-z0-9_.+-]", "_", cfg.attribute)
        objective = cfg.objective
        used = (f"-l{cfg.lam:g}" if objective.uses_lambda else "") + (
            f"-w{cfg.w_max:g}" if objective.uses_w_max else ""
        )
        used += f"-s{cfg.seed}" if cfg.seed != TrainConfig.model_fields["seed"].default else ""
        stem = f"{task}-{cfg.method}-{attribute}{used}-{time.strftime('%Y%m%d-%H%M%S')}"
        while True:
            run_id = f"{stem}-{secrets.token_hex(2)}"
            if run_id not in taken and not self._run_taken(con, run_id):
                return run_id

    # ------------------------------------------------------------------ scheduling
    def tick(self) -> list[Job]:
        """Reap finished workers, escalate overdue cancels, start queued jobs into free slots.

        Safe from any thread or process (one transaction); returns the jobs whose state changed.
        """
        return self._settle(start_queued=True)

    def recover(self) -> list[Job]:
        """Settle running jobs whose worker is gone (run at open: after an app restart, say).

        Queued jobs stay queued until the next tick; a worker that still runs keeps its job running.
        """
        return self._settle(start_queued=False)

    def _settle(self, *, start_queued: bool) -> list[Job]:
        changed: list[str] = []
        reaped: list[int] = []
        with self._tick_lock:
            with self._write() as con:
                self._reap(con, changed, reaped)
                if start_queued:
                    self._start_queued(con, changed)
            for pid in reaped:  # forget a Popen only once its outcome is committed
                _CHILDREN.remove(pid)
        return [self.get(job_id) for job_id in changed]

    def _reap(self, con: sqlite3.Connection, changed: list[str], reaped: list[int]) -> None:
        for row in con.execute("SELECT * FROM jobs WHERE state = ?", (RUNNING,)).fetchall():
            proc = _CHILDREN.get(row["pid"])
            if proc is not None:
                code = proc.poll()
                if code is None:
                    self._escalate(row)
                    continue
                reaped.append(proc.pid)
            elif process_alive(row["pid"], row["pid_start"]):
                self._escalate(row)
                continue
            elif self._supervised_elsewhere(row):
                continue  # its parent runs and will reap it, with its exit code
            else:
                code = None
            job = self._job(row)
            state, reason = self._outcome(job, code)
            if state in (FAILED, CANCELLED):  # before the commit: whoever sees it ended sees it cleaned
                remove_unresumable_staging(job)
            con.execute(
                "UPDATE jobs SET state = ?, finished = ?, exit_code = ?, reason = ? WHERE id = ?",
                (state, time.time(), code, reason, row["id"]),
            )
            changed.append(row["id"])

    def _supervised_elsewhere(self, row: sqlite3.Row) -> bool:
        """Whether another live process started this worker (and so will learn its exit code).

        Never this process: a worker it started is in ``_CHILDREN``, and one that is not was started
        by an earlier process that had this pid.
        """
        if row["supervisor_pid"] == os.getpid():
            return False
        return process_alive(row["supervisor_pid"], row["supervisor_start"])

    def _escalate(self, row: sqlite3.Row) -> None:
        requested = row["cancel_requested"]
        if requested is not None and time.time() - requested >= self.cancel_grace_s:
            _signal_group(row["pid"], row["pid_start"], signal.SIGKILL)

    def _outcome(self, job: Job, code: int | None) -> tuple[str, str | None]:
        """Final state and reason of a job whose worker exited with ``code`` (None: unknown)."""
        published = job.run_path.is_dir() and not rundir.missing_files(job.run_path)
        if code == 0 or (code is None and published):
            if not published:
                return FAILED, REASON_NO_RUN.format(path=job.run_path)
            return SUCCEEDED, None if code == 0 else REASON_UNWATCHED_SUCCESS
        if job.cancel_requested is not None:
            if code == EXIT_INTERRUPTED or (code is None and rundir.checkpoint_in(job.staging_path) is not None):
                return CANCELLED, REASON_CANCELLED_CHECKPOINT.format(staging=job.staging_path)
            if code == -signal.SIGKILL:
                return CANCELLED, REASON_CANCELLED_KILLED.format(grace=self.cancel_grace_s)
            return CANCELLED, REASON_CANCELLED_RUNNING  # stopped before its loop began, or unknown
        if code is None:
            return FAILED, log_error(job.log_path) or REASON_DISAPPEARED
        if code < 0:
            return FAILED, REASON_SIGNAL.format(signum=-code)
        if code == EXIT_INTERRUPTED:
            return FAILED, REASON_INTERRUPTED.format(staging=job.staging_path)
        last = next((line for line in reversed(tail_lines(job.log_path, 20)) if line.strip()), "no output")
        return FAILED, log_error(job.log_path) or REASON_CRASH.format(code=code, detail=last.strip())

    def _start_queued(self, con: sqlite3.Connection, changed: list[str]) -> None:
        running = con.execute("SELECT COUNT(*) FROM jobs WHERE state = ?", (RUNNING,)).fetchone()[0]
        free = self.max_concurrent - running
        if free <= 0:
            return
        rows = con.execute(
            "SELECT * FROM jobs WHERE state = ? ORDER BY created, rowid LIMIT ?", (QUEUED, free)
        ).fetchall()
        for row in rows:
            self._spawn(con, self._job(row))
            changed.append(row["id"])

    def _spawn(self, con: sqlite3.Connection, job: Job) -> None:
        """Start a job's worker in its own process group (inside the transaction that marks it running)."""
        now = time.time()
        shown = None
        try:
            command = self.command_for(job)
            shown = shlex.join(command)
            with open(job.log_path, "ab") as log:
                log.write(f"$ {shown}\n".encode())
                log.flush()
                proc = subprocess.Popen(
                    command,
                    cwd=rundir.REPO_ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    # the trainer writes the exact command into the run folder (command.txt)
                    env={**os.environ, "PYTHONUNBUFFERED": "1", rundir.COMMAND_ENV: shown, **self.env},
                )
        except (OSError, ValueError, subprocess.SubprocessError) as err:  # no such program: fail it, go on
            con.execute(
                "UPDATE jobs SET state = ?, started = ?, finished = ?, reason = ?, command = ? WHERE id = ?",
                (FAILED, now, now, REASON_SPAWN.format(error=err), shown, job.id),
            )
            return
        _CHILDREN.add(proc)
        con.execute(
            "UPDATE jobs SET state = ?, started = ?, pid = ?, pid_start = ?, supervisor_pid = ?, "
            "supervisor_start = ?, command = ? WHERE id = ?",
            (
                RUNNING,
                now,
                proc.pid,
                process_start_time(proc.pid),
                os.getpid(),
                process_start_time(os.getpid()),
                shown,
                job.id,
            ),
        )
        threading.Thread(target=self._watch, args=(proc,), name=f"fairdx-job-{job.id}", daemon=True).start()

    def _watch(self, proc: subprocess.Popen) -> None:
        """Reap a worker the moment it exits (no zombie) and let the next queued job start."""
        proc.wait()
        if self._closed.is_set():
            return
        try:
            self.tick()
        except Exception:  # a daemon thread has no caller to raise to; the next tick retries
            logger.exception("job store %s: tick after worker %d exited failed", self.db_path, proc.pid)

    def start_scheduler(self, interval_s: float = 1.0) -> None:
        """Tick every ``interval_s`` seconds in a daemon thread (escalates cancels, advances the queue)."""
        if self._scheduler is not None and self._scheduler.is_alive():
            return
        self._scheduler = threading.Thread(target=self._schedule, args=(interval_s,), name="fairdx-jobs", daemon=True)
        self._scheduler.start()

    def _schedule(self, interval_s: float) -> None:
        while not self._closed.wait(interval_s):
            try:
                self.tick()
            except Exception:  # keep the scheduler alive through a locked or briefly missing database
                logger.exception("job store %s: scheduled tick failed", self.db_path)

    def close(self) -> None:
        """Stop this object's threads. Running workers go on (they outlive the app by design)."""
        self._closed.set()
        if self._scheduler is not None:
            self._scheduler.join()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ control
    def cancel(self, job_id: str) -> Job:
        """Queued: cancelled at once. Running: SIGTERM to its process group (the trainer saves a
        checkpoint and exits 3); the job turns cancelled when the worker is reaped, and is killed
        if it still runs ``cancel_grace_s`` later. Finished: unchanged."""
        with self._write() as con:
            row, now = self._row(con, job_id), time.time()
            if row["state"] == QUEUED:
                con.execute(
                    "UPDATE jobs SET state = ?, finished = ?, reason = ? WHERE id = ?",
                    (CANCELLED, now, REASON_CANCELLED_QUEUED, job_id),
                )
            elif row["state"] == RUNNING and row["cancel_requested"] is None:
                con.execute("UPDATE jobs SET cancel_requested = ? WHERE id = ?", (now, job_id))
                _signal_group(row["pid"], row["pid_start"], signal.SIGTERM)
        return self.get(job_id)

    def resume(self, job_id: str, *, owner: str = "local") -> Job:
        """Queue a new job that continues a failed or cancelled one from its checkpoint.

        The new job runs the old one's saved config with ``--resume`` into the same run id (the trainer
        then reaches the weights an uninterrupted run would have, tests/test_train.py); the old job's
        row and log are kept. The store's queue and per-owner limits apply as to any submission.
        Raises NotResumableError saying why when the job cannot be resumed; nothing is queued then.
        """
        new_id = secrets.token_hex(6)
        config = self.jobs_dir / f"{new_id}.json"
        try:
            with self._write() as con:
                old = self._resumable(con, job_id)
                self._check_limits(con, owner, 1)
                rundir.write_json_atomic(config, json.loads(old.config_path.read_text()))
                con.execute(
                    "INSERT INTO jobs (id, run_id, owner, state, created, resume_of) VALUES (?, ?, ?, ?, ?, ?)",
                    (new_id, old.run_id, owner, QUEUED, time.time(), job_id),
                )
        except BaseException:
            config.unlink(missing_ok=True)
            raise
        self.tick()
        return self.get(new_id)

    def _row(self, con: sqlite3.Connection, job_id: str) -> sqlite3.Row:
        rows = con.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchall()
        if not rows:
            raise UnknownJobError(ERR_UNKNOWN_JOB.format(job_id=job_id, db=self.db_path))
        return rows[0]

    def _resumable(self, con: sqlite3.Connection, job_id: str) -> Job:
        """The job, if it can be resumed now; else NotResumableError (or UnknownJobError) saying why not."""
        job = self._job(self._row(con, job_id))
        problem = job.resume_problem()
        if problem is None:
            other = con.execute(
                "SELECT id, state FROM jobs WHERE run_id = ? AND state IN (?, ?)", (job.run_id, *ACTIVE_STATES)
            ).fetchone()
            if other is not None:
                problem = ERR_RESUMING.format(run_id=job.run_id, other=other["id"], state=other["state"])
        if problem is not None:
            raise NotResumableError(problem)
        return job

    def wait(self, job_id: str, timeout: float, *, poll_s: float = 0.1) -> Job:
        """Tick until a job is finished; raise TimeoutError if it is not within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self.tick()
            job = self.get(job_id)
            if job.state in FINAL_STATES:
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(ERR_WAIT_TIMEOUT.format(job_id=job_id, state=job.state, timeout=timeout))
            time.sleep(poll_s)
