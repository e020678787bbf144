"""Studio job store: states, limits, recovery after an app restart, progress; then the real CLI end to end.

Most state-machine tests run FAKE_TRAINER: a tiny script that takes the training CLI's flags, writes
metrics.jsonl the way the trainer does and then behaves as its run name says (publish, sleep until
released, fail, crash, ignore SIGTERM). It stands in for a *process*, not for the model. The tests
marked "real CLI" at the bottom run ``python -m training.train`` on the embedded tiny backbone.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from studio import jobs as jobs_module
from studio import jobs_view
from studio.jobs import (
    CANCELLED,
    ERR_BAD_LIMIT,
    ERR_NO_CHECKPOINT,
    ERR_NOT_RESUMABLE,
    ERR_OWNER_LIMIT,
    ERR_QUEUE_FULL,
    ERR_RESUMING,
    ERR_RUN_COMPLETE,
    ERR_RUN_TAKEN,
    ERR_SWEEP_DUPLICATES,
    ERR_SWEEP_EMPTY,
    ERR_SWEEP_METHOD,
    ERR_UNKNOWN_JOB,
    FAILED,
    QUEUED,
    REASON_CANCELLED_CHECKPOINT,
    REASON_CANCELLED_KILLED,
    REASON_CANCELLED_QUEUED,
    REASON_CRASH,
    REASON_DISAPPEARED,
    REASON_SIGNAL,
    RUNNING,
    SUCCEEDED,
    Job,
    JobStore,
    NotResumableError,
    OwnerLimitError,
    QueueFullError,
    UnknownJobError,
    process_alive,
    process_start_time,
    training_command,
)
from studio.progress import TAIL_BLOCK, read_metrics, read_progress, summarize, tail_lines
from tests.conftest import exactly, run_cli
from training import methods, rundir
from training.config import ConfigError, TrainConfig, launch_arguments
from training.data_spec import materialize

REPO = Path(__file__).resolve().parents[1]
SYNTH = "synth:fundus:n=200,test_min=0"
RUN_ID = re.compile(
    r"^fundus-(?P<method>\w+)-(?P<attr>[\w+]+)(?:-l(?P<lam>[\d.]+))?(?:-w(?P<w_max>[\d.]+))?(?:-s(?P<seed>\d+))?"
    r"-\d{8}-\d{6}-[0-9a-f]{4}$"
)
WAIT_S = 20.0
REAL_WAIT_S = 180.0

FAKE_TRAINER = r"""
import argparse, json, os, signal, sys, time
from pathlib import Path

parser = argparse.ArgumentParser()
for flag in ("--config", "--run-name", "--runs-dir"):
    parser.add_argument(flag)
parser.add_argument("--no-progress", action="store_true")
parser.add_argument("--resume", action="store_true")
args = parser.parse_args()
mode = args.run_name.split("-")[0]
runs = Path(args.runs_dir)
staging = runs / (".staging-" + args.run_name)
staging.mkdir(exist_ok=args.resume)
if args.resume:
    assert (staging / "checkpoint" / "state.pt").is_file(), "resumed without a checkpoint"
    print("resumed from the checkpoint", flush=True)

def interrupted(signum, frame):
    (staging / "checkpoint").mkdir()
    (staging / "checkpoint" / "state.pt").write_text("step 4")
    print("interrupted: checkpoint saved", file=sys.stderr, flush=True)
    sys.exit(3)

signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else interrupted)
with open(staging / "metrics.jsonl", "w") as log:
    log.write(json.dumps({"event": "start", "step": 0, "total_steps": 10}) + "\n")
    for step in range(1, 5):
        log.write(json.dumps({"step": step, "total_steps": 10, "epoch": step / 10, "loss": 1.0 / step,
                              "ce": 0.5 / step, "fairness": 0.25 / step, "samples_per_s": 16.0,
                              "elapsed_s": 0.5 * step}) + "\n")
    log.write('{"step": 5, "total_st')  # a line still being written
print("fake trainer " + args.run_name + ": 4 steps", flush=True)
if mode == "fail":
    print("error: invalid training configuration (2 problems):\n  - first problem\n  - second problem",
          file=sys.stderr)
    sys.exit(2)
if mode == "crash":
    raise RuntimeError("boom")
while mode != "publish" and not (runs / ("release-" + args.run_name)).exists():
    time.sleep(0.02)
for name in REQUIRED:
    (staging / name).parent.mkdir(parents=True, exist_ok=True)
    if name != "metrics.jsonl":
        (staging / name).write_text(json.dumps({"task": "fundus", "method": "vanilla", "backbone": "fake"}))
os.replace(staging, runs / args.run_name)
print("run complete", flush=True)
""".replace("REQUIRED", repr(rundir.REQUIRED))


# ---------------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module", autouse=True)
def data_dir(tmp_path_factory):
    """One small synthetic benchmark for the whole module, in a tmp cache shared with the workers."""
    root = tmp_path_factory.mktemp("fairdx-data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FAIRDX_DATA_DIR", str(root))
        materialize(SYNTH, progress=False)
        yield root


@pytest.fixture(scope="module")
def fake_trainer(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fake") / "fake_trainer.py"
    path.write_text(FAKE_TRAINER)
    return path


def fake_command(script: Path):
    """The training CLI's flags, run by the stand-in script instead of ``-m training.train``."""
    return lambda job: [sys.executable, str(script), *training_command(job)[3:]]


