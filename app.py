"""FairDx in the browser: Diagnose, Compare and Studio tabs (``python app.py`` or ``gradio app.py``).

This file is the Gradio Blocks and their wiring only; what each tab computes lives in
inference/diagnose_view.py, inference/compare_view.py, studio/form.py and studio/jobs_view.py, and what
this deployment allows in studio/settings.py (environment variables, documented there).

Named API endpoints (gradio_client): /diagnose, /compare, /report, and with the Studio on /launch,
/sweep, /cancel, /resume, /jobs. Events that only keep the page in sync (timer, tab switches) are private.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import subprocess
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import gradio as gr

from inference import catalog, compare_view, diagnose_view, request_limits
from inference.compare_engine import CompareError
from inference.safe_image import SafeImage
from inference.serving import ModelPool, ServingError
from studio import actions, jobs_view
from studio.form import (
    CONFIRM_LAMBDA,
    FORM_FIELDS,
    FieldSpec,
    attribute_choices,
    config_from_form,
    default_attribute,
    form_fields,
    grid_from_form,
)
from studio.jobs import JobLimitError, JobStore, UnknownJobError
from studio.settings import (
    STUDIO_DISABLED,
    Settings,
    StudioAccessError,
    generate_synthetic,
    job_owner,
    synthetic_to_generate,
)
from training.config import ConfigError
from training.methods import LAMBDA_METHODS, WEIGHT_METHODS

log = logging.getLogger("fairdx.app")

TITLE = "FairDx"
HEADER = (
    "# FairDx\nFairness-aware LoRA adapters for medical image classifiers: **diagnose** an image with an "
    "adapter, **compare** adapters group by group, **train** your own in the Studio."
)
INTERNAL_ERROR = "Something went wrong on the server; the error was logged. Try again, or pick another adapter."
POLL_S = 1.5
MAX_FILE_SIZE = "10mb"  # = inference.images.DEFAULT_MAX_BYTES; SafeImage says the same in words
# A refresh asked for while the same refresh is still pending must run after it, not be dropped:
# Gradio's default trigger_mode "once" ignores the request, so under load the newest choice (an upload,
# another attribute) never reached the tables. "always_last" keeps the latest request and runs it next.
LATEST = "always_last"
CACHE_CLEANUP = (3600, 3600)  # uploads and outputs older than an hour are deleted, checked hourly
USER_ERRORS = (ValueError, ServingError, CompareError, ConfigError, JobLimitError, UnknownJobError, StudioAccessError)
CSS = """
#diagnose-notice {border-left: 4px solid #d97706; padding: 6px 12px; background: rgba(217,119,6,.08);}
#job-log textarea {font-family: ui-monospace, monospace; font-size: 12px;}
.toast-message-text {white-space: pre-line;}
#compare-table table, #compare-groups table, #jobs-table table {font-size: 12px;}
"""


def user_errors(settings: Settings) -> Callable:
    """Decorator: an error the visitor can act on becomes a toast with its message (server paths
    redacted); anything else is logged and shown as INTERNAL_ERROR, never as a traceback."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def handler(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except USER_ERRORS as err:
                message = settings.redact(str(err))
                log.info("%s refused: %s", fn.__name__, message.replace("\n", " ")[:500])  # one line, no traceback
                raise gr.Error(message, print_exception=False) from err
            except Exception as err:
                log.exception("handler %s failed", fn.__name__)
                raise gr.Error(INTERNAL_ERROR, print_exception=False) from err

        return handler

    return wrap


