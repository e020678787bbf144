"""``fairdx``: one command for FairDx's entry points (installed by scripts/setup.sh; see pyproject.toml).

    fairdx app                        the Gradio app, as scripts/app.sh runs it
    fairdx train --method fr ...      = python -m training.train --method fr ...
    fairdx COMMAND --help             that command's own flags

Each subcommand hands the rest of the command line, untouched, to its module's ``main(argv)``, so
``fairdx X ARGS`` and ``python -m MODULE ARGS`` are the same program (a module without a ``main(argv)``
is run as ``python -m`` would run it). A module is found by its name only when its subcommand runs:
``fairdx --help`` imports nothing heavy, and a module that moves needs only its name changed in
COMMANDS below.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import runpy
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent

# subcommand -> (module, one line for `fairdx --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "app": ("app", "launch the Gradio app (Diagnose, Compare, Studio)"),
    "train": ("training.train", "fine-tune a fair LoRA adapter into a run directory"),
    "evaluate": ("training.evaluate", "re-evaluate a finished run, or on another dataset"),
    "metrics": ("training.metrics.__main__", "fairness metrics (gaps, intervals) of a predictions.csv"),
    "report": ("inference.report", "do the runs reproduce the two papers' claims? (Markdown)"),
    "hub": ("inference.hub", "push a run to the Hugging Face Hub, or pull one back"),
    "demos": ("training.demos", "rebuild the shipped demo runs in assets/runs/"),
    "build-assets": ("training.build_assets", "build the tiny backbones in assets/backbones/"),
}

APP_EPILOG = """\
environment (read by Gradio and studio/settings.py, which documents the rest):
  GRADIO_SERVER_NAME, GRADIO_SERVER_PORT   where to listen (default 127.0.0.1:7860)
  FAIRDX_RUNS_DIR                          runs folder (default runs/ in the repository)
  GRADIO_ANALYTICS_ENABLED                 False unless set

The app runs from the repository root, as `bash scripts/app.sh` runs it."""


def version() -> str:
    try:
        return metadata.version("fairdx")
    except metadata.PackageNotFoundError:
        return "(not installed: bash scripts/setup.sh)"


def build_parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:<14}{summary}" for name, (_, summary) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="fairdx",
        description="FairDx: train, audit and serve fairness-aware LoRA adapters for medical image classifiers."
        f"\n\ncommands:\n{listing}",
        epilog="Run `fairdx COMMAND --help` for a command's own flags; each is also `python -m MODULE`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fairdx {version()}")
    parser.add_argument("command", metavar="COMMAND", choices=COMMANDS, help="one of the commands above")
    parser.add_argument("args", metavar="ARGS", nargs="*", help="its arguments")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        return run(args[0], args[1:])
    parser = build_parser()
    if not args:
        parser.print_help(sys.stderr)
        return 2
    parsed = parser.parse_args(args)  # --help and --version exit here, an unknown command with a usage error
    return run(parsed.command, parsed.args)  # e.g. `fairdx -- train`


def run(name: str, argv: list[str]) -> int:
    """Run subcommand ``name`` with the arguments that follow it."""
    if name == "app":
        return run_app(argv)
    module_name = COMMANDS[name][0]
    spec = importlib.util.find_spec(module_name)
    if spec is None:
        print(f"fairdx {name}: no module {module_name} (moved? update COMMANDS in cli.py)", file=sys.stderr)
        return 2
    saved = sys.argv
    sys.argv = [f"fairdx {name}", *argv]  # the prog name of a parser that does not set its own
    try:
        if takes_argv(spec):
            return int(importlib.import_module(module_name).main(argv) or 0)
        runpy.run_module(module_name, run_name="__main__", alter_sys=True)
        return 0
    finally:
        sys.argv = saved


def takes_argv(spec: importlib.machinery.ModuleSpec) -> bool:
    """Whether the module defines a top-level ``main(argv)`` (read from its source: nothing is imported)."""
    loader = spec.loader
    source = loader.get_source(spec.name) if isinstance(loader, importlib.abc.InspectLoader) else None
    if source is None:
        return False
    return any(
        isinstance(node, ast.FunctionDef) and node.name == "main" and (node.args.posonlyargs or node.args.args)
        for node in ast.parse(source).body
    )


def run_app(argv: list[str]) -> int:
    """``python app.py`` from the repository root with analytics off unless set (what scripts/app.sh does)."""
    summary = COMMANDS["app"][1]
    parser = argparse.ArgumentParser(
        prog="fairdx app",
        description=f"{summary[0].upper()}{summary[1:]}.",
        epilog=APP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _, rest = parser.parse_known_args(argv)  # only --help is ours; the rest goes to app.py
    app = ROOT / "app.py"
    if not app.is_file():
        print(f"fairdx app: {app} is missing; this checkout is incomplete", file=sys.stderr)
        return 1
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.chdir(ROOT)
    os.execv(sys.executable, [sys.executable, "app.py", *rest])  # replaces this process, as `exec` in app.sh


if __name__ == "__main__":
    sys.exit(main())