@pytest.fixture
def stores(tmp_path, fake_trainer):
    """Make JobStores on tmp_path/runs; at the end kill what still runs and close them."""
    made: list[JobStore] = []

    def make(**kwargs) -> JobStore:
        kwargs.setdefault("command_for", fake_command(fake_trainer))
        store = JobStore(tmp_path / "runs", **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        shutdown(store)


def shutdown(store: JobStore) -> None:
    """Cancel what waits, kill what runs (no worker outlives its test), close the store."""
    for job in store.list_jobs(states=[QUEUED]):
        store.cancel(job.id)
    for job in store.list_jobs(states=[RUNNING]):
        if job.pid != os.getpid() and process_alive(job.pid, None):
            os.killpg(job.pid, signal.SIGKILL)
        store.wait(job.id, WAIT_S)
    store.close()


def poll(predicate, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout} s")


def cfg(**kwargs) -> TrainConfig:
    values = {"data": SYNTH, "max_samples": 64, "epochs": 1, "eval_bootstrap": 0, **kwargs}
    return TrainConfig(**values)


def release(store: JobStore, job: Job) -> None:
    (store.runs_dir / f"release-{job.run_id}").touch()


def wait_until(store: JobStore, predicate, timeout: float = WAIT_S):
    def ticked():
        store.tick()
        return predicate()

    return poll(ticked, timeout)


def wait_steps(store: JobStore, job: Job, steps: int, timeout: float = WAIT_S):
    return wait_until(store, lambda: (p := store.progress(job.id)).step >= steps and p, timeout)


def listed(store: JobStore) -> list[str]:
    return [run.run_id for run in rundir.list_runs(store.runs_dir)]


# ---------------------------------------------------------------------- states with the stand-in worker
def test_submitted_job_runs_succeeds_and_its_run_is_listed(stores):
    store = stores()
    job = store.submit(cfg(run_name="publish-a"), owner="ana")
    assert (job.state, job.owner, job.run_id) == (RUNNING, "ana", "publish-a")
    assert job.pid > 0 and job.started >= job.created
    saved = json.loads(job.config_path.read_text())
    assert (saved["run_name"], saved["runs_dir"], saved["max_samples"], saved["data"]) == (
        "publish-a",
        str(store.runs_dir),
        64,
        SYNTH,
    )
    assert job.config_path == store.runs_dir / ".jobs" / f"{job.id}.json"

    done = store.wait(job.id, WAIT_S)
    assert (done.state, done.exit_code, done.reason) == (SUCCEEDED, 0, None)
    assert done.finished >= done.started
    assert listed(store) == ["publish-a"]
    assert not store.is_active()
    log = done.log_path.read_text().splitlines()
    assert log[0].startswith("$ ") and log[0].endswith(
        f"--run-name publish-a --runs-dir {store.runs_dir} --no-progress"
    )
    assert log[-1] == "run complete"
    # progress comes from the published run's metrics.jsonl now
    progress = store.progress(job.id)
    assert (progress.step, progress.total_steps, len(progress.curve)) == (4, 10, 4)


def test_progress_while_running_reads_staging_metrics_and_skips_a_partial_line(stores):
    store = stores()
    job = store.submit(cfg(run_name="sleep-a"))
    progress = wait_steps(store, job, 4)
    assert (progress.step, progress.total_steps, progress.fraction) == (4, 10, 0.4)
    assert progress.eta_s == pytest.approx(3.0)  # 6 steps left at 2.0 s / 4 steps
    assert (progress.elapsed_s, progress.epoch, progress.samples_per_s, progress.finished) == (2.0, 0.4, 16.0, False)
    assert progress.curve[0] == (1, 1.0, 0.5, 0.25)
    assert progress.curve[-1] == (4, 0.25, 0.125, 0.0625)
    wait_until(store, lambda: store.progress(job.id).log_tail[-1:] == ["fake trainer sleep-a: 4 steps"])
    assert store.progress(job.id, tail=1).log_tail == ["fake trainer sleep-a: 4 steps"]
    assert store.is_active() and store.is_active(owner="local") and not store.is_active(owner="bob")


def test_cancel_running_job_sends_sigterm_and_ends_cancelled_with_its_checkpoint(stores):
    store = stores()
    job = store.submit(cfg(run_name="sleep-a"))
    wait_steps(store, job, 4)
    asked = store.cancel(job.id)
    assert asked.state == RUNNING and asked.cancelling
    done = store.wait(job.id, WAIT_S)
    assert (done.state, done.exit_code) == (CANCELLED, 3)
    assert done.reason == REASON_CANCELLED_CHECKPOINT.format(staging=job.staging_path)
    assert (job.staging_path / rundir.CHECKPOINT).is_dir()
    assert listed(store) == []
    assert store.cancel(job.id) == done  # a finished job stays as it is


def test_cancel_escalates_to_sigkill_when_the_worker_ignores_sigterm(stores):
    store = stores(cancel_grace_s=0.2)
    job = store.submit(cfg(run_name="stubborn-a"))
    wait_steps(store, job, 4)
    store.cancel(job.id)
    done = store.wait(job.id, WAIT_S)
    assert (done.state, done.exit_code) == (CANCELLED, -9)
    assert done.reason == REASON_CANCELLED_KILLED.format(grace=0.2)
    assert done.reason == "cancelled; it did not stop within 0.2 s of SIGTERM and was killed"


def test_scheduler_thread_escalates_a_cancel_without_anyone_ticking(stores):
    store = stores(cancel_grace_s=0.1)
    job = store.submit(cfg(run_name="stubborn-a"))
    wait_steps(store, job, 4)
    store.start_scheduler(interval_s=0.05)
    store.cancel(job.id)
    done = poll(lambda: (j := store.get(job.id)).state == CANCELLED and j)
    assert (done.exit_code, done.reason) == (-9, REASON_CANCELLED_KILLED.format(grace=0.1))


def test_concurrency_limit_keeps_the_second_job_queued_until_the_first_ends(stores):
    store = stores(max_concurrent=1)
    first = store.submit(cfg(run_name="sleep-a"))
    second = store.submit(cfg(run_name="sleep-b"))
    wait_steps(store, first, 4)
    for _ in range(3):
        store.tick()
    assert [store.get(j.id).state for j in (first, second)] == [RUNNING, QUEUED]
    assert not second.log_path.exists()
    release(store, first)
    # no tick from here: the watcher thread reaps the first worker and starts the second job
    started = poll(lambda: store.get(second.id).state == RUNNING and store.get(second.id))
    assert store.get(first.id).state == SUCCEEDED
    assert started.started >= store.get(first.id).finished
    assert process_start_time(first.pid) is None  # reaped: no zombie left behind
    release(store, second)
    assert store.wait(second.id, WAIT_S).state == SUCCEEDED
    assert listed(store) == ["sleep-a", "sleep-b"]


def test_two_slots_run_two_jobs_at_once(stores):
    store = stores(max_concurrent=2)
    jobs = [store.submit(cfg(run_name=f"sleep-{c}")) for c in "abc"]
    assert [j.state for j in jobs] == [RUNNING, RUNNING, QUEUED]


def test_cancel_queued_job_is_immediate_and_it_never_starts(stores):
    store = stores(max_concurrent=1)
    first = store.submit(cfg(run_name="sleep-a"))
    second = store.submit(cfg(run_name="sleep-b"))
    cancelled = store.cancel(second.id)
    assert (cancelled.state, cancelled.reason, cancelled.pid, cancelled.started) == (
        CANCELLED,
        REASON_CANCELLED_QUEUED,
        None,
        None,
    )
    release(store, first)
    store.wait(first.id, WAIT_S)
    store.tick()
    assert store.get(second.id).state == CANCELLED
    assert not second.log_path.exists() and not second.staging_path.exists()


def test_exit_2_fails_with_the_trainers_whole_error_message(stores):
    store = stores()
    done = store.wait(store.submit(cfg(run_name="fail-a")).id, WAIT_S)
    assert (done.state, done.exit_code) == (FAILED, 2)
    assert done.reason == "invalid training configuration (2 problems):\n  - first problem\n  - second problem"


def test_crash_fails_with_the_last_line_of_the_traceback(stores):
    store = stores()
    done = store.wait(store.submit(cfg(run_name="crash-a")).id, WAIT_S)
    assert (done.state, done.exit_code) == (FAILED, 1)
    assert done.reason == REASON_CRASH.format(code=1, detail="RuntimeError: boom")


def test_sigkilled_worker_fails_with_the_signal(stores):
    store = stores()
    job = store.submit(cfg(run_name="sleep-a"))
    wait_steps(store, job, 4)
    os.kill(job.pid, signal.SIGKILL)
    done = store.wait(job.id, WAIT_S)
    assert (done.state, done.exit_code, done.reason) == (FAILED, -9, "killed by signal 9")
    assert done.reason == REASON_SIGNAL.format(signum=9)
    assert listed(store) == [] and not job.staging_path.exists(), "no checkpoint: nothing to keep"


def test_a_job_that_ends_with_nothing_to_resume_leaves_no_staging_folder(stores):
    """Failed (or cancelled) without a checkpoint: its staging folder is removed and the run name is free
    again. With a checkpoint it stays; so does one whose run another process holds the lock of."""
    store = stores(max_concurrent=2)
    failed = store.wait(store.submit(cfg(run_name="fail-a")).id, WAIT_S)
    crashed = store.wait(store.submit(cfg(run_name="crash-a")).id, WAIT_S)
    assert (failed.state, crashed.state, failed.resumable) == (FAILED, FAILED, False)
    poll(lambda: not list(store.runs_dir.glob(".staging-*")) and not list(store.runs_dir.glob(".lock-*")))
    assert store.wait(store.submit(cfg(run_name="fail-a")).id, WAIT_S).state == FAILED  # the name is free

    kept = store.submit(cfg(run_name="sleep-a"))
    wait_steps(store, kept, 4)
    (kept.staging_path / rundir.CHECKPOINT).mkdir()
    (kept.staging_path / rundir.CHECKPOINT / "state.pt").write_text("step 4")
    os.killpg(kept.pid, signal.SIGKILL)
    killed = store.wait(kept.id, WAIT_S)
    assert (killed.state, killed.resumable) == (FAILED, True) and kept.staging_path.is_dir()

    lock = rundir.lock_run(store.runs_dir, "fail-b")  # a trainer outside the store trains into 'fail-b'
    assert lock is not None
    try:
        busy = store.wait(store.submit(cfg(run_name="fail-b")).id, WAIT_S)
        assert busy.state == FAILED and not jobs_module.remove_unresumable_staging(busy)
        assert busy.staging_path.is_dir(), "the folder another process writes is not removed"
    finally:
        lock.release()
    assert jobs_module.remove_unresumable_staging(busy) and not busy.staging_path.exists()


def test_unstartable_command_fails_with_the_os_error(stores):
    store = stores(command_for=lambda job: ["/nonexistent/fairdx-trainer"])
    job = store.submit(cfg(run_name="x"))
    assert job.state == FAILED and job.pid is None
    assert job.reason.startswith("could not start the training process: [Errno 2] No such file or directory")


# ---------------------------------------------------------------------- several stores, restarts, pid reuse
def test_two_stores_on_one_file_see_the_same_jobs(stores):
    a, b = stores(), stores()
    job = a.submit(cfg(run_name="sleep-a"))
    assert b.get(job.id) == a.get(job.id)
    assert [j.id for j in b.list_jobs()] == [job.id]
    wait_steps(b, job, 4)
    b.cancel(job.id)  # cancelled through the other store
    assert a.wait(job.id, WAIT_S).state == CANCELLED
    assert b.get(job.id).state == CANCELLED


def test_threads_sharing_a_store_never_exceed_the_concurrency_limit(stores):
    store = stores(max_concurrent=1)
    running_counts: list[int] = []

    def worker(n: int) -> None:
        store.submit(cfg(run_name=f"sleep-t{n}"))
        for _ in range(10):
            store.tick()
            running_counts.append(len(store.list_jobs(states=[RUNNING])))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(running_counts) == 1 and len(running_counts) == 40
    assert sorted(j.state for j in store.list_jobs()) == [QUEUED, QUEUED, QUEUED, RUNNING]


APP = r"""
import json, sys, time
sys.path.insert(0, REPO)
from studio.jobs import JobStore, training_command
from training.config import TrainConfig
store = JobStore(RUNS, max_concurrent=2, command_for=lambda job: [sys.executable, FAKE, *training_command(job)[3:]])
cfg = dict(data="synth:fundus:n=200,test_min=0", max_samples=64, epochs=1, eval_bootstrap=0)
jobs = [store.submit(TrainConfig(run_name=name, **cfg)) for name in ("sleep-dies", "sleep-lives", "sleep-waits")]
print(json.dumps([[j.id, j.state, j.pid] for j in jobs]), flush=True)
time.sleep(600)
"""


def test_store_reopened_after_the_app_died_settles_its_jobs(tmp_path, stores, fake_trainer):
    """The app is SIGKILLed; one worker dies with it, one goes on: reopening marks only the dead one failed."""
    runs = tmp_path / "runs"
    script = (
        APP.replace("REPO", repr(str(REPO))).replace("RUNS", repr(str(runs))).replace("FAKE", repr(str(fake_trainer)))
    )
    app = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = app.stdout.readline()
        assert line, app.stderr.read()
    finally:
        app.kill()
        app.wait()
    (dies, _, dies_pid), (lives, _, lives_pid), (waits, waits_state, _) = json.loads(line)
    assert waits_state == QUEUED
    poll(lambda: len(read_metrics(rundir.staging_dir(runs, "sleep-lives") / rundir.METRICS)) == 5)
    os.killpg(dies_pid, signal.SIGKILL)
    poll(lambda: not process_alive(dies_pid, None))

    store = stores(max_concurrent=1)  # opening recovers
    assert (store.get(dies).state, store.get(dies).reason, store.get(dies).exit_code) == (
        FAILED,
        REASON_DISAPPEARED,
        None,
    )
    assert store.get(lives).state == RUNNING and process_alive(lives_pid, None)
    assert store.get(waits).state == QUEUED
    assert store.progress(lives).step == 4  # a restart loses nothing

    store.cancel(lives)  # not our child: SIGTERM to its group, outcome read from disk
    done = store.wait(lives, WAIT_S)
    assert (done.state, done.exit_code) == (CANCELLED, None)
    assert done.reason == REASON_CANCELLED_CHECKPOINT.format(staging=rundir.staging_dir(runs, "sleep-lives"))
    assert wait_until(store, lambda: store.get(waits).state == RUNNING)  # the slot it freed is used


def test_reopen_fails_a_running_job_whose_pid_was_reused(stores):
    store = stores(max_concurrent=1)
    first = store.submit(cfg(run_name="sleep-a"))
    second = store.submit(cfg(run_name="sleep-b"))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    con = sqlite3.connect(store.db_path)  # pretend 'second' ran under a pid now held by another process
    with con:
        con.execute(
            "UPDATE jobs SET state = 'running', started = created, pid = ?, pid_start = ?, "
            "supervisor_pid = ?, supervisor_start = 1 WHERE id = ?",
            (os.getpid(), process_start_time(os.getpid()) + 60, int(gone.stdout), second.id),
        )
    con.close()
    reopened = stores(max_concurrent=1)
    assert (reopened.get(second.id).state, reopened.get(second.id).reason) == (FAILED, REASON_DISAPPEARED)
    assert reopened.get(first.id).state == RUNNING


def test_process_identity_rejects_reused_pids_and_zombies():
    me = os.getpid()
    assert isinstance(process_start_time(me), float)  # psutil's create_time, Unix seconds
    assert process_alive(me, process_start_time(me)) and process_alive(me, None)
    assert process_alive(me, process_start_time(me) + 0.5 * jobs_module.START_TOLERANCE_S)
    assert not process_alive(me, process_start_time(me) + 60)
    assert not process_alive(None, None)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    start = process_start_time(child.pid)
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
    assert start is not None and not process_alive(child.pid, start)
    child.wait()
    assert process_start_time(child.pid) is None


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="clock ticks since boot come from Linux /proc")
def test_start_times_stored_as_clock_ticks_by_older_versions_still_identify_the_process():
    """Rows written before psutil hold /proc/<pid>/stat field 22: a worker that outlives the upgrade is
    still recognised (not failed as disappeared), and a reused pid is still rejected."""
    text = Path("/proc/self/stat").read_text()
    ticks = int(text[text.rindex(")") + 2 :].split()[19])
    me = os.getpid()
    assert process_alive(me, ticks)
    assert not process_alive(me, ticks + 60 * os.sysconf("SC_CLK_TCK"))


