"""The app in a real browser: Debian's Chromium driven by Playwright (from PyPI; `playwright install` is
never run: the system Chromium is used through executable_path).

One server and one browser for the module. Screenshots of each tab go to a temp folder, printed at the
end of the session (pytest -s) and kept in SCREENSHOTS, so a person can look at them.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

from inference import diagnose_view
from inference.images import NOT_AN_IMAGE
from studio.settings import Settings
from tests.app_runs import DATASETS, free_port, tiny_runs

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (see requirements-test.txt)")
expect = playwright_api.expect

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EXAMPLE = diagnose_view.EXAMPLES_DIR / "fundus-positive-1.png"
SCREENSHOTS: list[Path] = []
JOB_TIMEOUT_MS = 180_000

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="no /usr/bin/chromium: apt-get install -y chromium chromium-driver"
    ),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning"),
]


@pytest.fixture(scope="module")
def shots() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="fairdx-screenshots-"))
    yield folder
    print(f"\nscreenshots in {folder}: {', '.join(p.name for p in SCREENSHOTS)}")


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    import app as fairdx_app

    runs = tiny_runs(tmp_path_factory.getbasetemp())
    user_runs = tmp_path_factory.mktemp("browser-runs")
    for path in runs.iterdir():
        (user_runs / path.name).symlink_to(path, target_is_directory=True)
    settings = Settings.from_env(
        {"FAIRDX_RUNS_DIR": str(user_runs), "FAIRDX_DATASETS": DATASETS, "FAIRDX_COMPARE_BOOTSTRAP": "100"}
    )
    demo = fairdx_app.build_app(settings)
    _, address, _ = demo.launch(
        prevent_thread_lock=True,
        server_name="127.0.0.1",
        server_port=free_port(),
        quiet=True,
        **fairdx_app.launch_kwargs(settings),
    )
    yield address
    demo.close()
    demo.fairdx_store.close()


@pytest.fixture(scope="module")
def page(url, tmp_path_factory):
    with playwright_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        page = context.pages[0] if context.pages else context.new_page()
        page.set_default_timeout(20_000)
        page.goto(url, wait_until="load")  # not "networkidle": the app's own polling can keep it busy
        page.locator("#diagnose-btn").wait_for()
        yield page
        context.close()


def screenshot(page, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    page.wait_for_timeout(600)  # toasts and plots fade in
    page.screenshot(path=str(path), full_page=True)
    SCREENSHOTS.append(path)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def fill_form(page, values: dict[str, str]) -> None:
    """Type into the Studio's number fields (elem_id studio-<field>) and leave each, as a person would."""
    for field, value in values.items():
        box = page.locator(f"#studio-{field} input")
        box.fill(value)
        box.press("Tab")


def test_diagnose_an_uploaded_image(page, shots):
    open_tab(page, "Diagnose")
    page.locator("#diagnose-image input[type=file]").set_input_files(str(EXAMPLE))
    page.locator("#diagnose-image img").first.wait_for()
    page.locator("#diagnose-btn").click()
    expect(page.locator("#diagnose-summary")).to_contain_text("Certainty margin", timeout=30_000)
    expect(page.locator("#diagnose-label")).to_contain_text(re.compile("glaucoma"))
    expect(page.locator("#diagnose-summary")).to_contain_text("Adapter")
    expect(page.locator("#diagnose-notice")).to_contain_text("not a medical device")
    # the saliency overlay follows the answer, beside the image, with the method named
    expect(page.locator("#diagnose-overlay img")).to_be_visible(timeout=30_000)
    expect(page.locator("#diagnose-overlay-caption")).to_contain_text("Integrated Gradients")
    screenshot(page, shots, "1-diagnose")


def test_picking_an_example_diagnoses_it_and_every_adapter_can_answer(page, shots):
    open_tab(page, "Diagnose")
    page.locator("#diagnose-examples").get_by_text("skin · malignant 1").click()
    summary = page.locator("#diagnose-summary")
    expect(summary).to_contain_text("its true label is malignant", timeout=30_000)
    expect(summary).to_contain_text("log-odds scale")
    expect(page.locator("#diagnose-overlay-caption")).to_contain_text("skin-cmac", timeout=30_000)
    expect(page.locator("#diagnose-adapter input")).to_have_value(re.compile(r"^skin-cmac \(demo\)"))
    page.locator("#diagnose-all-btn").click()
    table = page.locator("#diagnose-all-table")
    for method in ("Vanilla", "FR", "GR", "Hybrid", "CMAC-MMD"):
        expect(table).to_contain_text(f"skin-{'cmac' if method == 'CMAC-MMD' else method.lower()} (demo) · {method}")
    expect(page.locator("#diagnose-all-agreement")).to_contain_text("adapters call it")
    screenshot(page, shots, "1b-diagnose-every-adapter")
    page.locator("#diagnose-task").get_by_text("Glaucoma").click()  # the next tests expect the fundus task
    expect(page.locator("#diagnose-adapter input")).to_have_value(re.compile(r"^fundus-"))


