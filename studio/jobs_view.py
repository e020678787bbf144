"""The Studio's job list and job detail without Gradio: the jobs table, progress, loss curve, log tail.

Everything is read from the job store and the files the trainer writes (``studio.jobs``,
``studio.progress``), so a page reload, a second tab or a restarted app shows the same. Log lines and
reasons go through ``Settings.redact`` so a visitor never sees this server's absolute paths.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go

from studio.jobs import ACTIVE_STATES, RUNNING, SUCCEEDED, Job, JobStore, UnknownJobError
from studio.progress import Progress
from studio.settings import Settings

JOB_COLUMNS = ["Job", "Run", "Owner", "State", "Progress", "ETA", "Started"]
JOB_COLUMN_WIDTHS = ["14%", "35%", "9%", "11%", "11%", "8%", "12%"]
MAX_LISTED = 50
LOG_LINES = 40
CANCELLING = "cancelling…"
NO_JOB_SELECTED = "Select a job in the table (or launch one) to follow its progress."
NO_JOBS = "No jobs yet."
LAUNCHED = "Queued job `{job_id}` → run `{run_id}`."
CANCEL_SENT = "Cancel sent to job `{job_id}` ({state})."
ALREADY_FINISHED = "Job `{job_id}` has already finished ({state}); nothing to cancel."
RESUMED = "Queued job `{job_id}`: it resumes job `{old}` from its checkpoint into run `{run_id}`."
RESUMABLE = "It left a checkpoint: **Resume job** continues it from there into the same run."
RESUMES = "Resumes job `{old}` from its checkpoint."
IN_SWEEP = "Part of the sweep `{sweep}`."
STARTED_WITH = "Started with (the run folder keeps it in `command.txt`):"
CHOOSE_JOB = "choose a job first"


def format_duration(seconds: float | None) -> str:
    """'1:05', '12:00:03'; '–' when unknown."""
    if seconds is None:
        return "–"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def state_text(job: Job) -> str:
    return CANCELLING if job.cancelling else job.state


def _progress_cells(store: JobStore, job: Job) -> tuple[str, str]:
    """(progress %, ETA) of a job; only active jobs read their metrics file."""
    if job.state == SUCCEEDED:
        return "100%", "–"
    if job.state not in ACTIVE_STATES:
        return "–", "–"
    if job.state != RUNNING:
        return "0%", "–"
    progress = store.progress(job.id, tail=0)
    return f"{progress.fraction:.0%}", format_duration(progress.eta_s)


def jobs_table(store: JobStore, *, limit: int = MAX_LISTED) -> pd.DataFrame:
    """The newest jobs, one row each: id, run, owner, state, progress %, ETA, start time."""
    rows = []
    for job in store.list_jobs()[:limit]:
        percent, eta = _progress_cells(store, job)
        started = _clock(job.started)
        rows.append([job.id, job.run_id, job.owner, state_text(job), percent, eta, started])
    return pd.DataFrame(rows, columns=JOB_COLUMNS)


def _clock(when: float | None) -> str:
    """'14:03:27' today, '2026-11-21 14:03' on another day, '–' before a job started."""
    if when is None:
        return "–"
    same_day = time.strftime("%Y%m%d", time.localtime(when)) == time.strftime("%Y%m%d")
    return time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M", time.localtime(when))


def job_choices(store: JobStore, *, limit: int = MAX_LISTED) -> list[tuple[str, str]]:
    """(label, job id) for the job selector: 'fundus-fr-… · running'."""
    return [(f"{job.run_id} · {state_text(job)}", job.id) for job in store.list_jobs()[:limit]]


def selected_or_newest(store: JobStore, current: str | None) -> str | None:
    """Keep the visitor's job if it exists, else the newest active job, else the newest job."""
    jobs = store.list_jobs()[:MAX_LISTED]
    if current and any(job.id == current for job in jobs):
        return current
    active = [job for job in jobs if job.is_active]
    chosen = active or jobs
    return chosen[0].id if chosen else None


@dataclass(frozen=True)
class JobDetail:
    status: str  # Markdown: state, step, %, ETA, speed, reason
    figure: go.Figure  # the loss curve
    log: str  # the last lines of the job's log
    step: int  # how far the curve goes (the app redraws the figure only when it grew)


def job_detail(store: JobStore, job_id: str | None, settings: Settings) -> JobDetail:
    """Progress, loss curve and log tail of one job."""
    if not job_id:
        return JobDetail(NO_JOB_SELECTED, loss_figure(Progress()), "", -1)
    try:
        job = store.get(job_id)
    except UnknownJobError as err:
        return JobDetail(settings.redact(str(err)), loss_figure(Progress()), "", -1)
    progress = store.progress(job.id, tail=LOG_LINES)
    log = settings.redact("\n".join(progress.log_tail))
    return JobDetail(
        status_markdown(job, progress, settings), loss_figure(progress, title=job.run_id), log, progress.step
    )