def test_a_job_whose_pid_start_holds_clock_ticks_keeps_running_and_can_be_cancelled(stores):
    """The job table of an older FairDx, reopened while its worker runs: the worker is found and signalled."""
    if not Path("/proc/self/stat").is_file():
        pytest.skip("clock ticks since boot come from Linux /proc")
    store = stores()
    job = store.submit(cfg(run_name="sleep-old"))
    wait_steps(store, job, 4)
    text = Path(f"/proc/{job.pid}/stat").read_text()
    ticks = int(text[text.rindex(")") + 2 :].split()[19])
    con = sqlite3.connect(store.db_path)  # as an older app stored it, supervised by a process now gone
    with con:
        con.execute(
            "UPDATE jobs SET pid_start = ?, supervisor_pid = ?, supervisor_start = 1 WHERE id = ?",
            (ticks, 2**22 + 1, job.id),
        )
    con.close()
    other = JobStore(store.runs_dir, command_for=store.command_for)  # another app process's view
    try:
        jobs_module._CHILDREN.remove(job.pid)  # pretend this process did not start the worker
        assert other.recover() == [] and other.get(job.id).state == RUNNING
        other.cancel(job.id)  # SIGTERM reaches it: it saves its checkpoint and exits 3
        poll(lambda: not process_alive(job.pid, None))
        done = other.wait(job.id, WAIT_S)
    finally:
        other.close()
    assert (done.state, done.reason) == (CANCELLED, REASON_CANCELLED_CHECKPOINT.format(staging=job.staging_path))