def build_app(settings: Settings | None = None) -> gr.Blocks:
    """The whole app for these settings (default: from the environment); `launch` serves it."""
    settings = settings or Settings.from_env()
    guarded = user_errors(settings)
    pool = ModelPool(max_adapters_per_base=settings.max_adapters)
    store = None
    if settings.studio:
        store = JobStore(
            settings.runs_dir,
            max_concurrent=settings.max_jobs,
            max_queued=settings.max_queue,
            max_active_per_owner=settings.max_jobs_per_user,
        )
        store.start_scheduler(1.0)  # queued jobs start even while no browser is open
        missing = synthetic_to_generate(settings)
        if missing:
            threading.Thread(target=_generate, args=(missing,), name="fairdx-synth", daemon=True).start()
    export_dir = compare_view.export_folder()

    def runs():
        return catalog.available_runs(settings.run_dirs)

    if settings.warmup:
        threading.Thread(target=_warm_up, args=(pool, runs()), name="fairdx-warmup", daemon=True).start()

    with gr.Blocks(title=TITLE, delete_cache=CACHE_CLEANUP, fill_width=True) as demo:
        gr.Markdown(HEADER)
        with gr.Tabs() as tabs:
            with gr.Tab("Diagnose", id="diagnose") as diagnose_tab:
                diagnose_parts = _diagnose_tab(runs(), settings)
            with gr.Tab("Compare", id="compare") as compare_tab:
                compare_parts = _compare_tab(runs())
            with gr.Tab("Studio", id="studio"):
                studio_parts = _studio_tab(settings, store) if store else _studio_disabled_tab(settings, guarded)
        runs_seen = gr.State(())

        # ------------------------------------------------------------------ Diagnose
        image, task, adapter, button, label, summary, details = diagnose_parts[:7]
        all_button, agreement, every, examples, overlay, overlay_caption = diagnose_parts[7:]

        @guarded
        def diagnose(image, task: str, adapter: str):
            view = diagnose_view.show(*_predict(pool, runs(), image, task, adapter))
            return view.confidences, view.summary, view.details

        @guarded
        def check_diagnose(image, task: str, adapter: str):
            diagnose_view.check_image(image)  # SafeImage has already refused an unreadable upload
            diagnose_view.adapter_for(adapter, task, runs())

        def clear_result():
            return None, "", None, None, ""

        @guarded
        def explain(image, task: str, adapter: str):
            """Where the adapter looked (API /explain): Integrated Gradients on the image as the model read it."""
            image = diagnose_view.check_image(image)
            run = diagnose_view.adapter_for(adapter, task, runs())
            return diagnose_view.explanation(pool.explain(image, run), run)

        # Checked first by an event without outputs: a bad upload shows its toast and no red "Error" badges.
        button.click(check_diagnose, [image, task, adapter], None, api_visibility="private").success(
            diagnose, [image, task, adapter], [label, summary, details], api_name="diagnose", concurrency_limit=2
        ).success(explain, [image, task, adapter], [overlay, overlay_caption], api_name="explain", concurrency_limit=1)

        @guarded
        def diagnose_all(image, task: str):
            """Every adapter of the task on one image (API /diagnose_all): which objective changes the decision."""
            image = diagnose_view.check_image(image)
            chosen = diagnose_view.task_adapters(runs(), task)
            results = [(pool.predict(image, run), run) for run in chosen]
            return diagnose_view.agreement(results), diagnose_view.all_adapters_table(results)

        all_button.click(diagnose_all, [image, task], [agreement, every], api_name="diagnose_all", concurrency_limit=1)
        image.change(lambda: ("", None), None, [agreement, every], api_visibility="private", show_progress="hidden")
        for changed in (image.change, adapter.change):  # an old result never sits next to a new image
            changed(
                clear_result,
                None,
                [label, summary, details, overlay, overlay_caption],
                api_visibility="private",
                show_progress="hidden",
            )

        def adapters_for(task: str, current: str | None):
            all_runs = runs()
            return gr.Dropdown(
                choices=diagnose_view.adapter_choices(all_runs, task),
                value=diagnose_view.keep_or_default(all_runs, task, current),
            )

        if examples is not None:  # picking an example diagnoses it with the task's adapter
            examples.load_input_event.then(adapters_for, [task, adapter], adapter, api_visibility="private").then(
                diagnose, [image, task, adapter], [label, summary, details], api_visibility="private"
            ).success(explain, [image, task, adapter], [overlay, overlay_caption], api_visibility="private")
        task.change(adapters_for, [task, adapter], adapter, api_visibility="private")
        demo.load(adapters_for, [task, adapter], adapter, api_visibility="private")
        diagnose_tab.select(adapters_for, [task, adapter], adapter, api_visibility="private")

        # ------------------------------------------------------------------ Compare
        cp = compare_parts
        c_task, c_runs = cp.task, cp.runs
        # the models this browser session uploaded; their checked copies are deleted when the session ends
        uploads = gr.State((), delete_callback=compare_view.forget_uploads)

        @guarded
        def do_compare(task: str, attribute: str, keys: list[str], reference: str | None, uploaded=()):
            chosen = compare_view.selected_sources(keys, runs(), task, uploaded)
            view = compare_view.show(chosen, attribute, bootstrap=settings.compare_bootstrap, reference=reference)
            files = None
            if not view.comparison.empty:
                files = [
                    str(compare_view.write_csv(view.comparison, export_dir, task, which=which))
                    for which in ("runs", "groups")
                ]
                paired = compare_view.write_versus_csv(view.paired, export_dir, task, view.comparison.attribute)
                files += [str(paired)] if paired else []
            return (
                compare_view.versus_heading(view.paired),
                view.versus,
                view.summary,
                view.groups,
                view.accuracy_figure,
                view.margin_figure,
                view.frontier_figure,
                view.calibration_figure,
                view.config_diff,
                view.notes,
                files,
            )

        compare_outputs = [
            cp.versus_heading,
            cp.versus,
            cp.summary,
            cp.groups,
            cp.accuracy,
            cp.margin,
            cp.frontier,
            cp.calibration,
            cp.config_diff,
            cp.notes,
            cp.downloads,
        ]
        compare_inputs = [c_task, cp.attribute, c_runs, cp.reference, uploads]
        cp.button.click(do_compare, compare_inputs, compare_outputs, api_name="compare")

        @guarded
        def do_report(
            task: str, keys: list[str], attribute: str | None = None, reference: str | None = None, uploaded=()
        ):
            chosen = compare_view.selected_sources(keys, runs(), task, uploaded)
            return str(
                compare_view.write_report(
                    chosen,
                    export_dir,
                    task,
                    bootstrap=settings.compare_bootstrap,
                    attribute=attribute,
                    reference=reference,
                    available=runs(),
                )
            )

        cp.report_button.click(lambda: gr.File(visible=True), None, cp.report, api_visibility="private").then(
            do_report, [c_task, c_runs, cp.attribute, cp.reference, uploads], cp.report, api_name="report"
        )

        def compare_choices(
            task: str, attribute: str | None, keys: list[str] | None, uploaded=(), sweep: str = "", keep: bool = True
        ):
            all_runs = runs()
            attributes = compare_view.attribute_choices([*all_runs, *uploaded], task)
            if not keep or attribute not in attributes:
                attribute = compare_view.default_attribute(all_runs, task)
            chosen = compare_view.keep_or_default_runs(all_runs, task, keys if keep else None, uploaded)
            sweeps = compare_view.sweep_choices(all_runs, task)
            return (
                gr.Dropdown(choices=attributes, value=attribute),
                gr.CheckboxGroup(choices=compare_view.source_choices(all_runs, task, uploaded), value=chosen),
                gr.Dropdown(choices=compare_view.reference_choices(chosen), value=compare_view.REFERENCE_AUTO),
                gr.Dropdown(choices=sweeps, value=sweep if keep and sweep in dict(sweeps).values() else ""),
            )

        choice_inputs = [c_task, cp.attribute, c_runs, uploads, cp.sweep]
        choice_outputs = [cp.attribute, c_runs, cp.reference, cp.sweep]
        # .input, not .change: "Show in Compare" in the Studio sets the task with its own runs ticked
        c_task.input(
            functools.partial(compare_choices, keep=False), choice_inputs, choice_outputs, api_visibility="private"
        ).then(do_compare, compare_inputs, compare_outputs, api_visibility="private", trigger_mode=LATEST)
        cp.attribute.input(do_compare, compare_inputs, compare_outputs, api_visibility="private", trigger_mode=LATEST)
        cp.reference.input(do_compare, compare_inputs, compare_outputs, api_visibility="private", trigger_mode=LATEST)
        c_runs.input(
            lambda keys, current: (
                gr.Dropdown(
                    choices=compare_view.reference_choices(keys),
                    value=current if current in compare_view.reference_choices(keys) else compare_view.REFERENCE_AUTO,
                ),
                "",  # ticked by hand: no longer one sweep
            ),
            [c_runs, cp.reference],
            [cp.reference, cp.sweep],
            api_visibility="private",
        )

        @guarded
        def pick_sweep(task: str, attribute: str | None, sweep: str, uploaded=()):
            """The Sweep dropdown ticks that sweep's runs (and the Vanilla reference) instead of the selection."""
            if not sweep:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return compare_choices(task, attribute, compare_view.sweep_runs(runs(), task, sweep), uploaded, sweep)

        cp.sweep.input(
            pick_sweep, [c_task, cp.attribute, cp.sweep, uploads], choice_outputs, api_visibility="private"
        ).success(do_compare, compare_inputs, compare_outputs, api_visibility="private", trigger_mode=LATEST)
        compare_tab.select(compare_choices, choice_inputs, choice_outputs, api_visibility="private").then(
            do_compare, compare_inputs, compare_outputs, api_visibility="private", trigger_mode=LATEST
        )

        def do_upload(path: str | None, task: str, keys: list[str] | None, uploaded, request: gr.Request):
            """Check the CSV; on success add it to the session's uploads and tick it (the last output says
            whether it was added, so only then does a comparison follow)."""
            if not path:
                return uploaded, gr.skip(), gr.skip(), "", False
            try:
                folder = compare_view.upload_folder(getattr(request, "session_hash", None))
                uploaded = compare_view.add_upload(path, task, folder, uploaded)
            except ValueError as error:
                return uploaded, gr.skip(), gr.skip(), f"**Upload refused.** {error}", False
            added = uploaded[-1]
            chosen = [*(k for k in keys or [] if k != added.label()), added.label()]
            status = compare_view.upload_status(added)
            return (
                uploaded,
                gr.CheckboxGroup(choices=compare_view.source_choices(runs(), task, uploaded), value=chosen),
                gr.Dropdown(choices=compare_view.reference_choices(chosen)),
                status,
                True,
            )

        def compare_after_upload(*values):
            """Compare once an upload was added; a refused or cleared one changes nothing, at once (it must
            not wait in line behind other comparisons, nor hold up the next upload)."""
            *inputs, added = values
            return do_compare(*inputs) if added else tuple(gr.skip() for _ in compare_outputs)

        upload_added = gr.State(False)
        cp.upload.upload(
            do_upload,
            [cp.upload, c_task, c_runs, uploads],
            [uploads, c_runs, cp.reference, cp.upload_status, upload_added],
            api_visibility="private",
        ).then(
            compare_after_upload,
            [*compare_inputs, upload_added],
            compare_outputs,
            api_visibility="private",
            trigger_mode=LATEST,
        )

        # ------------------------------------------------------------------ Studio
        if studio_parts is not None:
            _wire_studio(
                demo,
                settings,
                store,
                studio_parts,
                guarded,
                runs,
                runs_seen,
                (task, adapter),
                (c_task, c_runs, cp.sweep, uploads),
            )

            @guarded
            def show_in_compare(job_id: str | None, attribute: str | None, uploaded=()):
                """The selected job's sweep (or its own run) ticked in Compare, on its task, and the tab opened."""
                if not job_id:
                    raise ValueError(jobs_view.CHOOSE_JOB)
                job = store.get(job_id)
                task_of, keys = compare_view.job_selection(runs(), run_id=job.run_id, sweep=job.sweep)
                return (
                    gr.Tabs(selected="compare"),
                    task_of,
                    *compare_choices(task_of, attribute, keys, uploaded, job.sweep or ""),
                )

            studio_parts["show"].click(
                show_in_compare,
                [studio_parts["job"], cp.attribute, uploads],
                [tabs, c_task, *choice_outputs],
                api_visibility="private",
            ).success(do_compare, compare_inputs, compare_outputs, api_visibility="private", trigger_mode=LATEST)

    demo.fairdx_settings = settings
    demo.fairdx_pool = pool
    demo.fairdx_store = store
    return demo


