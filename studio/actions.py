"""What the Studio's buttons do: launch, sweep, cancel and resume a job, with the message each shows.

app.py only wires these to Gradio events (and adds the visitor's identity); the rules -- the form's
validation, the owner checks on a multi-user deployment, what to say when a job already finished --
live here, where they are tested without a browser.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from studio import jobs_view
from studio.form import FORM_FIELDS, config_from_form, grid_from_form
from studio.jobs import JobStore
from studio.settings import Settings, check_may_control
from training.config import command_line


def form_values(values: Sequence[Any]) -> dict[str, Any]:
    """The form's widget values, in FORM_FIELDS order, by field name (one value per field)."""
    return dict(zip(FORM_FIELDS, values, strict=True))


def launch(store: JobStore, settings: Settings, values: Mapping[str, Any], owner: str) -> tuple[str, str]:
    """Queue one job from the form (ConfigError naming every problem, nothing queued): (message, job id)."""
    submitted = store.submit(config_from_form(values, settings), owner=owner)
    return jobs_view.LAUNCHED.format(job_id=submitted.id, run_id=submitted.run_id), submitted.id


def sweep(
    store: JobStore,
    settings: Settings,
    values: Mapping[str, Any],
    lambdas_text: str,
    owner: str,
    w_max_text: str = "",
    seeds_text: str = "",
) -> tuple[str, str]:
    """Queue one job per point of the sweep (λ values, and optionally w_max values and seeds: the grid
    of all of them), all or none: (message, the first job's id)."""
    config, axes = grid_from_form(values, lambdas_text, w_max_text, seeds_text, settings)
    submitted = store.submit_grid(
        config, lambdas=axes.get("lam"), w_maxes=axes.get("w_max"), seeds=axes.get("seed"), owner=owner
    )
    return jobs_view.grid_message(submitted, axes), submitted[0].id


COMMAND = (
    "Run this where FairDx is installed (a clone of this Space, or `pip install -e .` of the repository); "
    "the run appears in Diagnose and Compare there:\n\n```bash\n{command}\n```\n\n"
    "For the full-size models use `--backbone Qwen/Qwen2.5-VL-7B-Instruct` (fundus) or "
    "`--backbone openai/clip-vit-base-patch16` (skin) on a GPU, and `accelerate launch -m training.train ...` "
    "for several GPUs."
)


def command(settings: Settings, values: Mapping[str, Any]) -> str:
    """Where training is off: the form checked exactly as Launch checks it, then the command that trains
    the job elsewhere (ConfigError naming every problem)."""
    return COMMAND.format(command=command_line(config_from_form(values, settings)))


def cancel(store: JobStore, settings: Settings, job_id: str | None, owner: str) -> str:
    """Ask a queued or running job to stop (its owner only, on a multi-user deployment): the message."""
    if not job_id:
        raise ValueError(jobs_view.CHOOSE_JOB)
    target = store.get(job_id)
    check_may_control(settings, owner, job_id, target.owner)
    if not target.is_active:
        return jobs_view.ALREADY_FINISHED.format(job_id=job_id, state=target.state)
    return jobs_view.CANCEL_SENT.format(job_id=job_id, state=jobs_view.state_text(store.cancel(job_id)))


def resume(store: JobStore, settings: Settings, job_id: str | None, owner: str) -> tuple[str, str]:
    """Continue a failed or cancelled job from its checkpoint as a new job (JobStore.resume): (message, new id)."""
    if not job_id:
        raise ValueError(jobs_view.CHOOSE_JOB)
    target = store.get(job_id)
    check_may_control(settings, owner, job_id, target.owner)
    resumed = store.resume(job_id, owner=owner)
    return jobs_view.RESUMED.format(job_id=resumed.id, old=job_id, run_id=resumed.run_id), resumed.id