# ---------------------------------------------------------------------- resuming a failed or cancelled job
def test_cancelled_job_resumes_as_a_new_job_into_the_same_run(stores):
    store = stores()
    job = store.submit(cfg(run_name="sleep-a"), owner="ana")
    wait_steps(store, job, 4)
    store.cancel(job.id)
    cancelled = store.wait(job.id, WAIT_S)
    assert cancelled.state == CANCELLED and cancelled.resumable and listed(store) == []

    resumed = store.resume(job.id, owner="ana")
    assert (resumed.run_id, resumed.resume_of, resumed.owner) == ("sleep-a", job.id, "ana")
    assert training_command(resumed)[-1] == "--resume" and "--resume" not in training_command(cancelled)
    assert json.loads(resumed.config_path.read_text()) == json.loads(job.config_path.read_text())
    release(store, resumed)
    done = store.wait(resumed.id, WAIT_S)
    assert (done.state, done.exit_code) == (SUCCEEDED, 0), done.log_path.read_text()
    assert "resumed from the checkpoint" in done.log_path.read_text()
    assert listed(store) == ["sleep-a"] and not job.staging_path.exists()
    assert store.get(job.id) == cancelled and "fake trainer sleep-a: 4 steps" in job.log_path.read_text()
    assert not store.get(job.id).resumable
    with pytest.raises(NotResumableError) as err:
        store.resume(job.id)
    assert str(err.value) == ERR_RUN_COMPLETE.format(run_id="sleep-a", job_id=job.id)


