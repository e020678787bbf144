"""The app served in-process on a free port and driven through gradio_client, as an API user would.

One server per module, on a temp runs folder holding real tiny runs (tests/app_runs.py); a second one
with the Studio off and HTTP auth on. The Studio test trains a real tiny job through /launch.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.request
from pathlib import Path

import gradio
import gradio.oauth
import pandas as pd
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError, AuthenticationError
from PIL import Image

import app as fairdx_app
from inference import catalog, compare_view, diagnose_view, saliency
from inference.images import NOT_AN_IMAGE, load_image
from inference.serving import ModelPool
from studio import jobs_view
from studio.jobs import ERR_NOT_RESUMABLE, FINAL_STATES
from studio.settings import SIGN_IN_REQUIRED, Settings
from tests.app_runs import DATASETS, FUNDUS_SPEC, free_port, tiny_runs
from tests.corpus import write_corpus
from training import metrics

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")

EXAMPLE = diagnose_view.EXAMPLES_DIR / "fundus-positive-1.png"
JOB_TIMEOUT_S = 240
STUDIO_ENDPOINTS = {"/launch", "/sweep", "/cancel", "/resume", "/jobs"}
TINY_JOB = dict(
    method="fr",
    lam=0.5,
    w_max=10.0,
    attribute="race",
    data=FUNDUS_SPEC,
    backbone="auto",
    epochs=1,
    lr="auto",
    lora_r=4,
    balanced_sampling=True,
    seed=1,
    max_samples=32,
)


def settings_for(runs: Path, **env) -> Settings:
    return Settings.from_env(
        {"FAIRDX_RUNS_DIR": str(runs), "FAIRDX_DATASETS": DATASETS, "FAIRDX_COMPARE_BOOTSTRAP": "100", **env}
    )


def serve(settings: Settings):
    demo = fairdx_app.build_app(settings)
    kwargs = fairdx_app.launch_kwargs(settings)
    kwargs.pop("theme")  # nothing to see here; saves building the theme's CSS
    _, url, _ = demo.launch(
        prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True, **kwargs
    )
    return demo, url


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tiny_runs(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def server(runs, tmp_path_factory):
    user_runs = tmp_path_factory.mktemp("user-runs")
    for path in runs.iterdir():  # the user's runs folder starts with the tiny runs; jobs add theirs
        (user_runs / path.name).symlink_to(path, target_is_directory=True)
    demo, url = serve(settings_for(user_runs))
    yield demo, url
    demo.close()
    demo.fairdx_store.close()


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server[1], verbose=False)


def wait_for_state(client: Client, job_id: str, states, timeout: float = JOB_TIMEOUT_S) -> list:
    deadline = time.monotonic() + timeout
    while True:
        table = client.predict(api_name="/jobs")
        row = next(r for r in table["data"] if r[0] == job_id)
        if row[3] in states or time.monotonic() > deadline:
            return row
        time.sleep(0.5)


# ---------------------------------------------------------------------- Diagnose
def test_diagnose_a_bundled_example_like_the_model_pool(client, runs):
    confidences, summary, details = client.predict(
        handle_file(str(EXAMPLE)), "fundus", "fundus-vanilla", api_name="/diagnose"
    )
    assert {c["label"] for c in confidences["confidences"]} == {"no glaucoma", "glaucoma"}
    assert set(details) >= {
        "label",
        "probability",
        "prob_positive",
        "margin",
        "certainty",
        "reading",
        "run_id",
        "method",
        "lam",
        "base_model",
        "task",
        "latency_ms",
        "adapter",
        "image",
    }
    assert (details["adapter"], details["method"], details["lam"], details["task"]) == (
        "fundus-vanilla",
        "vanilla",
        None,
        "fundus",
    )
    expected = ModelPool().predict(
        load_image(EXAMPLE), catalog.find_run("fundus-vanilla", catalog.available_runs([runs]))
    )
    assert details["probability"] == pytest.approx(expected.probability, abs=1e-6)
    assert details["label"] == expected.label == confidences["label"]
    # the label is the Label component's; the summary says what the example truly is, without repeating it
    assert f"### {expected.label}" not in summary
    assert "**Bundled example** — its true label is **glaucoma**" in summary and details["true_label"] == "glaucoma"
    run = catalog.find_run("fundus-vanilla", catalog.available_runs([runs]))
    assert summary.startswith("> ⚠️ This adapter is flagged as degenerate") == run.degenerate
    assert details["degenerate"] == run.degenerate
    assert "**Certainty margin" in summary and "`fundus-vanilla` (Vanilla)" in summary


def test_every_corpus_upload_gets_a_diagnosis_or_its_specific_message(client, tmp_path):
    for case in write_corpus(tmp_path):
        path = str(case.path(tmp_path))
        if case.name == "over_10mb.png":  # launch(max_file_size="10mb"): refused before the upload
            with pytest.raises(ValueError, match="exceeds the maximum file size of 10485760 bytes"):
                client.predict(handle_file(path), "fundus", "fundus-fr", api_name="/diagnose")
        elif case.outcome == "rejected":
            with pytest.raises(AppError) as caught:
                client.predict(handle_file(path), "fundus", "fundus-fr", api_name="/diagnose")
            assert str(caught.value) == case.message, case.name
        else:
            details = client.predict(handle_file(path), "fundus", "fundus-fr", api_name="/diagnose")[2]
            assert details["image"].startswith(f"{case.size[0]}×{case.size[1]} RGB"), case.name


def _rss_mb() -> float:
    """Resident memory of this process (the server runs in it) from /proc, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def test_the_corpus_twice_keeps_memory_bounded_and_the_server_up(client, tmp_path):
    """The second pass over all 45 bad/odd uploads must not grow memory much: nothing leaks per upload."""
    cases = [c for c in write_corpus(tmp_path) if c.name != "over_10mb.png"]

    def one_pass() -> None:
        for case in cases:
            with contextlib.suppress(AppError):
                client.predict(handle_file(str(case.path(tmp_path))), "fundus", "fundus-fr", api_name="/diagnose")

    one_pass()  # warms caches (both models, image decoders)
    before = _rss_mb()
    one_pass()
    growth = _rss_mb() - before
    print(f"RSS after the warm pass {before:.0f} MB, growth over the second pass {growth:.1f} MB")
    assert growth < 100
    assert client.predict(handle_file(str(EXAMPLE)), "fundus", "fundus-fr", api_name="/diagnose")[2]["label"]


