"""Shared fixtures: one small synthetic benchmark per task, generated once per test session."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Small enough to generate in ~1 s, large enough that every group of race/ethnicity and sex x age_group
# has training samples.
FUNDUS_SPEC = "synth:fundus:n=240,seed=3,test_min=0"
SKIN_SPEC = "synth:skin:n=240,seed=3,test_min=0"


def pytest_configure(config) -> None:
    """One torch thread in the tests and in every subprocess they start: the tiny models gain nothing
    from more, and on a shared 2-core machine busy-waiting OpenMP threads slow them down many-fold."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session", autouse=True)
def data_dir(tmp_path_factory) -> Path:
    """Every test (and every training subprocess it starts) caches synthetic data in one session folder."""
    path = Path(os.environ.get("FAIRDX_TEST_DATA_DIR") or tmp_path_factory.mktemp("fairdx-data"))
    os.environ["FAIRDX_DATA_DIR"] = str(path)
    return path


def run_cli(*args: str, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    """Run `python -m <args>` from the repository root, capturing output."""
    proc = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def exactly(message: str) -> str:
    """A ``pytest.raises(match=...)`` pattern accepting this message and nothing else.

    ``match`` is a regular expression found anywhere in the error (``re.search``): escaped and anchored,
    it asserts what ``str(err.value) == message`` would.
    """
    return rf"\A{re.escape(message)}\Z"
