"""Known advisories against what is installed, and the one Gradio advisory our pin is inside, mitigated.

CVE-2026-134825 (gradio 6.27.0 to 6.31.x, fixed in 6.32.0, which none of our package indexes has yet) lets
a forged ``Host: localhost`` reach the run-history routes with the operator's saved Hugging Face token
when SSR is on. FairDx launches with run history and SSR off; the server test proves the routes are
absent, and a control app with run history on proves the same request would have reached them.
"""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlparse

import gradio as gr
import pytest

import app as fairdx_app
from studio import advisories
from studio.advisories import AFFECTED, CLEAR, MITIGATED, UNKNOWN_RANGE, AdvisoryFileError, check, load
from studio.settings import Settings
from tests.app_runs import DATASETS, free_port

RUN_HISTORY_ROUTES = ("/gradio_api/run-history/buckets", "/gradio_api/run-history/records", "/gradio_api/runs")
CVE = "CVE-2026-134825"


def test_the_recorded_advisories_parse_and_each_names_its_sources():
    recorded = load()
    assert len(recorded) >= 60
    assert sum(a.package == "gradio" for a in recorded) >= 50
    assert all(a.sources and a.summary for a in recorded)
    ids = [i for a in recorded for i in a.ids]
    assert len(ids) == len(set(ids)), "an advisory id is recorded twice"
    for a in recorded:  # a fixed release must lie outside the affected range
        if a.fixed and a.affected:
            assert not a.affected.contains(a.fixed, prereleases=True), a.ids


def test_no_installed_package_is_inside_an_unmitigated_advisory():
    findings = check(load())
    assert [f.advisory.ids for f in findings if f.status == AFFECTED] == []
    by_id = {f.advisory.ids[0]: f for f in findings}
    assert by_id[CVE].status == MITIGATED and by_id[CVE].installed == gr.__version__
    assert [f.advisory.ids[0] for f in findings if f.status == UNKNOWN_RANGE] == ["CVE-2024-0964"]
    assert by_id["CVE-2026-49119"].status == CLEAR  # FileExplorer path traversal, fixed in 6.16.0


def test_an_older_stack_is_flagged_by_the_same_check():
    findings = check(load(), {"gradio": "6.10.0", "pillow": "12.2.0", "python-multipart": "0.0.26"})
    flagged = {f.advisory.ids[0] for f in findings if f.status == AFFECTED}
    assert {"CVE-2026-59806", "CVE-2026-49119", "CVE-2026-48545", "CVE-2026-59199", "CVE-2026-42561"} <= flagged
    assert CVE not in flagged  # 6.10 predates it


def test_every_mitigation_names_a_test_that_exists():
    for advisory in load():
        if advisory.mitigation:
            path, _, name = advisory.mitigation["test"].partition("::")
            source = (advisories.ADVISORIES.parents[2] / path).read_text()
            assert f"def {name}(" in source, advisory.mitigation["test"]


def test_the_cli_prints_the_table_and_exits_0(capsys):
    assert advisories.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"gradio {gr.__version__}: ") and f"MITIGATED: gradio {gr.__version__} — {CVE}" in out


def test_a_malformed_advisory_file_names_every_bad_entry(tmp_path):
    path = tmp_path / "advisories.json"
    path.write_text(
        json.dumps(
            {
                "advisories": [
                    {"package": "gradio", "ids": ["X-1"], "summary": "s", "affected": "<<1", "sources": ["https://a"]},
                    {"package": "gradio", "ids": ["X-2"], "summary": "s", "affected": "<1", "sources": []},
                ]
            }
        )
    )
    with pytest.raises(AdvisoryFileError) as caught:
        load(path)
    lines = str(caught.value).splitlines()
    assert len(lines) == 2 and lines[0].startswith("advisory #0 (X-1)") and lines[1].startswith("advisory #1 (X-2)")
    assert advisories.main(["--file", str(tmp_path / "missing.json")]) == 2


def _get(url: str, path: str, host: str) -> int:
    """Status of GET path with a chosen Host header (urllib would send the real one)."""
    parsed = urlparse(url)
    con = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    try:
        con.request("GET", path, headers={"Host": host})
        return con.getresponse().status
    finally:
        con.close()


def test_run_history_routes_are_absent_even_with_a_forged_localhost_host(tmp_path):
    settings = Settings.from_env(
        {
            "FAIRDX_RUNS_DIR": str(tmp_path / "runs"),
            "FAIRDX_DATASETS": DATASETS,
            "FAIRDX_STUDIO": "off",
            "FAIRDX_WARMUP": "off",
        }
    )
    kwargs = fairdx_app.launch_kwargs(settings)
    assert (kwargs["run_history"], kwargs["ssr_mode"]) == (False, False)
    kwargs.pop("theme")
    demo = fairdx_app.build_app(settings)
    _, url, _ = demo.launch(
        prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True, **kwargs
    )
    try:
        assert (demo.run_history, demo.ssr_mode) == (False, False)
        assert _get(url, "/", "localhost") == 200
        for path in RUN_HISTORY_ROUTES:
            assert _get(url, path, "localhost") == 404, path
    finally:
        demo.close()

    with gr.Blocks() as control:  # the same request against Gradio's default (run history on)
        gr.Markdown("control")
    _, url, _ = control.launch(
        prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True, ssr_mode=False
    )
    try:
        assert _get(url, "/gradio_api/run-history/buckets", "localhost") == 401  # there: it asks for a token
    finally:
        control.close()