def status_markdown(job: Job, progress: Progress, settings: Settings) -> str:
    total = progress.total_steps or "?"
    parts = [
        f"**{state_text(job)}** · run `{job.run_id}` · owner {job.owner}",
        f"step {progress.step}/{total} ({progress.fraction:.0%})",
    ]
    if job.is_active:
        parts.append(f"ETA {format_duration(progress.eta_s)}")
    if progress.samples_per_s:
        parts.append(f"{progress.samples_per_s:.1f} samples/s")
    if job.duration_s is not None:
        parts.append(f"{format_duration(job.duration_s)} elapsed")
    text = " · ".join(parts)
    bar = _bar(progress.fraction)
    lines = [text, "", bar]
    if job.resume_of:
        lines += ["", RESUMES.format(old=job.resume_of)]
    sweep = job.sweep
    if sweep:
        lines += ["", IN_SWEEP.format(sweep=sweep)]
    if job.reason:
        lines += ["", settings.redact(job.reason)]
    if job.resumable:
        lines += ["", RESUMABLE]
    if job.state == SUCCEEDED:
        lines += ["", f"Run `{job.run_id}` is ready: pick it in Diagnose or Compare."]
    if job.command:
        lines += ["", STARTED_WITH, "", "```bash", settings.redact(job.command), "```"]
    return "\n".join(lines)


def _bar(fraction: float, width: int = 30) -> str:
    filled = round(fraction * width)
    return f"`{'█' * filled}{'░' * (width - filled)}` {fraction:.0%}"


def loss_figure(progress: Progress, *, title: str | None = None) -> go.Figure:
    """Loss per optimiser step, with its cross-entropy and fairness parts when the objective has them, and
    once per epoch the validation loss and the validation MaxAccGap on the training attribute."""
    figure = go.Figure()
    curve = progress.curve
    if curve:
        steps = [point[0] for point in curve]
        figure.add_scatter(x=steps, y=[point[1] for point in curve], name="loss", mode="lines+markers")
        for index, name in ((2, "cross-entropy"), (3, "fairness term")):
            values = [point[index] for point in curve]
            if any(values) and values != [point[1] for point in curve]:  # vanilla: CE = loss, no fairness term
                figure.add_scatter(x=steps, y=values, name=name, mode="lines", line={"dash": "dot"})
        val = progress.val_curve
        if val:  # validation, once per epoch: loss beside the training loss, the gap on a right-hand axis
            figure.add_scatter(
                x=[p[0] for p in val], y=[p[1] for p in val], name="validation loss", mode="lines+markers"
            )
            if any(p[2] is not None for p in val):
                figure.add_scatter(
                    x=[p[0] for p in val],
                    y=[p[2] for p in val],
                    name=f"validation MaxAccGap ({progress.val_attribute})",
                    mode="lines+markers",
                    line={"dash": "dash"},
                    yaxis="y2",
                )
                figure.update_layout(
                    yaxis2={
                        "title": "MaxAccGap",
                        "overlaying": "y",
                        "side": "right",
                        "range": [0, 1],
                        "showgrid": False,
                    }
                )
    else:
        figure.add_annotation(
            text="No training steps logged yet",
            showarrow=False,
            x=0.5,
            y=0.5,
            xref="paper",
            yref="paper",
            font={"size": 14},
        )
        figure.update_xaxes(visible=False)
        figure.update_yaxes(visible=False)
    figure.update_layout(
        title=f"Loss — {title}" if title else "Loss",
        xaxis_title="optimiser step",
        yaxis_title="loss",
        template="plotly_white",
        height=320,
        margin={"l": 50, "r": 60, "t": 50, "b": 40},
        legend={"orientation": "h", "y": -0.25},
    )
    return figure


GRID_LAUNCHED = "Queued {n} jobs ({grid}): {jobs}."
SWEEP_FRONTIER = (
    "They form the sweep `{sweep}`: as its runs finish, pick it under **Sweep** in Compare (or select one of its "
    "jobs here and press **Show in Compare**) to see their accuracy-vs-gap frontier."
)
AXIS_NAMES = {"lam": "λ", "w_max": "w_max", "seed": "seed"}


def grid_message(jobs: Sequence[Job], axes: Mapping[str, Sequence]) -> str:
    """'Queued 4 jobs (λ = 0.1, 1 × w_max = 5, 10): `a`, `b`, …', then where to see the sweep's frontier."""
    grid = " × ".join(f"{AXIS_NAMES[k]} = {', '.join(f'{v:g}' for v in values)}" for k, values in axes.items())
    text = GRID_LAUNCHED.format(n=len(jobs), grid=grid, jobs=", ".join(f"`{job.id}`" for job in jobs))
    sweep = jobs[0].sweep if jobs else None
    return f"{text} {SWEEP_FRONTIER.format(sweep=sweep)}" if sweep else text