def _predict(pool: ModelPool, all_runs, image, task: str, key: str):
    image = diagnose_view.check_image(image)
    run = diagnose_view.adapter_for(key, task, all_runs)
    return pool.predict(image, run), run, image


def _generate(specs: list[str]) -> None:
    """Generate the offered synthetic benchmarks in a child process (see synthetic_to_generate)."""
    try:
        generate_synthetic(specs)
    except subprocess.CalledProcessError as err:
        log.error("generating %s failed:\n%s", ", ".join(specs), (err.stderr or "")[-2000:])


def _warm_up(pool: ModelPool, all_runs) -> None:
    """Load the default fundus adapter's base in the background, so the first diagnosis is quick."""
    key = diagnose_view.default_adapter(all_runs, diagnose_view.TASK_CHOICES[0][1])
    if key is None:
        return
    try:
        pool.activate(diagnose_view.adapter_for(key, diagnose_view.TASK_CHOICES[0][1], all_runs))
    except Exception:  # a broken run must not stop the app; the Diagnose tab will say what is wrong
        log.exception("warm-up of adapter %s failed", key)


# ---------------------------------------------------------------------- layout
def _diagnose_tab(all_runs, settings: Settings):
    first_task = diagnose_view.TASK_CHOICES[0][1]
    gr.Markdown(diagnose_view.NOTICE, elem_id="diagnose-notice")
    with gr.Row():
        with gr.Column(scale=1):
            task = gr.Radio(list(diagnose_view.TASK_CHOICES), value=first_task, label="Task", elem_id="diagnose-task")
            image = SafeImage(
                type="pil",
                label="Image (PNG, JPEG, WEBP, BMP, TIFF or GIF; up to 10 MB)",
                sources=["upload", "clipboard"],
                height=300,
                elem_id="diagnose-image",
            )
            adapter = gr.Dropdown(
                diagnose_view.adapter_choices(all_runs, first_task),
                value=diagnose_view.default_adapter(all_runs, first_task),
                label="Adapter",
                info="Every complete run of the task: the demos and your own.",
                allow_custom_value=True,
                elem_id="diagnose-adapter",
            )
            with gr.Row():
                button = gr.Button("Diagnose", variant="primary", elem_id="diagnose-btn")
                all_button = gr.Button("Every adapter on this image", elem_id="diagnose-all-btn")
        with gr.Column(scale=1):
            label = gr.Label(num_top_classes=2, label="Diagnosis", elem_id="diagnose-label")
            summary = gr.Markdown(label="Summary", show_label=False, elem_id="diagnose-summary")
            overlay = gr.Image(
                type="pil",
                label="Where the model looked",
                interactive=False,
                height=300,
                elem_id="diagnose-overlay",
            )
            overlay_caption = gr.Markdown(
                label="How the overlay was made", show_label=False, elem_id="diagnose-overlay-caption"
            )
            with gr.Accordion("Details (JSON)", open=False):
                details = gr.JSON(label="Details", elem_id="diagnose-details", show_label=False)
    agreement = gr.Markdown(label="Agreement", show_label=False, elem_id="diagnose-all-agreement")
    every = gr.Dataframe(
        headers=diagnose_view.ALL_COLUMNS,
        label="Every adapter of the task on this image, with its own validated test figures",
        interactive=False,
        wrap=True,
        column_widths=diagnose_view.ALL_COLUMN_WIDTHS,
        elem_id="diagnose-all-table",
    )
    rows, labels = diagnose_view.example_rows()
    examples = None
    if rows:
        examples = gr.Examples(
            rows,
            [image, task],
            example_labels=labels,
            label="Examples (synthetic images; picking one diagnoses it)",
            api_visibility="private",
            elem_id="diagnose-examples",
        )
    return DiagnoseParts(
        image,
        task,
        adapter,
        button,
        label,
        summary,
        details,
        all_button,
        agreement,
        every,
        examples,
        overlay,
        overlay_caption,
    )