def test_fifty_concurrent_predictions_all_succeed_and_agree(server):
    """50 clients at once: every prediction succeeds and equals the sequential one."""
    from concurrent.futures import ThreadPoolExecutor

    url = server[1]
    reference = Client(url, verbose=False).predict(
        handle_file(str(EXAMPLE)), "fundus", "fundus-gr", api_name="/diagnose"
    )[2]["probability"]

    def predict(i: int) -> float:
        run = ("fundus-gr", "fundus-vanilla")[i % 2]
        details = Client(url, verbose=False).predict(handle_file(str(EXAMPLE)), "fundus", run, api_name="/diagnose")[2]
        return details["adapter"], details["probability"]

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(predict, range(50)))
    assert len(results) == 50
    by_run = {}
    for adapter, probability in results:
        by_run.setdefault(adapter, set()).add(round(probability, 6))
    assert by_run["fundus-gr"] == {round(reference, 6)}
    assert len(by_run["fundus-vanilla"]) == 1  # hot-swapping under load never mixes adapters up


def test_a_text_file_named_png_gets_the_not_an_image_message(client, tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("not an image\n")
    with pytest.raises(AppError) as caught:
        client.predict(handle_file(str(fake)), "fundus", "fundus-fr", api_name="/diagnose")
    assert str(caught.value) == NOT_AN_IMAGE


def test_diagnose_all_gives_every_adapter_of_the_task_on_one_image(client):
    agreement, table = client.predict(handle_file(str(EXAMPLE)), "fundus", api_name="/diagnose_all")
    assert table["headers"] == diagnose_view.ALL_COLUMNS
    adapters = [row[0].split(" · ")[0] for row in table["data"]]
    assert {f"fundus-{m}" for m in ("vanilla", "fr", "gr", "hybrid", "cmac")} <= set(adapters)
    assert all(row[1] in ("no glaucoma", "glaucoma") for row in table["data"])
    # one call of /diagnose per adapter gives the same probabilities
    for row in table["data"][:2]:
        details = client.predict(handle_file(str(EXAMPLE)), "fundus", row[0].split(" · ")[0], api_name="/diagnose")[2]
        assert row[2] == f"{details['prob_positive']:.3f}"
    assert "adapters call it" in agreement or agreement == "No unflagged adapter to compare."


def test_explain_draws_where_the_adapter_looked(client):
    for task, example in (("fundus", EXAMPLE), ("skin", diagnose_view.EXAMPLES_DIR / "skin-positive-1.png")):
        overlay, caption = client.predict(handle_file(str(example)), task, f"{task}-vanilla", api_name="/explain")
        with Image.open(overlay) as image:
            assert image.mode == "RGB" and min(image.size) >= saliency.DISPLAY_MIN_SIDE
        assert saliency.METHOD in caption and f"`{task}-vanilla" in caption
    with pytest.raises(AppError) as caught:
        client.predict(None, "fundus", "fundus-vanilla", api_name="/explain")
    assert str(caught.value) == diagnose_view.NO_IMAGE


def test_an_unknown_adapter_or_a_server_path_is_refused_by_name(client, runs):
    for adapter in ("fundus-nope", str(runs / "fundus-fr")):
        with pytest.raises(AppError) as caught:
            client.predict(handle_file(str(EXAMPLE)), "fundus", adapter, api_name="/diagnose")
        assert str(caught.value).startswith(f"no complete run '{adapter}'; choose one of:")


# ---------------------------------------------------------------------- Compare
def test_compare_returns_the_tables_figures_and_csv_of_the_runs(client):
    keys = [f"fundus-{m}" for m in ("vanilla", "fr", "gr", "hybrid", "cmac")]
    heading, versus, summary, groups, accuracy, margin, frontier, calibration, diff, _notes, files = client.predict(
        "fundus", "race", keys, api_name="/compare"
    )
    assert [row[0].split(" ⚠ ")[0] for row in summary["data"]] == keys  # a flag may follow the run's name
    assert summary["headers"] == [
        "Run",
        "Method",
        "Trained on",
        "n",
        "Overall accuracy",
        "AUC",
        "MaxAccGap",
        "ΔTPR",
        "Equalized odds",
        "ES-AUC",
    ]
    assert [row[1] for row in summary["data"]] == [
        "Vanilla",
        "FR λ=0.5",
        "GR w_max=10",
        "Hybrid λ=0.5 w_max=10",
        "CMAC-MMD λ=0.5",
    ]
    # these tiny runs have test groups below 30 samples, so the small-group rule leaves every gap undefined
    assert {row[6] for row in summary["data"]} == {"–"}
    # vs reference: the task's vanilla run by default, every other setting paired against it
    assert heading.startswith("**vs reference: Vanilla**")
    assert versus["headers"] == [
        compare_view.VERSUS_SETTING_COLUMN,
        "Overall accuracy",
        "AUC",
        "MaxAccGap",
        "ΔTPR",
        "Equalized odds",
    ]
    assert [row[0].split(" (")[0] for row in versus["data"]] == [
        "FR λ=0.5 on race",
        "GR w_max=10 on race",
        "Hybrid λ=0.5 w_max=10 on race",
        "CMAC-MMD λ=0.5 on race",
    ]
    assert all(" · " in cell for row in versus["data"] for cell in row[1:])
    assert versus["data"][0][1].startswith("+0.000 [+0.000, +0.000] p=1.00 · ")  # copies of one run: no difference
    # groups are rows, so intersections do not scroll sideways; a flagged run's column is marked ⚠
    assert [header.removesuffix(" ⚠") for header in groups["headers"]] == ["Group", *keys]
    assert [row[0] for row in groups["data"]] == ["Asian", "Black", "White"]
    assert all(cell.endswith(")") and "(n=" in cell for row in groups["data"] for cell in row[1:])
    assert all(json.loads(figure["plot"])["data"] for figure in (accuracy, margin, frontier, calibration))
    # what differs between the runs: the method (and λ, w_max where a method uses them), nothing else
    assert diff["headers"] == ["Setting", *keys] and [row[0] for row in diff["data"]] == ["method", "lam", "w_max"]
    table = pd.read_csv(files[0])
    assert table["run"].tolist() == keys and table["accuracy"].between(0, 1).all()
    assert set(pd.read_csv(files[1])["group"]) == {"Asian", "Black", "White"}
    paired = pd.read_csv(files[2])
    assert set(paired["reference"]) == {"Vanilla"} and paired["p_value"].dropna().between(0, 1).all()
    assert set(paired["figure"]) == {"accuracy", "auc", *metrics.GAPS}
    # another reference: the GR run; vanilla is now among the settings tested against it
    heading, versus = client.predict("fundus", "race", keys, "fundus-gr", api_name="/compare")[:2]
    assert heading.startswith("**vs reference: GR w_max=10 on race**")
    assert versus["data"][0][0].startswith("Vanilla (fundus-vanilla)")
    intersection = client.predict("fundus", "race+gender", keys[:2], api_name="/compare")[3]
    assert [row[0] for row in intersection["data"]] == [
        "Asian & Female",
        "Asian & Male",
        "Black & Female",
        "Black & Male",
        "White & Female",
        "White & Male",
    ]


def test_report_download_is_the_reproduction_report(client):
    path = client.predict("fundus", ["fundus-vanilla", "fundus-hybrid"], api_name="/report")
    text = Path(path).read_text()
    assert text.startswith("# FairDx reproduction report") and "fundus-hybrid" in text


# ---------------------------------------------------------------------- Studio
def test_launched_job_succeeds_and_its_run_is_served_without_restart(client):
    message, table, job_id = client.predict(**TINY_JOB, api_name="/launch")
    row = next(r for r in table["data"] if r[0] == job_id)
    assert message == jobs_view.LAUNCHED.format(job_id=job_id, run_id=row[1])
    assert row[2] == "local" and row[3] in ("queued", "running")
    row = wait_for_state(client, job_id, FINAL_STATES)
    assert row[3:5] == ["succeeded", "100%"], row
    details = client.predict(handle_file(str(EXAMPLE)), "fundus", row[1], api_name="/diagnose")[2]
    assert (details["run_id"], details["method"], details["lam"]) == (row[1], "fr", 0.5)


def test_invalid_launch_names_every_problem_and_queues_nothing(client, runs):
    before = client.predict(api_name="/jobs")["data"]
    bad = {**TINY_JOB, "lam": -1, "epochs": 0, "lr": "fast", "attribute": "nope", "max_samples": 5}
    with pytest.raises(AppError) as caught:
        client.predict(**bad, api_name="/launch")
    assert str(caught.value).splitlines() == [
        "invalid training configuration (5 problems):",
        "  - lambda must be ≥ 0 (got -1.0); Gu et al. use 0.1, 0.5 or 1.0",
        "  - epochs must be a whole number ≥ 1 (got 0)",
        "  - lr must be a positive number or 'auto' (got 'fast')",
        "  - max_samples must be a whole number ≥ 10 (got 5)",
        "  - unknown attribute 'nope'; available: race, ethnicity, gender, age_group",
    ]
    for name, value in (("data", str(runs)), ("backbone", "/etc"), ("method", "magic")):  # off the allow-lists
        with pytest.raises(AppError, match="is not in the list of choices") as caught:
            client.predict(**{**TINY_JOB, name: value}, api_name="/launch")
        assert str(caught.value).startswith(("Value: " + value, f"Value: '{value}'"))
    assert client.predict(api_name="/jobs")["data"] == before


def test_a_grid_sweep_through_the_api_is_checked_as_a_whole(client):
    before = client.predict(api_name="/jobs")["data"]
    with pytest.raises(AppError) as caught:
        client.predict(**TINY_JOB, lambdas_text="0.1, 1", w_max_text="5 10", seeds_text="0 x", api_name="/sweep")
    assert str(caught.value).splitlines()[1:] == [
        "  - seed value 'x' is not a whole number ≥ 0",
        "  - a w_max sweep needs a method with w_max (gr, hybrid); w_max has no effect on method 'fr'",
    ]
    assert client.predict(api_name="/jobs")["data"] == before  # all or none


def test_cancel_stops_a_job(client):
    _, _, job_id = client.predict(**{**TINY_JOB, "epochs": 3, "max_samples": 200}, api_name="/launch")
    message, _, selected = client.predict(job_id, api_name="/cancel")
    assert selected == job_id and message.startswith(f"Cancel sent to job `{job_id}`")
    assert wait_for_state(client, job_id, FINAL_STATES, timeout=60)[3] == "cancelled"
    message = client.predict(job_id, api_name="/cancel")[0]
    assert message == jobs_view.ALREADY_FINISHED.format(job_id=job_id, state="cancelled")
    with pytest.raises(AppError, match="no job 'nope'"):
        client.predict("nope", api_name="/cancel")


def test_a_cancelled_job_resumes_from_its_checkpoint_and_its_run_is_served(client, server):
    _, _, job_id = client.predict(**{**TINY_JOB, "epochs": 4, "max_samples": 200}, api_name="/launch")
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (row := wait_for_state(client, job_id, ["running"]))[4] in ("0%", "–") and time.monotonic() < deadline:
        time.sleep(0.2)  # cancelled after its first steps: the checkpoint holds trained weights
    client.predict(job_id, api_name="/cancel")
    assert wait_for_state(client, job_id, FINAL_STATES)[3] == "cancelled"
    message, table, resumed = client.predict(job_id, api_name="/resume")
    assert message == jobs_view.RESUMED.format(job_id=resumed, old=job_id, run_id=row[1])
    assert [r[1] for r in table["data"] if r[0] in (job_id, resumed)] == [row[1], row[1]]
    assert wait_for_state(client, resumed, FINAL_STATES)[3:5] == ["succeeded", "100%"]
    assert wait_for_state(client, job_id, FINAL_STATES)[3] == "cancelled"  # the old job's record stays
    config = json.loads((server[0].fairdx_settings.runs_dir / row[1] / "config.json").read_text())
    assert config["training"]["resumed_from_step"] >= 1
    details = client.predict(handle_file(str(EXAMPLE)), "fundus", row[1], api_name="/diagnose")[2]
    assert details["run_id"] == row[1]
    with pytest.raises(AppError) as caught:
        client.predict(resumed, api_name="/resume")
    assert str(caught.value) == ERR_NOT_RESUMABLE.format(job_id=resumed, state="succeeded")


def test_api_lists_the_named_endpoints_only(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {"/diagnose", "/diagnose_all", "/explain", "/compare", "/report"} | STUDIO_ENDPOINTS
    # every output is named for what it holds (no Gradio 'value_17')
    unnamed = [(name, r.get("label")) for name, e in endpoints.items() for r in e["returns"] if not r.get("label")]
    assert not unnamed and not any(r["label"].startswith("value_") for e in endpoints.values() for r in e["returns"])
    assert [p["parameter_name"] for p in endpoints["/compare"]["parameters"]] == [
        "task",
        "attribute",
        "keys",
        "reference",
    ]


def test_with_the_studio_off_its_endpoints_do_not_exist(runs, tmp_path):
    demo, url = serve(settings_for(tmp_path / "runs", FAIRDX_STUDIO="off", FAIRDX_AUTH="alice:s3cret"))
    try:
        with pytest.raises(AuthenticationError):
            Client(url, verbose=False)
        client = Client(url, auth=("alice", "s3cret"), verbose=False)
        assert set(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == {
            "/diagnose",
            "/diagnose_all",
            "/explain",
            "/compare",
            "/report",
        }
        with pytest.raises(ValueError, match="Cannot find a function with `api_name`: /launch"):
            client.predict(**TINY_JOB, api_name="/launch")
        request = urllib.request.Request(f"{url}gradio_api/info")
        with pytest.raises(urllib.error.HTTPError, match="401"):  # the API description needs the login too
            urllib.request.urlopen(request)
        assert demo.fairdx_store is None
    finally:
        demo.close()


def test_on_a_space_launching_needs_a_signed_in_user(tmp_path, monkeypatch):
    pytest.importorskip("authlib", reason="a Space with the Studio on needs gradio[oauth] (authlib, itsdangerous)")
    monkeypatch.setenv("SYSTEM", "spaces")  # what a Space sets; Gradio then attaches the real OAuth routes
    monkeypatch.setenv("SPACE_ID", "someone/fairdx")
    for name in ("OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "OAUTH_SCOPES", "OPENID_PROVIDER_URL"):
        monkeypatch.setattr(gradio.oauth, name, "https://huggingface.co" if name == "OPENID_PROVIDER_URL" else "x")
    settings = settings_for(
        tmp_path / "runs", SYSTEM="spaces", SPACE_ID=os.environ["SPACE_ID"], FAIRDX_STUDIO="on", FAIRDX_WARMUP="off"
    )
    demo, url = serve(settings)
    try:
        assert any(isinstance(block, gradio.LoginButton) for block in demo.blocks.values())
        client = Client(url, verbose=False)
        for api_name in ("/launch", "/cancel", "/resume"):
            with pytest.raises(AppError) as caught:
                client.predict(**TINY_JOB, api_name=api_name) if api_name == "/launch" else client.predict(
                    "some-job", api_name=api_name
                )
            assert str(caught.value) == SIGN_IN_REQUIRED
        assert client.predict(api_name="/jobs")["data"] == []
    finally:
        demo.close()
        demo.fairdx_store.close()


def test_a_refused_request_logs_one_line_and_no_traceback(caplog, tmp_path):
    settings = Settings.from_env({"FAIRDX_RUNS_DIR": str(tmp_path)})

    @fairdx_app.user_errors(settings)
    def handler():
        raise ValueError("attribute must be a column name\nor names joined by '+'")

    with caplog.at_level("INFO", logger="fairdx.app"), pytest.raises(gradio.Error):
        handler()
    records = [r for r in caplog.records if r.name == "fairdx.app"]
    assert len(records) == 1 and records[0].exc_info is None
    assert records[0].getMessage() == "handler refused: attribute must be a column name or names joined by '+'"
