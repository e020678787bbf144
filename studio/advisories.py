"""Known security advisories of the web stack FairDx serves with, checked against what is installed.

A public deployment should run a Gradio "free of the known CVEs" (issue 5). No advisory database is
reachable from our machines or CI, so the advisories are recorded in ``assets/security/advisories.json``
(every gradio advisory found in the PyPA/OSV/GitHub/CVE records, and the newest ones of pillow,
starlette, python-multipart and h11, each with its sources) and this module checks the installed
versions against them. An advisory that affects an installed version is either *mitigated* — the entry
says how FairDx avoids the vulnerable path and which test proves it — or it fails the check.

    python -m studio.advisories        # a table; exit 1 if an unmitigated advisory affects what is installed

Refresh the file when a new release or advisory appears (pip-audit or osv.dev on a machine with network
access lists them); the test suite then holds the pins to it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

ADVISORIES = Path(__file__).resolve().parents[1] / "assets" / "security" / "advisories.json"

AFFECTED, MITIGATED, CLEAR, UNKNOWN_RANGE, NOT_INSTALLED = (
    "affected",
    "mitigated",
    "clear",
    "unknown range",
    "not installed",
)

ERR_ENTRY = "advisory #{index} ({ids}) in {path}: {problem}"
ERR_FILE = "cannot read the advisory list {path}: {error}"


class AdvisoryFileError(ValueError):
    """The advisory list is missing, unreadable or has malformed entries (every problem named)."""


@dataclass(frozen=True)
class Advisory:
    package: str
    ids: tuple[str, ...]
    summary: str
    affected: SpecifierSet | None  # None: the advisory states no version range
    fixed: str | None  # None: no fixed release stated
    sources: tuple[str, ...]
    mitigation: Mapping[str, str] | None = None
    note: str | None = None


@dataclass(frozen=True)
class Finding:
    advisory: Advisory
    installed: str | None
    status: str  # AFFECTED, MITIGATED, CLEAR, UNKNOWN_RANGE or NOT_INSTALLED


def load(path: str | Path = ADVISORIES) -> list[Advisory]:
    """The recorded advisories; AdvisoryFileError naming every malformed entry."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())["advisories"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise AdvisoryFileError(ERR_FILE.format(path=path, error=err)) from None
    advisories, problems = [], []
    for index, entry in enumerate(entries):
        try:
            advisories.append(_advisory(entry))
        except (KeyError, TypeError, ValueError, InvalidSpecifier) as err:
            ids = ", ".join(entry.get("ids", [])) if isinstance(entry, dict) else "?"
            problems.append(ERR_ENTRY.format(index=index, ids=ids or "no ids", path=path, problem=err))
    if problems:
        raise AdvisoryFileError("\n".join(problems))
    return advisories


def _advisory(entry: Mapping[str, Any]) -> Advisory:
    ids = tuple(entry["ids"])
    sources = tuple(entry["sources"])
    if not ids or not sources or not all(s.startswith("https://") for s in sources):
        raise ValueError("needs at least one id and one https:// source")
    affected = SpecifierSet(entry["affected"]) if entry["affected"] else None
    fixed = entry.get("fixed")
    if fixed is not None:
        Version(fixed)  # raises InvalidVersion (a ValueError) for a malformed one
    mitigation = entry.get("mitigation")
    if mitigation is not None and not {"what", "where", "test"} <= set(mitigation):
        raise ValueError("a mitigation needs 'what', 'where' and 'test'")
    return Advisory(
        package=entry["package"].lower(),
        ids=ids,
        summary=entry["summary"],
        affected=affected,
        fixed=fixed,
        sources=sources,
        mitigation=mitigation,
        note=entry.get("note"),
    )


def installed_versions(packages: Sequence[str]) -> dict[str, str | None]:
    """Installed version of each distribution (None when it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def check(advisories: Sequence[Advisory], versions: Mapping[str, str | None] | None = None) -> list[Finding]:
    """One finding per advisory for the given versions (default: what this environment has installed)."""
    if versions is None:
        versions = installed_versions(sorted({a.package for a in advisories}))
    findings = []
    for advisory in advisories:
        installed = versions.get(advisory.package)
        if installed is None:
            status = NOT_INSTALLED
        elif advisory.affected is None:
            status = UNKNOWN_RANGE
        elif advisory.affected.contains(installed, prereleases=True):
            status = MITIGATED if advisory.mitigation else AFFECTED
        else:
            status = CLEAR
        findings.append(Finding(advisory, installed, status))
    return findings


def report(findings: Sequence[Finding]) -> str:
    """Plain-text summary: per package the installed version and counts, then every advisory that is not clear."""
    lines = []
    for package in sorted({f.advisory.package for f in findings}):
        mine = [f for f in findings if f.advisory.package == package]
        counts = {
            status: sum(f.status == status for f in mine) for status in (AFFECTED, MITIGATED, UNKNOWN_RANGE, CLEAR)
        }
        lines.append(
            f"{package} {mine[0].installed or '(not installed)'}: {len(mine)} known advisories, "
            + ", ".join(f"{n} {status}" for status, n in counts.items() if n)
        )
    for finding in findings:
        if finding.status in (CLEAR, NOT_INSTALLED):
            continue
        a = finding.advisory
        lines.append(
            f"  {finding.status.upper()}: {a.package} {finding.installed} — {', '.join(a.ids)}: {a.summary}"
            f" (affected {a.affected or 'unknown'}, fixed in {a.fixed or 'no release'})"
        )
        if a.mitigation:
            lines.append(f"    mitigation: {a.mitigation['what']} [{a.mitigation['where']}; {a.mitigation['test']}]")
        elif a.note:
            lines.append(f"    note: {a.note}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.advisories", description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", default=str(ADVISORIES), help="the advisory list (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        findings = check(load(args.file))
    except AdvisoryFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report(findings))
    return 1 if any(f.status == AFFECTED for f in findings) else 0


if __name__ == "__main__":
    sys.exit(main())