def _compare_tab(all_runs):
    first_task = diagnose_view.TASK_CHOICES[0][1]
    with gr.Row():
        task = gr.Radio(list(diagnose_view.TASK_CHOICES), value=first_task, label="Task", elem_id="compare-task")
        attribute = gr.Dropdown(
            compare_view.attribute_choices(all_runs, first_task),
            value=compare_view.default_attribute(all_runs, first_task),
            label="Attribute or intersection",
            allow_custom_value=True,
            info="'a+b' compares the intersectional subgroups of a and b.",
            elem_id="compare-attribute",
        )
        reference = gr.Dropdown(
            compare_view.reference_choices(compare_view.default_runs(all_runs, first_task)),
            value=compare_view.REFERENCE_AUTO,
            label="Reference (optional)",
            info="Every other run is tested against it, paired on the same test images.",
            allow_custom_value=True,  # an API client may name a run that finished after the page was built
            elem_id="compare-reference",
        )
    with gr.Row():
        runs = RunCheckboxes(
            compare_view.source_choices(all_runs, first_task),
            value=compare_view.default_runs(all_runs, first_task),
            label="Runs",
            scale=4,
            elem_id="compare-runs",
        )
        sweep = gr.Dropdown(
            compare_view.sweep_choices(all_runs, first_task),
            value="",
            label="Sweep",
            info=compare_view.SWEEP_HELP,
            scale=1,
            elem_id="compare-sweep",
        )
    with gr.Accordion("Audit any model: upload a predictions CSV", open=False, elem_id="compare-upload-box"):
        gr.Markdown(compare_view.UPLOAD_HELP)
        upload = gr.File(
            label="Predictions CSV (checked here, kept only for this browser session)",
            file_types=[".csv"],
            type="filepath",
            height=110,
            elem_id="compare-upload",
        )
        upload_status = gr.Markdown(elem_id="compare-upload-status")
    with gr.Row():
        button = gr.Button("Compare", variant="primary", elem_id="compare-btn")
        report_button = gr.Button("Build reproduction report", elem_id="compare-report-btn")
    versus_heading = gr.Markdown(label="Reference", show_label=False, elem_id="compare-versus-heading")
    versus = gr.Dataframe(
        label=compare_view.VERSUS_LABEL,
        interactive=False,
        wrap=True,
        column_widths=compare_view.VERSUS_COLUMN_WIDTHS,
        elem_id="compare-versus",
    )
    summary = gr.Dataframe(
        label=compare_view.SUMMARY_LABEL,
        interactive=False,
        wrap=True,
        column_widths=compare_view.SUMMARY_COLUMN_WIDTHS,
        pinned_columns=1,
        elem_id="compare-table",
    )
    groups = gr.Dataframe(
        label="Accuracy per group (95% Wilson interval, n = test samples; a group below 30 is shown but left out of "
        "the gaps; ⚠ = flagged run)",
        interactive=False,
        wrap=True,
        pinned_columns=1,
        elem_id="compare-groups",
    )
    with gr.Row():
        accuracy = gr.Plot(label="Accuracy per group", elem_id="compare-accuracy-plot")
        frontier = gr.Plot(label="Accuracy vs MaxAccGap", elem_id="compare-frontier-plot")
    margin = gr.Plot(label="Certainty margins", elem_id="compare-margin-plot")
    with gr.Accordion("Calibration and ROC per group", open=False):
        calibration = gr.Plot(label="Reliability and ROC per group", elem_id="compare-calibration-plot")
    config_diff = gr.Dataframe(
        label="What differs between the selected runs (only the settings that differ)",
        interactive=False,
        wrap=True,
        elem_id="compare-config-diff",
    )
    with gr.Row():
        downloads = gr.File(
            label="CSV export (runs table, per-group table, paired comparisons)",
            file_count="multiple",
            interactive=False,
            height=140,
            elem_id="compare-downloads",
        )
        report = gr.File(
            label="Reproduction report (Markdown)",
            interactive=False,
            height=140,
            visible=False,
            elem_id="compare-report",
        )
    with gr.Accordion("Notes on small or one-label groups", open=False):
        notes = gr.Markdown(label="Notes", show_label=False, elem_id="compare-notes")
    return CompareParts(
        task,
        attribute,
        reference,
        runs,
        upload,
        upload_status,
        button,
        versus_heading,
        versus,
        summary,
        groups,
        accuracy,
        margin,
        frontier,
        calibration,
        config_diff,
        notes,
        downloads,
        report_button,
        report,
        sweep,
    )