def test_a_non_image_upload_shows_the_specific_message(page, shots, tmp_path):
    fake = tmp_path / "scan.png"
    fake.write_text("this is a text file, not a scan\n")
    open_tab(page, "Diagnose")
    page.locator("#diagnose-image button[aria-label='Remove Image']").first.click()
    page.locator("#diagnose-image input[type=file]").set_input_files(str(fake))
    page.locator("#diagnose-btn").click()
    toast = page.locator(".toast-body").filter(has_text=NOT_AN_IMAGE)
    expect(toast.first).to_be_visible()
    expect(page.locator("#diagnose-summary")).not_to_contain_text("Certainty margin")  # the old result is gone
    screenshot(page, shots, "2-diagnose-bad-upload")
    toast.locator(".toast-close").first.click()


def test_compare_shows_the_five_methods(page, shots):
    open_tab(page, "Compare")
    table = page.locator("#compare-table")
    for method in ("Vanilla", "FR", "GR", "Hybrid", "CMAC-MMD"):
        expect(table).to_contain_text(method, timeout=30_000)
    expect(table).to_contain_text("· chance ")  # every gap beside its noise floor
    # the vs-reference table: each setting paired against the task's vanilla demo, with p and a verdict
    expect(page.locator("#compare-versus-heading")).to_contain_text("vs reference: Vanilla")
    versus = page.locator("#compare-versus")
    for setting in ("FR λ=0.5 on race", "GR w_max=10 on race", "Hybrid λ=0.5 w_max=10 on race"):
        expect(versus).to_contain_text(setting)
    expect(versus).to_contain_text(re.compile(r"p=0\.\d+ · (fairer|less fair|no detectable change)"))
    expect(page.locator("#compare-groups")).to_contain_text("(n=")
    expect(page.locator("#compare-accuracy-plot .js-plotly-plot").first).to_be_visible()
    expect(page.locator("#compare-frontier-plot")).to_contain_text("noise floor")
    expect(page.locator("#compare-downloads")).to_contain_text("-versus")
    page.locator("#compare-report-btn").click()
    expect(page.locator("#compare-report")).to_contain_text("fairdx-report-", timeout=30_000)
    screenshot(page, shots, "3-compare")


def test_compare_flags_a_degenerate_run_in_the_tables_and_the_frontier(page, shots):
    # The app tests' fundus-gr run is near-constant (tests/app_runs.py squeezes it): the guard flags it.
    open_tab(page, "Compare")
    page.locator("#compare-runs label").filter(has_text="fundus-gr · GR").click()
    page.locator("#compare-btn").click()
    expect(page.locator("#compare-table")).to_contain_text("fundus-gr ⚠ degenerate", timeout=30_000)
    expect(page.locator("#compare-versus")).to_contain_text("not judged: degenerate model")
    expect(page.locator("#compare-groups")).to_contain_text("fundus-gr ⚠")
    expect(page.locator("#compare-frontier-plot")).to_contain_text("⚠ GR: ⚠ flagged run")
    screenshot(page, shots, "3b-compare-flagged")
    page.locator("#compare-runs label").filter(has_text="fundus-gr · GR").click()


def test_compare_audits_an_uploaded_predictions_csv(page, shots, tmp_path):
    import pandas as pd

    from training import rundir

    frame = pd.read_csv(rundir.DEMO_RUNS_DIR / "fundus-vanilla" / rundir.PREDICTIONS)
    broken = tmp_path / "broken.csv"
    frame.drop(columns=["prob"]).to_csv(broken, index=False)
    model = tmp_path / "their-model.csv"
    frame.assign(prob=frame["prob"].pow(0.6)).drop(columns=["margin"]).to_csv(model, index=False)
    open_tab(page, "Compare")
    page.locator("#compare-upload-box").get_by_text("Audit any model").click()
    upload = page.locator("#compare-upload input[type=file]")
    upload.set_input_files(str(broken))
    expect(page.locator("#compare-upload-status")).to_contain_text("Upload refused", timeout=30_000)
    expect(page.locator("#compare-upload-status")).to_contain_text("has no column 'prob'")
    page.locator("#compare-upload button[aria-label='Clear']").first.click()
    upload.set_input_files(str(model))
    expect(page.locator("#compare-upload-status")).to_contain_text("added", timeout=30_000)
    expect(page.locator("#compare-table")).to_contain_text("Uploaded model", timeout=60_000)
    expect(page.locator("#compare-versus")).to_contain_text("their-model-")
    expect(page.locator("#compare-groups")).to_contain_text("(uploaded)")
    screenshot(page, shots, "3c-compare-uploaded")


