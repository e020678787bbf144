"""Deployment details found by trying to break the app (issue 12): Space detection and a light settings import."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest

from studio.settings import Settings, space_id
from tests.conftest import REPO

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")

UNSET = object()


@pytest.mark.parametrize(
    ("system", "space"), list(itertools.product([UNSET, "spaces", "docker", ""], [UNSET, "someone/fairdx", ""]))
)
def test_a_space_is_what_gradio_calls_a_space(monkeypatch, system, space):
    """Gradio attaches real OAuth only on what get_space() calls a Space, and mocked OAuth (which needs a local
    Hugging Face login) wherever a LoginButton appears elsewhere; the Studio shows one exactly on a Space."""
    from gradio import utils

    env = {}
    for name, value in (("SYSTEM", system), ("SPACE_ID", space)):
        if value is UNSET:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
            env[name] = value
    assert space_id(env) == utils.get_space()
    assert Settings.from_env(env).on_space == (utils.get_space() is not None)


def test_a_stray_space_id_does_not_stop_the_app_from_starting(monkeypatch, tmp_path):
    """SPACE_ID without SYSTEM=spaces used to put a LoginButton on a local server; Gradio then mocked OAuth,
    which fails at start-up without a Hugging Face login."""
    import gradio

    import app as fairdx_app
    from tests.app_runs import DATASETS, free_port

    for name in ("SYSTEM", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no saved token either
    monkeypatch.setenv("SPACE_ID", "someone/fairdx")
    settings = Settings.from_env(
        {
            "SPACE_ID": "someone/fairdx",
            "FAIRDX_RUNS_DIR": str(tmp_path / "runs"),
            "FAIRDX_STUDIO": "on",
            "FAIRDX_WARMUP": "off",
            "FAIRDX_DATASETS": DATASETS,
        }
    )
    assert not settings.on_space
    demo = fairdx_app.build_app(settings)
    try:
        kwargs = fairdx_app.launch_kwargs(settings)
        kwargs.pop("theme")
        demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True, **kwargs)
        assert not any(isinstance(block, gradio.LoginButton) for block in demo.blocks.values())
        assert demo.is_running
    finally:
        demo.close()
        demo.fairdx_store.close()


def test_settings_import_without_torch_transformers_or_peft():
    code = (
        "import sys, json, studio.settings; "
        "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(proc.stdout) == []


def test_the_embedded_backbones_are_one_constant():
    import training.backbones
    import training.embedded

    assert training.backbones.EMBEDDED_BACKBONES is training.embedded.EMBEDDED_BACKBONES
    assert training.backbones.default_backbone("skin") == training.embedded.EMBEDDED_BACKBONES["skin"]