class DiagnoseParts(NamedTuple):
    image: Any
    task: Any
    adapter: Any
    button: Any
    label: Any
    summary: Any
    details: Any
    all_button: Any
    agreement: Any
    every: Any
    examples: Any
    overlay: Any
    overlay_caption: Any


@dataclasses.dataclass(frozen=True)
class CompareParts:
    task: Any
    attribute: Any
    reference: Any
    runs: Any
    upload: Any
    upload_status: Any
    button: Any
    versus_heading: Any
    versus: Any
    summary: Any
    groups: Any
    accuracy: Any
    margin: Any
    frontier: Any
    calibration: Any
    config_diff: Any
    notes: Any
    downloads: Any
    report_button: Any
    report: Any
    sweep: Any


class RunCheckboxes(gr.CheckboxGroup):
    """A CheckboxGroup that leaves checking the run keys to the handler (compare_view.selected_runs).

    The stock component refuses values outside the choices it had when the page was built, so an API
    client could not compare a run that finished after the app started; the handler checks every key
    against the runs on disk instead, with a message that lists the choices.
    """

    def get_block_name(self) -> str:
        return "checkboxgroup"

    def preprocess(self, payload):
        return list(payload or [])


def _field(spec: FieldSpec, settings: Settings, *, interactive: bool = True):
    """One Studio form widget from its FieldSpec (bounds are checked by studio.form, all at once)."""
    common = dict(
        label=spec.label,
        info=_info(spec),
        elem_id=f"studio-{spec.name.replace('_', '-')}",
        interactive=interactive,
        visible=spec.visible,
    )
    if spec.kind == "radio":
        return gr.Radio(list(spec.choices), value=spec.default, **common)
    if spec.kind == "dropdown":
        return gr.Dropdown(list(spec.choices), value=spec.default, allow_custom_value=spec.custom, **common)
    if spec.kind in ("number", "integer"):
        return gr.Number(value=spec.default, step=1 if spec.kind == "integer" else 0.1, **common)
    if spec.kind == "checkbox":
        return gr.Checkbox(value=spec.default, **common)
    return gr.Textbox(value=str(spec.default), **common)


