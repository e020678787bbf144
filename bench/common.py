"""What every benchmark records beside its figures: when, on what machine, under what load, with what versions.

Timings on a shared machine mean little without the load average next to them, and a figure from
another library version is another figure. ``environment()`` collects that once, ``write_result``
puts it at the top of each ``bench/results/<name>.json``; ``markdown_table`` prints the tables the
benchmarks share.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
RUNS_DIR = REPO / "bench" / "runs"  # training runs made by benchmarks (not shipped; gitignored)


def environment() -> dict[str, Any]:
    """Date, machine, CPU count, torch threads, load average and library versions, as JSON-able values."""
    import numpy
    import torch

    record: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "versions": {"torch": torch.__version__, "numpy": numpy.__version__, **_optional_versions()},
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        record["gpu"] = torch.cuda.get_device_name(0)
    return record


def _optional_versions() -> dict[str, str]:
    versions = {}
    for name in ("transformers", "peft", "accelerate"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            continue
    return versions


def write_result(path: Path, payload: dict[str, Any], env: dict[str, Any] | None = None) -> Path:
    """Write ``{"environment": ..., **payload}`` as indented JSON; ``env`` is taken before the run if given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(env or environment())
    env["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    path.write_text(json.dumps({"environment": env, **payload}, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured table; cells are written with str()."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def environment_line(env: dict[str, Any]) -> str:
    """One line for the top of a printed report."""
    load = env["load_average"]
    return (
        f"{env['date']} · {env['machine']} · {env['cpu_count']} CPU cores · torch {env['versions']['torch']} "
        f"({env['torch_threads']} threads) · load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
        + (f" · {env['gpu']}" if env.get("gpu") else "")
    )