def test_studio_job_runs_to_the_end_and_its_adapter_is_offered(page, shots):
    open_tab(page, "Studio")
    fill_form(page, {"epochs": "1", "lora-r": "4", "max-samples": "32"})
    page.locator("#launch-btn").click()
    expect(page.locator("#studio-status")).to_contain_text("Queued job")
    run_id = re.search(r"→ run (\S+?)\.?$", page.locator("#studio-status").inner_text().strip()).group(1)
    expect(page.locator("#jobs-table")).to_contain_text("succeeded", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#job-progress")).to_contain_text("is ready")
    expect(page.locator("#job-log textarea")).to_have_value(re.compile("run complete"))
    screenshot(page, shots, "4-studio")
    open_tab(page, "Diagnose")
    page.locator("#diagnose-adapter input").click()
    expect(page.get_by_role("option", name=re.compile(re.escape(run_id)))).to_be_visible()
    page.keyboard.press("Escape")


def test_a_cancelled_job_resumes_from_the_studio(page, shots):
    open_tab(page, "Studio")
    fill_form(page, {"epochs": "8", "lora-r": "4", "max-samples": "200"})
    page.locator("#launch-btn").click()
    # 8 epochs of 6 optimiser steps (the Studio recipe's effective batch of 32): the previous test's
    # 1-step job can never match
    trained = re.compile(r"running · run \S+ · owner \w+ · step [1-9]\d*/48 ")
    expect(page.locator("#job-progress")).to_contain_text(trained, timeout=JOB_TIMEOUT_MS)
    page.locator("#cancel-btn").click()
    expect(page.locator("#job-progress")).to_contain_text("left a checkpoint", timeout=JOB_TIMEOUT_MS)
    page.locator("#resume-btn").click()
    expect(page.locator("#studio-status")).to_contain_text("resumes job")
    expect(page.locator("#job-progress")).to_contain_text("Resumes job")
    expect(page.locator("#job-progress")).to_contain_text("is ready", timeout=JOB_TIMEOUT_MS)
    expect(page.locator("#jobs-table")).to_contain_text("cancelled")  # the old job keeps its record
    screenshot(page, shots, "5-studio-resumed")


def test_form_mistakes_are_listed_in_one_toast(page, shots):
    open_tab(page, "Studio")
    expect(page.locator("#studio-lam input")).to_be_disabled()  # the default method, vanilla, reads no λ
    page.locator("#studio-method").get_by_text("FR", exact=True).click()
    expect(page.locator("#studio-lam input")).to_be_enabled()
    fill_form(page, {"lam": "-1", "epochs": "0", "max-samples": "5"})
    page.locator("#launch-btn").click()
    toast = page.locator(".toast-body").filter(has_text="invalid training configuration (3 problems)")
    expect(toast.first).to_be_visible()
    expect(toast.first).to_contain_text("epochs must be a whole number ≥ 1 (got 0)")
    screenshot(page, shots, "6-studio-invalid")


def test_a_huge_lambda_needs_the_confirmation_box(page, shots):
    open_tab(page, "Studio")
    page.locator("#studio-method").get_by_text("FR", exact=True).click()  # a method that reads λ
    fill_form(page, {"lam": "1000000000", "epochs": "1", "max-samples": "32"})
    page.locator("#launch-btn").click()
    toast = page.locator(".toast-body").filter(has_text="is beyond the range the papers test")
    expect(toast.first).to_be_visible()
    expect(toast.first).to_contain_text("λ beyond 10: I mean it")
    expect(page.locator("#studio-confirm-large-lambda")).to_be_visible()
    screenshot(page, shots, "7-studio-large-lambda")


def test_a_sweeps_runs_are_shown_together_in_compare_with_their_frontier(page, shots):
    open_tab(page, "Studio")
    expect(page.locator("#studio-processes")).to_be_hidden()  # no GPUs here: one plain process
    page.locator("#studio-method").get_by_text("FR", exact=True).click()
    fill_form(page, {"lam": "0.5", "epochs": "1", "lora-r": "4", "max-samples": "32"})
    page.locator("#sweep-lambdas textarea").fill("0.1, 1")
    page.locator("#sweep-btn").click()
    status = page.locator("#studio-status")
    expect(status).to_contain_text("Queued 2 jobs (λ = 0.1, 1)")
    sweep = re.search(r"the sweep (\S+):", status.inner_text()).group(1)
    expect(status).to_contain_text("Show in Compare")
    progress = page.locator("#job-progress")
    expect(progress).to_contain_text(f"Part of the sweep {sweep}")
    expect(progress).to_contain_text("Started with")
    table = page.locator("#jobs-table")
    expect(table).not_to_contain_text(re.compile(r"\b(queued|running)\b"), timeout=JOB_TIMEOUT_MS)
    page.locator("#show-in-compare-btn").click()
    expect(page.locator("#compare-sweep input")).to_have_value(f"{sweep} (2 runs)", timeout=30_000)
    # the sweep's runs and the Vanilla reference, compared; one epoch on 32 images gives degenerate models,
    # so the frontier draws them as flagged points, never as the sweep's front (tests/test_compare.py has that)
    compared = page.locator("#compare-table")
    for text in ("FR λ=0.1", "FR λ=1", "fundus-vanilla"):
        expect(compared).to_contain_text(text, timeout=60_000)
    expect(page.locator("#compare-frontier-plot")).to_contain_text("⚠ FR: ⚠ flagged run")
    screenshot(page, shots, "8-compare-sweep")