def _info(spec: FieldSpec) -> str:
    limits = []
    if spec.maximum is not None:
        limits.append(f"at most {spec.maximum:g} on this server")
    return spec.help + (f" ({'; '.join(limits)})" if limits else "")


METHOD_FIELDS = ("lam", CONFIRM_LAMBDA, "w_max")  # live only for the methods whose objective reads them


def _studio_tab(settings: Settings, store: JobStore):
    specs = form_fields(settings)
    if settings.on_space:
        gr.LoginButton(elem_id="studio-login")
    with gr.Row():
        with gr.Column(scale=5):
            with gr.Accordion("New training job", open=True):
                fields = _form(specs, settings)
                launch = gr.Button("Launch", variant="primary", elem_id="launch-btn")
                with gr.Row():
                    lambdas = gr.Textbox(
                        "0.1, 0.5, 1.0",
                        label="λ sweep",
                        scale=2,
                        elem_id="sweep-lambdas",
                        info=f"One job per λ value (methods {', '.join(LAMBDA_METHODS)}); empty: λ not swept.",
                    )
                    w_maxes = gr.Textbox(
                        "",
                        label="w_max sweep (optional)",
                        scale=2,
                        elem_id="sweep-w-max",
                        info=f"e.g. 5, 10, 20 (methods {', '.join(WEIGHT_METHODS)}).",
                    )
                    seeds = gr.Textbox("", label="Seeds (optional)", scale=1, elem_id="sweep-seeds", info="e.g. 0 1 2")
                sweep = gr.Button("Sweep (every combination)", elem_id="sweep-btn")
            status = gr.Markdown(label="Status", show_label=False, elem_id="studio-status")
        with gr.Column(scale=6):
            jobs_table = gr.Dataframe(
                jobs_view.jobs_table(store),
                label="Jobs",
                interactive=False,
                wrap=True,
                column_widths=jobs_view.JOB_COLUMN_WIDTHS,
                max_height=300,
                elem_id="jobs-table",
            )
            job = gr.Dropdown(
                jobs_view.job_choices(store),
                value=jobs_view.selected_or_newest(store, None),
                label="Job",
                allow_custom_value=True,
                elem_id="job-select",
            )
            with gr.Row():
                refresh = gr.Button("Refresh", elem_id="jobs-refresh-btn")
                resume = gr.Button("Resume job", elem_id="resume-btn")
                show = gr.Button("Show in Compare", elem_id="show-in-compare-btn")
                cancel = gr.Button("Cancel job", variant="stop", elem_id="cancel-btn")
            progress = gr.Markdown(jobs_view.NO_JOB_SELECTED, elem_id="job-progress")
            loss = gr.Plot(label="Loss", elem_id="job-loss-plot")
            log_box = gr.Textbox(
                label="Log (last lines)", lines=10, max_lines=10, autoscroll=True, interactive=False, elem_id="job-log"
            )
    timer = gr.Timer(POLL_S, active=False)
    drawn = gr.State("")
    return dict(
        fields=fields,
        launch=launch,
        lambdas=lambdas,
        w_maxes=w_maxes,
        seeds=seeds,
        sweep=sweep,
        status=status,
        jobs_table=jobs_table,
        job=job,
        refresh=refresh,
        cancel=cancel,
        resume=resume,
        show=show,
        progress=progress,
        loss=loss,
        log=log_box,
        timer=timer,
        drawn=drawn,
    )


FORM_LAYOUT = (
    ("method",),
    ("lam", "w_max"),
    (CONFIRM_LAMBDA,),
    ("data", "attribute"),
    ("backbone", "lr"),
    ("epochs", "lora_r"),
    ("seed", "max_samples"),
    ("balanced_sampling", "processes"),
)


def _form(specs: list[FieldSpec], settings: Settings) -> dict[str, Any]:
    """The Studio form's widgets, by field name, in FORM_LAYOUT's rows."""
    by_name = {spec.name: spec for spec in specs}
    method = by_name["method"].default  # λ, its confirmation and w_max start live only if it reads them
    fields = {}
    for row in FORM_LAYOUT:
        with gr.Row():
            for name in row:
                fields[name] = _field(by_name[name], settings, interactive=by_name[name].enabled_for(method))
    return fields