def test_a_sigkilled_job_resumes_from_its_checkpoint(stores):
    store = stores()
    job = store.submit(cfg(run_name="sleep-a"))
    wait_steps(store, job, 4)
    (job.staging_path / rundir.CHECKPOINT).mkdir()  # what the trainer's periodic save leaves behind
    (job.staging_path / rundir.CHECKPOINT / "state.pt").write_text("step 4")
    os.killpg(job.pid, signal.SIGKILL)
    killed = store.wait(job.id, WAIT_S)
    assert (killed.state, killed.reason, killed.resumable) == (FAILED, "killed by signal 9", True)
    release(store, job)
    done = store.wait(store.resume(job.id).id, WAIT_S)
    assert done.state == SUCCEEDED and listed(store) == ["sleep-a"]


def test_resume_refuses_with_the_reason_and_queues_nothing(stores):
    store = stores(max_concurrent=1, max_active_per_owner=1)
    running = store.submit(cfg(run_name="sleep-a"))
    with pytest.raises(NotResumableError) as err:
        store.resume(running.id)
    assert str(err.value) == ERR_NOT_RESUMABLE.format(job_id=running.id, state=RUNNING)
    wait_steps(store, running, 4)  # its SIGTERM handler (which saves the checkpoint) is in place
    store.cancel(running.id)
    store.wait(running.id, WAIT_S)

    failed = store.wait(store.submit(cfg(run_name="fail-a")).id, WAIT_S)  # exits 2 before any checkpoint
    with pytest.raises(NotResumableError) as err:
        store.resume(failed.id)
    assert str(err.value) == ERR_NO_CHECKPOINT.format(job_id=failed.id) and not failed.resumable
    with pytest.raises(UnknownJobError):
        store.resume("nope")

    blocker = store.submit(cfg(run_name="sleep-b"))  # the owner's one active job
    with pytest.raises(OwnerLimitError):
        store.resume(running.id)
    store.cancel(blocker.id)
    store.wait(blocker.id, WAIT_S)
    before = store.list_jobs()
    first = store.resume(running.id)
    with pytest.raises(NotResumableError) as err:
        store.resume(running.id, owner="bob")
    assert str(err.value) == ERR_RESUMING.format(run_id="sleep-a", other=first.id, state=first.state)
    assert len(store.list_jobs()) == len(before) + 1
    assert sorted(p.name for p in store.jobs_dir.glob("*.json")) == sorted(f"{j.id}.json" for j in store.list_jobs())
    release(store, first)
    assert store.wait(first.id, WAIT_S).state == SUCCEEDED


