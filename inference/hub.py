"""Share runs through the Hugging Face Hub: push a run directory as a model repo, pull one back.

    python -m inference.hub push runs/fundus-fr --repo-id USER/fundus-fr [--private]
    python -m inference.hub pull USER/fundus-fr [--runs-dir runs] [--revision REV] [--name NAME]

A pushed repository mirrors the run directory (``training.rundir``), so a pull is a run again:

    README.md        the model card (training.card.render_card, naming the repository)
    config.json      eval.json      metrics.jsonl
    adapter/         adapter_config.json, *.safetensors (PEFT format, + head.safetensors for Qwen)
    predictions.csv  per-sample predictions *with each sample's demographic attributes*: uploaded by
                     default only for synthetic data; for real data only with --with-predictions,
                     because per-patient attributes and labels may be sensitive or covered by the
                     dataset's licence.

Weights travel as safetensors only: a run whose adapter holds a pickle file (.bin, .pt, ...) is
refused on push, and a pull downloads only the files above and refuses anything else. Each step is
staged first (``prepare_upload`` builds the upload folder in a temporary directory; a pull lands in
a hidden ``runs/.pull-<name>`` folder and is renamed into ``runs/<name>`` only when it validates),
so the app never lists half a run.

The token comes only from the environment (``HF_TOKEN``) or ``hf auth login``; it is never a
command-line flag and never printed. Hub and network failures become one-line messages.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from huggingface_hub import HfApi, get_token, snapshot_download
from huggingface_hub.constants import is_offline_mode
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    HTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from training.card import render_card
from training.data_spec import SYNTH_PREFIX
from training.rundir import ADAPTER, CARD, CONFIG, EVAL, METRICS, PREDICTIONS, RunInfo, read_run

PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"})
ADAPTER_SUFFIXES = frozenset({".json", ".safetensors"})
RUN_FILES = (CONFIG, EVAL, METRICS)  # always uploaded, beside README.md and adapter/
PULL_PATTERNS = (CARD, CONFIG, EVAL, METRICS, PREDICTIONS, f"{ADAPTER}/*.json", f"{ADAPTER}/*.safetensors")
PULL_REQUIRED = (CARD, CONFIG, EVAL, METRICS, f"{ADAPTER}/adapter_config.json", f"{ADAPTER}/adapter_model.safetensors")
PULL_PREFIX = ".pull-"
RUNS_DIR_ENV = "FAIRDX_RUNS_DIR"

# Messages: module constants, asserted word for word by the tests.
NO_TOKEN = (
    "no Hugging Face token found; run `hf auth login` or set HF_TOKEN in the environment "
    "(pushing needs a token with write access)"
)
PICKLE_FILES = (
    "{where} holds pickle files ({files}); FairDx shares weights as safetensors only. Delete them "
    "(the weights are in adapter_model.safetensors) or convert them with safetensors.torch.save_file"
)
NOT_A_RUN = "{repo_id} is not a FairDx run: {problems}; push runs with `python -m inference.hub push`"
RUN_EXISTS = "run '{name}' already exists in {runs_dir}; pull with --name OTHER_NAME or delete that folder"
BAD_NAME = "run name '{name}' must be a plain folder name (no '/', not starting with '.')"
BAD_REPO_ID = "'{repo_id}' is not a valid repository id; write it as USER/NAME"
OFFLINE = "cannot reach the Hugging Face Hub: offline mode is on (HF_HUB_OFFLINE); unset it to push or pull"
UNREACHABLE = "cannot reach the Hugging Face Hub ({reason}); check the network connection and try again"
REPO_NOT_FOUND = "repository '{repo_id}' was not found on the Hub, or it is private and your token cannot read it"
GATED = "repository '{repo_id}' is gated; accept its conditions on the Hub, then log in with `hf auth login`"
REVISION_NOT_FOUND = "revision '{revision}' was not found in repository '{repo_id}'"
REFUSED = (
    "the Hub refused the request for '{repo_id}' (HTTP {status}); check that your token "
    "(`hf auth login` or HF_TOKEN) is valid and has write access to that namespace"
)
HUB_ERROR = "the Hub answered with an error for '{repo_id}' (HTTP {status}): {reason}"
TRANSFER_FAILED = "the transfer for '{repo_id}' failed ({reason}); nothing was published"
NO_PREDICTIONS_NOTE = (
    "note: {repo_id} has no predictions.csv (its owner did not publish per-sample predictions); "
    "the run's eval.json and adapter are there, but the app lists only runs that have predictions.csv"
)


class HubError(RuntimeError):
    """A push or pull that cannot go ahead; the message says what to do."""


# ------------------------------------------------------------------------------------------- push
def includes_predictions(run: RunInfo, with_predictions: bool | None) -> bool:
    """Whether predictions.csv is uploaded: as asked, else only for a synthetic data spec."""
    if with_predictions is not None:
        return with_predictions
    return run.settings.data.startswith(SYNTH_PREFIX)


def prepare_upload(
    run_dir: str | Path,
    *,
    repo_id: str | None = None,
    with_predictions: bool | None = None,
    dest: str | Path | None = None,
) -> Path:
    """Build the folder a push uploads (a new temporary folder unless ``dest`` is given).

    Raises HubError for an incomplete run or pickle files in its adapter. README.md is the model
    card rendered for ``repo_id``; the adapter's own files other than JSON and safetensors (PEFT's
    placeholder README.md) are left out.
    """
    try:
        run = read_run(run_dir)
    except ValueError as err:
        raise HubError(str(err)) from None
    adapter_dir = run.path / ADAPTER
    pickles = sorted(p.name for p in adapter_dir.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise HubError(PICKLE_FILES.format(where=adapter_dir, files=", ".join(pickles)))

    out = Path(dest) if dest is not None else Path(tempfile.mkdtemp(prefix="fairdx-upload-"))
    (out / ADAPTER).mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        shutil.copy2(run.path / name, out / name)
    if includes_predictions(run, with_predictions):
        shutil.copy2(run.path / PREDICTIONS, out / PREDICTIONS)
    for path in sorted(adapter_dir.iterdir()):
        if path.is_file() and path.suffix in ADAPTER_SUFFIXES:
            shutil.copy2(path, out / ADAPTER / path.name)
    (out / CARD).write_text(render_card(run.config, run.eval(), repo_id=repo_id))
    return out


def push(run_dir: str | Path, repo_id: str, *, private: bool = False, with_predictions: bool | None = None) -> str:
    """Upload a run to the model repository ``repo_id`` (created if missing); returns its URL.

    An existing repository keeps its visibility. Files of an earlier push that this push leaves out
    (a stale predictions.csv, another family's head) are deleted in the same commit.
    """
    _check_repo_id(repo_id)
    if get_token() is None:
        raise HubError(NO_TOKEN)
    folder = prepare_upload(run_dir, repo_id=repo_id, with_predictions=with_predictions)
    try:
        stale = [f"{ADAPTER}/*"] + ([] if (folder / PREDICTIONS).exists() else [PREDICTIONS])
        api = HfApi()
        url = api.create_repo(repo_id, repo_type="model", private=private or None, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            repo_type="model",
            folder_path=folder,
            commit_message=f"FairDx run {Path(run_dir).name}",
            delete_patterns=stale,
        )
    except (HTTPError, OSError, HFValidationError) as err:
        raise HubError(describe_hub_error(err, repo_id=repo_id)) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return str(url)


# ------------------------------------------------------------------------------------------- pull
def pull(
    repo_id: str,
    *,
    runs_dir: str | Path | None = None,
    revision: str | None = None,
    name: str | None = None,
) -> Path:
    """Download a pushed run into ``runs_dir/<name>`` (name defaults to the repository's name).

    The snapshot lands in a hidden staging folder, is validated (``validate_snapshot``) and only
    then renamed into place, so a failed or refused pull leaves nothing the app would list.
    """
    _check_repo_id(repo_id)
    runs_dir = Path(runs_dir if runs_dir is not None else default_runs_dir())
    name = name or repo_id.split("/")[-1]
    if not name or "/" in name or name.startswith("."):
        raise HubError(BAD_NAME.format(name=name))
    final = runs_dir / name
    if final.exists():
        raise HubError(RUN_EXISTS.format(name=name, runs_dir=runs_dir))
    staging = runs_dir / f"{PULL_PREFIX}{name}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        try:
            _download(repo_id, revision=revision, local_dir=staging)
        except (HTTPError, OSError, HFValidationError) as err:
            raise HubError(describe_hub_error(err, repo_id=repo_id, revision=revision)) from None
        shutil.rmtree(staging / ".cache", ignore_errors=True)  # huggingface_hub's download metadata
        problems = validate_snapshot(staging)
        if problems:
            raise HubError(NOT_A_RUN.format(repo_id=repo_id, problems="; ".join(problems)))
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _download(repo_id: str, *, revision: str | None, local_dir: Path) -> None:
    """The one network call of a pull: the run's files, and nothing else, into ``local_dir``."""
    snapshot_download(
        repo_id, repo_type="model", revision=revision, local_dir=local_dir, allow_patterns=list(PULL_PATTERNS)
    )


def validate_snapshot(folder: str | Path) -> list[str]:
    """Every reason ``folder`` is not a loadable FairDx run (empty when it is one)."""
    folder = Path(folder)
    problems = []
    pickles = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        problems.append(PICKLE_FILES.format(where="it", files=", ".join(pickles)))
    missing = [name for name in PULL_REQUIRED if not (folder / name).is_file()]
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    for name, keys in ((CONFIG, ("task", "method", "backbone")), (EVAL, ("report",))):
        if not (folder / name).is_file():
            continue
        try:
            payload = json.loads((folder / name).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            problems.append(f"{name} is not valid JSON ({err})")
            continue
        absent = [key for key in keys if not isinstance(payload, dict) or key not in payload]
        if absent:
            problems.append(f"{name} has no {', '.join(repr(k) for k in absent)}")
    return problems


def default_runs_dir() -> Path:
    """Where the app reads runs: $FAIRDX_RUNS_DIR, else runs/ in the working directory."""
    return Path(os.environ.get(RUNS_DIR_ENV) or "runs")


# ----------------------------------------------------------------------------------------- errors
def describe_hub_error(err: BaseException, *, repo_id: str, revision: str | None = None) -> str:
    """One line a user can act on, for any error huggingface_hub raises on push or pull."""
    if isinstance(err, OfflineModeIsEnabled) or (isinstance(err, LocalEntryNotFoundError) and is_offline_mode()):
        return OFFLINE
    if isinstance(err, HFValidationError):
        return BAD_REPO_ID.format(repo_id=repo_id)
    if isinstance(err, GatedRepoError):
        return GATED.format(repo_id=repo_id)
    if isinstance(err, RevisionNotFoundError):
        return REVISION_NOT_FOUND.format(revision=revision, repo_id=repo_id)
    if isinstance(err, RepositoryNotFoundError):
        return REPO_NOT_FOUND.format(repo_id=repo_id)
    if isinstance(err, HfHubHTTPError):
        status = err.response.status_code if err.response is not None else "?"
        if status in (401, 403):
            return REFUSED.format(repo_id=repo_id, status=status)
        return HUB_ERROR.format(repo_id=repo_id, status=status, reason=_first_line(err))
    if isinstance(err, (HTTPError, LocalEntryNotFoundError)):
        return UNREACHABLE.format(reason=_first_line(err))
    return TRANSFER_FAILED.format(repo_id=repo_id, reason=f"{type(err).__name__}: {_first_line(err)}")


def _first_line(err: BaseException) -> str:
    """The first line of an error's text, without huggingface_hub's "Got: " wrapper prefix."""
    text = str(err).strip()
    return text.splitlines()[0].removeprefix("Got: ") if text else type(err).__name__


def _check_repo_id(repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise HubError(BAD_REPO_ID.format(repo_id=repo_id)) from None


# -------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inference.hub",
        description="Push a FairDx run to the Hugging Face Hub, or pull one into the runs folder. "
        "The token comes from `hf auth login` or HF_TOKEN.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("push", help="upload a run directory as a model repository")
    up.add_argument("run_dir", help="a complete run, e.g. runs/fundus-fr")
    up.add_argument("--repo-id", required=True, help="target model repository, USER/NAME (created if missing)")
    up.add_argument("--private", action="store_true", help="create the repository as private")
    shared = up.add_mutually_exclusive_group()
    shared.add_argument(
        "--with-predictions",
        dest="with_predictions",
        action="store_true",
        default=None,
        help="upload predictions.csv (per-sample demographics) even for real data",
    )
    shared.add_argument(
        "--without-predictions",
        dest="with_predictions",
        action="store_false",
        help="leave predictions.csv out even for synthetic data",
    )
    down = commands.add_parser("pull", help="download a pushed run into the runs folder")
    down.add_argument("repo_id", help="model repository, USER/NAME")
    down.add_argument("--runs-dir", default=None, help=f"runs folder (default: ${RUNS_DIR_ENV} or runs)")
    down.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    down.add_argument("--name", default=None, help="run folder name (default: the repository's name)")
    args = parser.parse_args(argv)

    try:
        if args.command == "push":
            url = push(args.run_dir, args.repo_id, private=args.private, with_predictions=args.with_predictions)
            shared_predictions = includes_predictions(read_run(args.run_dir), args.with_predictions)
            print(
                f"pushed {args.run_dir} to {url} (predictions.csv {'included' if shared_predictions else 'left out'})"
            )
        else:
            path = pull(args.repo_id, runs_dir=args.runs_dir, revision=args.revision, name=args.name)
            print(f"pulled {args.repo_id} into {path}")
            if not (path / PREDICTIONS).is_file():
                print(NO_PREDICTIONS_NOTE.format(repo_id=args.repo_id), file=sys.stderr)
    except HubError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