def _studio_disabled_tab(settings: Settings, guarded) -> None:
    """Training is off here (e.g. a public Space): the same form, validated the same way, gives the exact
    command to train the job on one's own machine ('duplicate this Space' or a local clone)."""
    gr.Markdown(STUDIO_DISABLED, elem_id="studio-disabled")
    with gr.Accordion("Build a training job to run elsewhere", open=True):
        fields = _form(form_fields(settings), settings)
        button = gr.Button("Show the command", variant="primary", elem_id="studio-command-btn")
        command = gr.Markdown(label="Command", show_label=False, elem_id="studio-command")
    inputs = [fields[name] for name in FORM_FIELDS]
    button.click(
        guarded(lambda *values: actions.command(settings, actions.form_values(values))),
        inputs,
        command,
        api_visibility="private",
    )


# ---------------------------------------------------------------------- Studio wiring
def _wire_studio(
    demo, settings: Settings, store: JobStore, parts: dict, guarded, runs, runs_seen, diagnose_inputs, compare_inputs
) -> None:
    fields = [parts["fields"][name] for name in FORM_FIELDS]
    job, timer, drawn = parts["job"], parts["timer"], parts["drawn"]
    jobs_outputs = [parts["jobs_table"], job]
    detail_outputs = [parts["progress"], parts["loss"], parts["log"], drawn]

    def owner_of(request: gr.Request | None, profile: gr.OAuthProfile | None) -> str:
        return job_owner(
            settings, profile_name=profile.username if profile else None, username=getattr(request, "username", None)
        )

    @_named_form_parameters()
    @guarded
    def launch(request: gr.Request, profile: gr.OAuthProfile | None, *values):
        message, job_id = actions.launch(store, settings, actions.form_values(values), owner_of(request, profile))
        return message, jobs_view.jobs_table(store), job_id

    @_named_form_parameters("lambdas_text", "w_max_text", "seeds_text")
    @guarded
    def sweep(request: gr.Request, profile: gr.OAuthProfile | None, *values):
        message, job_id = actions.sweep(
            store,
            settings,
            actions.form_values(values[:-3]),
            values[-3],
            owner_of(request, profile),
            w_max_text=values[-2],
            seeds_text=values[-1],
        )
        return message, jobs_view.jobs_table(store), job_id

    @guarded
    def cancel(job_id: str, request: gr.Request, profile: gr.OAuthProfile | None = None):
        return actions.cancel(store, settings, job_id, owner_of(request, profile)), jobs_view.jobs_table(store), job_id

    @guarded
    def resume(job_id: str, request: gr.Request, profile: gr.OAuthProfile | None = None):
        message, new_id = actions.resume(store, settings, job_id, owner_of(request, profile))
        return message, jobs_view.jobs_table(store), new_id

    @guarded
    def list_jobs():
        return jobs_view.jobs_table(store)

    def job_choices(selected: str | None):
        return gr.Dropdown(choices=jobs_view.job_choices(store), value=jobs_view.selected_or_newest(store, selected))

    def detail(selected: str | None, last_drawn: str):
        shown = jobs_view.job_detail(store, selected, settings)
        stamp = f"{selected}:{shown.step}"
        figure = gr.skip() if stamp == last_drawn else shown.figure
        return shown.status, figure, shown.log, stamp

    def poll(selected: str | None, last_drawn: str):
        """Timer tick: jobs table and the selected job; the timer stops once no job is queued or running.

        Whether to keep ticking is read *before* the table: a job that ends in between is then shown
        running once more and final on the next tick, never left showing "running" with the timer off.
        """
        active = store.is_active()
        current = jobs_view.selected_or_newest(store, selected)
        return (
            jobs_view.jobs_table(store),
            job_choices(current),
            *detail(current, last_drawn),
            gr.Timer(active=active),
        )

    def refresh_run_choices(d_task, d_adapter, c_task, c_keys, c_sweep, uploaded, seen):
        """After a job finishes its run is offered in Diagnose and Compare, and its sweep under Sweep (only
        redrawn when runs changed); the predictions CSVs this session uploaded stay offered and ticked."""
        all_runs = runs()
        keys = tuple(sorted(run.label() for run in all_runs))
        if keys == tuple(seen):
            return gr.skip(), gr.skip(), gr.skip(), seen
        return (
            gr.Dropdown(
                choices=diagnose_view.adapter_choices(all_runs, d_task),
                value=diagnose_view.keep_or_default(all_runs, d_task, d_adapter),
            ),
            gr.CheckboxGroup(
                choices=compare_view.source_choices(all_runs, c_task, uploaded),
                value=compare_view.keep_or_default_runs(all_runs, c_task, c_keys, uploaded),
            ),
            gr.Dropdown(choices=compare_view.sweep_choices(all_runs, c_task), value=c_sweep),
            keys,
        )

    def dataset_changed(dataset: str):
        return gr.Dropdown(choices=attribute_choices(settings, dataset), value=default_attribute(settings, dataset))

    def follow(selected: str | None):
        """After launch / sweep / cancel: the job selector lists the new jobs, and polling starts."""
        return job_choices(selected), gr.Timer(active=True)

    @guarded
    def check_launch(*values):
        config_from_form(actions.form_values(values), settings)

    @guarded
    def check_sweep(*values):
        grid_from_form(actions.form_values(values[:-3]), *values[-3:], settings)

    def method_changed(method: str):
        """λ and w_max are live only for the methods whose objective reads them (training.methods)."""
        return tuple(gr.update(interactive=by_name[name].enabled_for(method)) for name in METHOD_FIELDS)

    launch_outputs = [parts["status"], parts["jobs_table"], job]
    for button, check, fn, inputs, name in (
        (parts["launch"], check_launch, launch, fields, "launch"),
        (parts["sweep"], check_sweep, sweep, [*fields, parts["lambdas"], parts["w_maxes"], parts["seeds"]], "sweep"),
        (parts["cancel"], None, cancel, [job], "cancel"),
        (parts["resume"], None, resume, [job], "resume"),
    ):
        # The form is checked first by an event without outputs, so a mistake shows only its toast (no red
        # "Error" badges on the jobs table); /launch and /sweep check it again for API clients.
        trigger = button.click(check, inputs, None, api_visibility="private").success if check else button.click
        trigger(fn, inputs, launch_outputs, api_name=name, concurrency_limit=1).success(
            follow, job, [job, timer], api_visibility="private"
        )
    parts["refresh"].click(list_jobs, None, parts["jobs_table"], api_name="jobs").then(
        follow, job, [job, timer], api_visibility="private"
    )
    job.change(detail, [job, drawn], detail_outputs, api_visibility="private")
    parts["jobs_table"].select(_selected_job, None, job, api_visibility="private")
    by_name = {spec.name: spec for spec in form_fields(settings)}
    parts["fields"]["method"].change(
        method_changed,
        parts["fields"]["method"],
        [parts["fields"][name] for name in METHOD_FIELDS],
        api_visibility="private",
    )
    parts["fields"]["data"].change(
        dataset_changed, parts["fields"]["data"], parts["fields"]["attribute"], api_visibility="private"
    )
    d_task, d_adapter = diagnose_inputs
    c_task, c_runs, c_sweep, uploads = compare_inputs
    timer.tick(
        poll,
        [job, drawn],
        [*jobs_outputs, *detail_outputs, timer],
        api_visibility="private",
        concurrency_limit=None,
        show_progress="hidden",
    ).then(
        refresh_run_choices,
        [d_task, d_adapter, c_task, c_runs, c_sweep, uploads, runs_seen],
        [d_adapter, c_runs, c_sweep, runs_seen],
        api_visibility="private",
        show_progress="hidden",
    )
    demo.load(poll, [job, drawn], [*jobs_outputs, *detail_outputs, timer], api_visibility="private")