def test_a_store_of_schema_1_keeps_its_jobs_and_can_resume_them(tmp_path, stores):
    """The job table before resume existed (schema 1) is migrated in place when a newer app opens it."""
    runs = tmp_path / "runs"
    runs.mkdir()
    con = sqlite3.connect(runs / jobs_module.DB_NAME)
    newer = (",\n        resume_of        TEXT", ",\n        command          TEXT")  # columns of schemas 2 and 3
    schema_1 = jobs_module.SCHEMA[0]
    for column in newer:
        assert column in schema_1
        schema_1 = schema_1.replace(column, "")
    with con:
        con.execute(schema_1)
        con.execute(
            "INSERT INTO jobs (id, run_id, owner, state, created, finished, reason) "
            "VALUES ('old1', 'sleep-old', 'local', 'cancelled', 1.0, 2.0, 'cancelled while running')"
        )
        con.execute("PRAGMA user_version = 1")
    con.close()
    store = stores()
    [old] = store.list_jobs()
    assert (old.id, old.state, old.resume_of, old.command) == ("old1", CANCELLED, None, None)
    con = sqlite3.connect(store.db_path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == jobs_module.SCHEMA_VERSION == 3
    con.close()
    old.staging_path.mkdir()
    (old.staging_path / "checkpoint").mkdir()
    (old.staging_path / "checkpoint" / "state.pt").write_text("step 4")
    old.config_path.write_text(json.dumps(cfg(run_name="sleep-old", runs_dir=str(store.runs_dir)).to_dict()))
    release(store, old)
    assert store.wait(store.resume("old1").id, WAIT_S).state == SUCCEEDED
    assert listed(store) == ["sleep-old"]


# ---------------------------------------------------------------------- submission: validation, ids, guards
def test_invalid_config_names_every_problem_and_queues_nothing(stores):
    store = stores()
    (store.runs_dir / "taken").mkdir()
    with pytest.raises(ConfigError) as err:  # a config with bad values cannot even be built
        cfg(lam=-1, epochs=0)
    assert err.value.problems == [
        "lambda must be ≥ 0 (got -1); Gu et al. use 0.1, 0.5 or 1.0",
        "epochs must be a whole number ≥ 1 (got 0)",
    ]
    with pytest.raises(ConfigError) as err:
        store.submit(cfg(attribute="zzz", eval_attributes=["nope"], run_name="taken"))
    assert err.value.problems == [
        "unknown attribute 'zzz'; available: race, ethnicity, gender, age_group",
        "unknown attribute 'nope'; available: race, ethnicity, gender, age_group",
        ERR_RUN_TAKEN.format(name="taken", runs_dir=store.runs_dir),
    ]
    assert str(err.value).startswith("invalid training configuration (3 problems):")
    assert store.list_jobs() == [] and list(store.jobs_dir.iterdir()) == []


def test_run_name_of_an_active_job_or_staging_folder_is_taken(stores):
    store = stores()
    store.submit(cfg(run_name="sleep-a"))
    rundir.staging_dir(store.runs_dir, "half").mkdir()
    for name in ("sleep-a", "half"):
        with pytest.raises(ConfigError) as err:
            store.submit(cfg(run_name=name))
        assert err.value.problems == [ERR_RUN_TAKEN.format(name=name, runs_dir=store.runs_dir)]
    assert len(store.list_jobs()) == 1


def test_generated_run_id_avoids_a_staging_folder(stores, monkeypatch):
    store = stores(max_concurrent=1)
    monkeypatch.setattr(jobs_module.time, "strftime", lambda fmt: "20250102-030405")
    suffixes = iter(["abcd", "ef01"])
    real_hex = jobs_module.secrets.token_hex
    monkeypatch.setattr(jobs_module.secrets, "token_hex", lambda n: next(suffixes) if n == 2 else real_hex(n))
    rundir.staging_dir(store.runs_dir, "fundus-fr-race-l0.1-20250102-030405-abcd").mkdir()
    job = store.submit(cfg(method="fr", lam=0.1))
    assert job.run_id == "fundus-fr-race-l0.1-20250102-030405-ef01"
    assert RUN_ID.match(job.run_id).group("method", "attr", "lam") == ("fr", "race", "0.1")


def test_the_validation_curve_is_read_and_drawn_beside_the_loss():
    from studio import jobs_view

    records = [
        {"event": "start", "total_steps": 4},
        {"step": 2, "loss": 0.7, "ce": 0.7, "fairness": 0.0, "epoch": 1.0},
        {"event": "val", "step": 2, "epoch": 1.0, "val_loss": 0.69, "val_gap": 0.3, "val_gap_attribute": "race"},
        {"step": 4, "loss": 0.5, "ce": 0.5, "fairness": 0.0, "epoch": 2.0},
        {"event": "val", "step": 4, "epoch": 2.0, "val_loss": 0.61, "val_gap": None, "val_gap_attribute": "race"},
    ]
    progress = summarize(records)
    assert progress.step == 4 and [p[0] for p in progress.curve] == [2, 4]  # val records are no training steps
    assert progress.val_curve == [(2, 0.69, 0.3), (4, 0.61, None)] and progress.val_attribute == "race"
    figure = jobs_view.loss_figure(progress)
    names = [trace.name for trace in figure.data]
    assert names == ["loss", "validation loss", "validation MaxAccGap (race)"]
    assert figure.data[2].yaxis == "y2" and list(figure.layout.yaxis2.range) == [0, 1]


def test_run_ids_carry_only_the_parameters_the_method_uses(stores, monkeypatch):
    store = stores(max_concurrent=1)
    monkeypatch.setattr(jobs_module.time, "strftime", lambda fmt: "20250102-030405")
    names = {m: store.submit(cfg(method=m, lam=0.5, w_max=10.0)).run_id.rsplit("-", 3)[0] for m in methods.NAMES}
    assert names == {
        "vanilla": "fundus-vanilla-race",
        "fr": "fundus-fr-race-l0.5",
        "gr": "fundus-gr-race-w10",
        "hybrid": "fundus-hybrid-race-l0.5-w10",
        "cmac": "fundus-cmac-race-l0.5",
    }


def test_a_grid_sweep_queues_every_point_or_none(stores):
    store = stores(max_concurrent=1)
    jobs = store.submit_grid(cfg(method="hybrid", run_name="grid"), lambdas=[0.1, 1], w_maxes=[5, 10], seeds=[0, 1])
    assert len(jobs) == 8 and jobs[0].run_id == "grid-l0.1-w5-s0" and jobs[-1].run_id == "grid-l1-w10-s1"
    points = {(c["lam"], c["w_max"], c["seed"]) for c in (json.loads(j.config_path.read_text()) for j in jobs)}
    assert points == {(lam, w, seed) for lam in (0.1, 1.0) for w in (5.0, 10.0) for seed in (0, 1)}
    assert {job.sweep for job in jobs} == {"grid"}  # a given run name names the sweep
    generated = store.submit_grid(cfg(method="gr"), w_maxes=[3], seeds=[7])
    assert RUN_ID.match(generated[0].run_id).group("w_max", "seed") == ("3", "7")
    assert re.fullmatch(r"fundus-gr-sweep-\d{8}-\d{6}-[0-9a-f]{4}", generated[0].sweep)
    message = jobs_view.grid_message(generated, {"w_max": [3], "seed": [7]})
    assert message.endswith(jobs_view.SWEEP_FRONTIER.format(sweep=generated[0].sweep))
    assert store.submit(cfg(method="gr")).sweep is None  # a job of its own
    before = len(store.list_jobs())
    with pytest.raises(ConfigError) as err:
        store.submit_grid(cfg(method="fr"), lambdas=[0.5], w_maxes=[5, 5])  # FR never reads w_max
    assert err.value.problems[:2] == [
        jobs_module.ERR_GRID_W_MAX_METHOD.format(method="fr"),
        jobs_module.ERR_GRID_DUPLICATES.format(name="w_max", values="5, 5"),
    ]
    assert len(store.list_jobs()) == before  # all or none


def test_a_job_of_several_processes_runs_under_accelerate_launch_on_a_free_port(tmp_path):
    config = tmp_path / "job.json"
    config.write_text(json.dumps(TrainConfig(processes=2).to_dict()))
    job = Job("j1", "r1", QUEUED, "local", 0.0, None, None, None, None, None, None, tmp_path, config, tmp_path / "l")
    command = training_command(job)
    head = [sys.executable, "-m", "accelerate.commands.launch", *launch_arguments(2), "--main_process_port"]
    assert command[: len(head)] == head and 1024 <= int(command[len(head)]) < 65536
    assert command[len(head) + 1 :] == [
        *("-m", "training.train", "--config", str(config), "--run-name", "r1", "--runs-dir", str(tmp_path)),
        "--no-progress",
    ]
    config.write_text(json.dumps(TrainConfig().to_dict()))
    assert training_command(job)[:3] == [sys.executable, "-m", "training.train"]  # one process: plain python


def test_sweep_queues_one_job_per_lambda_or_none(stores):
    store = stores(max_concurrent=1)
    jobs = store.submit_sweep(cfg(method="fr", run_name="sleep-sw"))
    assert [j.run_id for j in jobs] == ["sleep-sw-l0.1", "sleep-sw-l0.5", "sleep-sw-l1"]
    assert [json.loads(j.config_path.read_text())["lam"] for j in jobs] == [0.1, 0.5, 1.0]
    assert [j.state for j in jobs] == [RUNNING, QUEUED, QUEUED]
    auto = store.submit_sweep(cfg(method="hybrid"), lambdas=[0.25, 2])
    assert [RUN_ID.match(j.run_id).group("lam") for j in auto] == ["0.25", "2"]
    with pytest.raises(ConfigError) as err:
        store.submit_sweep(cfg(method="vanilla"), lambdas=[0.5, 0.5, -1])
    assert err.value.problems == [
        ERR_SWEEP_METHOD.format(method="vanilla"),
        ERR_SWEEP_DUPLICATES.format(lambdas="0.5, 0.5, -1"),
        "lambda must be ≥ 0 (got -1); Gu et al. use 0.1, 0.5 or 1.0",
    ]
    with pytest.raises(ConfigError) as err:
        store.submit_sweep(cfg(method="cmac"), lambdas=[])
    assert err.value.problems == [ERR_SWEEP_EMPTY]
    assert len(store.list_jobs()) == 5


def test_queue_bound_raises_and_queues_nothing(stores):
    store = stores(max_concurrent=1, max_queued=1)
    store.submit(cfg(run_name="sleep-a"))  # runs
    store.submit(cfg(run_name="sleep-b"))  # waits
    with pytest.raises(QueueFullError) as err:
        store.submit(cfg(run_name="sleep-c"))
    assert str(err.value) == ERR_QUEUE_FULL.format(queued=1, limit=1)
    assert str(err.value) == "the queue is full (1 job(s) waiting, at most 1); wait for a job to start or cancel one"
    with pytest.raises(QueueFullError):
        store.submit_sweep(cfg(method="fr", run_name="sleep-sw"), lambdas=[0.1, 0.5])
    assert sorted(j.run_id for j in store.list_jobs()) == ["sleep-a", "sleep-b"]
    assert sorted(p.name for p in store.jobs_dir.glob("*.json")) == sorted(f"{j.id}.json" for j in store.list_jobs())


def test_owner_limit_raises_for_that_owner_only(stores):
    store = stores(max_concurrent=1, max_active_per_owner=1)
    mine = store.submit(cfg(run_name="sleep-a"), owner="alice")
    with pytest.raises(OwnerLimitError) as err:
        store.submit(cfg(run_name="sleep-b"), owner="alice")
    assert str(err.value) == ERR_OWNER_LIMIT.format(owner="alice", active=1, limit=1)
    assert store.submit(cfg(run_name="sleep-c"), owner="bob").state == QUEUED
    store.cancel(mine.id)
    store.wait(mine.id, WAIT_S)
    assert store.submit(cfg(run_name="sleep-d"), owner="alice").owner == "alice"
    assert [j.run_id for j in store.list_jobs(owner="alice")] == ["sleep-d", "sleep-a"]


def test_bad_store_settings_and_unknown_jobs_raise(stores):
    with pytest.raises(ValueError, match=exactly(ERR_BAD_LIMIT.format(name="max_concurrent", minimum=1, value=0))):
        stores(max_concurrent=0)
    store = stores()
    with pytest.raises(UnknownJobError) as err:
        store.get("nope")
    assert str(err.value) == ERR_UNKNOWN_JOB.format(job_id="nope", db=store.db_path)
    with pytest.raises(UnknownJobError):
        store.cancel("nope")


# ---------------------------------------------------------------------- progress files
def test_metrics_reader_tolerates_partial_and_bad_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert read_metrics(path) == [] and read_progress(path).fraction == 0.0
    path.write_text(
        '{"event": "start", "step": 0, "total_steps": 4}\nnot json\n'
        '{"step": 1, "total_steps": 4, "loss": 0.5, "elapsed_s": 1.0}\n'
        '{"step": 2, "total_steps": 4, "loss": 0.25, "ce": 0.2, "fairness": 0.05, "elapsed_s": 3.0}\n'
        '{"step": 3, "tota'
    )
    progress = summarize(read_metrics(path))
    assert (progress.step, progress.total_steps, progress.fraction, progress.eta_s) == (2, 4, 0.5, 3.0)
    assert progress.curve == [(1, 0.5, None, None), (2, 0.25, 0.2, 0.05)]
    with path.open("a") as f:
        f.write('ps": 4}\n{"event": "end", "seconds": 5.0}\n')
    done = summarize(read_metrics(path))
    assert (done.finished, done.fraction, done.eta_s, done.step) == (True, 1.0, 0.0, 2)


def test_log_tail_reads_the_end_of_a_long_log(tmp_path):
    path = tmp_path / "job.log"
    path.write_text("".join(f"line {i}\n" for i in range(5000)) + "epoch 1\r50%\r100%\nlast")
    assert path.stat().st_size > 4 * TAIL_BLOCK
    assert tail_lines(path, 3) == ["line 4999", "100%", "last"]
    assert tail_lines(path, 0) == [] and tail_lines(tmp_path / "none.log", 5) == []
    assert len(tail_lines(path, 4000)) == 4000 and tail_lines(path, 4000)[0] == "line 1002"


# ---------------------------------------------------------------------- the real training CLI
@pytest.fixture
def real_store(tmp_path):
    store = JobStore(tmp_path / "runs", max_concurrent=1, cancel_grace_s=60)
    yield store
    shutdown(store)


def test_real_training_job_succeeds_and_its_run_is_listed(real_store):
    job = real_store.submit(cfg(method="fr", lam=0.5))
    assert RUN_ID.match(job.run_id).group("method", "attr", "lam") == ("fr", "race", "0.5")
    done = real_store.wait(job.id, REAL_WAIT_S)
    assert (done.state, done.exit_code, done.reason) == (SUCCEEDED, 0, None), done.log_path.read_text()[-2000:]
    [run] = rundir.list_runs(real_store.runs_dir)
    assert (run.run_id, run.method, run.task, run.config["lam"]) == (job.run_id, "fr", "fundus", 0.5)
    progress = real_store.progress(job.id)
    assert (progress.finished, progress.fraction, progress.step, progress.total_steps) == (True, 1.0, 8, 8)
    assert len(progress.curve) == 8 and all(loss > 0 for _, loss, _, _ in progress.curve)
    assert progress.log_tail[-1] == f"run complete: {run.path}"
    # the exact command the store started is in the run folder, the job's record and its log
    assert done.command.startswith(f"{sys.executable} -m training.train --config {job.config_path} ")
    assert (run.path / rundir.COMMAND).read_text() == done.command + "\n"
    assert done.log_path.read_text().splitlines()[0] == f"$ {done.command}"
    assert (run.settings.processes, run.config["training"]["processes"]) == (1, 1)


def test_real_cancel_saves_a_checkpoint_lists_no_run_and_frees_the_slot(real_store):
    job = real_store.submit(cfg(epochs=500, run_name="long"))
    nxt = real_store.submit(cfg(run_name="next"))
    (real_store.runs_dir / "next").mkdir()  # the trainer itself refuses a run that exists by the time it starts
    wait_steps(real_store, job, 1, REAL_WAIT_S)
    # a CLI run given the live job's run name refuses (the job holds the run's lock) instead of
    # deleting the staging folder the job is writing
    cli = run_cli("training.train", "--config", str(job.config_path), "--no-progress")
    assert cli.returncode == 2 and "Traceback" not in cli.stderr, cli.stderr[-2000:]
    assert rundir.RUN_LOCKED.split("{holder}")[0].format(name="long") + f" (pid {job.pid})" in cli.stderr
    assert (job.staging_path / rundir.METRICS).is_file() and real_store.get(job.id).state == RUNNING
    real_store.cancel(job.id)
    done = real_store.wait(job.id, REAL_WAIT_S)
    assert (done.state, done.exit_code) == (CANCELLED, 3), done.log_path.read_text()[-2000:]
    assert done.reason == REASON_CANCELLED_CHECKPOINT.format(staging=job.staging_path)
    assert (job.staging_path / rundir.CHECKPOINT).is_dir()
    assert rundir.list_runs(real_store.runs_dir) == []
    failed = real_store.wait(nxt.id, REAL_WAIT_S)
    assert (failed.state, failed.exit_code) == (FAILED, 2)
    assert failed.reason == "invalid training configuration (1 problem):\n  - " + rundir.RUN_EXISTS.format(
        name="next", runs_dir=real_store.runs_dir
    )


def test_real_sigkilled_worker_fails_and_leaves_no_listed_run(real_store):
    job = real_store.submit(cfg(epochs=500))
    wait_steps(real_store, job, 1, REAL_WAIT_S)
    os.killpg(job.pid, signal.SIGKILL)
    done = real_store.wait(job.id, REAL_WAIT_S)
    assert (done.state, done.exit_code, done.reason) == (FAILED, -9, "killed by signal 9")
    assert rundir.list_runs(real_store.runs_dir) == []
    assert not job.staging_path.exists(), "killed before its first checkpoint: nothing resumable is kept"
    assert not rundir.lock_path(real_store.runs_dir, job.run_id).exists(), "nor the lock file it left"


def test_real_sigkilled_worker_resumes_from_its_periodic_checkpoint_to_a_complete_run(real_store):
    job = real_store.submit(cfg(epochs=3, save_every=4))
    poll(lambda: rundir.checkpoint_in(job.staging_path), REAL_WAIT_S)
    os.killpg(real_store.get(job.id).pid, signal.SIGKILL)
    killed = real_store.wait(job.id, REAL_WAIT_S)
    assert (killed.state, killed.reason, killed.resumable) == (FAILED, "killed by signal 9", True)
    assert rundir.list_runs(real_store.runs_dir) == []
    resumed = real_store.wait(real_store.resume(job.id).id, REAL_WAIT_S)
    assert (resumed.state, resumed.exit_code) == (SUCCEEDED, 0), resumed.log_path.read_text()[-2000:]
    [run] = rundir.list_runs(real_store.runs_dir)
    assert run.run_id == job.run_id and not job.staging_path.exists()
    assert run.config["training"]["resumed_from_step"] >= 4
    steps = [m["step"] for m in read_metrics(run.path / rundir.METRICS) if "loss" in m]
    assert steps == list(range(1, 25)), "each step logged once across the kill and the resume"
    started = (run.path / rundir.COMMAND).read_text().splitlines()  # both starts, the resume last
    assert started == [killed.command, resumed.command] and resumed.command.endswith(" --resume")
    assert real_store.progress(resumed.id).fraction == 1.0