def _named_form_parameters(*extra: str) -> Callable:
    """Give ``fn(request, profile, *values)`` a signature that names each form field (then `extra`).

    Gradio fills a handler's request and profile only into positional parameters, and the API takes
    an endpoint's inputs by the names in its signature (``/launch`` with ``method=...``); the form's
    fields are listed once, in studio.form.FORM_FIELDS.
    """

    def wrap(fn: Callable) -> Callable:
        special = list(inspect.signature(fn).parameters.values())[:2]
        fields = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in (*FORM_FIELDS, *extra)]
        fn.__signature__ = inspect.Signature([p.replace(default=inspect.Parameter.empty) for p in special] + fields)
        return fn

    return wrap


def _selected_job(event: gr.SelectData):
    """Clicking a row of the jobs table selects that job (its first cell is the job id)."""
    row = event.row_value or None
    return row[0] if row else gr.skip()


# ---------------------------------------------------------------------- launching
def launch_kwargs(settings: Settings) -> dict[str, Any]:
    """launch() arguments: upload cap, no public monitoring page, theme and CSS (Gradio 6 takes them here).

    Run history off and server-side rendering off: together they are the preconditions of
    CVE-2026-134825 (gradio 6.27 to 6.31, fixed in 6.32, which no index we install from has yet), where a
    forged ``Host: localhost`` reaches the run-history routes with the operator's saved Hugging Face
    token (assets/security/advisories.json, tests/test_advisories.py). FairDx needs neither.
    Host and port: GRADIO_SERVER_NAME / GRADIO_SERVER_PORT, read by Gradio itself.
    """
    kwargs: dict[str, Any] = dict(
        max_file_size=MAX_FILE_SIZE,
        enable_monitoring=False,
        show_error=False,
        run_history=False,
        ssr_mode=False,
        css=CSS,
        theme=gr.themes.Soft(),
        footer_links=["api", "gradio"],
        app_kwargs=request_limits.app_kwargs(),
    )  # 413 for bodies over 16 MB (issue 12)
    if settings.auth and not settings.on_space:
        kwargs["auth"] = list(settings.auth)
        kwargs["auth_message"] = "Sign in to FairDx (accounts set by the operator in FAIRDX_AUTH)."
    return kwargs


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = demo if demo is not None else build_app()
    app.launch(**launch_kwargs(app.fairdx_settings))


# `gradio app.py` (reload mode) looks for a module-level `demo`; `python app.py` builds it in main().
demo = build_app() if os.environ.get("GRADIO_WATCH_MODULE_NAME") else None

if __name__ == "__main__":
    main()
